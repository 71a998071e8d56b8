"""Helpers for the operations tests: run a real agent as a subprocess, scrape it, read what it shipped.

The agent under test is `python -m logagent run -c CFG` with the real `file` input and outputs: a separate process,
so signals, sd_notify, the pidfile and the HTTP server are exercised exactly as in production.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import wait_for

REPO = Path(__file__).resolve().parent.parent


def agent_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "logagent", "run", "-c", str(config)]


class Agent:
    """A `logagent run` subprocess with its stderr (JSON self-logs) collected to a file."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None,
                 argv: list[str] | None = None) -> None:
        self.config = config
        self.stderr_path = workdir / "agent.stderr"
        self._stderr = open(self.stderr_path, "wb")
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(argv or agent_argv(config), stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     env=full_env, cwd=str(workdir))

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"msg": line.decode("utf-8", "replace")})
        return out

    def logged(self, msg: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("msg") == msg]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop_when_exited(self, timeout: float = 30.0) -> int:
        """Wait for the agent to exit on its own (a start that fails); kill it if it does not."""
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._stderr.close()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._stderr.close()
        return rc


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def wait_http_up(base: str, timeout: float = 20.0) -> None:
    wait_for(lambda: http_get(base + "/healthz")[0] == 200, timeout, 0.05, f"{base}/healthz to answer 200")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # a line being written right now is not complete yet
    return [orjson.loads(line) for line in data[:end].splitlines() if line]


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics parsed with prometheus_client's own text parser: {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(base + "/metrics")
    assert status == 200, status
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def write_lines(path: Path, lines: list[str]) -> int:
    data = "".join(f"{line}\n" for line in lines).encode()
    with open(path, "ab") as fh:
        fh.write(data)
    return len(data)


def thread_names(pid: int) -> list[str]:
    """The names of a process's threads (/proc/<pid>/task/*/comm); a thread that ends meanwhile is left out."""
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except OSError:
            pass
    return names


def agent_base_url(agent: Agent, timeout: float = 20.0) -> str:
    """The address the agent logged after binding (port 0 in the config: the kernel picked one)."""
    entry = wait_for(lambda: agent.logged("http server listening") or agent.proc.poll() is not None, timeout,
                     0.05, "the agent to log its http address")
    assert agent.proc.poll() is None, agent.stderr_path.read_text()
    host, port = entry[0]["addresses"][0].rsplit(":", 1)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
