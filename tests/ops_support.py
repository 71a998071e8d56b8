"""Helpers for the operations tests: run a real agent as a subprocess, scrape it, read what it shipped.

The agent under test is `python -m logagent run -c CFG` with the real `file` input (logagent.inputs.file). While
that package is not importable (it is written in parallel), `SimpleLineInput` below stands in for it under the
same type name and settings, so these tests exercise the operations code either way and switch to the real
tailer by themselves once it lands.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from logagent.component import Emit, Input
from logagent.config import Section
from logagent.record import Batch
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parent.parent


def real_file_input_available() -> bool:
    try:
        module = importlib.import_module("logagent.inputs.file")
    except Exception:
        return False
    return hasattr(module, "FileInput")


@dataclass(frozen=True)
class SimpleLineSettings:
    paths: tuple[str, ...]
    read_from: str
    tag: str


class SimpleLineInput(Input):
    """Stand-in for the file input: follows one file by polling, one token per batch at the batch's end offset."""

    @classmethod
    def parse_settings(cls, section: Section) -> SimpleLineSettings:
        s = SimpleLineSettings(tuple(section.str_list("paths")), section.str("read_from", "head"),
                               section.str("tag", "file"))
        section.done()
        return s

    async def run(self, emit: Emit) -> None:
        self._stop = asyncio.Event()
        tracker = self.ctx.checkpoints.tracker(self.name)
        path = self.settings.paths[0]
        offset = int(tracker.committed.get(path, {}).get("offset", 0))
        held = b""
        while not self._stop.is_set():
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset + len(held))
                    data = fh.read(1 << 20)
            except FileNotFoundError:
                data = b""
            if data:
                data = held + data
                end = data.rfind(b"\n") + 1
                held = data[end:]
                if end:
                    lines = data[:end].split(b"\n")[:-1]
                    records, pos = [], offset
                    for line in lines:
                        records.append({"message": line.decode("utf-8", "replace"), "offset": pos})
                        pos += len(line) + 1
                    offset = pos
                    await emit(Batch(self.settings.tag, records, {"input": self.name, "path": path},
                                     tracker.token(path, {"offset": offset}), end))
                continue
            try:
                await asyncio.wait_for(self._stop.wait(), 0.02)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        self._stop.set()


_STANDIN_BOOT = (
    "import sys; sys.path.insert(0, {repo!r}); from logagent import registry; "
    "registry.INPUTS['file'] = 'tests.ops_support:SimpleLineInput'; "
    "from logagent.cli import main; sys.exit(main())"
)


def agent_argv(config: Path) -> list[str]:
    if real_file_input_available():
        return [sys.executable, "-m", "logagent", "run", "-c", str(config)]
    return [sys.executable, "-c", _STANDIN_BOOT.format(repo=str(REPO)), "run", "-c", str(config)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    """A `logagent run` subprocess with its stderr (JSON self-logs) collected to a file."""

    def __init__(self, config: Path, workdir: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.stderr_path = workdir / "agent.stderr"
        self._stderr = open(self.stderr_path, "wb")
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(agent_argv(config), stdout=subprocess.DEVNULL, stderr=self._stderr,
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


def monotonic_deadline(seconds: float) -> float:
    return time.monotonic() + seconds
