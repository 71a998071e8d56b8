"""The journal input over real journal files, built by Debian's systemd-journal-remote from export-format input:
fields as kmsg records have them, unit/identifier/transport filters, waiting for new files, and resume by cursor
across restarts with no loss and no duplicates."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import orjson
import pytest

from logagent.config import ConfigError, Section, parse_config
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for

journal = pytest.importorskip("systemd.journal")

from logagent.inputs.journal import JournalInput  # noqa: E402  (needs systemd-python)

JOURNAL_REMOTE = next((p for p in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
                       if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(JOURNAL_REMOTE is None, reason="systemd-journal-remote is not installed")

BOOT = "0123456789abcdef0123456789abcdef"
T0 = 1_700_000_000_000_000  # realtime of the first entry, microseconds


def export_entry(fields: dict[str, str | bytes]) -> bytes:
    """One entry in the journal export format: `KEY=value` lines, or the binary form (KEY, newline, little-endian
    64-bit length, data, newline) for values with newlines or bytes that are not text; an empty line ends it."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode() if isinstance(value, str) else value
        if b"\n" in data or isinstance(value, bytes):
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out) + b"\n"


def kernel_entry(i: int, message: str | bytes, prio: int = 3, facility: int = 0, **extra: str) -> dict:
    return {"__CURSOR": f"s=0;i={i}", "__REALTIME_TIMESTAMP": str(T0 + i * 1000),
            "__MONOTONIC_TIMESTAMP": str(5_000_000 + i * 1000), "_BOOT_ID": BOOT, "_TRANSPORT": "kernel",
            "PRIORITY": str(prio), "SYSLOG_FACILITY": str(facility), "SYSLOG_IDENTIFIER": "kernel",
            "_SOURCE_MONOTONIC_TIMESTAMP": str(4_000_000 + i * 1000), "MESSAGE": message, **extra}


def unit_entry(i: int, message: str, unit: str, ident: str) -> dict:
    return {"__CURSOR": f"s=0;i={i}", "__REALTIME_TIMESTAMP": str(T0 + i * 1000),
            "__MONOTONIC_TIMESTAMP": str(5_000_000 + i * 1000), "_BOOT_ID": BOOT, "_TRANSPORT": "stdout",
            "PRIORITY": "6", "SYSLOG_FACILITY": "3", "SYSLOG_IDENTIFIER": ident, "_SYSTEMD_UNIT": unit,
            "_PID": "4242", "MESSAGE": message}


