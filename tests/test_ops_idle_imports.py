"""What an idle agent carries (issue 11: idle RSS): it imports only what its config uses.

The agent runs as in production (`logagent run -c CFG`, a subprocess; tests.idle_support.ProbedAgent): once the
test has seen `/healthz` answer, it asks the agent for its `sys.modules`. The shared objects mapped
(`/proc/PID/maps`) and the threads (`/proc/PID/task`) are read from outside. Config: the bench's (a `file` input
with `format: cri`, the `kubernetes` stage without the API, one output), with nothing to read yet. Its outputs
are http://, so the agent has no TLS stack; the same agent with an https output has one, and ships over it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import async_wait_for
from tests.idle_support import TLS_LIBS, ProbedAgent, self_signed, server_context
from tests.ops_support import agent_base_url, thread_names, wait_http_up, write_lines
from tests.receivers.es import BulkReceiver

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
    "ssl": "no https URL, no TLS settings, no Kubernetes API: logagent.tls keeps the TLS stack out (4.8 MB)",
    "_ssl": "as ssl",
    "uvloop": "it needs ssl: the stdlib asyncio loop runs instead",
    "yaml": "the config is parsed in a child process (logagent.config.load_yaml_aside)",
}
NOT_MAPPED = ("libsystemd", "ahocorasick_rs", "_message.abi3", "cramjam", "_lz4", "unicodedata", *TLS_LIBS,
              "uvloop/loop.cpython", "_yaml.cpython")

OUTPUTS: dict[str, dict[str, Any]] = {
    "elasticsearch": {"type": "elasticsearch", "url": "http://127.0.0.1:9"},
    "loki": {"type": "loki", "url": "http://127.0.0.1:9"},
    "sls": {"type": "sls", "url": "http://127.0.0.1:9", "endpoint": "cn-test.log.aliyuncs.com", "project": "p",
            "logstore": "k8s", "access_key_id": "id", "access_key_secret": "secret"},
}


def _config(tmp_path: Path, output: dict[str, Any]) -> Path:
    (tmp_path / "var/log/containers").mkdir(parents=True, exist_ok=True)
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
    agent = ProbedAgent(_config(tmp_path, OUTPUTS[kind]), tmp_path)
    try:
        wait_http_up(agent_base_url(agent))
        modules = agent.modules()
        maps = agent.maps()
        threads = thread_names(agent.proc.pid)
    finally:
        assert agent.stop() == 0, agent.stderr_path.read_text()
    assert "logagent.pipeline" in modules and f"logagent.outputs.{kind}" in modules  # the probe saw the agent
    loaded = {name: why for name, why in NOT_IMPORTED.items() if name in modules}
    assert not loaded, f"imported at idle without being needed: {loaded}"
    mapped = [lib for lib in NOT_MAPPED if lib in maps]
    assert not mapped, f"shared objects mapped at idle: {mapped}"
    # getaddrinfo would run on a resolver thread (libuv's pool under uvloop, the default executor under asyncio):
    # none is started for an IP-literal http address
    resolvers = [t for t in threads if t.startswith(("libuv-worker", "asyncio_"))]
    assert not resolvers, threads


async def test_an_agent_with_an_https_output_loads_tls_and_ships_over_it(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    receiver = await BulkReceiver().start(ssl_context=server_context(cert, key))
    assert receiver.url.startswith("https://127.0.0.1:")
    config = _config(tmp_path, {"type": "elasticsearch", "url": receiver.url, "tls": {"ca_file": cert}})
    agent = ProbedAgent(config, tmp_path)
    try:
        log = tmp_path / "var/log/containers/web-0_shop_main-0123456789abcdef.log"
        write_lines(log, [f"2024-05-01T10:00:00.{i:06d}Z stdout F over tls {i}" for i in range(50)])
        await async_wait_for(lambda: len(receiver.docs) == 50, 30, 0.05, "50 documents over TLS")
        modules = agent.modules()
        maps = agent.maps()
    finally:
        assert agent.stop() == 0, agent.stderr_path.read_text()
        await receiver.stop()
    assert sorted(d["message"] for d in receiver.docs.values()) == sorted(f"over tls {i}" for i in range(50))
    assert {"ssl", "_ssl", "uvloop"} <= modules
    assert all(lib in maps for lib in TLS_LIBS), [lib for lib in TLS_LIBS if lib not in maps]
