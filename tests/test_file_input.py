"""The file tailer with real files: appends, split writes, rotations, truncation, deletion, many files, restarts.

Every test writes real files, runs a real pipeline (file input -> JSON-lines file output) and checks the output
exactly: which lines, how often, in which order per file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

from logagent import metrics
from logagent.checkpoint import CheckpointStore
from tests.filetail import Agent, agent_config
from tests.helpers import async_wait_for


def write(path: Path, text: str | bytes, mode: str = "a") -> None:
    data = text.encode() if isinstance(text, str) else text
    with open(path, mode + "b") as f:
        f.write(data)


def lines(prefix: str, start: int, stop: int) -> str:
    return "".join(f"{prefix} {i}\n" for i in range(start, stop))


def counter(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def test_appended_lines_arrive_once_in_order(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, lines("a", 0, 3))
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")])) as agent:
        assert await agent.wait_messages(3) == ["a 0", "a 1", "a 2"]
        for chunk in range(5):
            write(log, lines("a", 3 + chunk * 20, 3 + (chunk + 1) * 20))
        got = await agent.wait_messages(103)
    assert got == [f"a {i}" for i in range(103)]
    records = agent.records()
    assert {r["path"] for r in records} == {str(log)}
    assert records[1]["offset"] == len("a 0\n")
    assert "source_id" not in records[0] and "pos_key" not in records[0]


async def test_a_line_split_across_two_writes_is_one_record(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "first\nsec")
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")])) as agent:
        assert await agent.wait_messages(1) == ["first"]
        # the tailer has read the half line and holds it
        await async_wait_for(lambda: any(t.read_offset == 9 for t in agent.file_input.tails.values()),
                             what="half line read")
        write(log, "ond\nthird\n")
        assert await agent.wait_messages(3) == ["first", "second", "third"]


async def test_a_line_without_newline_is_flushed_after_the_timeout(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "complete\nno newline yet")
    doc = agent_config(tmp_path, [str(tmp_path / "*.log")], partial_line_flush="300ms")
    async with Agent(tmp_path, doc) as agent:
        assert await agent.wait_messages(2) == ["complete", "no newline yet"]
        write(log, "next\n")
        assert await agent.wait_messages(3) == ["complete", "no newline yet", "next"]


async def test_rename_rotation_while_a_writer_keeps_writing(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "")
    total, rotate_every = 6000, 1000

    def writer() -> None:
        f = open(log, "ab")
        for i in range(total):
            if i and i % rotate_every == 0:
                f.close()
                os.rename(log, tmp_path / f"app.log.{i // rotate_every}")  # logrotate `create`: rename, new file
                f = open(log, "ab")
            f.write(f"line {i:06d}\n".encode())
            if i % 100 == 0:
                f.flush()
        f.close()

    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")], rotate_wait="500ms")) as agent:
        thread = threading.Thread(target=writer)
        thread.start()
        await asyncio.to_thread(thread.join)
        got = await agent.wait_messages(total, timeout=30)
        # nothing more comes: the rotated files are finished, not read again
        await async_wait_for(lambda: not any(t.orphaned for t in agent.file_input.tails.values()), timeout=10,
                             what="rotated files finished")
    got = agent.messages()
    assert sorted(got) == [f"line {i:06d}" for i in range(total)]
    assert len(got) == total
    assert all(r["path"] == str(log) for r in agent.records())


async def test_copytruncate_starts_again_at_zero_and_is_counted(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, lines("old", 0, 200))
    before = counter("logagent_file_rotations_total", input="files", kind="truncate")
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")])) as agent:
        await agent.wait_messages(200)
        shutil.copyfile(log, tmp_path / "app.log.1")
        os.truncate(log, 0)
        await async_wait_for(lambda: counter("logagent_file_rotations_total", input="files", kind="truncate")
                             > before, what="truncation seen")
        write(log, lines("new", 0, 50))
        got = await agent.wait_messages(250)
    assert got == [f"old {i}" for i in range(200)] + [f"new {i}" for i in range(50)]


async def test_copytruncate_rewritten_past_the_offset_is_still_seen(tmp_path: Path) -> None:
    """Truncated and written beyond our offset between two looks: the size never shrank; the head did."""
    log = tmp_path / "app.log"
    write(log, lines("old", 0, 10))
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")])) as agent:
        await agent.wait_messages(10)
        with open(log, "r+b") as f:  # truncate and refill in one go, longer than before
            f.truncate(0)
            f.write(lines("newer", 0, 30).encode())
        got = await agent.wait_messages(40)
    assert got == [f"old {i}" for i in range(10)] + [f"newer {i}" for i in range(30)]


async def test_a_file_deleted_while_being_read_is_drained(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    n = 200_000
    write(log, lines("row", 0, n))
    # small batches and one unacknowledged batch at a time: reading is held back by the output
    limits = {"batch_max_records": 500, "output_max_unacked_batches": 1, "queue_batches": 1,
              "output_queue_batches": 1}
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")], limits=limits,
                                            rotate_wait="300ms", read_buffer="64KiB")) as agent:
        await agent.wait_messages(1)
        # the precondition, checked and acted on in one step of the loop the agent runs in: the tailer has not
        # read the file to its end when it is deleted
        tails = list(agent.file_input.tails.values())
        assert len(tails) == 1 and tails[0].read_offset < log.stat().st_size
        os.unlink(log)
        got = await agent.wait_messages(n, timeout=60)
        await async_wait_for(lambda: not agent.file_input.tails, what="deleted file closed")
        await async_wait_for(lambda: not [k for k in agent.file_input.tracker.committed if k != "_started"],
                             what="position of the deleted file forgotten")
    assert got == [f"row {i}" for i in range(n)]


async def test_a_thousand_files(tmp_path: Path) -> None:
    dirs = [tmp_path / f"d{i}" for i in range(10)]
    for d in dirs:
        d.mkdir()
    files = [d / f"f{j}.log" for d in dirs for j in range(100)]
    for i, f in enumerate(files):
        write(f, lines(f"f{i}", 0, 3))
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "d*" / "*.log")])) as agent:
        await agent.wait_messages(3000, timeout=60)
        assert len(agent.file_input.tails) == 1000
        for i, f in enumerate(files):
            write(f, lines(f"f{i}", 3, 4))
        await agent.wait_messages(4000, timeout=60)
    by_file: dict[str, list[str]] = {}
    for r in agent.records():
        by_file.setdefault(r["path"], []).append(r["message"])
    assert len(by_file) == 1000
    for i, f in enumerate(files):
        assert by_file[str(f)] == [f"f{i} {k}" for k in range(4)]


async def test_a_new_file_is_found_within_a_second_by_inotify(tmp_path: Path) -> None:
    # polling every minute: only the directory watch can find the file in time
    doc = agent_config(tmp_path, [str(tmp_path / "*.log")])
    doc["inputs"][0]["poll_interval"] = "60s"
    async with Agent(tmp_path, doc) as agent:
        write(tmp_path / "new.log", "hello\n")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await agent.wait_messages(1, timeout=5)
        assert loop.time() - t0 < 1.0
        write(tmp_path / "new.log", "again\n")
        assert await agent.wait_messages(2, timeout=5) == ["hello", "again"]


async def test_a_file_created_and_rotated_between_two_scans_is_read(tmp_path: Path) -> None:
    doc = agent_config(tmp_path, [str(tmp_path / "*.log")])
    doc["inputs"][0]["poll_interval"] = "60s"
    async with Agent(tmp_path, doc) as agent:
        write(tmp_path / "quick.log", lines("q", 0, 5))
        os.rename(tmp_path / "quick.log", tmp_path / "quick.log.20240101-000000")
        got = await agent.wait_messages(5, timeout=10)
    assert got == [f"q {i}" for i in range(5)]
    assert {r["path"] for r in agent.records()} == {str(tmp_path / "quick.log")}


async def test_symlinked_container_logs_follow_kubelet_rotation(tmp_path: Path) -> None:
    pod_dir = tmp_path / "pods" / "default_web-1_0123-abcd" / "nginx"
    pod_dir.mkdir(parents=True)
    links = tmp_path / "containers"
    links.mkdir()
    real = pod_dir / "0.log"
    write(real, lines("c", 0, 10))
    link = links / "web-1_default_nginx-0123456789abcdef.log"
    link.symlink_to(real)
    # not under /var/log: the links' target tree is named (the input never follows a link out of its roots)
    async with Agent(tmp_path, agent_config(tmp_path, [str(links / "*.log")], rotate_wait="300ms",
                                            symlink_targets=[str(tmp_path / "pods")])) as agent:
        await agent.wait_messages(10)
        write(real, lines("c", 10, 15))
        await agent.wait_messages(15)
        # kubelet rotation: 0.log -> 0.log.<timestamp>, new 0.log; the symlink keeps pointing at 0.log
        write(real, lines("c", 15, 20))
        os.rename(real, pod_dir / "0.log.20240514-091200")
        write(real, lines("c", 20, 30), mode="w")
        got = await agent.wait_messages(30)
    assert got == [f"c {i}" for i in range(30)]
    assert {r["path"] for r in agent.records()} == {str(link)}


async def test_read_from_tail_applies_to_the_first_start_only(tmp_path: Path) -> None:
    old = tmp_path / "old.log"
    write(old, lines("before", 0, 5))
    doc = agent_config(tmp_path, [str(tmp_path / "*.log")], read_from="tail")
    async with Agent(tmp_path, doc) as agent:
        await async_wait_for(lambda: len(agent.file_input.tails) == 1, what="file followed")
        write(old, "after 0\n")
        write(tmp_path / "later.log", "later 0\n")  # appears after the start: read from its beginning
        got = await agent.wait_messages(2)
    assert sorted(got) == ["after 0", "later 0"]
    write(old, "while down\n")
    async with Agent(tmp_path, doc) as agent:
        got = await agent.wait_messages(3)
    assert sorted(got) == ["after 0", "later 0", "while down"]


async def test_restart_finishes_a_file_rotated_while_the_agent_was_down(tmp_path: Path) -> None:
    pod_dir = tmp_path / "pods" / "ns_pod_uid" / "app"
    pod_dir.mkdir(parents=True)
    log = pod_dir / "0.log"
    write(log, lines("x", 0, 10))
    doc = agent_config(tmp_path, [str(tmp_path / "pods" / "*" / "*" / "*.log")])
    async with Agent(tmp_path, doc) as agent:
        await agent.wait_messages(10)
    # while down: more lines, then kubelet renames the file out of the glob and starts a new one
    write(log, lines("x", 10, 15))
    os.rename(log, pod_dir / "0.log.20240514-091200")
    write(log, lines("y", 0, 3))
    async with Agent(tmp_path, doc) as agent:
        got = await agent.wait_messages(18)
        await async_wait_for(lambda: not any(t.orphaned for t in agent.file_input.tails.values()), timeout=15,
                             what="rotated file finished")
    assert sorted(got) == sorted([f"x {i}" for i in range(15)] + [f"y {i}" for i in range(3)])
    assert len(got) == 18


async def test_positions_are_stored_only_after_acknowledgement(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, lines("p", 0, 4))
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")])) as agent:
        await agent.wait_messages(4)
        await async_wait_for(lambda: _stored_offsets(tmp_path) == [os.path.getsize(log)],
                             what="acknowledged offset stored")


def _stored_offsets(tmp_path: Path) -> list[int]:
    store = CheckpointStore(tmp_path / "state", readonly=True)
    try:
        return [v["offset"] for _, k, v, _ in store.load_all() if k != "_started"]
    finally:
        store._db.close()


async def test_positions_of_rotated_files_go_when_rotation_deletes_them(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, lines("a", 0, 5))
    doc = agent_config(tmp_path, [str(tmp_path / "*.log")], rotate_wait="200ms")
    async with Agent(tmp_path, doc) as agent:
        await agent.wait_messages(5)
        for n in range(1, 4):
            os.rename(log, tmp_path / f"app.log.{n}")
            write(log, lines(f"r{n}", 0, 5), mode="w")
            await agent.wait_messages(5 + 5 * n)
        tracker = agent.file_input.tracker
        await async_wait_for(lambda: not any(t.orphaned for t in agent.file_input.tails.values()),
                             what="rotated files finished")
        assert len([k for k in tracker.committed if k != "_started"]) == 4  # kept while the files exist
        for n in range(1, 4):
            os.unlink(tmp_path / f"app.log.{n}")
        live = f"{log.stat().st_dev}:{log.stat().st_ino}"
        await async_wait_for(lambda: [k for k in tracker.committed if k != "_started"] == [live],
                             what="positions of deleted rotated files forgotten")
    assert sorted(agent.messages()) == sorted([f"a {i}" for i in range(5)]
                                              + [f"r{n} {i}" for n in range(1, 4) for i in range(5)])
