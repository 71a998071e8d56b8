"""copytruncate done right, into the Elasticsearch-faithful receiver: the copy is found at once and finished from our
offset (live and after `kill -9`), every truncated generation gets ids of its own, and nothing is lost beyond
logrotate's own window (lines written between its copy and its truncation, which are in neither file)."""

from __future__ import annotations

import asyncio
import gzip
import os
import random
from pathlib import Path
from typing import Any

from logagent import metrics
from logagent.config import parse_config
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for
from tests.loss_support import AgentProcess, CopyTruncate, Stored, TimedReceiver, es_agent_config, kill_loop, line_id
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


async def test_copytruncate_with_kill_9_at_random_moments_loses_nothing_beyond_logrotates_window(
        tmp_path: Path) -> None:
    """logrotate's copytruncate every 1.5 s (5 copies kept) under a writer at 4,000 lines/s, and the real agent
    `kill -9`ed at random moments (each restart at once): every line reaches the receiver except those logrotate
    itself loses (written between its copy and its truncation: in neither file, recorded by the rotator line by
    line), and none is stored twice (replays after a kill are answered 409 on their ids)."""
    rec = await TimedReceiver().start()
    logs = tmp_path / "logs"
    logs.mkdir()
    writer = CopyTruncate(logs, lines=40_000, rate=4000, every=1.5, keep=5)
    agent = AgentProcess(tmp_path, es_agent_config(tmp_path, rec.url, [str(logs / "*.log")], fmt="raw")).start()

    def stored_ids() -> set[str]:
        return {line_id(d["message"]) for d in list(rec.docs.values())}

    try:
        await async_wait_for(agent.started, timeout=30, what="agent started")
        writer.start()

        def caught_up() -> bool:  # within about one second of the writer
            return len(rec.docs) >= writer.written - 4000 - len(writer.window)

        await asyncio.to_thread(kill_loop, agent, 6, lambda: not writer.done.is_set(), random.Random("ct-kill"),
                                0.3, 1.2, caught_up)
        await asyncio.to_thread(writer.join, 60)
        want = set(writer.expected) - writer.window
        try:  # distinct lines, not documents: a line stored twice must not stand in for one never stored
            await async_wait_for(lambda: want <= stored_ids() or not agent.alive(), timeout=45, interval=0.2,
                                 what="every line outside logrotate's window stored")
        except AssertionError:
            pass  # what is missing is reported below, line by line
        assert agent.alive(), agent.log_tail()
    finally:
        code = agent.stop()
        await rec.stop()
    assert code == 0, agent.log_tail()
    stored = Stored.check(rec, writer.expected)
    beyond = [i for i in stored.lost if i not in writer.window]
    assert writer.rotations >= 6 and agent.kills >= 3, (writer.rotations, agent.kills)
    assert beyond == [], Stored(beyond, [], stored.total).summary() + "\n" + agent.log_tail()
    assert stored.duplicated == [], f"{len(stored.duplicated)} lines stored twice, e.g. {stored.duplicated[:5]}"
    assert rec.auto_docs == []
    print(f"copytruncate + kill -9 x{agent.kills}: {stored.total} lines, {writer.rotations} rotations, "
          f"{len(stored.lost)} lost, all in logrotate's window ({len(writer.window)} lines), 0 stored twice, "
          f"{rec.conflicts} replays answered 409")


def _append(path: Path, start: int, n: int) -> int:
    with open(path, "ab") as f:
        f.write("".join(f"L{i:07d} {'y' * 100}\n" for i in range(start, start + n)).encode())
    return start + n


