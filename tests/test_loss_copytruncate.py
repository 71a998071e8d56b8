"""copytruncate done right, into the Elasticsearch-faithful receiver: the copy is found at once and finished from our
offset (live and after `kill -9`), every truncated generation gets ids of its own, and nothing is lost beyond
logrotate's own window (lines written between its copy and its truncation, which are in neither file)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from logagent import metrics
from logagent.config import parse_config
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for
from tests.loss_support import TimedReceiver, es_agent_config
from tests.receivers.es import BulkReceiver


def _counter(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class InProcess:
    """The agent's pipeline in this loop: file input -> elasticsearch output into `rec`."""

    def __init__(self, tmp_path: Path, rec: BulkReceiver, paths: list[str], limits: dict[str, Any] | None = None,
                 **opts: Any) -> None:
        doc = es_agent_config(tmp_path, rec.url, paths, fmt="raw", poll_interval="200ms", **opts)
        doc["outputs"][0]["batch"] = {"max_wait": "20ms"}
        if limits:
            doc["limits"] = limits
        self.pipeline = Pipeline(parse_config(doc, "test.yaml"))

    async def __aenter__(self) -> Any:
        await self.pipeline.start()
        file_input = self.pipeline.inputs["logs"].input
        await asyncio.wait_for(file_input.ready.wait(), 30)  # type: ignore[attr-defined]
        return file_input

    async def __aexit__(self, *exc: Any) -> None:
        self.pipeline.request_stop()
        await self.pipeline.shutdown()


async def test_two_generations_of_a_truncated_inode_get_distinct_ids(tmp_path: Path) -> None:
    """The same lines at the same offsets in three generations of one inode (truncated to empty each time):
    equal (source, offset) would give equal `_id`s, and ES would answer 409 to different lines."""
    rec = await TimedReceiver().start()
    log = tmp_path / "app.log"
    same = "".join(f"starting worker {i}\n" for i in range(5))
    log.write_text(same)
    before = _counter("logagent_file_rotations_total", input="logs", kind="truncate")
    try:
        async with InProcess(tmp_path, rec, [str(tmp_path / "*.log")]):
            await async_wait_for(lambda: len(rec.docs) == 5, what="first generation stored")
            for generation in (2, 3):
                os.truncate(log, 0)
                await async_wait_for(lambda g=generation: _counter("logagent_file_rotations_total", input="logs",
                                                                   kind="truncate") >= before + g - 1,
                                     what="truncation seen")
                with open(log, "a") as f:
                    f.write(same)
                await async_wait_for(lambda g=generation: len(rec.docs) == 5 * g,
                                     what=f"generation {generation} stored")
    finally:
        await rec.stop()
    assert rec.conflicts == 0  # no line was taken for another
    assert sorted(d["message"] for d in rec.docs.values()) == sorted(same.splitlines() * 3)
    assert len(set(rec.docs)) == 15


async def test_copytruncate_unread_tail_is_finished_from_the_copy_live(tmp_path: Path) -> None:
    """The reader is held behind a slow backend when the file is copied and truncated: the bytes after our offset
    are only in the copy, and they arrive (from the copy, with the old generation's ids)."""
    rec = await TimedReceiver().start()
    rec.plan = [("slow", 0.3)] * 40
    log = tmp_path / "app.log"
    log.write_text("".join(f"old {i:05d} {'x' * 100}\n" for i in range(20_000)))
    limits = {"batch_max_records": 200, "queue_batches": 1, "output_queue_batches": 1,
              "output_max_unacked_batches": 1}
    try:
        async with InProcess(tmp_path, rec, [str(tmp_path / "*.log")], limits, read_buffer="16KiB") as file_input:
            await async_wait_for(lambda: len(rec.docs) > 0, what="shipping")
            tail = next(iter(file_input.tails.values()))
            assert tail.read_offset < log.stat().st_size  # precondition: the tail of the file is unread
            with open(log, "rb") as src, open(tmp_path / "app.log.1", "wb") as dst:
                dst.write(src.read())
            os.truncate(log, 0)
            with open(log, "a") as f:
                f.write("".join(f"new {i:05d}\n" for i in range(100)))
            await async_wait_for(lambda: len(rec.docs) == 20_100, timeout=60, what="old and new generation stored")
    finally:
        await rec.stop()
    messages = sorted(d["message"].split()[0] + d["message"].split()[1] for d in rec.docs.values())
    assert messages == sorted([f"old{i:05d}" for i in range(20_000)] + [f"new{i:05d}" for i in range(100)])
    assert _counter("logagent_file_rotations_total", input="logs", kind="copytruncate_copy") >= 1
