"""The agent as an operator runs it: `logagent status` while it runs, SIGTERM within the grace period, a second
signal that exits at once, and a restart that picks up exactly what was not acknowledged."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.filetail import agent_config, read_output, start_subprocess_agent
from tests.helpers import wait_for


def dead_port() -> int:
    """A port nothing listens on: an output pointed there can never deliver (connection refused, retried)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status(state_dir: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "logagent", "status", "--state-dir", str(state_dir), "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def undeliverable(tmp_path: Path, grace: str) -> dict[str, Any]:
    doc = agent_config(tmp_path, [str(tmp_path / "logs" / "*.log")], top={"grace_period": grace})
    doc["outputs"] = [{"type": "elasticsearch", "url": f"http://127.0.0.1:{dead_port()}",
                       "retry": {"initial_backoff": "50ms", "max_backoff": "200ms"}}]
    return doc


def test_status_shows_offset_size_and_lag_while_the_agent_runs(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    size = log.stat().st_size
    agent = start_subprocess_agent(tmp_path, undeliverable(tmp_path, "1s"))
    try:
        rows = wait_for(lambda: [r for r in status(tmp_path / "state") if r.get("path") == str(log)]
                        if (tmp_path / "state" / "checkpoints.db").exists() else None,
                        timeout=30, what="the file tracked")
        assert rows[0]["offset"] == 0 and rows[0]["size"] == size and rows[0]["lag_bytes"] == size
    finally:
        agent.send_signal(signal.SIGTERM)
        # the backend never answers: the grace period ends the shutdown, cleanly
        assert agent.wait(timeout=30) == 0
    assert [r["offset"] for r in status(tmp_path / "state") if r.get("path") == str(log)] == [0]
    # the next run, with a working output, delivers everything and the lag goes to 0
    doc = agent_config(tmp_path, [str(logs / "*.log")])
    agent = start_subprocess_agent(tmp_path, doc, log_name="agent2.log")
    try:
        wait_for(lambda: len(read_output(tmp_path / "out.jsonl")) == 100, timeout=30, what="all delivered")
        wait_for(lambda: [r["lag_bytes"] for r in status(tmp_path / "state") if r.get("path") == str(log)] == [0],
                 timeout=30, what="lag 0")
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
    assert [r["message"] for r in read_output(tmp_path / "out.jsonl")] == [f"line {i}" for i in range(100)]


def test_a_second_signal_exits_at_once_with_consistent_positions(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("".join(f"line {i}\n" for i in range(50)))
    agent = start_subprocess_agent(tmp_path, undeliverable(tmp_path, "60s"))
    try:
        wait_for(lambda: "pipeline started" in (tmp_path / "agent.log").read_text(), timeout=30,
                 what="agent started")
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in (tmp_path / "agent.log").read_text(), timeout=10,
                 what="graceful shutdown begun")
        t0 = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=10) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 5  # not the 60 s grace period
    finally:
        if agent.poll() is None:
            agent.kill()
    assert "second signal: exiting at once" in (tmp_path / "agent.log").read_text()
    # nothing was acknowledged, so nothing was checkpointed: the next run reads everything
    doc = agent_config(tmp_path, [str(logs / "*.log")])
    agent = start_subprocess_agent(tmp_path, doc, log_name="agent2.log")
    try:
        wait_for(lambda: len(read_output(tmp_path / "out.jsonl")) >= 50, timeout=30, what="all delivered")
    finally:
        agent.send_signal(signal.SIGINT)
        assert agent.wait(timeout=30) == 0
    assert [r["message"] for r in read_output(tmp_path / "out.jsonl")] == [f"line {i}" for i in range(50)]