def _logrotate(path: Path, keep: int = 5, compress: bool = False, truncate: bool = True) -> None:
    """logrotate `copytruncate` (+ `compress` with `delaycompress`): the numbered copies shift up (`.2` and older
    gzipped), the file is copied to `.1`, then truncated (unless `truncate` is False: stopped between the two)."""
    d, name = path.parent, path.name

    def numbered(n: int) -> Path:
        plain = d / f"{name}.{n}"
        return plain if plain.exists() or not (d / f"{name}.{n}.gz").exists() else d / f"{name}.{n}.gz"

    for n in range(keep, 0, -1):
        src = numbered(n)
        if not src.exists():
            continue
        if n == keep:
            src.unlink()
            continue
        dest = d / (f"{name}.{n + 1}" + (".gz" if src.suffix == ".gz" else ""))
        os.rename(src, dest)
        if compress and dest.suffix != ".gz":
            with open(dest, "rb") as raw, gzip.open(f"{dest}.gz", "wb") as gz:
                gz.write(raw.read())
            dest.unlink()
    with open(path, "rb") as src_f, open(d / f"{name}.1", "wb") as dst_f:
        dst_f.write(src_f.read())
    if truncate:
        os.truncate(path, 0)


async def test_copytruncate_restart_cases_each_kill_9_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """The agent `kill -9`ed at each step of a copytruncate, and restarted once logrotate has gone on: (a) after the
    copy was made, before the truncation; (b) after the truncation, before it was noticed; (c) while the unread
    tail was being finished from the copy; (d) after logrotate shifted the copies and compressed the older ones;
    (e) down across one copytruncate and the copy of the next.
    The stored position (inode, offset, fingerprint, generation id) is matched against the live file and every
    copy: each line arrives once, the copies of generations already read are not read again under other ids."""
    rec = await TimedReceiver().start()
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    agent = AgentProcess(tmp_path, es_agent_config(tmp_path, rec.url, [str(logs / "*.log")], fmt="raw",
                                                   poll_interval="200ms"))
    n = _append(log, 0, 2000)

    def stored() -> set[str]:
        return {line_id(d["message"]) for d in list(rec.docs.values())}

    async def restart() -> None:
        agent.start()
        await async_wait_for(agent.started, timeout=30, what="agent started")

    async def all_stored(what: str) -> None:
        await async_wait_for(lambda: len(stored()) >= n or not agent.alive(), timeout=30, interval=0.1, what=what)
        assert agent.alive(), agent.log_tail()

    try:
        await restart()
        await all_stored("first lines")
        # (a) killed, then logrotate copies; the agent starts again before the truncation
        agent.kill9()
        n = _append(log, n, 500)  # written while the agent was down: in the file and in the copy
        with open(log, "rb") as src, open(logs / "app.log.1", "wb") as dst:
            dst.write(src.read())
        await restart()
        await all_stored("(a) lines written while down, read from the file")
        os.truncate(log, 0)
        n = _append(log, n, 1000)
        await all_stored("(a) the new generation")
        # (b) killed; more lines, logrotate copies and truncates, the writer goes on; the agent never saw it
        agent.kill9()
        n = _append(log, n, 3000)
        _logrotate(log)
        n = _append(log, n, 500)
        await restart()
        await all_stored("(b) the unread tail from the copy, the new generation from the file")
        # (c) killed while finishing a long unread tail from the copy (behind a slow backend)
        agent.kill9()
        n = _append(log, n, 30_000)
        _logrotate(log)
        rec.plan = [("slow", 0.3)] * 40
        before = len(stored())
        await restart()
        await async_wait_for(lambda: len(stored()) > before + 2000, timeout=30, what="(c) the copy being read")
        agent.kill9()
        rec.plan = []
        await restart()
        await all_stored("(c) the rest of the copy")
        # (d) killed; logrotate shifts the copies, compresses the older ones (delaycompress: `.1` stays plain)
        agent.kill9()
        n = _append(log, n, 1000)
        _logrotate(log, compress=True)
        n = _append(log, n, 200)
        await restart()
        await all_stored("(d) the copy made while down, the new generation")
        # and once more while it runs
        n = _append(log, n, 300)
        await all_stored("before the last rotation")
        _logrotate(log, compress=True)
        n = _append(log, n, 200)
        await all_stored("lines written after the last rotation")
        # (e) killed; logrotate copies and truncates, the writer goes on, logrotate copies again and the agent is
        # back before that second truncation: the older copy is a generation it never saw, the newer one a copy of
        # what the file still holds
        agent.kill9()
        n = _append(log, n, 1000)
        _logrotate(log)
        n = _append(log, n, 800)
        _logrotate(log, truncate=False)
        await restart()
        await all_stored("(e) the generation made while down, and the file's")
        os.truncate(log, 0)
        n = _append(log, n, 300)
        await all_stored("(e) after the second truncation")
    finally:
        code = agent.stop()
        await rec.stop()
    assert code == 0, agent.log_tail()
    check = Stored.check(rec, [f"L{i:07d}" for i in range(n)])
    assert check.lost == [], check.summary() + "\n" + agent.log_tail()
    assert check.duplicated == [], f"{len(check.duplicated)} lines stored twice, e.g. {check.duplicated[:5]}"
    assert sorted(p.name for p in logs.iterdir()) == [
        "app.log", "app.log.1", "app.log.2", "app.log.3", "app.log.4.gz", "app.log.5.gz"]
    assert rec.conflicts > 0  # the kills made the agent send lines again; each was answered 409


