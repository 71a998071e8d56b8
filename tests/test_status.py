"""`logagent status` after a real run: internal rows hidden, a file rotated away while the agent was down shows
where it is now and its unread bytes, files the globs match but the agent never opened are listed (with -c), and
a database that is not one is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers import wait_for
from tests.ops_support import Agent, read_jsonl, write_lines


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logagent", "status", *args], capture_output=True, text=True,
                          timeout=60)


def _rows(*args: str) -> list[dict]:
    proc = _status("--json", *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_status_shows_rotated_unread_bytes_and_files_not_opened_and_hides_internal_rows(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    app = logs / "app.log"
    shipped = write_lines(app, [f"line {i}" for i in range(20)])
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "http": {"enabled": False},
        "inputs": [{"type": "file", "name": "app", "paths": [str(logs / "*.log")]}],
        "outputs": [{"type": "file", "name": "out", "path": str(tmp_path / "out.jsonl")}],
    }))
    agent = Agent(config, tmp_path)
    try:
        wait_for(lambda: len(read_jsonl(tmp_path / "out.jsonl")) == 20, 30, 0.05, "20 records shipped")
    finally:
        assert agent.stop() == 0
    state = str(tmp_path / "state")
    [row] = _rows("--state-dir", state)
    assert (row["input"], row["path"], row["offset"], row["size"], row["lag_bytes"]) == ("app", str(app), shipped,
                                                                                         shipped, 0)

    # while the agent is down: 3 more lines, then logrotate renames the file and a new one starts
    unread = write_lines(app, ["late 1", "late 2", "late 3"])
    os.rename(app, logs / "app.log.1")
    fresh = write_lines(app, ["in the new file"])
    rows = _rows("-c", str(config))  # the state dir comes from the config
    assert [r["key"] for r in rows if r["key"].startswith("_")] == []
    rotated, new = rows
    assert rotated["path"] == str(app) and rotated["rotated_to"] == str(logs / "app.log.1")
    assert (rotated["offset"], rotated["size"], rotated["lag_bytes"]) == (shipped, shipped + unread, unread)
    assert (new["path"], new["offset"], new["size"], new["lag_bytes"], new["note"]) == (
        str(app), None, fresh, fresh, "not opened yet")
    st = app.stat()
    assert new["key"] == f"{st.st_dev}:{st.st_ino}"

    table = _status("-c", str(config))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["INPUT", "OFFSET", "SIZE", "LAG", "PATH", "/", "POSITION"]
    assert lines[1].split() == ["app", str(shipped), str(shipped + unread), str(unread), str(app), "(rotated", "to",
                                f"{logs / 'app.log.1'})"]
    assert lines[2].split() == ["app", "-", str(fresh), str(fresh), str(app), "(not", "opened", "yet)"]
    assert "_started" not in table.stdout


def test_a_corrupt_database_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "checkpoints.db").write_bytes(b"this is not an sqlite database, it was overwritten\n" * 100)
    proc = _status("--state-dir", str(tmp_path))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == (f"logagent: cannot read the checkpoint store {tmp_path}/checkpoints.db: "
                           "file is not a database\n")


def test_no_store_is_reported(tmp_path: Path) -> None:
    proc = _status("--state-dir", str(tmp_path))
    assert (proc.returncode, proc.stderr) == (1, f"logagent: no checkpoint store in {tmp_path}\n")
