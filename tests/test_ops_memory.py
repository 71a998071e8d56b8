"""The agent's allocator settings as a running agent has them (`logagent.allocator.tune`): on glibc a
`malloc-trim` thread gives the free heap back every LOGAGENT_TRIM_INTERVAL seconds (0 turns it off), and an
explicit MALLOC_* setting leaves the allocator entirely to the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.helpers import wait_for
from tests.ops_support import Agent, agent_base_url, thread_names, wait_http_up


def _config(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "http": {"address": "127.0.0.1:0"},
        "inputs": [{"type": "file", "name": "app", "paths": [str(tmp_path / "logs" / "*.log")]}],
        "outputs": [{"type": "file", "name": "sink", "path": str(tmp_path / "out.jsonl")}],
    }))
    return config


@pytest.mark.skipif(not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only")
@pytest.mark.parametrize("env, expected", [
    ({"LOGAGENT_TRIM_INTERVAL": "0.2"}, True),
    ({"LOGAGENT_TRIM_INTERVAL": "0"}, False),
    ({"MALLOC_ARENA_MAX": "2"}, False),  # the environment decides: no mallopt, no trimming
], ids=["trimming", "interval-0", "malloc-env"])
def test_the_trim_thread_runs_unless_turned_off(tmp_path: Path, env: dict[str, str], expected: bool) -> None:
    agent = Agent(_config(tmp_path), tmp_path, env=env)
    try:
        wait_http_up(agent_base_url(agent))
        if expected:
            wait_for(lambda: "malloc-trim" in thread_names(agent.proc.pid), 10, 0.05, "the malloc-trim thread")
        else:
            assert "malloc-trim" not in thread_names(agent.proc.pid)
    finally:
        assert agent.stop() == 0
