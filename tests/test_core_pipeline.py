"""The pipeline's promises: fan-out with acknowledgements, checkpoints only after every output confirmed,
dead-lettering instead of dropping, bounded memory through backpressure, graceful shutdown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from logagent import metrics, registry
from logagent.checkpoint import CheckpointStore
from logagent.component import Input, Output
from logagent.config import Section, parse_config
from logagent.pipeline import Pipeline
from logagent.record import Batch
from tests.helpers import async_wait_for


@dataclass(frozen=True)
class MemorySettings:
    batches: int
    records: int
    tag: str


class MemoryInput(Input):
    """Emits numbered records in batches, each batch with a checkpoint token (position = records emitted)."""

    emitted: int = 0

    @classmethod
    def parse_settings(cls, section: Section) -> MemorySettings:
        s = MemorySettings(section.int("batches"), section.int("records", 10), section.str("tag", "mem"))
        section.done()
        return s

    async def run(self, emit: Any) -> None:
        tracker = self.ctx.checkpoints.tracker(self.name)
        self._stop = asyncio.Event()
        n = 0
        for b in range(self.settings.batches):
            if self._stop.is_set():
                return
            records = [{"message": f"line {n + i}", "offset": n + i} for i in range(self.settings.records)]
            n += self.settings.records
            await emit(Batch(self.settings.tag, records, {"input": self.name},
                             tracker.token("src", {"offset": n})))
            MemoryInput.emitted = b + 1
        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()


class GatedOutput(Output):
    """Holds batches until the test opens the gate; acknowledges them then."""

    held: list[Batch] = []

    @classmethod
    def parse_settings(cls, section: Section) -> None:
        section.done()

    async def send(self, batch: Batch) -> None:
        GatedOutput.held.append(batch)


class RejectingOutput(Output):
    """Rejects every record for good, like a backend answering 400 to each."""

    @classmethod
    def parse_settings(cls, section: Section) -> None:
        section.done()

    async def send(self, batch: Batch) -> None:
        self.ctx.dead_letter.write(self.name, "mapper_parsing_exception: failed to parse field [n]", batch.shipped())
        batch.ack.done()


class CrashingOutput(Output):
    @classmethod
    def parse_settings(cls, section: Section) -> None:
        section.done()

    async def send(self, batch: Batch) -> None:
        raise ValueError("encoder bug")


@pytest.fixture(autouse=True)
def _test_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.INPUTS, "memory", f"{__name__}:MemoryInput")
    monkeypatch.setitem(registry.OUTPUTS, "gated", f"{__name__}:GatedOutput")
    monkeypatch.setitem(registry.OUTPUTS, "rejecting", f"{__name__}:RejectingOutput")
    monkeypatch.setitem(registry.OUTPUTS, "crashing", f"{__name__}:CrashingOutput")
    GatedOutput.held = []
    MemoryInput.emitted = 0


def _config(tmp_path, outputs: list[dict], batches: int = 3, **top: Any):
    doc = {"state_dir": str(tmp_path / "state"), "grace_period": "2s", "checkpoint_interval": "50ms",
           "inputs": [{"type": "memory", "name": "mem", "batches": batches}], "outputs": outputs, **top}
    return parse_config(doc, "test.yaml")


def _read_jsonl(path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_fan_out_delivers_to_every_matching_output_and_checkpoints(tmp_path) -> None:
    cfg = _config(tmp_path, [
        {"type": "file", "name": "a", "path": str(tmp_path / "a.jsonl"), "match": ["mem"]},
        {"type": "file", "name": "b", "path": str(tmp_path / "b.jsonl"), "match": ["m*"]},
        {"type": "file", "name": "other", "path": str(tmp_path / "c.jsonl"), "match": ["kube.*"]},
    ])
    p = Pipeline(cfg)
    await p.start()
    tracker = p.ctx.checkpoints.tracker("mem")
    await async_wait_for(lambda: tracker.committed.get("src") == {"offset": 30}, what="checkpoint at 30")
    p.request_stop()
    await p.shutdown()
    for name in ("a", "b"):
        got = _read_jsonl(tmp_path / f"{name}.jsonl")
        assert [r["message"] for r in got] == [f"line {i}" for i in range(30)]
        assert all(r["input"] == "mem" for r in got)
    assert not (tmp_path / "c.jsonl").exists() or (tmp_path / "c.jsonl").read_bytes() == b""
    assert CheckpointStore(tmp_path / "state").load("mem") == {"src": {"offset": 30}}


async def test_checkpoint_waits_for_the_slowest_output(tmp_path) -> None:
    cfg = _config(tmp_path, [
        {"type": "file", "name": "fast", "path": str(tmp_path / "a.jsonl")},
        {"type": "gated", "name": "slow"},
    ])
    fast = metrics.RECORDS_OUT.labels(output="fast")
    before = fast._value.get()
    p = Pipeline(cfg)
    await p.start()
    await async_wait_for(lambda: len(GatedOutput.held) == 3, what="3 batches at the slow output")
    # the file output counts a batch in the same step as it acknowledges it, after its fsync: the lines are in the
    # file before that (a loaded machine's fsync can take a while), so the count, not the file, says it is done
    await async_wait_for(lambda: fast._value.get() - before == 30, what="fast output acknowledged 30")
    assert len(_read_jsonl(tmp_path / "a.jsonl")) == 30
    tracker = p.ctx.checkpoints.tracker("mem")
    assert "src" not in tracker.committed
    GatedOutput.held[1].ack.done()  # out of order: nothing may be committed before batch 0
    assert "src" not in tracker.committed
    GatedOutput.held[0].ack.done()
    assert tracker.committed["src"] == {"offset": 20}
    GatedOutput.held[2].ack.done()
    assert tracker.committed["src"] == {"offset": 30}
    p.request_stop()
    await p.shutdown()


async def test_rejected_records_go_to_the_dead_letter_file_with_reason(tmp_path) -> None:
    cfg = _config(tmp_path, [{"type": "rejecting", "name": "es"}], batches=2)
    p = Pipeline(cfg)
    await p.start()
    tracker = p.ctx.checkpoints.tracker("mem")
    await async_wait_for(lambda: tracker.committed.get("src") == {"offset": 20}, what="checkpoint at 20")
    p.request_stop()
    await p.shutdown()
    dead = _read_jsonl(tmp_path / "state" / "dead-letter.jsonl")
    assert [d["record"]["message"] for d in dead] == [f"line {i}" for i in range(20)]
    assert {d["reason"] for d in dead} == {"mapper_parsing_exception: failed to parse field [n]"}
    assert {d["output"] for d in dead} == {"es"}


async def test_an_output_crash_dead_letters_the_batch_instead_of_losing_it(tmp_path) -> None:
    cfg = _config(tmp_path, [{"type": "crashing", "name": "buggy"}], batches=1)
    p = Pipeline(cfg)
    await p.start()
    tracker = p.ctx.checkpoints.tracker("mem")
    await async_wait_for(lambda: tracker.committed.get("src") == {"offset": 10}, what="checkpoint at 10")
    p.request_stop()
    await p.shutdown()
    dead = _read_jsonl(tmp_path / "state" / "dead-letter.jsonl")
    assert len(dead) == 10
    assert dead[0]["reason"] == "output_error: ValueError: encoder bug"


async def test_a_stuck_output_stops_the_input_within_the_queue_bounds(tmp_path) -> None:
    limits = {"queue_batches": 4, "output_queue_batches": 2, "output_max_unacked_batches": 5}
    cfg = _config(tmp_path, [{"type": "gated", "name": "stuck"}], batches=1000, limits=limits)
    p = Pipeline(cfg)
    await p.start()
    # The output holds what it was sent and never acknowledges; everything else waits in bounded queues.
    await async_wait_for(lambda: p.queue.full(), what="pipeline queue full")
    emitted = MemoryInput.emitted
    for _ in range(20):
        await asyncio.sleep(0)  # let every task run: nothing more may be emitted
    assert MemoryInput.emitted == emitted
    # 5 unacknowledged at the output, 1 in the router's hand, 4 in the pipeline queue
    assert len(GatedOutput.held) == 5
    assert emitted == 5 + 1 + 4
    p.request_stop()
    await p.shutdown()


async def test_shutdown_keeps_only_acknowledged_positions(tmp_path) -> None:
    cfg = _config(tmp_path, [{"type": "gated", "name": "slow"}], batches=3, grace_period="200ms")
    p = Pipeline(cfg)
    await p.start()
    await async_wait_for(lambda: len(GatedOutput.held) == 3, what="3 batches held")
    GatedOutput.held[0].ack.done()
    p.request_stop()
    await asyncio.wait_for(p.shutdown(), 5)
    assert CheckpointStore(tmp_path / "state").load("mem") == {"src": {"offset": 10}}
