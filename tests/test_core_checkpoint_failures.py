"""A full or broken state dir (issue 9, item 5), with the real agent and a real `_bulk` receiver.

- A checkpoint write that fails (the state dir on a tiny tmpfs the test fills up) keeps the positions and retries:
  once space is back they are written, so a `kill -9` right after costs no duplicate at all.
- A full or read-only state dir at start: one line on stderr naming the state dir, exit code 1, no traceback.
- A corrupt `checkpoints.db` is moved aside, logged, counted, and the agent runs (per `read_from`).

The tmpfs tests need root (mount); they skip otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from logagent.checkpoint import CheckpointStore
from tests.helpers import async_wait_for, wait_for
from tests.ops_support import Agent, agent_base_url, http_get, sample, scrape
from tests.receivers.es import BulkReceiver


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted on tmp_path/state (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "state"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem says ENOSPC."""
    path = directory / "filler"
    with open(path, "wb", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass
    return path


def write_lines(path: Path, start: int, n: int) -> None:
    with open(path, "a") as fh:
        fh.write("".join(f"line {i:05d}\n" for i in range(start, start + n)))


def config(tmp_path: Path, url: str, **extra: Any) -> Path:
    cfg = {"state_dir": str(tmp_path / "state"), "checkpoint_interval": "50ms",
           "dead_letter_path": str(tmp_path / "dead-letter.jsonl"), "http": {"address": "127.0.0.1:0"},
           "inputs": [{"type": "file", "name": "app", "paths": [str(tmp_path / "logs" / "*.log")],
                       "poll_interval": "200ms"}],
           "outputs": [{"type": "elasticsearch", "name": "es", "url": url, "index": "logs",
                        "batch": {"max_wait": "50ms"}}], **extra}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def checkpointed(state: Path, log: Path) -> bool:
    """The stored offset of the log file (read as `logagent status` does) is its size."""
    try:
        positions = CheckpointStore(state, readonly=True).load("app")
    except Exception:
        return False
    size = log.stat().st_size
    return any(isinstance(v, dict) and v.get("offset") == size for v in positions.values())


async def test_a_failed_checkpoint_write_keeps_the_positions_and_retries_until_the_disk_has_room(
        tmp_path: Path, tiny_tmpfs: Path) -> None:
    rec = await BulkReceiver().start()
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "app.log"
    write_lines(log, 0, 300)
    cfg = config(tmp_path, rec.url)
    agent = Agent(cfg, tmp_path)
    try:
        base = agent_base_url(agent)
        await async_wait_for(lambda: len(rec.docs) == 300 and checkpointed(tiny_tmpfs, log), 30,
                             what="first lines shipped and checkpointed")
        filler = fill(tiny_tmpfs)
        write_lines(log, 300, 300)  # shipped while no position can be written
        await async_wait_for(lambda: len(rec.docs) == 600, 30, what="lines shipped while the disk is full")
        await async_wait_for(lambda: agent.logged("checkpoint write failed; positions are kept and the write is "
                                                  "retried"), 30, what="the failed write logged")
        status, body = http_get(base + "/readyz")
        assert status == 200 and b'"pipeline:checkpoints":"degraded: writes failing' in body, body
        assert sample(scrape(base), "logagent_component_state", component="checkpoints", kind="pipeline",
                      state="degraded") == 1
        assert not checkpointed(tiny_tmpfs, log)
        filler.unlink()  # room again: the kept positions are written without any new acknowledgement
        await async_wait_for(lambda: checkpointed(tiny_tmpfs, log), 30, what="the kept positions written")
        assert agent.logged("checkpoint writes work again; the kept positions are written")
        assert sample(scrape(base), "logagent_component_state", component="checkpoints", kind="pipeline",
                      state="running") == 1
        agent.proc.kill()  # no graceful flush: only what the retries wrote counts
        agent.stop()

        again = Agent(cfg, tmp_path)
        try:
            agent_base_url(again)
            write_lines(log, 600, 1)
            await async_wait_for(lambda: len(rec.docs) == 601, 30, what="the restarted agent ships the next line")
        finally:
            assert again.stop() == 0
    finally:
        if agent.proc.poll() is None:
            agent.stop()
        await rec.stop()
    assert rec.items_seen == 601 and rec.conflicts == 0  # nothing sent twice


def _run_once(cfg: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logagent", "run", "-c", str(cfg)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, check=False)


def test_a_full_state_dir_at_start_is_one_line_naming_it_and_exit_1(tmp_path: Path, tiny_tmpfs: Path) -> None:
    (tmp_path / "logs").mkdir()
    cfg = config(tmp_path, "http://127.0.0.1:9")
    fill(tiny_tmpfs)
    r = _run_once(cfg, tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last == f"logagent: state dir {tiny_tmpfs}: cannot open checkpoints.db: database or disk is full", \
        r.stderr


def test_a_full_state_dir_with_an_existing_store_at_start_is_one_line_and_exit_1(tmp_path: Path,
                                                                                 tiny_tmpfs: Path) -> None:
    (tmp_path / "logs").mkdir()
    cfg = config(tmp_path, "http://127.0.0.1:9")
    store = CheckpointStore(tiny_tmpfs)
    store.tracker("app").set("file:1", {"offset": 10})
    store.close()  # the last connection removes the -wal/-shm files: opening again must create them
    fill(tiny_tmpfs)
    r = _run_once(cfg, tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"logagent: state dir {tiny_tmpfs}: cannot open "
                                                        "checkpoints.db: "), r.stderr


def test_a_read_only_state_dir_at_start_is_one_line_naming_it_and_exit_1(tmp_path: Path, tiny_tmpfs: Path) -> None:
    (tmp_path / "logs").mkdir()
    cfg = config(tmp_path, "http://127.0.0.1:9")
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    r = _run_once(cfg, tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"logagent: state dir {tiny_tmpfs}: cannot open checkpoints.db: "), r.stderr


async def test_a_corrupt_checkpoint_db_is_moved_aside_counted_and_the_agent_runs(tmp_path: Path) -> None:
    rec = await BulkReceiver().start()
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "app.log"
    write_lines(log, 0, 100)
    state = tmp_path / "state"
    state.mkdir()
    garbage = b"this is not an SQLite database\n" * 200
    (state / "checkpoints.db").write_bytes(garbage)
    status = subprocess.run([sys.executable, "-m", "logagent", "status", "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (status.returncode, status.stderr) == (
        1, f"logagent: cannot read the checkpoint store {state / 'checkpoints.db'}: file is not a database\n")
    cfg = config(tmp_path, rec.url)
    agent = Agent(cfg, tmp_path)
    try:
        base = agent_base_url(agent)
        # no positions: the file, present at this "first" start, is read from its head (read_from: head)
        await async_wait_for(lambda: len(rec.docs) == 100 and checkpointed(state, log), 30,
                             what="lines shipped and checkpointed in a fresh store")
        assert sample(scrape(base), "logagent_errors_total", component="checkpoints",
                      kind="corrupt_moved_aside") == 1
    finally:
        assert agent.stop() == 0
        await rec.stop()
    aside = [p for p in state.iterdir() if p.name.startswith("checkpoints.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == garbage  # kept for inspection, unchanged
    entry = wait_for(lambda: agent.logged("checkpoint database is corrupt; moved aside and starting with no "
                                          "positions: every input starts as on its first start (read_from), files "
                                          "already shipped may be shipped again"), 5, what="the loud log")
    assert entry[0]["level"] == "error" and entry[0]["moved_to"] == str(aside[0])
    assert "Traceback" not in agent.stderr_path.read_text()
