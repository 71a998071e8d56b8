"""`logagent sidecar` as a real subprocess on real files: envelopes on stdout, checkpoints on the shared volume,
restarts that resume without duplicates, a closed stdout that acknowledges nothing. The round trip through the node
agent (CRI log + kubernetes stage) is in test_sidecar_node.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from logagent.config import ConfigError
from logagent.outputs.sidecar import encode_envelopes
from logagent.record import Batch, doc_id
from logagent.sidecar import default_state_dir, sidecar_config
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parent.parent


class Sidecar:
    """`python -m logagent sidecar ...` with its stdout collected line by line on a thread."""

    def __init__(self, *args: str, stdout: Any = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "logagent", "sidecar", "--poll-interval", "100ms", *args],
            stdout=stdout, stderr=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[bytes] = []
        self.stderr = b""
        self._threads = []
        if stdout is subprocess.PIPE:
            self._threads.append(threading.Thread(target=self._read_stdout, daemon=True))
        self._threads.append(threading.Thread(target=self._read_stderr, daemon=True))
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        for t in self._threads:
            t.join(timeout=5)
        return code


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    app = tmp_path / "shared/app"
    app.mkdir(parents=True)
    return app


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(f"{line}\n" for line in lines))


def test_every_line_becomes_one_envelope_on_stdout(volume: Path) -> None:
    append(volume / "app.log", "starting", 'msg with "quotes" and a \\ backslash', "ünïcode ✓")
    append(volume / "audit.log", "audit 1")
    append(volume / "ignored.txt", "not matched by the glob")
    sc = Sidecar("--path", f"{volume}/*.log")
    try:
        wait_for(lambda: len(sc.lines) >= 4, timeout=20, what="4 envelopes")
        append(volume / "app.log", "later line")
        wait_for(lambda: len(sc.lines) >= 5, timeout=20, what="the appended line")
    finally:
        assert sc.stop() == 0
    # each line starts with the marker the node agent looks for, no spaces: exactly one JSON object per line
    assert all(line.startswith(b'{"logagent.sidecar":1,') and line.endswith(b"\n") for line in sc.lines)
    by_file: dict[str, list[tuple[int, str]]] = {}
    for env in sc.envelopes():
        assert set(env) <= {"logagent.sidecar", "file", "offset", "source", "message", "fields"}
        by_file.setdefault(env["file"], []).append((env["offset"], env["message"]))
    app_lines = ["starting", 'msg with "quotes" and a \\ backslash', "ünïcode ✓", "later line"]
    offsets = [0]
    for line in app_lines[:-1]:
        offsets.append(offsets[-1] + len(line.encode()) + 1)
    assert by_file == {str(volume / "app.log"): list(zip(offsets, app_lines)),
                       str(volume / "audit.log"): [(0, "audit 1")]}
    # its own logs went to stderr, as JSON
    assert b'"pipeline started"' in sc.stderr


def test_restart_resumes_from_the_checkpoint_on_the_volume_without_duplicates(volume: Path) -> None:
    log = volume / "app.log"
    append(log, *(f"first run {i}" for i in range(50)))
    sc = Sidecar("--path", f"{volume}/*.log")
    try:
        wait_for(lambda: len(sc.lines) >= 50, timeout=20, what="first run's lines")
    finally:
        assert sc.stop() == 0
    state = volume / ".logagent-sidecar"
    assert (state / "checkpoints.db").exists(), "checkpoints live on the shared volume by default"
    # lines written while no sidecar ran, then a new sidecar container (same volume)
    append(log, *(f"between {i}" for i in range(20)))
    sc2 = Sidecar("--path", f"{volume}/*")  # a broad glob: the checkpoint files must not be tailed
    try:
        wait_for(lambda: len(sc2.lines) >= 20, timeout=20, what="second run's lines")
        append(log, "live")
        wait_for(lambda: any(b'"live"' in line for line in sc2.lines), timeout=20, what="live line")
    finally:
        assert sc2.stop() == 0
    first = [e["message"] for e in sc.envelopes()]
    second = [e["message"] for e in sc2.envelopes()]
    assert first == [f"first run {i}" for i in range(50)]
    assert second == [f"between {i}" for i in range(20)] + ["live"]
    assert {e["file"] for e in sc2.envelopes()} == {str(log)}


def test_explicit_state_dir(volume: Path, tmp_path: Path) -> None:
    append(volume / "app.log", "a", "b")
    state = tmp_path / "elsewhere"
    sc = Sidecar("--path", f"{volume}/*.log", "--state-dir", str(state))
    try:
        wait_for(lambda: len(sc.lines) >= 2, timeout=20, what="envelopes")
    finally:
        assert sc.stop() == 0
    assert (state / "checkpoints.db").exists() and not (volume / ".logagent-sidecar").exists()


def test_closed_stdout_acknowledges_nothing_and_the_next_run_sends_it_all(volume: Path, tmp_path: Path) -> None:
    log = volume / "app.log"
    append(log, *(f"line {i}" for i in range(10)))
    # stdout is a pipe whose reading end is already closed: the first write fails with EPIPE
    read_end, write_end = os.pipe()
    os.close(read_end)
    sc = Sidecar("--path", f"{volume}/*.log", stdout=write_end)
    os.close(write_end)
    try:
        code = sc.proc.wait(timeout=20)
    finally:
        sc.stop()
    assert code == 1, sc.stderr.decode()
    assert b"stdout cannot be written" in sc.stderr
    sc2 = Sidecar("--path", f"{volume}/*.log")
    try:
        wait_for(lambda: len(sc2.lines) >= 10, timeout=20, what="all lines on the next run")
    finally:
        assert sc2.stop() == 0
    assert [e["message"] for e in sc2.envelopes()] == [f"line {i}" for i in range(10)]


def test_bad_options_are_reported_with_the_option_name(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "logagent", "sidecar", "--path", "relative/*.log"],
                         capture_output=True, cwd=REPO, timeout=30)
    assert out.returncode == 2
    assert b"--path" in out.stderr and b"absolute" in out.stderr
    assert out.stdout == b""
    with pytest.raises(ConfigError):
        sidecar_config([f"{tmp_path}/*.log"], state_dir=str(tmp_path / "s"), poll_interval="0s")


def test_default_state_dir_is_beside_the_first_globs_fixed_directory() -> None:
    assert default_state_dir(["/var/log/app/*.log", "/other/*.log"]) == "/var/log/app/.logagent-sidecar"
    assert default_state_dir(["/var/log/app/**/x.log"]) == "/var/log/app/.logagent-sidecar"
    assert default_state_dir(["/logs/*/app.log"]) == "/logs/.logagent-sidecar"
    assert default_state_dir(["/var/log/app/current.log"]) == "/var/log/app/.logagent-sidecar"


def test_envelope_carries_parser_fields_and_flags_and_only_them() -> None:
    batch = Batch("sidecar", [
        {"message": "plain", "offset": 0},
        {"message": "cut", "offset": 6, "flags": ["truncated"]},
        {"message": {"parsed": True}, "offset": 10, "level": "warn"},
    ], {"input": "sidecar", "path": "/var/log/app/a.log", "source_id": "fp:1", "pos_key": "offset"})
    lines = encode_envelopes(batch).splitlines()
    assert [json.loads(x) for x in lines] == [
        {"logagent.sidecar": 1, "file": "/var/log/app/a.log", "offset": 0, "message": "plain", "source": "fp:1"},
        {"logagent.sidecar": 1, "file": "/var/log/app/a.log", "offset": 6, "message": "cut", "source": "fp:1",
         "fields": {"flags": ["truncated"]}},
        {"logagent.sidecar": 1, "file": "/var/log/app/a.log", "offset": 10, "message": '{"parsed":true}',
         "source": "fp:1", "fields": {"level": "warn"}},
    ]


def test_node_stage_unwraps_envelopes_once_and_protects_its_own_fields() -> None:
    from logagent.component import Context
    from logagent.config import Section
    from logagent.kubernetes.stage import KubernetesMetadata

    settings = KubernetesMetadata.parse_settings(
        Section({"api": False, "sidecar_containers": ["shipper"]}, "pipeline[0]", "test.yaml"))
    stage = KubernetesMetadata("k8s-unwrap", settings,
                               Context(config=None, checkpoints=None, dead_letter=None))  # type: ignore[arg-type]
    sidecar_batch = Batch("sidecar", [
        {"message": "cut", "offset": 6, "flags": ["truncated"]},
        {"message": "x", "offset": 9, "level": "warn", "offset_in_app": 1},
    ], {"input": "sidecar", "path": "/var/log/app/a.log", "source_id": "fp:1", "pos_key": "offset"})
    envelopes = encode_envelopes(sidecar_batch).decode().splitlines()
    # a hostile envelope trying to overwrite the node's own position and the restored fields
    hostile = json.dumps({"logagent.sidecar": 1, "file": "/f", "offset": 1, "message": "m",
                          "fields": {"offset": 999, "sidecar_file": "/etc/passwd", "message": "no"}},
                         separators=(",", ":"))
    node_batch = Batch("kube", [
        {"message": envelopes[0], "offset": 100, "stream": "stdout", "flags": ["cri_flag"]},
        {"message": envelopes[1], "offset": 200, "stream": "stdout"},
        {"message": hostile, "offset": 300, "stream": "stdout"},
        {"message": "plain text from the sidecar container", "offset": 400, "stream": "stderr"},
        {"message": {"structured": 1}, "offset": 500},
    ], {"input": "containers", "path": "/var/log/pods/shop_web-0_uid-1/shipper/0.log", "source_id": "fp:node",
        "pos_key": "offset"})
    (out,) = stage.process(node_batch)
    assert out.records == [
        {"message": "cut", "offset": 100, "stream": "stdout", "flags": ["cri_flag", "truncated"],
         "sidecar_file": "/var/log/app/a.log", "sidecar_offset": 6, "sidecar_source": "fp:1"},
        {"message": "x", "offset": 200, "stream": "stdout", "level": "warn", "offset_in_app": 1,
         "sidecar_file": "/var/log/app/a.log", "sidecar_offset": 9, "sidecar_source": "fp:1"},
        {"message": "m", "offset": 300, "stream": "stdout", "sidecar_file": "/f", "sidecar_offset": 1,
         "flags": ["identity_field"]},
        {"message": "plain text from the sidecar container", "offset": 400, "stream": "stderr"},
        {"message": {"structured": 1}, "offset": 500},
    ]
    # document ids follow where the sidecar read a record, not where the node read the envelope: a record the
    # sidecar sends again after a restart (at-least-once) lands in another node offset, with the same id
    replay = Batch("kube", [{"message": envelopes[0], "offset": 7000, "stream": "stdout"}],
                   {"input": "containers", "path": "/var/log/pods/shop_web-0_uid-1/shipper/1.log",
                    "source_id": "fp:node2", "pos_key": "offset"})
    (again,) = stage.process(replay)
    assert doc_id(again.meta, again.records[0]) == doc_id(out.meta, out.records[0])
    assert doc_id(out.meta, out.records[0]) != doc_id(out.meta, out.records[1])
    # the hostile envelope has no sidecar source: its id is the node's position, as for any line
    assert doc_id(out.meta, out.records[2]) == doc_id(node_batch.meta, {"offset": 300})


def test_multiline_and_json_parsing_happen_in_the_sidecar(volume: Path) -> None:
    pytest.importorskip("logagent.parsers.factory", reason="needs the parsers")
    trace = ["2024-05-01 10:00:00.200 ERROR order failed", "java.lang.IllegalStateException: no stock",
             "\tat shop.Orders.place(Orders.java:42)"]
    append(volume / "app.log", '{"level":"warn","msg":"slow"}', *trace, "2024-05-01 10:00:01.000 INFO ok")
    sc = Sidecar("--path", f"{volume}/*.log", "--multiline", "java", "--parser", "json")
    try:
        # the last record is complete only when the multiline flush timeout passes (the file is quiet)
        wait_for(lambda: len(sc.lines) >= 3, timeout=20, what="3 envelopes")
    finally:
        assert sc.stop() == 0
    envs = sc.envelopes()
    assert [e["message"] for e in envs] == ['{"level":"warn","msg":"slow"}', "\n".join(trace),
                                            "2024-05-01 10:00:01.000 INFO ok"]
    assert envs[0]["fields"]["json"] == {"level": "warn", "msg": "slow"}
    assert envs[1]["offset"] == len('{"level":"warn","msg":"slow"}') + 1 and envs[1]["fields"]["lines"] == 3