def write_journal(path: Path, entries: list[dict]) -> None:
    """Real journal file from export-format input, written by systemd-journal-remote (atomically visible)."""
    tmp = path.parent.with_name("staging") / path.name  # journal-remote wants the .journal suffix
    tmp.parent.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([JOURNAL_REMOTE, f"--output={tmp}", "-"], input=b"".join(map(export_entry, entries)),
                          capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr.decode()
    assert f"writing {len(entries)} entries".encode() in proc.stderr
    os.rename(tmp, path)  # the reader watches the directory: the file appears complete


def _config(tmp_path: Path, out: Path, **settings):
    doc = {"state_dir": str(tmp_path / "state"), "grace_period": "5s", "checkpoint_interval": "50ms",
           "inputs": [{"type": "journal", "name": "jr", "directory": str(tmp_path / "journal"),
                       "flush_interval": "50ms", **settings}],
           "outputs": [{"type": "file", "name": "out", "path": str(out), "fsync": False}]}
    return parse_config(doc, "test.yaml")


def _read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


async def test_kernel_transport_records_get_kmsg_fields_and_resume_by_cursor(tmp_path: Path) -> None:
    jdir = tmp_path / "journal"
    write_journal(jdir / "remote-a.journal", [
        kernel_entry(1, "EXT4-fs error (device sda1): ext4_find_entry:1455: comm ls: reading directory lblock 0",
                     prio=3, _KERNEL_SUBSYSTEM="block", _KERNEL_DEVICE="b8:1"),
        unit_entry(2, "Started Session 4 of user root.", "systemd-logind.service", "systemd-logind"),
        kernel_entry(3, "Mem-Info:\nactive_anon:10 inactive_anon:20", prio=4),
        kernel_entry(4, "logagent-test injected line", prio=3, facility=1),
        kernel_entry(5, b"bad utf8 \xff\xfe here", prio=6),
    ])
    out1, out2 = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    p = Pipeline(_config(tmp_path, out1, transports=["kernel"], tag="kernel"))
    await p.start()
    got = await async_wait_for(lambda: len(_read(out1)) >= 4 and _read(out1), timeout=15, what="4 kernel records")
    tracker = p.ctx.checkpoints.tracker("jr")
    await async_wait_for(lambda: tracker.committed.get("journal") == got[-1]["cursor"], what="cursor checkpoint")
    p.request_stop()
    await p.shutdown()

    assert [r["message"] for r in got] == [
        "EXT4-fs error (device sda1): ext4_find_entry:1455: comm ls: reading directory lblock 0",
        "Mem-Info:\nactive_anon:10 inactive_anon:20", "logagent-test injected line", "bad utf8 \ufffd\ufffd here"]
    assert [(r["level"], r["facility"], r["userspace"]) for r in got] == [(3, 0, False), (4, 0, False),
                                                                          (3, 1, True), (6, 0, False)]
    assert [r["mono_us"] for r in got] == [4_001_000, 4_003_000, 4_004_000, 4_005_000]
    assert [r["time_ns"] for r in got] == [(T0 + i * 1000) * 1000 for i in (1, 3, 4, 5)]
    assert got[0]["time"] == "2023-11-14T22:13:20.001000000Z"
    assert got[0]["fields"] == {"SUBSYSTEM": "block", "DEVICE": "b8:1"}
    assert {r["boot_id"] for r in got} == {"01234567-89ab-cdef-0123-456789abcdef"}
    assert {(r["source"], r["input"], r["transport"]) for r in got} == {("journal", "jr", "kernel")}
    assert got[3]["flags"] == ["invalid_utf8"] and "flags" not in got[0]
    assert len({r["cursor"] for r in got}) == 4

    # More entries arrive in a second file while the agent is down; the restart resumes after the cursor.
    write_journal(jdir / "remote-b.journal", [kernel_entry(i, f"later kernel line {i}") for i in range(6, 9)])
    p = Pipeline(_config(tmp_path, out2, transports=["kernel"], tag="kernel"))
    await p.start()
    await async_wait_for(lambda: len(_read(out2)) >= 3, timeout=15, what="the 3 later lines")
    # ... and one more file while it runs: Reader.wait notices the new file.
    write_journal(jdir / "remote-c.journal", [kernel_entry(9, "live kernel line 9")])
    await async_wait_for(lambda: len(_read(out2)) >= 4, timeout=15, what="the line written while running")
    last = _read(out2)[-1]["cursor"]
    await async_wait_for(lambda: p.ctx.checkpoints.tracker("jr").committed.get("journal") == last,
                         what="checkpoint at the last line")
    p.request_stop()
    await p.shutdown()
    second = _read(out2)
    assert [r["message"] for r in second] == [f"later kernel line {i}" for i in range(6, 9)] + ["live kernel line 9"]
    assert {r["cursor"] for r in second}.isdisjoint(r["cursor"] for r in got)


async def test_units_and_identifiers_select_entries_and_tail_skips_the_past(tmp_path: Path) -> None:
    jdir = tmp_path / "journal"
    write_journal(jdir / "remote-a.journal", [
        unit_entry(1, "kubelet started", "kubelet.service", "kubelet"),
        unit_entry(2, "noise", "cron.service", "CRON"),
        unit_entry(3, "containerd ready", "containerd.service", "containerd"),
        kernel_entry(4, "a kernel line"),
    ])
    out = tmp_path / "out.jsonl"
    p = Pipeline(_config(tmp_path, out, units=["kubelet.service"], identifiers=["containerd"],
                         fields=["_PID"]))
    await p.start()
    got = await async_wait_for(lambda: len(_read(out)) >= 2 and _read(out), timeout=15, what="2 selected entries")
    tracker = p.ctx.checkpoints.tracker("jr")
    await async_wait_for(lambda: tracker.committed.get("journal") == got[-1]["cursor"], what="checkpoint")
    p.request_stop()
    await p.shutdown()
    assert [(r["message"], r["unit"], r["identifier"]) for r in got] == [
        ("kubelet started", "kubelet.service", "kubelet"), ("containerd ready", "containerd.service", "containerd")]
    assert [r["fields"] for r in got] == [{"_PID": "4242"}] * 2
    assert {(r["level"], r["facility"], r["userspace"]) for r in got} == {(6, 3, True)}

    # read_from: tail on a first start (fresh state dir): only entries written after the start are read.
    out_tail = tmp_path / "tail.jsonl"
    cfg = _config(tmp_path / "fresh", out_tail, read_from="tail")
    cfg = parse_config({**cfg.raw, "inputs": [{**cfg.raw["inputs"][0], "directory": str(jdir)}]}, "test.yaml")
    p = Pipeline(cfg)
    await p.start()
    inp = p.inputs["jr"].input
    await async_wait_for(lambda: inp.opened, what="reader positioned at the tail")
    write_journal(jdir / "remote-b.journal", [unit_entry(10, "after tail start", "kubelet.service", "kubelet")])
    got = await async_wait_for(lambda: _read(out_tail), timeout=15, what="the new entry")
    p.request_stop()
    await p.shutdown()
    assert [r["message"] for r in got] == ["after tail start"]


def test_settings_are_validated_with_the_key_path() -> None:
    with pytest.raises(ConfigError, match=r"j.yaml: inputs\[1\].files: give either directory or files"):
        JournalInput.parse_settings(Section({"directory": "/x", "files": ["/y"]}, "inputs[1]", "j.yaml"))
    with pytest.raises(ConfigError, match=r"inputs\[1\].unit: unknown key"):
        JournalInput.parse_settings(Section({"unit": "x"}, "inputs[1]", "j.yaml"))
