"""sd_notify against a real NOTIFY_SOCKET: the test binds the AF_UNIX datagram socket systemd would, runs the agent
with NOTIFY_SOCKET / WATCHDOG_USEC set, and reads what arrives — READY, WATCHDOG, RELOADING around a SIGHUP,
STOPPING on SIGTERM, in that order."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading

import pytest
import yaml

from logagent.sdnotify import Notifier, feed_watchdog, send_datagram, watchdog_interval
from tests.helpers import async_wait_for, wait_for
from tests.ops_support import Agent, read_jsonl, write_lines


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; every datagram is one notification message."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    @property
    def env_value(self) -> str:
        if isinstance(self.address, bytes):
            return "@" + self.address[1:].decode()
        return self.address

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            with self._lock:
                self.messages.append(fields)

    def kinds(self) -> list[str]:
        """The lifecycle word of each message in arrival order (READY, WATCHDOG, RELOADING, STOPPING, STATUS)."""
        with self._lock:
            out = []
            for m in self.messages:
                for key in ("RELOADING", "STOPPING", "READY", "WATCHDOG"):
                    if m.get(key) == "1":
                        out.append(key)
                        break
                else:
                    out.append("STATUS" if "STATUS" in m else "?")
            return out

    def close(self) -> None:
        self._closed = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


def collapse(kinds: list[str]) -> list[str]:
    """Consecutive repeats folded: the watchdog ticks any number of times between lifecycle messages."""
    out: list[str] = []
    for k in kinds:
        if not out or out[-1] != k:
            out.append(k)
    return out


def test_agent_reports_ready_watchdog_reloading_and_stopping_in_order(tmp_path, notify_socket):
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "http": {"enabled": False},
        "inputs": [{"type": "file", "name": "app", "paths": [str(logs / "*.log")]}],
        "outputs": [{"type": "file", "name": "sink", "path": str(out)}],
    }))
    # WATCHDOG_USEC=1s: the agent pings every 0.5s (half of it, as sd_watchdog_enabled(3) advises).
    agent = Agent(config, tmp_path, env={"NOTIFY_SOCKET": notify_socket.env_value, "WATCHDOG_USEC": "1000000"})
    try:
        wait_for(lambda: "READY" in notify_socket.kinds(), 20, 0.05, "READY=1")
        wait_for(lambda: "WATCHDOG" in notify_socket.kinds()[notify_socket.kinds().index("READY"):], 20, 0.05,
                 "WATCHDOG=1 after READY=1")
        # READY means the pipeline runs: a line written now is shipped.
        write_lines(logs / "a.log", ["after ready"])
        wait_for(lambda: [r["message"] for r in read_jsonl(out)] == ["after ready"], 20, 0.05, "the line shipped")

        agent.signal(signal.SIGHUP)
        wait_for(lambda: "RELOADING" in notify_socket.kinds()
                 and "READY" in notify_socket.kinds()[notify_socket.kinds().index("RELOADING"):], 20, 0.05,
                 "RELOADING=1 then READY=1")
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(30) == 0
    finally:
        agent.stop()
    wait_for(lambda: "STOPPING" in notify_socket.kinds(), 10, 0.05, "STOPPING=1")

    lifecycle = [k for k in collapse(notify_socket.kinds()) if k != "WATCHDOG"]
    assert lifecycle == ["READY", "RELOADING", "READY", "STOPPING"]
    kinds = notify_socket.kinds()
    assert "WATCHDOG" not in kinds[: kinds.index("READY")], "no watchdog ping before READY"
    reloading = next(m for m in notify_socket.messages if m.get("RELOADING") == "1")
    # systemd >= 253 needs MONOTONIC_USEC with RELOADING=1 to match the reload to its request.
    assert int(reloading["MONOTONIC_USEC"]) > 0
    ready = [m for m in notify_socket.messages if m.get("READY") == "1"]
    assert ready[0]["STATUS"].startswith("running: 1 inputs, 1 outputs")
    assert ready[1]["STATUS"] == "config reloaded"
    assert agent.logged("config reloaded")


@pytest.mark.parametrize("use_systemd", [True, False], ids=["systemd-python", "datagram"])
def test_both_backends_deliver_to_path_and_abstract_sockets(tmp_path, monkeypatch, use_systemd):
    if use_systemd:
        pytest.importorskip("systemd.daemon")
    for address in (str(tmp_path / "n.sock"), f"\0logagent-test-{os.getpid()}-{use_systemd}".encode()):
        sock = NotifySocket(address)
        try:
            monkeypatch.setenv("NOTIFY_SOCKET", sock.env_value)
            notifier = Notifier(use_systemd=use_systemd)
            assert notifier.backend == ("systemd-python" if use_systemd else "datagram")
            assert notifier.ready("up") and notifier.watchdog() and notifier.reloading() and notifier.stopping()
            wait_for(lambda: len(sock.messages) == 4, 10, 0.02, "four notifications")
            assert sock.kinds() == ["READY", "WATCHDOG", "RELOADING", "STOPPING"]
            assert sock.messages[0] == {"READY": "1", "STATUS": "up"}
        finally:
            sock.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert notifier.ready() is False and notifier.watchdog() is False
    assert send_datagram("READY=1") is False


def test_a_vanished_socket_is_warned_about_once_and_never_raises(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    notifier = Notifier(use_systemd=False)
    assert notifier.watchdog() is False and notifier.watchdog() is False
    assert [r.getMessage() for r in caplog.records if r.name == "logagent.sdnotify"] == ["sd_notify failed"]


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_our_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval() is None


async def test_watchdog_is_silent_while_unhealthy_so_systemd_restarts_the_agent(tmp_path, monkeypatch):
    sock = NotifySocket(str(tmp_path / "wd.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", sock.env_value)
    state = {"ok": False, "checks": 0}

    def health() -> tuple[bool, str]:
        state["checks"] += 1
        return state["ok"], "ok" if state["ok"] else "event loop stalled"

    task = asyncio.create_task(feed_watchdog(Notifier(use_systemd=False), 0.01, health))
    try:
        await async_wait_for(lambda: state["checks"] >= 20, 10, 0.01, "20 unhealthy checks")
        assert sock.kinds() == []
        state["ok"] = True
        await async_wait_for(lambda: "WATCHDOG" in sock.kinds(), 10, 0.01, "WATCHDOG=1 once healthy")
    finally:
        task.cancel()
        sock.close()


async def test_a_stalled_event_loop_makes_the_pipeline_unhealthy_until_it_runs_again(tmp_path):
    """health() (behind /healthz and the watchdog) reads the loop heartbeat; a loop blocked longer than
    `stall_timeout` is unhealthy, and healthy again once the heartbeat ticks."""
    import time

    from logagent.config import parse_config
    from logagent.pipeline import Pipeline

    (tmp_path / "a.log").write_text("")
    cfg = parse_config({
        "state_dir": str(tmp_path / "state"),
        "http": {"enabled": False, "stall_timeout": "1s"},
        "inputs": [{"type": "file", "name": "app", "paths": [str(tmp_path / "*.log")]}],
        "outputs": [{"type": "file", "name": "sink", "path": str(tmp_path / "out.jsonl")}],
    }, "test")
    pipeline = Pipeline(cfg)
    await pipeline.ops.start()
    await pipeline.start()
    try:
        assert pipeline.ops.health() == (True, "ok")
        time.sleep(1.5)  # the stall under test: a synchronous call blocking the event loop
        ok, reason = pipeline.ops.health()
        assert ok is False and reason.startswith("event loop stalled"), reason
        await async_wait_for(lambda: pipeline.ops.health()[0], 10, 0.05, "the heartbeat to tick again")
    finally:
        pipeline.request_stop()
        await pipeline.shutdown()
        await pipeline.ops.stop()
