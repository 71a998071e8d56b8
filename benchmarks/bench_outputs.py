"""Throughput and CPU cost of the HTTP outputs: records/s and agent CPU-seconds per GB of log text shipped into a
local `_bulk` receiver and a local Loki push receiver.

The receivers run in separate processes (`python -m tests.receivers.es` / `tests.receivers.loki`), so only the
agent side is measured: CPU is this process's user+system time (resource.getrusage, threads included: encoding
and compression of large requests run in worker threads). Batches are built before the clock starts, as an input
would hand them over; the timing covers `send` -> encode -> compress -> HTTP -> response parsing -> ack.

    python benchmarks/bench_outputs.py [--records 200000] [--batch 1000] [--only es|loki]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logagent.record import AckToken, Batch  # noqa: E402
from tests.receivers.harness import build_output, make_context  # noqa: E402


def start_receiver(module: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    ready = tmp / f"{module}.port"
    proc = subprocess.Popen([sys.executable, "-m", f"tests.receivers.{module}", "--port", "0",
                             "--ready-file", str(ready)], cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 20
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"receiver {module} did not start")
        time.sleep(0.05)
    return proc, f"http://127.0.0.1:{ready.read_text()}"


def make_batches(records: int, per_batch: int) -> tuple[list[Batch], int, list[int]]:
    """CRI-like container lines (~180 bytes) from 20 pods, with Kubernetes metadata at batch level."""
    batches = []
    text_bytes = 0
    acked = [0]
    n = 0
    while n < records:
        pod = (n // per_batch) % 20
        meta = {"input": "containers", "path": f"/var/log/pods/shop_web-{pod}_uid{pod}/main/0.log",
                "source_id": f"file:{pod:08x}", "pos_key": "offset",
                "kubernetes": {"namespace": "shop", "pod": f"web-{pod}", "pod_uid": f"uid-{pod}",
                               "container": "main", "node": "node-a", "labels": {"app": "web"}}}
        recs = []
        for i in range(n, min(n + per_batch, records)):
            msg = (f"2024-05-01T10:00:{i % 60:02d}.{i % 1000:03d}Z INFO [http-nio-8080-exec-{i % 16}] "
                   f"c.e.shop.CheckoutController - order {i} placed user=u{i % 997} total=42.{i % 100:02d} "
                   f"items=3 latency_ms={i % 250}")
            text_bytes += len(msg)
            recs.append({"message": msg, "offset": i * 200, "stream": "stdout",
                         "time": f"2024-05-01T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}000000Z"})
        n += len(recs)

        def done() -> None:
            acked[0] += 1

        batches.append(Batch("kube", recs, meta, AckToken(done)))
    return batches, text_bytes, acked


async def run_one(kind: str, url: str, records: int, per_batch: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    ctx = make_context(tmp)
    settings = {"url": url, "batch": {"max_records": 5000, "max_bytes": "4MiB", "max_wait": "200ms"},
                "max_in_flight": 4}
    if kind == "elasticsearch":
        settings["index"] = "logs-{kubernetes.namespace}-%Y.%m.%d"
    out = build_output(kind, settings, ctx, name=f"bench-{kind}")
    batches, text_bytes, acked = make_batches(records, per_batch)
    await out.start()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for b in batches:
        await out.send(b)
    await out.flush()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    await out.stop()
    assert acked[0] == len(batches), f"{acked[0]} of {len(batches)} batches acknowledged"
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"records": records, "wall_s": wall, "cpu_s": cpu, "records_per_s": records / wall,
            "text_mb": text_bytes / 1e6, "cpu_s_per_gb": cpu / (text_bytes / 1e9)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--only", choices=("es", "loki"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; {args.records} records, "
          f"{args.batch} per input batch")
    for kind, module in (("elasticsearch", "es"), ("loki", "loki")):
        if args.only and args.only != module:
            continue
        proc, url = start_receiver(module, tmp)
        try:
            r = asyncio.run(run_one(kind, url, args.records, args.batch))
        finally:
            proc.terminate()
            proc.wait(10)
        print(f"{kind:14s} {r['records_per_s']:>10,.0f} records/s  wall {r['wall_s']:.2f}s  cpu {r['cpu_s']:.2f}s  "
              f"{r['cpu_s_per_gb']:.0f} CPU-s/GB of log text ({r['text_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
