"""Flow control in bytes (issue 9, item 1b): the pipeline's queues and each output's unacknowledged window are bounded
by the bytes their batches were read as, so a slow output still stops the inputs within the limits, while many
small batches at a low rate are never throttled to one output request per `batch.max_wait`.

The latency test drives the real Elasticsearch output into the `_bulk` receiver in-process: 200 sources writing
5,000 lines/s in total as small batches (5 lines per source every 200 ms), every line stamped when emitted and
again when the receiver stores it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest

from logagent import registry
from logagent.component import Input, Output
from logagent.config import Section, parse_config
from logagent.pipeline import Pipeline
from logagent.record import Batch
from tests.helpers import async_wait_for
from tests.paced_input import PacedInput
from tests.receivers.es import BulkReceiver


@dataclass(frozen=True)
class SizedSettings:
    batches: int
    nbytes: int


class SizedInput(Input):
    """Emits `batches` batches of one record each, each counted as `nbytes` bytes read."""

    emitted = 0

    @classmethod
    def parse_settings(cls, section: Section) -> SizedSettings:
        s = SizedSettings(section.int("batches"), section.int("nbytes"))
        section.done()
        return s

    async def run(self, emit: Any) -> None:
        self._stop = asyncio.Event()
        tracker = self.ctx.checkpoints.tracker(self.name)
        for i in range(self.settings.batches):
            if self._stop.is_set():
                return
            await emit(Batch("sized", [{"message": f"b{i}", "offset": i}], {"input": self.name},
                             tracker.token("src", {"offset": i + 1}), self.settings.nbytes))
            SizedInput.emitted = i + 1
        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()


class HoldingOutput(Output):
    """Accepts batches and never acknowledges them (a backend that stopped answering)."""

    held: list[Batch] = []

    @classmethod
    def parse_settings(cls, section: Section) -> None:
        section.done()

    async def send(self, batch: Batch) -> None:
        HoldingOutput.held.append(batch)


@pytest.fixture(autouse=True)
def _types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.INPUTS, "sized", f"{__name__}:SizedInput")
    monkeypatch.setitem(registry.INPUTS, "paced", "tests.paced_input:PacedInput")
    monkeypatch.setitem(registry.OUTPUTS, "holding", f"{__name__}:HoldingOutput")
    HoldingOutput.held = []
    SizedInput.emitted = 0


def _config(tmp_path: Any, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], **top: Any) -> Any:
    return parse_config({"state_dir": str(tmp_path / "state"), "grace_period": "1s", "checkpoint_interval": "50ms",
                         "inputs": inputs, "outputs": outputs, **top}, "test.yaml")


async def _settled(p: Pipeline) -> int:
    """Emitted batches once nothing more moves (every task had its turn many times over)."""
    emitted = -1
    while emitted != SizedInput.emitted:
        emitted = SizedInput.emitted
        for _ in range(50):
            await asyncio.sleep(0)
    return emitted


async def test_a_stuck_output_holds_the_input_within_the_byte_limits(tmp_path) -> None:
    cfg = _config(tmp_path, [{"type": "sized", "name": "big", "batches": 1000, "nbytes": 16 * 1024}],
                  [{"type": "holding", "name": "stuck"}],
                  # record_overhead 0: the windows count exactly the bytes these batches say they were read as
                  limits={"queue_bytes": "32KiB", "output_max_unacked_bytes": "64KiB", "record_overhead": 0})
    p = Pipeline(cfg)
    await p.start()
    try:
        await async_wait_for(lambda: p.queue.full(), what="the input waiting for room")
        emitted = await _settled(p)
        # 64 KiB unacknowledged at the output (4 batches), 1 in the router's hand, 32 KiB (2) in the queue
        assert len(HoldingOutput.held) == 4
        assert emitted == 4 + 1 + 2
        assert p.queue.nbytes == 32 * 1024
    finally:
        p.request_stop()
        await p.shutdown()


async def test_small_batches_fill_the_same_windows_by_the_hundred(tmp_path) -> None:
    cfg = _config(tmp_path, [{"type": "sized", "name": "small", "batches": 100_000, "nbytes": 200}],
                  [{"type": "holding", "name": "stuck"}],
                  # record_overhead 0: the windows count exactly the bytes these batches say they were read as
                  limits={"queue_bytes": "32KiB", "output_max_unacked_bytes": "64KiB", "record_overhead": 0})
    p = Pipeline(cfg)
    await p.start()
    try:
        await async_wait_for(lambda: p.queue.full(), what="the input waiting for room")
        emitted = await _settled(p)
        # 64 KiB / 200 B = 327 batches held unacknowledged, 163 queued: bytes bound them, not a batch count
        assert len(HoldingOutput.held) == 327
        assert emitted == 327 + 1 + 163
    finally:
        p.request_stop()
        await p.shutdown()


async def test_each_record_costs_its_memory_overhead_in_the_windows(tmp_path) -> None:
    """By default a record costs `record_overhead` (400) bytes beyond its bytes read: what a dict of a parsed
    line holds in memory. 200-byte one-record batches then cost 600 each."""
    cfg = _config(tmp_path, [{"type": "sized", "name": "small", "batches": 100_000, "nbytes": 200}],
                  [{"type": "holding", "name": "stuck"}],
                  limits={"queue_bytes": "32KiB", "output_max_unacked_bytes": "64KiB"})
    p = Pipeline(cfg)
    await p.start()
    try:
        await async_wait_for(lambda: p.queue.full(), what="the input waiting for room")
        emitted = await _settled(p)
        assert len(HoldingOutput.held) == 65536 // 600  # 109 unacknowledged
        assert emitted == 109 + 1 + 32768 // 600  # + the router's + 54 queued
        assert p.queue.nbytes == 54 * 600
    finally:
        p.request_stop()
        await p.shutdown()


async def test_200_sources_at_5000_lines_per_second_ship_every_line_within_2_seconds(tmp_path) -> None:
    arrived: dict[str, float] = {}

    def stamp(meta: dict[str, Any], doc: dict[str, Any], attempt: int) -> None:
        arrived.setdefault(doc["message"], time.monotonic() - doc["t"])

    rec = await BulkReceiver(item_fault=stamp, keep_docs=False).start()
    seconds = 4.0
    cfg = _config(tmp_path, [{"type": "paced", "name": "pods", "sources": 200, "rate": 5000,
                              "seconds": f"{seconds}s"}],
                  [{"type": "elasticsearch", "name": "es", "url": rec.url, "index": "logs",
                    "batch": {"max_wait": "1s"}}])  # the default max_wait
    p = Pipeline(cfg)
    await p.start()
    try:
        await async_wait_for(lambda: PacedInput.written > 0, seconds + 30, what="the writers finished")
        await async_wait_for(lambda: len(arrived) == PacedInput.written, 30, what="every line shipped")
    finally:
        p.request_stop()
        await p.shutdown()
        await rec.stop()
    latencies = sorted(arrived.values())
    assert PacedInput.written >= 5000 * seconds * 0.9
    assert rec.conflicts == 0 and rec.items_seen == PacedInput.written
    p50, p99, worst = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)], latencies[-1]
    assert worst < 2.0, f"p50 {p50:.2f}s p99 {p99:.2f}s max {worst:.2f}s"


async def test_a_window_smaller_than_a_request_ships_without_waiting_for_max_wait(tmp_path) -> None:
    """An output's window (40 one-record batches of 200 bytes) far smaller than its request (100,000 records,
    cut by age after 120 s): when the router waits for room, the output cuts the request it is filling and sends it
    (`Output.cut`), so all but the last window's records arrive in requests of at most 40 within seconds, not one
    window per 120 s. The last window waits for `max_wait` as any partly filled request does; stopping ships it."""
    rec = await BulkReceiver(keep_docs=False).start()
    cfg = _config(tmp_path, [{"type": "sized", "name": "small", "batches": 2000, "nbytes": 200}],
                  [{"type": "elasticsearch", "name": "es", "url": rec.url, "index": "logs",
                    "batch": {"max_wait": "120s", "max_records": 100_000}}],
                  limits={"queue_bytes": "4KiB", "output_max_unacked_bytes": "8KiB", "record_overhead": 0})
    p = Pipeline(cfg)
    await p.start()
    try:
        await async_wait_for(lambda: rec.items_seen >= 2000 - 40, 60, what="all but the last window shipped")
        await async_wait_for(lambda: SizedInput.emitted == 2000, 10, what="the input emitted every batch")
        assert rec.requests >= (2000 - 40) // 40  # no request held more than the window
    finally:
        p.request_stop()
        await p.shutdown()
        await rec.stop()
    assert len(rec.auto_docs) == 2000 and rec.conflicts == 0
