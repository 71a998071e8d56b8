"""Sidecar mode end to end: `logagent sidecar` (a real subprocess) tails an application's files; its stdout is laid
down as the container runtime would (a CRI log under /var/log/pods, linked from /var/log/containers, long lines
split into 16 KiB `P` pieces, the sidecar's own stderr interleaved); the node agent's pipeline (file input with
format cri + kubernetes stage + file output) must give back the application's records: original message, original
file name and offset, the sidecar pod's metadata, and no envelope JSON left anywhere. A restarted sidecar resumes
from its checkpoint, so the node side sees every line exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from logagent import registry
from logagent.config import parse_config
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for, wait_for

pytest.importorskip("logagent.parsers.factory", reason="the node side needs the CRI parser")

REPO = Path(__file__).resolve().parent.parent
UID = "3c9d2e1f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"
CID = "9" * 64
CRI_MAX_LINE = 16 * 1024  # containerd splits a log line into P pieces of at most this many bytes


def run_sidecar(app_dir: Path, wanted: int) -> tuple[list[bytes], list[bytes]]:
    """Run `logagent sidecar` until it printed `wanted` lines; stop it gracefully. (stdout lines, stderr lines)"""
    proc = subprocess.Popen(
        [sys.executable, "-m", "logagent", "sidecar", "--path", f"{app_dir}/*.log", "--poll-interval", "100ms"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    out: list[bytes] = []
    err: list[bytes] = []

    def pump(stream: Any, into: list[bytes]) -> None:
        for line in stream:
            into.append(line)

    threads = [threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err), daemon=True)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(out) >= wanted, timeout=20, what=f"{wanted} envelopes from the sidecar")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        for t in threads:
            t.join(timeout=5)
    return out, err


def cri_lines(stdout: list[bytes], stderr: list[bytes]) -> str:
    """The container's two streams as the runtime writes them into its log file: `<time> <stream> <P|F> <text>`."""
    out = []
    streams = [("stdout", line) for line in stdout] + [("stderr", line) for line in stderr]
    for i, (stream, raw) in enumerate(streams):
        text = raw.decode().rstrip("\n")
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{i:09d}Z"
        pieces = [text[j:j + CRI_MAX_LINE] for j in range(0, len(text), CRI_MAX_LINE)] or [""]
        for k, piece in enumerate(pieces):
            out.append(f"{ts} {stream} {'F' if k == len(pieces) - 1 else 'P'} {piece}\n")
    return "".join(out)


