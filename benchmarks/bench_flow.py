"""Per-line latency at a low, steady rate spread over many sources: what the pipeline's flow-control windows cost.

A paced input stands for `--sources` container files written at `--rate` lines/s in total (each source emits
`--per-batch` lines at a time, as a tailer reading a file a few lines after each write does), through the real
pipeline and the real Elasticsearch output (default `batch.max_wait` 1s) into the `_bulk` receiver, all
in-process. Every line is stamped when emitted and when the receiver stores it; the script prints the latency
percentiles and how long after the writer stopped the last line arrived.

    python benchmarks/bench_flow.py [--sources 200] [--rate 5000] [--seconds 10] [--limit KEY=VALUE ...]

`--limit` sets agent `limits` (e.g. the former batch-counted windows: `--limit queue_batches=8 --limit
output_queue_batches=4 --limit output_max_unacked_batches=16`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logagent import registry  # noqa: E402
from logagent.config import parse_config  # noqa: E402
from logagent.pipeline import Pipeline  # noqa: E402
from tests.paced_input import PacedInput  # noqa: E402
from tests.receivers.es import BulkReceiver  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    registry.INPUTS["paced"] = "tests.paced_input:PacedInput"
    arrived: dict[str, float] = {}
    last = [0.0]

    def stamp(meta: dict[str, Any], doc: dict[str, Any], attempt: int) -> None:
        now = time.monotonic()
        arrived.setdefault(doc["message"], now - doc["t"])
        last[0] = now

    rec = await BulkReceiver(item_fault=stamp, keep_docs=False).start()
    limits: dict[str, Any] = {}
    for item in args.limit:
        key, _, value = item.partition("=")
        limits[key] = int(value) if value.isdigit() else value
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config({
            "state_dir": tmp, "http": {"enabled": False}, "limits": limits,
            "inputs": [{"type": "paced", "name": "pods", "sources": args.sources, "rate": args.rate,
                        "seconds": f"{args.seconds}s", "per_batch": args.per_batch}],
            "outputs": [{"type": "elasticsearch", "name": "es", "url": rec.url, "index": "logs"}]}, "bench")
        p = Pipeline(cfg)
        await p.start()
        deadline = time.monotonic() + args.seconds + 300
        while (PacedInput.written == 0 or len(arrived) < PacedInput.written) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        p.request_stop()
        await p.shutdown()
    await rec.stop()
    lat = sorted(arrived.values())
    n = len(lat)
    print(f"limits {limits or 'default'}: {PacedInput.written} lines written, {n} shipped; latency p50 "
          f"{lat[n // 2]:.2f}s p99 {lat[int(n * 0.99)]:.2f}s max {lat[-1]:.2f}s; last line "
          f"{max(0.0, last[0] - PacedInput.stopped_at):.2f}s after the writer stopped")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=200)
    ap.add_argument("--rate", type=int, default=5000, help="lines per second over all sources")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--per-batch", type=int, default=5, help="lines per batch (per read of one file)")
    ap.add_argument("--limit", action="append", default=[], help="an agent `limits` setting KEY=VALUE")
    asyncio.run(main(ap.parse_args()))
