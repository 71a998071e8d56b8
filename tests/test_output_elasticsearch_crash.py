"""Crash safety end to end: the real agent (`python -m logagent run`) tails a file into the `_bulk` receiver, is
killed with SIGKILL mid-stream and restarted; deterministic ids make the replay of unacknowledged lines land on
the documents already written (409 on create), so the receiver ends with exactly one document per source line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import yaml

from tests.helpers import async_wait_for
from tests.receivers.es import BulkReceiver

LINES = 6000


def _agent(cfg_path: str, log_path: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "logagent", "run", "-c", cfg_path],
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "ab"), cwd=os.getcwd())


async def test_kill_9_mid_stream_then_restart_leaves_one_document_per_line(tmp_path) -> None:
    rec = await BulkReceiver().start()
    # Every request answers after 50 ms: the run is still shipping when it is killed.
    rec.plan = [("slow", 0.05)] * 10_000
    log = tmp_path / "app.log"
    log.write_text("".join(f"event {i:06d} user=u{i % 97} action=checkout\n" for i in range(LINES)))
    cfg = {"state_dir": str(tmp_path / "state"), "checkpoint_interval": "20ms", "grace_period": "2s",
           "http": {"enabled": False},
           "inputs": [{"type": "file", "name": "app", "paths": [str(log)], "tag": "app"}],
           "outputs": [{"type": "elasticsearch", "name": "es", "url": rec.url, "index": "logs-crash",
                        "batch": {"max_records": 100, "max_wait": "20ms"}, "max_in_flight": 2,
                        "retry": {"initial_backoff": "20ms", "max_backoff": "200ms"}}]}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    agent_log = str(tmp_path / "agent.log")

    first = _agent(str(cfg_path), agent_log)
    try:
        await async_wait_for(lambda: len(rec.docs) >= LINES // 4 or first.poll() is not None, timeout=25,
                             what="first run shipping")
        assert first.poll() is None, open(agent_log).read()[-2000:]
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    stored_at_kill = len(rec.docs)
    assert 0 < stored_at_kill < LINES  # killed mid-stream

    second = _agent(str(cfg_path), agent_log)
    try:
        await async_wait_for(lambda: len(rec.docs) == LINES or second.poll() is not None, timeout=25,
                             what="restart catches up")
        assert second.poll() is None, open(agent_log).read()[-2000:]
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(10)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait()
    await rec.stop()

    messages = sorted(d["message"] for d in rec.docs.values())
    assert messages == [f"event {i:06d} user=u{i % 97} action=checkout" for i in range(LINES)]
    assert rec.auto_docs == []  # every document carried its deterministic id
    # whatever was replayed after the restart hit existing ids (409), never a second copy
    assert rec.items_seen == LINES + rec.conflicts
