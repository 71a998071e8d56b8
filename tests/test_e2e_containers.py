"""Container logs end to end through the real tailer, as on a node: every container case (the shared
`tests/data/containers/` files and `tests/data/containers_variants/`)
written into a kubelet-style tree in pieces while the agent runs reproduces its `*.expected.jsonl` with the pod's
path metadata on every record; a kubelet rotation in the middle of a Java stack trace neither splits nor loses the
trace; an agent stopped in the middle of a carried trace and started again gives the same records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from logagent.checkpoint import CheckpointStore
from tests.e2e_support import (
    ContainerLog,
    comparable,
    cuts_for,
    followed_tail,
    node_agent_config,
)
from tests.filetail import Agent, read_output
from tests.helpers import async_wait_for
from tests.parsers_support import DATA, case_mode, case_names, case_path, expected

CASES = case_names()  # the shared files and the variants, as `<dir>/<name>`


async def wait_settled(agent: Agent, log: ContainerLog, n: int) -> list[dict[str, Any]]:
    """n records out, and the file's checkpoint at its end: everything read was emitted and acknowledged, nothing
    is held any more (a record still held would keep the checkpoint at its first line)."""
    await agent.wait_messages(n, timeout=20)

    def settled() -> bool:
        tail = followed_tail(agent.file_input, log.link)
        committed = agent.file_input.tracker.committed.get(tail.key) if tail is not None else None
        return isinstance(committed, dict) and committed.get("offset") == log.written
    await async_wait_for(settled, timeout=20, what="checkpoint at the end of the file")
    return agent.records()


def test_every_shared_file_is_covered() -> None:
    assert {"cri_basic", "cri_local_tz", "docker_json", "multiline_java", "multiline_python",
            "multiline_go_panic"} <= {c.rsplit("/", 1)[1] for c in case_names(DATA)}
    assert all(case_path(c).exists() for c in CASES)


@pytest.mark.parametrize("name", CASES)
async def test_file_written_in_pieces_reproduces_expected_with_path_metadata(name: str, tmp_path: Path) -> None:
    data = case_path(name).read_bytes()
    want = expected(name)
    log = ContainerLog(tmp_path / "node").create()
    async with Agent(tmp_path, node_agent_config(tmp_path, log, case_mode(name))) as agent:
        start = 0
        for end in [*cuts_for(data, 7, name), len(data)]:
            log.write(data[start:end])
            start = end
            # the tailer reads each piece before the next is written: pieces end mid-line, mid-character,
            # between a P and its F, inside a stack trace
            await async_wait_for(lambda: (t := followed_tail(agent.file_input, log.link)) is not None
                                 and t.read_offset == log.written, timeout=20, what=f"{log.written} bytes read")
        records = await wait_settled(agent, log, len(want))
    assert comparable(records) == comparable(want)
    assert len(records) == len(want)
    for rec in records:
        assert rec["kubernetes"] == log.path_meta()
        assert rec["path"] == str(log.link) and rec["input"] == "files"
    assert len({r["offset"] for r in records}) == len(records)  # one record per first line: no duplicates


# -- rotation in the middle of a stack trace ----------------------------------------------------------------------

def cri(lines: list[tuple[str, str]], first: int = 0) -> bytes:
    """CRI records as containerd writes them: one `F` line per (stream, text), nanosecond timestamps."""
    return "".join(f"2024-05-14T09:12:05.{first + i:09d}Z {stream} F {text}\n"
                   for i, (stream, text) in enumerate(lines)).encode()


BEFORE = [
    ("stdout", ("2024-05-14 09:12:04.881  INFO 1 --- [           main] c.s.orders.OrdersApplication             : "
                "Started OrdersApplication in 6.412 seconds (JVM running for 7.103)")),
    ("stdout", ("2024-05-14 09:12:05.102  INFO 1 --- [nio-8080-exec-3] c.s.orders.web.OrderController           : "
                "POST /orders customer=4711")),
]
# The trace the kubelet's rotation cuts in two: its header and first frames land in 0.log, the rest in the new one.
TRACE_HEAD = [
    ("stdout", ("2024-05-14 09:12:05.120 ERROR 1 --- [nio-8080-exec-3] o.a.c.c.C.[.[.[/].[dispatcherServlet]    : "
                "Servlet.service() for servlet [dispatcherServlet] in context with path [] threw exception")),
    ("stdout", ""),
    ("stdout", ("org.springframework.dao.DataIntegrityViolationException: could not execute statement; "
                "constraint [orders_customer_fk]")),
    ("stdout", ("\tat org.springframework.orm.jpa.vendor.HibernateJpaDialect.convertHibernateAccessException"
                "(HibernateJpaDialect.java:276)")),
    ("stdout", "\tat org.springframework.orm.jpa.JpaTransactionManager.doCommit(JpaTransactionManager.java:566)"),
]
TRACE_TAIL = [
    ("stdout", "\tat com.shop.orders.service.OrderService.place(OrderService.java:88)"),
    ("stdout", "\tat com.shop.orders.web.OrderController.create(OrderController.java:41)"),
    ("stdout", ("Caused by: org.postgresql.util.PSQLException: ERROR: insert or update on table \"orders\" violates "
                "foreign key constraint \"orders_customer_fk\"")),
    ("stdout", "\tat org.postgresql.core.v3.QueryExecutorImpl.receiveErrorResponse(QueryExecutorImpl.java:2676)"),
    ("stdout", "\t... 12 common frames omitted"),
]
AFTER = [
    ("stderr", "WARN: slow GC pause 312ms"),
    ("stdout", ("2024-05-14 09:12:05.340  INFO 1 --- [nio-8080-exec-4] c.s.orders.web.OrderController           : "
                "GET /orders/4711")),
    ("stdout", ("2024-05-14 09:12:05.351  INFO 1 --- [nio-8080-exec-5] c.s.orders.web.OrderController           : "
                "GET /health")),
]


def logical(lines: list[tuple[str, str]], first: int) -> dict[str, Any]:
    """The record a group of CRI lines (written from timestamp index `first`) must become."""
    return {"time": f"2024-05-14T09:12:05.{first:09d}Z", "stream": lines[0][0],
            "message": "\n".join(text for _, text in lines), "fragments": len(lines), "lines": len(lines)}


def rotation_expected() -> list[dict[str, Any]]:
    trace = TRACE_HEAD + TRACE_TAIL
    n_before, n_trace = len(BEFORE), len(trace)
    return ([logical([line], i) for i, line in enumerate(BEFORE)]
            + [logical(trace, n_before)]
            + [logical([line], n_before + n_trace + i) for i, line in enumerate(AFTER)])


def held(agent: Agent, log: ContainerLog) -> bool:
    """The tailer read all of 0.log and its joiner holds the unfinished trace (the precondition of the test)."""
    tail = followed_tail(agent.file_input, log.link)
    return tail is not None and tail.read_offset == log.written and tail.joiner.held_from() is not None


async def test_kubelet_rotation_mid_trace_neither_splits_nor_loses_the_trace(tmp_path: Path) -> None:
    log = ContainerLog(tmp_path / "node").create()
    want = rotation_expected()
    async with Agent(tmp_path, node_agent_config(tmp_path, log, "java")) as agent:
        log.write(cri(BEFORE + TRACE_HEAD))
        await agent.wait_messages(len(BEFORE))
        await async_wait_for(lambda: held(agent, log), timeout=20, what="the trace head read and held")
        rotated = log.rotate()
        log.write(cri(TRACE_TAIL + AFTER, first=len(BEFORE) + len(TRACE_HEAD)))
        records = await wait_settled(agent, log, len(want))
        # the rotated file's checkpoint reached its end too: its part of the trace was delivered and acknowledged
        old_key = f"{rotated.stat().st_dev}:{rotated.stat().st_ino}"
        await async_wait_for(lambda: agent.file_input.tracker.committed.get(old_key, {}).get("offset")
                             == rotated.stat().st_size, timeout=20, what="rotated file's checkpoint at its end")
    assert comparable(records) == comparable(want)
    assert len(records) == len(want)
    (trace,) = [r for r in records if "DataIntegrityViolationException" in r["message"]]
    assert trace["message"].endswith("\t... 12 common frames omitted")
    assert trace["offset"] == len(cri(BEFORE))  # where it starts in the rotated file
    assert all(r["kubernetes"] == log.path_meta() and r["path"] == str(log.link) for r in records)
    # each record's offset is in the file its first line was read from: ids stay unique and stable
    assert len({r["offset"] for r in records}) == len(records)


async def test_restart_while_a_rotated_trace_is_carried_gives_the_same_records(tmp_path: Path) -> None:
    log = ContainerLog(tmp_path / "node").create()
    want = rotation_expected()
    doc = node_agent_config(tmp_path, log, "java")
    first_tail = len(BEFORE) + len(TRACE_HEAD)
    async with Agent(tmp_path, doc) as agent:
        log.write(cri(BEFORE + TRACE_HEAD))
        await async_wait_for(lambda: held(agent, log), timeout=20, what="the trace head read and held")
        log.rotate()
        # the new file's first frames are read into the trace too, then the agent stops: nothing of it is out
        log.write(cri(TRACE_TAIL[:2], first=first_tail))
        await async_wait_for(lambda: held(agent, log), timeout=20, what="the new file's frames read, trace held")
        await agent.wait_messages(len(BEFORE))
        rotated_key = next(t.key for t in agent.file_input.tails.values() if t.orphaned)
        new_key = followed_tail(agent.file_input, log.link).key
    # stopped mid-trace: the stored checkpoints are the rotated file's at the trace's first line, the new file's
    # at its start
    store = CheckpointStore(tmp_path / "state", readonly=True)
    committed = store.load("files")
    store.close()
    assert committed[rotated_key]["offset"] == len(cri(BEFORE)) and committed[new_key]["offset"] == 0
    before_restart = read_output(tmp_path / "out.jsonl")
    assert comparable(before_restart) == comparable(want[: len(BEFORE)])
    async with Agent(tmp_path, doc) as agent:
        log.write(cri(TRACE_TAIL[2:] + AFTER, first=first_tail + 2))
        records = await wait_settled(agent, log, len(want))
    assert comparable(records) == comparable(want)
    assert len(records) == len(want)
    (trace,) = [r for r in records if "DataIntegrityViolationException" in r["message"]]
    assert trace["offset"] == len(cri(BEFORE))


async def test_kubelet_rotation_between_the_pieces_of_a_long_line_joins_them(tmp_path: Path) -> None:
    """containerd cut a 20,100-byte line at 16 KiB: its `P` piece ends 0.log, its `F` piece begins the new file."""
    log = ContainerLog(tmp_path / "node").create()
    long_line = "".join(f"item-{i:05d};" for i in range(1830))[:20100]
    head = b"2024-05-14T09:12:06.1Z stdout F cache warm-up started\n"
    piece1 = f"2024-05-14T09:12:06.2Z stdout P {long_line[:16384]}\n".encode()
    piece2 = f"2024-05-14T09:12:06.2Z stdout F {long_line[16384:]}\n".encode()
    tail = b"2024-05-14T09:12:06.3Z stdout F cache warm-up done\n"
    async with Agent(tmp_path, node_agent_config(tmp_path, log)) as agent:
        log.write(head + piece1)
        await agent.wait_messages(1)
        await async_wait_for(lambda: held(agent, log), timeout=20, what="the P piece read and held")
        log.rotate()
        log.write(piece2 + tail)
        records = await wait_settled(agent, log, 3)
    assert [(r["message"], r["fragments"], r["time"]) for r in records] == [
        ("cache warm-up started", 1, "2024-05-14T09:12:06.1Z"), (long_line, 2, "2024-05-14T09:12:06.2Z"),
        ("cache warm-up done", 1, "2024-05-14T09:12:06.3Z")]
    assert [r["offset"] for r in records] == [0, len(head), len(piece2)]  # each in the file of its first piece
    assert all("flags" not in r for r in records)
