"""Test support for the file tailer: an in-process agent (file input -> file output) and a subprocess one.

`Agent` runs a real `Pipeline` in the test's event loop, tailing real files into a real JSON-lines file; tests
read that output file, never the tailer's internals, to decide what arrived (internals are only used to wait for
a precondition such as "the tailer has read the first half of a line").
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from logagent.config import parse_config
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for


def agent_config(tmp_path: Path, paths: list[str], limits: dict[str, Any] | None = None,
                 top: dict[str, Any] | None = None, **input_opts: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "grace_period": "5s",
        "checkpoint_interval": "10ms",
        "http": {"enabled": False},
        "inputs": [{"type": "file", "name": "files", "paths": paths, "poll_interval": "200ms", **input_opts}],
        "outputs": [{"type": "file", "path": str(tmp_path / "out.jsonl"), "fsync": False}],
    }
    if limits:
        doc["limits"] = limits
    if top:
        doc.update(top)
    return doc


def read_output(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n")  # a subprocess killed mid-write may leave a torn last line
    return [orjson.loads(line) for line in data[: end + 1].splitlines() if line]


class Agent:
    """An agent running in this event loop: `async with Agent(tmp_path, cfg) as agent: ...`."""

    def __init__(self, tmp_path: Path, doc: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.doc = doc
        self.out = Path(doc["outputs"][0]["path"])
        self.pipeline: Pipeline | None = None

    async def __aenter__(self) -> Agent:
        self.pipeline = Pipeline(parse_config(self.doc, "test.yaml"))
        await self.pipeline.start()
        # the tailer has followed the files already there and watches the directories: what the test does now
        # happens while the agent runs
        await asyncio.wait_for(self.file_input.ready.wait(), 30)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.pipeline is not None
        self.pipeline.request_stop()
        await self.pipeline.shutdown()

    @property
    def file_input(self) -> Any:
        assert self.pipeline is not None
        return self.pipeline.inputs["files"].input

    def records(self) -> list[dict[str, Any]]:
        return read_output(self.out)

    def messages(self) -> list[str]:
        return [r["message"] for r in self.records()]

    async def wait_messages(self, n: int, timeout: float = 20.0) -> list[str]:
        await async_wait_for(lambda: len(self.messages()) >= n, timeout=timeout,
                             what=f"{n} records in {self.out}")
        return self.messages()


def start_subprocess_agent(tmp_path: Path, doc: dict[str, Any], log_name: str = "agent.log") -> subprocess.Popen[bytes]:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    log = open(tmp_path / log_name, "ab")
    return subprocess.Popen([sys.executable, "-m", "logagent", "run", "-c", str(cfg)], stdout=log, stderr=log,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
