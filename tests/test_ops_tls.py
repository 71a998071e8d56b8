"""A TLS stack only when the config can need one (logagent.tls), and a reload that needs TLS in an agent started
without it: the agent restarts in place (same pid, graceful stop, positions kept) and ships over TLS.

The agents are real subprocesses (`logagent run`); the receivers are Elasticsearch `_bulk` receivers on
127.0.0.1, one plain, one over TLS with a certificate made at test time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from logagent import registry, tls
from logagent.config import ConfigError, load_yaml, parse_config
from tests.helpers import async_wait_for, wait_for
from tests.idle_support import TLS_LIBS, ProbedAgent, self_signed, server_context
from tests.ops_support import REPO, write_lines
from tests.receivers.es import BulkReceiver


def _doc(inputs: list[dict[str, Any]] | None = None, stages: list[dict[str, Any]] | None = None,
         outputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"inputs": inputs or [{"type": "file", "paths": ["/var/log/x/*.log"]}],
            "pipeline": stages or [],
            "outputs": outputs or [{"type": "elasticsearch", "url": "http://127.0.0.1:9200"}]}


SLS = {"type": "sls", "endpoint": "cn-test.log.aliyuncs.com", "project": "p", "logstore": "l",
       "access_key_id": "id", "access_key_secret": "secret"}

# (document, the key path `uses` must name, or None: nothing can need TLS)
CASES: dict[str, tuple[dict[str, Any], str | None]] = {
    "http outputs": (_doc(outputs=[{"type": "elasticsearch", "url": "http://es:9200"},
                                   {"type": "loki", "url": "http://loki:3100"},
                                   {**SLS, "url": "http://127.0.0.1:8080"}, {"type": "stdout"}]), None),
    "an https output": (_doc(outputs=[{"type": "loki", "url": "https://loki:3100"}]), "outputs[0].url"),
    "an https URL from the environment": (_doc(outputs=[{"type": "elasticsearch", "url": "${TLS_TEST_URL}"}]),
                                          "outputs[0].url"),
    "TLS settings on an http URL": (_doc(outputs=[{"type": "elasticsearch", "url": "http://es:9200",
                                                   "tls": {"ca_file": "/ca.pem"}}]), "outputs[0].tls"),
    "sls at its endpoint": (_doc(outputs=[SLS]), "outputs[0]"),
    "kubernetes without the API": (_doc(stages=[{"type": "kubernetes", "api": False}]), None),
    "kubernetes, API off-cluster": (_doc(stages=[{"type": "kubernetes"}]), None),
    "kubernetes, API in-cluster": (_doc(stages=[{"type": "kubernetes"}]), "pipeline[0]"),
    "kubernetes, http api_server": (_doc(stages=[{"type": "kubernetes", "api_server": "http://127.0.0.1:8001"}]),
                                    None),
    "kubernetes, https api_server": (_doc(stages=[{"type": "kubernetes", "api_server": "https://10.0.0.1"}]),
                                     "pipeline[0].api_server"),
    "kubernetes, kubeconfig": (_doc(stages=[{"type": "kubernetes", "kubeconfig": "/k.yaml"}]),
                               "pipeline[0].kubeconfig"),
    "node_problems in-cluster": (_doc(stages=[{"type": "node_problems"}]), "pipeline[0]"),
    "kube_events in-cluster": (_doc(inputs=[{"type": "kube_events"}]), "inputs[0]"),
    "netlink (pyroute2 imports ssl)": (_doc(inputs=[{"type": "netlink"}]), "inputs[0]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_what_in_a_config_can_need_tls(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    doc, expected = CASES[case]
    monkeypatch.setenv("TLS_TEST_URL", "https://es.example:9200")
    if "in-cluster" in case:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    else:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    uses = tls.uses(parse_config(doc, "agent.yaml"))
    if expected is None:
        assert uses == []
    else:
        assert [u for u in uses if u.split(":")[0] == expected], uses


def test_every_component_type_is_classified() -> None:
    """A type `logagent.tls` does not know is assumed to need TLS (safe, and costs memory): each is known."""
    known = {*tls._PLAIN, *tls._ALWAYS, *tls._KUBE_API, ("output", "sls")}
    types = {(kind, name) for kind, table in (("input", registry.INPUTS), ("stage", registry.STAGES),
                                              ("output", registry.OUTPUTS)) for name in table}
    assert types <= known, types - known


ASIDE = """
import sys
from logagent.config import ConfigError, load_yaml_aside
try:
    print(repr(load_yaml_aside(sys.stdin.read(), "agent.yaml")))
