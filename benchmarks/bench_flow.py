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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logagent import registry  # noqa: E402
from logagent.component import Input  # noqa: E402
from logagent.config import Section, parse_config  # noqa: E402
from logagent.pipeline import Pipeline  # noqa: E402
from logagent.record import Batch  # noqa: E402
from tests.receivers.es import BulkReceiver  # noqa: E402


@dataclass(frozen=True)
class PacedSettings:
    sources: int
    rate: int
    seconds: float
    per_batch: int


class PacedInput(Input):
    written = 0
    stopped_at = 0.0

    @classmethod
    def parse_settings(cls, section: Section) -> PacedSettings:
        s = PacedSettings(section.int("sources"), section.int("rate"), section.duration("seconds"),
                          section.int("per_batch"))
        section.done()
        return s

    async def run(self, emit: Any) -> None:
        """The writers keep their schedule whatever the pipeline does: each source writes per_batch lines
        every `period` seconds (sources spread over the period); each wakeup emits, per source, every line written
        and not yet emitted (a tailer reading what is new), each stamped with the time it was written."""
        self._stop = asyncio.Event()
        s = self.settings
        tracker = self.ctx.checkpoints.tracker(self.name)
        per_batch = s.per_batch
        period = per_batch * s.sources / s.rate
        t0 = time.monotonic()
        emitted = [0] * s.sources  # writes (of per_batch lines) of each source already emitted
        total_writes = int(s.seconds / period)
        while not self._stop.is_set():
            now = time.monotonic()
            for src in range(s.sources):
                phase = period * src / s.sources
                due = min(total_writes, int((now - t0 - phase) / period) + 1 if now - t0 >= phase else 0)
                if due <= emitted[src]:
                    continue
                records = [{"message": f"s{src} l{w * per_batch + k}", "offset": (w * per_batch + k) * 100,
                            "t": t0 + phase + w * period}
                           for w in range(emitted[src], due) for k in range(per_batch)]
                emitted[src] = due
                await emit(Batch(f"node.{src}", records,
                                 {"input": self.name, "source_id": f"f{src}", "pos_key": "offset"},
                                 tracker.token(f"f{src}", {"offset": due * per_batch * 100}), 100 * len(records)))
            if min(emitted) >= total_writes:
                break
            await asyncio.sleep(max(0.0, period / 10 - (time.monotonic() - now)))  # the tailer's next look
        PacedInput.written = sum(emitted) * per_batch
        PacedInput.stopped_at = t0 + total_writes * period
        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()


async def main(args: argparse.Namespace) -> None:
    registry.INPUTS["paced"] = "__main__:PacedInput"
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