def test_a_file_rewritten_between_the_look_and_the_read_is_never_read_as_the_old_generation(tmp_path: Path) -> None:
    """The race a loaded node makes real: the reader looks at the file (size, first bytes), is descheduled, and
    meanwhile logrotate copies and truncates it and the writer writes past our offset; the read that follows gets
    the new generation's bytes at the old one's offsets. They must not be taken under the old generation's ids
    (they would be stored twice, and as many of the old bytes never read): the first bytes are checked after the
    read, the old generation goes on from the copy, the new one from 0. At offset 0 too (rewritten before a byte
    of it was read)."""
    from logagent.checkpoint import CheckpointStore
    from logagent.config import Section
    from logagent.inputs.file.files import Tails
    from logagent.inputs.file.opening import Opener
    from logagent.inputs.file.rotation import Rotation
    from logagent.inputs.file.settings import parse_file_settings
    from logagent.inputs.file.watch import DirectoryWatch
    from logagent.services import Services

    settings = parse_file_settings(Section({"paths": [str(tmp_path / "*.log")]}, "inputs[0]", "test.yaml"))
    tracker = CheckpointStore(tmp_path / "state").tracker("logs")
    for offset_lines in (0, 3):
        log = tmp_path / f"app{offset_lines}.log"
        old = [f"old {i:03d} {'x' * 40}" for i in range(10)]
        log.write_text("".join(line + "\n" for line in old))
        watch = DirectoryWatch(lambda changes: None, lambda reason: None)
        tails = Tails("logs", watch, 64, lambda tail: None)
        opener = Opener("logs", settings, tracker, Services())
        rotation = Rotation("logs", tails, opener, tracker)
        tail = opener.open(str(log))
        assert tail is not None
        tails.add(tail)
        got: list[tuple[str, str | None]] = []
        if offset_lines:
            tail.read(len(old[0]) * offset_lines + offset_lines, 0.0, verify=True)
            got += [(r["message"], tail.source_id) for r in tail.take()[0]]
        assert not rotation.check(tail, os.fstat(tail.fd).st_size, head=False)  # the look: nothing changed
        # descheduled here: copytruncate, and the writer goes on past our offset
        with open(log, "rb") as src, open(tmp_path / f"{log.name}.1", "wb") as dst:
            dst.write(src.read())
        new = [f"new {i:03d} {'y' * 40}" for i in range(20)]
        log.write_text("".join(line + "\n" for line in new))  # truncates, then writes
        assert tail.read(1 << 20, 0.0, verify=True) == 0 and tail.rewritten and not tail.has_pending
        assert rotation.check(tail, os.fstat(tail.fd).st_size, head=False)  # the copy takes the old generation
        copy = next(t for t in tails.tails.values() if t is not tail)
        for t in (copy, tail):
            while t.read(1 << 20, 0.0, verify=t is tail):
                pass
            t.flush_partial(0.0, 0.0, force=True)
            got += [(r["message"], t.source_id) for r in t.take()[0]]
        assert [m for m, _ in got] == old + new
        old_ids = {sid for m, sid in got if m.startswith("old")}
        new_ids = {sid for m, sid in got if m.startswith("new")}
        assert len(old_ids) == 1 and len(new_ids) == 1 and old_ids != new_ids
        tails.close_all()