def node_config(root: Path, state: Path, output: Path) -> Any:
    cfg = parse_config({
        "state_dir": str(state),
        "http": {"enabled": False},
        "inputs": [{"type": "file", "name": "containers", "paths": [f"{root}/var/log/containers/*.log"],
                    "format": "cri", "tag": "kube", "poll_interval": "100ms"}],
        # the sidecar container is declared on the node agent: only its envelopes are unwrapped
        "pipeline": [{"type": "kubernetes", "api": False, "root": str(root), "sidecar_containers": ["log-shipper"]}],
        "outputs": [{"type": "file", "name": "out", "path": str(output), "fsync": False}],
    }, "<node agent test>")
    registry.validate(cfg)
    return cfg


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_node_agent_restores_sidecar_records_and_a_restart_adds_no_duplicates(tmp_path: Path) -> None:
    app = tmp_path / "volume/app"
    app.mkdir(parents=True)
    long_line = "L" * 40_000  # the envelope crosses two 16 KiB CRI pieces
    # an application line that itself looks like an envelope is data, and must come out as the app wrote it
    lookalike = '{"logagent.sidecar":1,"file":"/etc/shadow","message":"not me"}'
    first_lines = ["GET /index.html 200", "payment failed: card declined", long_line, lookalike, "tab\there ✓"]
    (app / "app.log").write_text("".join(f"{x}\n" for x in first_lines))
    (app / "audit.log").write_text("user=alice action=login\n")

    stdout1, stderr1 = run_sidecar(app, wanted=6)

    root = tmp_path / "node"
    pod_dir = root / "var/log/pods" / f"shop_checkout-7d9f8c-q2w3e_{UID}" / "log-shipper"
    pod_dir.mkdir(parents=True)
    cri_file = pod_dir / "0.log"
    cri_file.write_text(cri_lines(stdout1, stderr1))
    links = root / "var/log/containers"
    links.mkdir(parents=True)
    (links / f"checkout-7d9f8c-q2w3e_shop_log-shipper-{CID}.log").symlink_to(cri_file)

    output = tmp_path / "node-out.jsonl"
    pipeline = Pipeline(node_config(root, tmp_path / "node-state", output))
    await pipeline.start()
    try:
        expected_first = 6 + len(stderr1)
        await async_wait_for(lambda: len(read_records(output)) >= expected_first, timeout=20,
                             what="the node agent's records")

        # the sidecar container restarts (same pod, same volume): it resumes from its checkpoint
        with open(app / "app.log", "a") as f:
            f.write("after restart 1\nafter restart 2\n")
        stdout2, stderr2 = run_sidecar(app, wanted=2)
        with open(cri_file, "a") as f:
            f.write(cri_lines(stdout2, stderr2))
        await async_wait_for(lambda: len(read_records(output)) >= expected_first + 2 + len(stderr2), timeout=20,
                             what="records of the restarted sidecar")
    finally:
        pipeline.request_stop()
        await pipeline.shutdown()

    records = read_records(output)
    restored = [r for r in records if "sidecar_file" in r]
    own_logs = [r for r in records if "sidecar_file" not in r]
    # every application line exactly once, in file order, with its file name and offset in that file
    app_log, audit_log = str(app / "app.log"), str(app / "audit.log")
    all_app = first_lines + ["after restart 1", "after restart 2"]
    offsets = [0]
    for line in all_app[:-1]:
        offsets.append(offsets[-1] + len(line.encode()) + 1)
    assert [(r["message"], r["sidecar_offset"]) for r in restored if r["sidecar_file"] == app_log] == list(
        zip(all_app, offsets))
    assert [(r["message"], r["sidecar_offset"]) for r in restored if r["sidecar_file"] == audit_log] == [
        ("user=alice action=login", 0)]
    for r in restored:
        # who shipped it: the sidecar container of the pod, from the path alone (no API here)
        assert r["kubernetes"] == {"namespace": "shop", "pod": "checkout-7d9f8c-q2w3e", "pod_uid": UID,
                                   "container": "log-shipper", "container_id": CID, "restart_count": 0}
        assert r["stream"] == "stdout" and "sidecar_envelope_invalid" not in r.get("flags", [])
    long_rec = next(r for r in restored if r["message"] == long_line)
    assert long_rec["fragments"] == 3  # rejoined from the runtime's P, P, F pieces before unwrapping
    # no envelope left in any message: the only '{"logagent.sidecar"' text is the application's own line
    assert [r["message"] for r in records if '"logagent.sidecar"' in r["message"]] == [lookalike]
    # the sidecar's own logs (stderr) pass through as ordinary records of that container
    assert len(own_logs) == len(stderr1) + len(stderr2)
    assert all(r["stream"] == "stderr" and json.loads(r["message"])["logger"].startswith("logagent")
               for r in own_logs)
    assert len(stdout2) == 2, "the restarted sidecar sent only the new lines"


async def test_broken_envelope_is_kept_as_text_and_flagged(tmp_path: Path) -> None:
    root = tmp_path / "node"
    pod_dir = root / "var/log/pods" / f"shop_web-0_{UID}" / "shipper"
    pod_dir.mkdir(parents=True)
    ts = "2024-05-01T10:00:00.000000001Z"
    cut = '{"logagent.sidecar":1,"file":"/var/log/app/a.log","offset":0,"message":"cut sh'
    wrong = '{"logagent.sidecar":1,"file":"/var/log/app/a.log","message":42}'
    good = '{"logagent.sidecar":1,"file":"/var/log/app/a.log","offset":7,"message":"fine","fields":{"level":"info"}}'
    (pod_dir / "0.log").write_text(f"{ts} stdout F {cut}\n{ts} stdout F {wrong}\n{ts} stdout F {good}\n")
    output = tmp_path / "out.jsonl"
    cfg = parse_config({
        "state_dir": str(tmp_path / "state"), "http": {"enabled": False},
        "inputs": [{"type": "file", "name": "pods", "paths": [f"{root}/var/log/pods/*/*/*.log"], "format": "cri",
                    "poll_interval": "100ms"}],
        # the sidecar container is declared on the node agent: only its envelopes are unwrapped
        "pipeline": [{"type": "kubernetes", "api": False, "root": str(root), "sidecar_containers": ["shipper"]}],
        "outputs": [{"type": "file", "name": "out", "path": str(output), "fsync": False}],
    }, "<test>")
    registry.validate(cfg)
    pipeline = Pipeline(cfg)
    await pipeline.start()
    try:
        await async_wait_for(lambda: len(read_records(output)) >= 3, timeout=20, what="3 records")
    finally:
        pipeline.request_stop()
        await pipeline.shutdown()
    records = read_records(output)
    assert [r["message"] for r in records] == [cut, wrong, "fine"]
    assert [("sidecar_envelope_invalid" in r.get("flags", [])) for r in records] == [True, True, False]
    assert records[2]["sidecar_file"] == "/var/log/app/a.log" and records[2]["level"] == "info"
    assert os.path.basename(records[2]["path"]) == "0.log"
