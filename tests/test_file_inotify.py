"""inotify as a scarce resource: the per-user instance budget (`fs.inotify.max_user_instances`, 128 by default) is
shared by every process of the user. The tests run the real agent in a user namespace of its own whose instance
limit they set (`/proc/sys/user/max_inotify_instances` is per user namespace: the global sysctl is never touched):
with none allowed it falls back to polling and says so (log, /readyz `degraded`, `logagent_input_degraded`); with
one allowed it follows 500 pod directories, kubelet layout, on that one. Skipped where user namespaces are off."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.helpers import async_wait_for
from tests.loss_support import AgentProcess, KubeletNode, TimedReceiver, es_agent_config


def _userns_limits() -> bool:
    try:
        r = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                            "echo 1 > /proc/sys/user/max_inotify_instances"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _userns_limits(), reason="needs unprivileged user namespaces (unshare --user)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> bytes:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as e:
        return bytes(e.read())


def _inotify_fds(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                n += 1
        except OSError:
            continue
    return n


async def test_no_inotify_instance_left_records_flow_by_polling_and_health_says_degraded(tmp_path: Path) -> None:
    rec = await TimedReceiver().start()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("".join(f"before {i}\n" for i in range(100)))
    port = _free_port()
    doc = es_agent_config(tmp_path, rec.url, [str(logs / "*.log")], fmt="raw", poll_interval="1s")
    doc["http"] = {"address": f"127.0.0.1:{port}"}
    agent = AgentProcess(tmp_path, doc, inotify_instances=0).start()
    try:
        await async_wait_for(lambda: len(rec.docs) == 100 or not agent.alive(), timeout=30, what="existing lines")
        assert agent.alive(), agent.log_tail()
        # a new file and more lines: only the poll can find them now
        (logs / "new.log").write_text("".join(f"later {i}\n" for i in range(50)))
        with open(logs / "app.log", "a") as f:
            f.write("".join(f"after {i}\n" for i in range(50)))
        await async_wait_for(lambda: len(rec.docs) == 200, timeout=30, what="lines found by polling")
        ready = orjson.loads(_get(port, "/readyz"))
        metrics = _get(port, "/metrics").decode()
        assert agent.proc is not None and _inotify_fds(agent.proc.pid) == 0
    finally:
        agent.stop()
        await rec.stop()
    assert "input:logs" in ready.get("degraded", {}), ready
    assert "inotify" in ready["degraded"]["input:logs"]
    assert 'logagent_input_degraded{input="logs",reason="inotify"} 1.0' in metrics
    log = agent.log_path.read_text()
    assert log.count("inotify unavailable; falling back to stat polling") == 1  # said once


async def test_500_pod_directories_are_followed_on_one_inotify_instance(tmp_path: Path) -> None:
    rec = await TimedReceiver().start()
    node = KubeletNode(tmp_path / "node", containers=500, lines=0)
    node.create()
    for c in node.containers:
        c.log.write_text(f"2024-05-14T09:12:05.000000000Z stdout F c{c.n}-0000000 first\n")
    port = _free_port()
    # polling once a minute: within the test's deadlines only inotify can see the new lines and files
    doc = es_agent_config(tmp_path, rec.url, [node.glob], poll_interval="60s")
    doc["http"] = {"address": f"127.0.0.1:{port}"}
    agent = AgentProcess(tmp_path, doc, inotify_instances=1).start()
    try:
        await async_wait_for(lambda: len(rec.docs) == 500 or not agent.alive(), timeout=60, what="first lines")
        assert agent.alive(), agent.log_tail()
        for c in node.containers:
            with open(c.log, "a") as f:
                f.write(f"2024-05-14T09:12:06.000000000Z stdout F c{c.n}-0000001 second\n")
        for c in node.containers[:100]:  # kubelet rotation: a new 0.log behind the unchanged link
            os.rename(c.log, c.log.with_name("0.log.20240514-091207"))
            c.log.write_text(f"2024-05-14T09:12:07.000000000Z stdout F c{c.n}-0000002 third\n")
        await async_wait_for(lambda: len(rec.docs) == 1100, timeout=30, what="new lines and rotated files")
        assert agent.proc is not None
        instances = _inotify_fds(agent.proc.pid)
        ready = orjson.loads(_get(port, "/readyz"))
    finally:
        agent.stop()
        await rec.stop()
    assert instances == 1
    assert "degraded" not in ready, ready
    assert agent.log_path.read_text().count("inotify unavailable") == 0
