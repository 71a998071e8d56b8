"""Issue 10, attack 3: userspace forging kernel problems to set node conditions, as a root process would.

- `echo "<11>EXT4-fs (...): Remounting filesystem read-only" > /dev/kmsg` (facility 1, and `<3>`: the kernel files
  a userspace write without a facility under facility 1) read by the kmsg input from the real /dev/kmsg (root only);
- `logger -p kern.crit` reaches the journal as `_TRANSPORT=syslog` with `SYSLOG_FACILITY=0`: a real journal file
  built by systemd-journal-remote, read by the journal input, next to a genuine `_TRANSPORT=kernel` record.

With the default settings the forged records are shipped (flagged `userspace: true`) but raise no incident and set
no node condition; the genuine kernel record in the same journal does. `injected: report` turns forged ones into
incidents flagged `injected` that still set no condition. In the /dev/kmsg case the `node_problems` stage reports to
a fake API server (tests/kube_objects.py), which must see no ReadonlyFilesystem=True patch and no Event.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from logagent import metrics
from logagent.config import parse_config
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for, kmsg_writable
from tests.kube_apiserver import FakeApiServer
from tests.kube_objects import make_node

READONLY = "EXT4-fs ({dev}): Remounting filesystem read-only"


def _read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _ignored() -> float:
    return metrics.FLAGGED.labels(component="sig", flag="userspace_signature_ignored")._value.get()


def _gauge(device: str) -> float:
    return metrics.KERNEL_CONDITIONS.labels(signature="fs_remount_readonly", device=device)._value.get()


def _agent(tmp_path: Path, out: Path, inp: dict[str, Any], stages: list[dict[str, Any]] | None = None,
           **signatures: Any) -> Pipeline:
    rules = tmp_path / "site.yaml"
    rules.write_text("version: 1\ngroups:\n  fs: 0.2\n")  # a report closes 0.2 s after its last line
    return Pipeline(parse_config({
        "state_dir": str(tmp_path / "state"), "grace_period": "5s", "http": {"enabled": False},
        "inputs": [inp],
        "pipeline": [{"type": "signatures", "name": "sig", "match": ["kernel", "journal"], "flush_interval": "50ms",
                      "rules_files": [str(rules)], **signatures}, *(stages or [])],
        "outputs": [{"type": "file", "name": "out", "path": str(out), "fsync": False}],
    }, "<security test>"))


@pytest.mark.root
@pytest.mark.skipif(not kmsg_writable(), reason="needs root and a readable, writable /dev/kmsg")
@pytest.mark.parametrize("mode", ["ignore", "report"])
async def test_a_userspace_write_to_dev_kmsg_sets_no_node_condition(api: FakeApiServer, tmp_path: Path,
                                                                     mode: str) -> None:
    run = uuid.uuid4().hex[:8]
    devices = [f"forged{run}a", f"forged{run}b"]
    out = tmp_path / "out.jsonl"
    before = _ignored()
    api.add_node(make_node("node-a"))
    boot_file = tmp_path / "boot_id"
    boot_file.write_text(str(uuid.uuid4()))
    problems = {"type": "node_problems", "match": [], "boot_id_path": str(boot_file), "api_server": api.url,
                "node_name": "node-a", "token_file": "/nonexistent", "ca_file": "/nonexistent"}
    pipeline = _agent(tmp_path, out, {"type": "kmsg", "name": "kernel", "tag": "kernel", "read_from": "tail",
                                      "flush_interval": "50ms"}, [problems], injected=mode)
    await pipeline.start()
    try:
        # `read_from: tail`: write once the input has opened the device (it starts at the buffer's end)
        kmsg = pipeline.inputs["kernel"].input
        await async_wait_for(lambda: kmsg.opened, timeout=20, what="the kmsg input to open /dev/kmsg")
        fd = os.open("/dev/kmsg", os.O_WRONLY)
        try:
            # as the attacker would: one claims facility 1 at level 3, the other no facility at all
            os.write(fd, f"<11>{READONLY.format(dev=devices[0])}\n".encode())
            os.write(fd, f"<3>{READONLY.format(dev=devices[1])}\n".encode())
        finally:
            os.close(fd)

        def forged() -> list[dict[str, Any]]:
            return [r for r in _read(out) if run in r.get("message", "") or run in str(r.get("fields", ""))]

        def shipped() -> bool:
            got = forged()
            lines = sorted(line for r in got if "signature" in r for line in r["lines"])
            return len(got) >= 2 and (mode == "ignore" or len(lines) == 2)  # `report`: the incident(s) too

        await async_wait_for(shipped, timeout=20, what="the forged records shipped")
    finally:
        pipeline.request_stop()
        await pipeline.shutdown()
    records = [r for r in forged() if "signature" not in r]
    events = [r for r in forged() if "signature" in r]
    # shipped as they are, flagged as written by userspace (the kernel put both under facility 1)
    assert [(r["facility"], r["level"], r["userspace"]) for r in records] == [(1, 3, True), (1, 3, True)]
    conditions = pipeline.ctx.services.kernel_conditions
    assert not [k for k in conditions if run in k] and [_gauge(d) for d in devices] == [0, 0]
    # nothing reached the Node: no condition turned True, no Event
    set_true = [c for _, _, patch in api.node_patches for c in (patch.get("status") or {}).get("conditions") or ()
                if c.get("status") == "True"]
    assert set_true == [] and not [e for e in api.events.values() if run in str(e)]
    if mode == "ignore":
        assert events == [] and _ignored() - before == 2
    else:
        # a fault-injection drill: reported, flagged injected, still no condition
        assert sorted(line for e in events for line in e["lines"]) == [READONLY.format(dev=d) for d in devices]
        assert {(e["signature"], e["injected"], e["permanent"], "condition" in e) for e in events} == {
            ("fs_remount_readonly", True, True, False)}


def test_logger_with_the_kern_facility_in_the_journal_sets_no_node_condition(tmp_path: Path) -> None:
    ji = pytest.importorskip("tests.test_input_journal", reason="needs systemd-python and systemd-journal-remote")
    if ji.JOURNAL_REMOTE is None:
        pytest.skip("systemd-journal-remote is not installed")
    import asyncio

    forged = {"__CURSOR": "s=0;i=1", "__REALTIME_TIMESTAMP": str(ji.T0), "__MONOTONIC_TIMESTAMP": "5000000",
              "_BOOT_ID": ji.BOOT, "_TRANSPORT": "syslog", "PRIORITY": "2", "SYSLOG_FACILITY": "0",
              "SYSLOG_IDENTIFIER": "kernel", "_PID": "31337", "_COMM": "logger",
              "MESSAGE": READONLY.format(dev="sdz9")}
    genuine = ji.kernel_entry(2, READONLY.format(dev="nvme7n1"), prio=2)
    ji.write_journal(tmp_path / "journal" / "remote-a.journal", [forged, genuine])
    out = tmp_path / "out.jsonl"
    before = _ignored()

    async def run() -> Pipeline:
        pipeline = _agent(tmp_path, out, {"type": "journal", "name": "jr", "directory": str(tmp_path / "journal"),
                                          "flush_interval": "50ms"})
        await pipeline.start()
        try:
            await async_wait_for(lambda: len(_read(out)) >= 3, timeout=20, what="two records and one event")
        finally:
            pipeline.request_stop()
            await pipeline.shutdown()
        return pipeline

    pipeline = asyncio.run(run())
    records = _read(out)
    shipped = [(r["message"], r["transport"], r["facility"], r["userspace"]) for r in records if "signature" not in r]
    assert shipped == [(READONLY.format(dev="sdz9"), "syslog", 0, True),
                       (READONLY.format(dev="nvme7n1"), "kernel", 0, False)]
    # only the kernel's own record raised the incident and set the condition
    events = [r for r in records if "signature" in r]
    assert [(e["fields"]["device"], e.get("condition"), e.get("injected")) for e in events] == [
        ("nvme7n1", "fs_remount_readonly:nvme7n1", None)]
    assert list(pipeline.ctx.services.kernel_conditions) == ["fs_remount_readonly:nvme7n1"]
    assert _gauge("sdz9") == 0 and _gauge("nvme7n1") == 1
    assert _ignored() - before == 1
