"""Issue 10, attack 2: a pod using symlinks in its emptyDir to make the agent ship files it may not read.

The node is laid out as the kubelet does it: the attacker's pod has an emptyDir volume
(`/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/app-logs`), a neighbour pod has one too, and the
node has root-only files (the attacker's service-account token, /etc/shadow). The agent tails every emptyDir's
`*.log` as deployed (file input + `kubernetes` stage against a fake API server). In its volume the attacker puts
its real log, a log in a subdirectory linked from the volume (allowed: it stays inside), and symlinks to the token,
to the neighbour's volume and (relative, with `..`) to /etc/shadow, a FIFO, and later — while the agent runs — one
more link to the token. Only the two files inside the volume may be shipped, each refusal is counted, and the race
of swapping a checked directory for a symlink is refused by both open mechanisms.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from logagent import registry
from logagent.config import parse_config
from logagent.inputs.file import confine
from logagent.inputs.file.confine import FILES_REFUSED, Confinement, Refused
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for
from tests.kube_apiserver import FakeApiServer, make_pod

SECRET = "eyJhbGciOiJSUzI1NiIsImtpZCI6InNlY3JldCJ9.root-only-token"


def _read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def _refused(reason: str) -> float:
    return FILES_REFUSED.labels(input="volumes", reason=reason)._value.get()


def _root_only(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, 0o400)
    return path


async def test_symlinks_out_of_a_volume_are_refused_and_counted(api: FakeApiServer, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "node"
    pods = root / "var/lib/kubelet/pods"
    token = _root_only(pods / "uid-evil/volumes/kubernetes.io~projected/kube-api-access-x1/token", SECRET + "\n")
    _root_only(root / "etc/shadow", "root:$6$secret-hash:19000:0:99999:7:::\n")
    neighbour_vol = pods / "uid-bank/volumes/kubernetes.io~empty-dir/ledger"
    neighbour_vol.mkdir(parents=True)
    (neighbour_vol / "ledger.log").write_text("transfer 1000000 to acct 42\n")
    vol = pods / "uid-evil/volumes/kubernetes.io~empty-dir/app-logs"
    (vol / "old").mkdir(parents=True)
    (vol / "app.log").write_text("evil app started\n")
    (vol / "old/rotated.log").write_text("an older line\n")
    # what the attacker's container does inside its volume (mounted at /mnt/app-logs in the pod)
    (vol / "archive.log").symlink_to("old/rotated.log")  # stays inside: allowed
    (vol / "token.log").symlink_to(token)
    (vol / "bank.log").symlink_to(neighbour_vol / "ledger.log")
    (vol / "shadow.log").symlink_to("../../../../../../../../etc/shadow")  # <node>/etc/shadow
    os.mkfifo(vol / "pipe.log")
    api.add(make_pod("evil-0", "tenant-a", uid="uid-evil", empty_dirs=("app-logs",)))
    api.add(make_pod("bank-0", "bank", uid="uid-bank", empty_dirs=("ledger",)))

    out = tmp_path / "out.jsonl"
    cfg = parse_config({
        "state_dir": str(tmp_path / "state"), "http": {"enabled": False}, "grace_period": "5s",
        "inputs": [{"type": "file", "name": "volumes", "tag": "volume", "poll_interval": "100ms",
                    "paths": [f"{pods}/*/volumes/kubernetes.io~empty-dir/*/*.log"]}],
        "pipeline": [{"type": "kubernetes", "api_server": api.url, "node_name": "node-a", "root": str(root),
                      "token_file": "/nonexistent", "ca_file": "/nonexistent"}],
        "outputs": [{"type": "file", "name": "out", "path": str(out), "fsync": False}],
    }, "<security test>")
    registry.validate(cfg)
    before = {r: _refused(r) for r in ("outside_root", "not_regular")}
    pipeline = Pipeline(cfg)
    with caplog.at_level(logging.WARNING, logger="logagent.input.file"):
        await pipeline.start()
        try:
            await async_wait_for(lambda: len(_read(out)) >= 3, timeout=20, what="the three legitimate lines")
            await async_wait_for(lambda: _refused("outside_root") - before["outside_root"] >= 3, timeout=20,
                                 what="three refusals")
            # while the agent runs: a new link (inotify sees it created), then a line the app really writes
            (vol / "late.log").symlink_to(token)
            with open(vol / "app.log", "a") as f:
                f.write("evil app still running\n")
            await async_wait_for(lambda: _refused("outside_root") - before["outside_root"] >= 4, timeout=20,
                                 what="the late link refused")
            await async_wait_for(lambda: len(_read(out)) >= 4, timeout=20, what="the app's later line")
        finally:
            pipeline.request_stop()
            await pipeline.shutdown()

    records = _read(out)
    shipped = sorted((os.path.basename(r["path"]), r["message"]) for r in records)
    assert shipped == [("app.log", "evil app started"), ("app.log", "evil app still running"),
                       ("archive.log", "an older line"), ("ledger.log", "transfer 1000000 to acct 42")]
    # the neighbour's own file is the neighbour's; nothing of it went out under the attacker's pod
    assert {r["kubernetes"]["pod"] for r in records if r["path"].endswith("ledger.log")} == {"bank-0"}
    assert {r["kubernetes"]["pod"] for r in records if "app-logs" in r["path"]} == {"evil-0"}
    assert SECRET not in out.read_text() and "secret-hash" not in out.read_text()
    assert _refused("outside_root") - before["outside_root"] == 4  # token, bank, shadow, late
    assert _refused("not_regular") - before["not_regular"] == 1  # the FIFO
    warned = [r for r in caplog.records if r.getMessage().startswith("refusing to read a file")]
    assert sorted(os.path.basename(r.path) for r in warned) == [  # type: ignore[attr-defined]
        "bank.log", "late.log", "pipe.log", "shadow.log", "token.log"]  # once each, however many scans


@pytest.mark.parametrize("mechanism", ["openat2", "walk"])
def test_a_directory_swapped_for_a_symlink_after_the_check_is_refused(tmp_path: Path, mechanism: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The race an attacker would run: the path resolves inside the volume, then a directory on it becomes a link
    out of it before the open. Both open mechanisms refuse it."""
    if mechanism == "walk":
        monkeypatch.setattr(confine._OPENAT2, "available", False)
    elif not confine._OPENAT2.available:
        pytest.skip("openat2 is not available here")
    vol = tmp_path / "var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/v"
    (vol / "logs").mkdir(parents=True)
    (vol / "logs/app.log").write_text("mine\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "app.log").write_text("not mine\n")
    conf = Confinement("volumes", [f"{tmp_path}/var/lib/kubelet/pods/*/volumes/*/*/*/*.log"])
    fd = conf.open(str(vol / "logs/app.log"))
    assert os.read(fd, 100) == b"mine\n"
    os.close(fd)
    # checked (resolved beneath the volume), then swapped
    os.rename(vol / "logs", vol / "logs.old")
    (vol / "logs").symlink_to(outside)
    with pytest.raises(Refused) as raised:
        conf._open_beneath(str(vol), "logs/app.log", str(vol / "logs/app.log"))
    assert raised.value.reason == "outside_root"
    # and through the front door the link is seen for what it is
    with pytest.raises(Refused):
        conf.open(str(vol / "logs/app.log"))
