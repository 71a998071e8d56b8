"""What an idle agent carries (issue 11: idle RSS): it imports only what its config uses.

The agent runs as in production (`python -m logagent run -c CFG`, a subprocess), started through a few lines
that add one probe thread: once the test has seen `/healthz` answer, it creates a trigger file and the probe writes
the agent's `sys.modules`. The shared objects mapped (`/proc/PID/maps`) and the threads (`/proc/PID/task`) are
read from outside. Config: the bench's (a `file` input with `format: cri`, the `kubernetes` stage without the API,
one output), with nothing to read yet.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_for
from tests.ops_support import Agent, agent_base_url, thread_names, wait_http_up

PROBE = """
import os, runpy, sys, threading, time
trigger, out = os.environ["IDLE_PROBE_TRIGGER"], os.environ["IDLE_PROBE_OUT"]
def probe():
    deadline = time.monotonic() + 120
    while not os.path.exists(trigger) and time.monotonic() < deadline:
        time.sleep(0.02)
    with open(out + ".tmp", "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    os.rename(out + ".tmp", out)
threading.Thread(target=probe, name="probe", daemon=True).start()
sys.argv = ["logagent", *sys.argv[1:]]
runpy.run_module("logagent", run_name="__main__", alter_sys=True)
"""

# Modules an agent on this config must not load at idle, each with what it would cost or why it is not needed.
NOT_IMPORTED = {
    "ahocorasick_rs": "multiline auto's prefilter (logagent.parsers.autotrace): no multiline configured",
    "logagent.parsers.autotrace": "multiline: auto not configured",
    "logagent.parsers.multiline": "no multiline configured",
    "logagent.parsers.statemachine": "no multiline_rules",
    "logagent.parsers.docker": "format: cri",
    "logagent.parsers.detect": "format: cri (not auto)",
    "logagent.parsers.jsonbody": "parser: text",
    "systemd": "no NOTIFY_SOCKET: sd_notify is a no-op",
    "google.protobuf": "the native encoders write Loki's and SLS's protobuf",
    "logagent.outputs.proto.logproto_pb2": "Loki's generated classes: the fallback encoder only",
    "logagent.outputs.proto.sls_logs_pb2": "SLS's generated classes: dead-letter decoding only",
    "cramjam": "snappy: imported at the first Loki request",
    "lz4": "LZ4: imported at the first SLS request",
    "email": "SLS's Date header: at the first request",
    "unicodedata": "the idna codec: the http address is an IP literal, no getaddrinfo",
}
NOT_MAPPED = ("libsystemd", "ahocorasick_rs", "_message.abi3", "cramjam", "_lz4", "unicodedata")

OUTPUTS: dict[str, dict[str, Any]] = {
    "elasticsearch": {"type": "elasticsearch", "url": "http://127.0.0.1:9"},
    "loki": {"type": "loki", "url": "http://127.0.0.1:9"},
    "sls": {"type": "sls", "url": "http://127.0.0.1:9", "endpoint": "cn-test.log.aliyuncs.com", "project": "p",
            "logstore": "k8s", "access_key_id": "id", "access_key_secret": "secret"},
}


def _config(tmp_path: Path, output: dict[str, Any]) -> Path:
    (tmp_path / "var/log/containers").mkdir(parents=True)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "http": {"address": "127.0.0.1:0"},
        "inputs": [{"type": "file", "name": "containers", "paths": [str(tmp_path / "var/log/containers/*.log")],
                    "format": "cri", "tag": "kube"}],
        "pipeline": [{"type": "kubernetes", "match": ["kube"], "api": False, "root": str(tmp_path)}],
        "outputs": [{**output, "name": "out", "match": ["*"]}],
    }))
    return config


@pytest.mark.parametrize("kind", sorted(OUTPUTS))
def test_an_idle_agent_loads_only_what_its_config_uses(tmp_path: Path, kind: str) -> None:
    trigger, out = tmp_path / "probe.trigger", tmp_path / "probe.modules"
    env = {"IDLE_PROBE_TRIGGER": str(trigger), "IDLE_PROBE_OUT": str(out), "NOTIFY_SOCKET": ""}
    config = _config(tmp_path, OUTPUTS[kind])
    agent = Agent(config, tmp_path, env=env, argv=[sys.executable, "-c", PROBE, "run", "-c", str(config)])
    try:
        wait_http_up(agent_base_url(agent))
        trigger.touch()
        wait_for(out.exists, 20, 0.02, "the probe to write sys.modules")
        modules = set(out.read_text().split("\n"))
        maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
        threads = thread_names(agent.proc.pid)
    finally:
        assert agent.stop() == 0, agent.stderr_path.read_text()
    assert "logagent.pipeline" in modules and f"logagent.outputs.{kind}" in modules  # the probe saw the agent
    loaded = {name: why for name, why in NOT_IMPORTED.items() if name in modules}
    assert not loaded, f"imported at idle without being needed: {loaded}"
    mapped = [lib for lib in NOT_MAPPED if lib in maps]
    assert not mapped, f"shared objects mapped at idle: {mapped}"
    # uvloop runs getaddrinfo on libuv's pool of 4 threads: none is started for an IP-literal http address
    assert "libuv-worker" not in threads, threads
