"""`multiline: auto` through the real tailer: each corpus file of tests/data/multiline_auto/, written into a
kubelet-style tree in pieces while the agent runs (pieces end mid-line and inside traces), comes out as exactly
its hand-derived records, with the file checkpointed at its end once everything is emitted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.auto_support import load, names
from tests.e2e_support import ContainerLog, comparable, cuts_for, followed_tail, node_agent_config
from tests.filetail import Agent
from tests.helpers import async_wait_for


def expected_records(name: str) -> list[dict[str, Any]]:
    corpus = load(name)
    return [{"time": corpus.time_of(r), "stream": r.stream, "message": "\n".join(r.lines),
             "fragments": len(r.lines), "lines": len(r.lines)} for r in corpus.records]


@pytest.mark.parametrize("name", names())
async def test_corpus_written_in_pieces_through_the_tailer(name: str, tmp_path: Path) -> None:
    data = load(name).cri()
    want = expected_records(name)
    log = ContainerLog(tmp_path / "node").create()
    async with Agent(tmp_path, node_agent_config(tmp_path, log, "auto", multiline_flush="300ms")) as agent:
        start = 0
        for end in [*cuts_for(data, 9, name), len(data)]:
            log.write(data[start:end])
            start = end
            await async_wait_for(lambda: (t := followed_tail(agent.file_input, log.link)) is not None
                                 and t.read_offset == log.written, timeout=20, what=f"{log.written} bytes read")
        await agent.wait_messages(len(want), timeout=20)

        def settled() -> bool:
            tail = followed_tail(agent.file_input, log.link)
            committed = agent.file_input.tracker.committed.get(tail.key) if tail is not None else None
            return isinstance(committed, dict) and committed.get("offset") == log.written
        await async_wait_for(settled, timeout=20, what="checkpoint at the end of the file")
        records = agent.records()
    assert comparable(records) == comparable(want)
    assert len(records) == len(want)
    assert len({r["offset"] for r in records}) == len(records)