except ConfigError as e:
    print("ConfigError:", e)
print("yaml imported" if "yaml" in sys.modules else "yaml not imported")
"""


def _aside(text: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", ASIDE], input=text, capture_output=True, text=True, timeout=60,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize("text", ["inputs: [{type: file, paths: [/a/*.log]}]\nn: 3\n",
                                  "x: [1.5, null, true, !!binary aGk=, {1: one}]\n",
                                  "a: &x {b: [1, 2]}\nc: *x\n"])
def test_the_yaml_parsed_in_a_child_is_the_same_document(text: str) -> None:
    assert _aside(text) == [repr(load_yaml(text, "agent.yaml")), "yaml not imported"]


def test_a_yaml_error_from_the_child_names_the_line_as_here() -> None:
    text = "inputs:\n  - type: file\n   paths: [x]\n"
    with pytest.raises(ConfigError) as here:
        load_yaml(text, "agent.yaml")
    assert _aside(text) == [f"ConfigError: {here.value}", "yaml not imported"]
    assert "line 3" in str(here.value)


def test_what_marshal_cannot_carry_is_parsed_here() -> None:
    """A YAML timestamp becomes a date, which marshal cannot carry: the document is parsed in this process."""
    text = "since: 2024-05-01\n"
    assert _aside(text) == [repr(load_yaml(text, "agent.yaml")), "yaml imported"]


# -- reload to a config that needs TLS, in an agent started without it ---------------------------------------

def _agent_doc(tmp_path: Path, url: str, **output: Any) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"), "grace_period": "3s", "checkpoint_interval": "50ms",
        "http": {"address": "127.0.0.1:0"},
        "inputs": [{"type": "file", "name": "app", "paths": [str(tmp_path / "logs/*.log")]}],
        "outputs": [{"type": "elasticsearch", "name": "es", "url": url, "index": "app",
                     "retry": {"initial_backoff": "50ms", "max_backoff": "200ms"}, **output}],
    }


def _messages(receiver: BulkReceiver) -> list[str]:
    return sorted(str(d["message"]) for d in receiver.docs.values())


def _lines(first: int, n: int) -> list[str]:
    return [f"line {i:05d}" for i in range(first, first + n)]


async def _logagent_reload(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "logagent", "reload", "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=90, cwd=REPO)


async def test_a_reload_to_an_https_output_restarts_in_place_and_ships_every_line_once(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    plain = await BulkReceiver().start()
    secure = await BulkReceiver().start(ssl_context=server_context(cert, key))
    (tmp_path / "logs").mkdir()
    log, config = tmp_path / "logs/app.log", tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(_agent_doc(tmp_path, plain.url)))
    agent = ProbedAgent(config, tmp_path)
    try:
        write_lines(log, _lines(0, 100))
        await async_wait_for(lambda: len(plain.docs) == 100, 30, 0.05, "the first 100 lines over http")
        assert not {"ssl", "uvloop"} & agent.modules()
        pid = agent.proc.pid

        config.write_text(yaml.safe_dump(_agent_doc(tmp_path, secure.url, tls={"ca_file": cert})))
        done = await _logagent_reload(tmp_path)
        assert done.returncode == 0, done.stderr
        assert "applied the new config" in done.stdout
        assert agent.proc.pid == pid and agent.proc.poll() is None  # the same process, executed again
        assert agent.logged("the new config needs TLS, which this process did not load: restarting in place")

        write_lines(log, _lines(100, 100))
        await async_wait_for(lambda: len(secure.docs) == 100, 30, 0.05, "the next 100 lines over TLS")
        modules, maps = agent.modules(), agent.maps()
        open_files = _open_files(pid)
    finally:
        rc = agent.stop()
        await plain.stop()
        await secure.stop()
    assert rc == 0, agent.stderr_path.read_text()
    # every line once: what the first process acknowledged was not read again after the restart
    assert _messages(plain) == _lines(0, 100) and _messages(secure) == _lines(100, 100)
    assert {"ssl", "uvloop"} <= modules and all(lib in maps for lib in TLS_LIBS)
    started = agent.logged("pipeline started")
    assert len(started) == 2, started
    # nothing the first process opened survived into the second (all close-on-exec or closed at its stop)
    for target in (str(tmp_path / "state/checkpoints.db"), str(log), "anon_inode:inotify"):
        assert open_files.count(target) == 1, (target, open_files)


def _open_files(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return out


async def test_a_reload_to_an_https_config_with_a_bad_ca_file_is_rejected_without_restarting(tmp_path: Path) -> None:
    plain = await BulkReceiver().start()
    (tmp_path / "logs").mkdir()
    log, config = tmp_path / "logs/app.log", tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(_agent_doc(tmp_path, plain.url)))
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    agent = ProbedAgent(config, tmp_path)
    try:
        write_lines(log, _lines(0, 10))
        await async_wait_for(lambda: len(plain.docs) == 10, 30, 0.05, "10 lines over http")
        config.write_text(yaml.safe_dump(_agent_doc(tmp_path, "https://127.0.0.1:9", tls={"ca_file": str(not_pem)})))
        done = await _logagent_reload(tmp_path)
        assert done.returncode == 1
        assert "rejected the new config" in done.stderr and "ca_file" in done.stderr, done.stderr
        write_lines(log, _lines(10, 10))  # the running config stays in effect
        await async_wait_for(lambda: len(plain.docs) == 20, 30, 0.05, "10 more lines over http")
        assert "uvloop" not in agent.modules()
    finally:
        rc = agent.stop()
        await plain.stop()
    assert rc == 0, agent.stderr_path.read_text()
    assert _messages(plain) == _lines(0, 20)
    assert not agent.logged("the new config needs TLS, which this process did not load: restarting in place")
    assert len(agent.logged("pipeline started")) == 1


async def test_sigterm_during_the_restart_stops_the_agent_instead(tmp_path: Path) -> None:
    """The old output cannot deliver, so the restart's graceful stop waits (grace_period 3s); a SIGTERM then ends
    the agent, as it would have without the reload: it exits, it is not executed again."""
    cert, key = self_signed(tmp_path)
    secure = await BulkReceiver().start(ssl_context=server_context(cert, key))
    down = await BulkReceiver().start()
    down_url = down.url
    await down.stop()  # nothing listens there now: every request is refused and retried
    (tmp_path / "logs").mkdir()
    log, config = tmp_path / "logs/app.log", tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(_agent_doc(tmp_path, down_url)))
    agent = ProbedAgent(config, tmp_path)
    try:
        await async_wait_for(lambda: agent.logged("pipeline started"), 30, 0.05, "the agent to start")
        write_lines(log, _lines(0, 10))
        await async_wait_for(lambda: agent.logged("request will be retried"), 30, 0.05, "a refused request")
        config.write_text(yaml.safe_dump(_agent_doc(tmp_path, secure.url, tls={"ca_file": cert})))
        agent.signal(signal.SIGHUP)
        await async_wait_for(lambda: agent.logged(
            "the new config needs TLS, which this process did not load: restarting in place"), 30, 0.05,
            "the restart to begin")
        agent.signal(signal.SIGTERM)
        rc = await asyncio.to_thread(agent.proc.wait, 30)
    finally:
        agent.stop()
        await secure.stop()
    assert rc == 0, agent.stderr_path.read_text()
    assert agent.logged("shutting down instead of restarting")
    assert len(agent.logged("pipeline started")) == 1 and not secure.docs


def test_a_sidecar_runs_without_tls(tmp_path: Path) -> None:
    """`logagent sidecar` writes to its stdout only: it never loads a TLS stack (one runs in every pod)."""
    from tests.test_sidecar import Sidecar

    (tmp_path / "app.log").write_text("one line\n")
    sc = Sidecar("--path", f"{tmp_path}/*.log")
    try:
        wait_for(lambda: sc.lines, 20, 0.02, "the envelope of the line")
        maps = Path(f"/proc/{sc.proc.pid}/maps").read_text()
    finally:
        assert sc.stop() == 0, sc.stderr
    assert [env["message"] for env in sc.envelopes()] == ["one line"]
    assert not [lib for lib in TLS_LIBS if lib in maps]
