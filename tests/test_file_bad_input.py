"""Bad input never crashes the tailer and is never lost silently: it becomes a flagged, counted record or a clear
error, and everything else keeps flowing."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from logagent import metrics
from tests.filetail import Agent, agent_config


def flagged(flag: str) -> float:
    return metrics.REGISTRY.get_sample_value("logagent_flagged_records_total",
                                             {"component": "files", "flag": flag}) or 0.0


async def test_invalid_utf8_is_kept_with_replacement_characters_and_flagged(tmp_path: Path) -> None:
    (tmp_path / "bad.log").write_bytes(b"good line\nbad \xff\xfe bytes\nlatin1 caf\xe9\nok \xc3\xa9\n")
    before = flagged("invalid_utf8")
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")])) as agent:
        await agent.wait_messages(4)
    records = agent.records()
    assert [r["message"] for r in records] == ["good line", "bad \ufffd\ufffd bytes", "latin1 caf\ufffd", "ok é"]
    assert [r.get("flags") for r in records] == [None, ["invalid_utf8"], ["invalid_utf8"], None]
    assert flagged("invalid_utf8") - before == 2


async def test_nul_bytes_stay_in_the_message(tmp_path: Path) -> None:
    (tmp_path / "nul.log").write_bytes(b"a\x00b\n\x00\x00\x00\nafter\n")
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")])) as agent:
        await agent.wait_messages(3)
    assert agent.messages() == ["a\x00b", "\x00\x00\x00", "after"]


async def test_a_5mb_line_is_truncated_flagged_and_counted(tmp_path: Path) -> None:
    big = b"x" * (5 * 1024 * 1024)
    log = tmp_path / "big.log"
    log.write_bytes(b"before\n" + big[: 3 * 1024 * 1024])  # the long line arrives in two writes
    before = flagged("truncated")
    doc = agent_config(tmp_path, [str(tmp_path / "*.log")], read_buffer="1MiB")
    async with Agent(tmp_path, doc) as agent:
        await agent.wait_messages(2)
        with open(log, "ab") as f:
            f.write(big[3 * 1024 * 1024:] + b"\nafter\n")
        await agent.wait_messages(3)
    records = agent.records()
    assert [r["message"][:6] for r in records] == ["before", "xxxxxx", "after"]
    assert len(records[1]["message"].encode()) == 256 * 1024
    assert records[1]["flags"] == ["truncated"]
    assert records[2]["offset"] == len(b"before\n") + len(big) + 1
    assert flagged("truncated") - before == 1


async def test_a_long_multibyte_line_is_cut_on_a_character_boundary(tmp_path: Path) -> None:
    (tmp_path / "utf.log").write_bytes(("é" * 200_000).encode() + b"\nnext\n")
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")])) as agent:
        await agent.wait_messages(2)
    records = agent.records()
    assert set(records[0]["message"]) == {"é"}
    assert len(records[0]["message"].encode()) <= 256 * 1024
    assert records[0]["flags"] == ["truncated"]
    assert records[1]["message"] == "next"


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Root reads every file: act as nobody (effective ids, restored afterwards) so that EACCES is real."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


async def test_unreadable_file_and_directory_matching_the_glob(caplog: pytest.LogCaptureFixture) -> None:
    base = Path(tempfile.mkdtemp(prefix="logagent-eacces-", dir="/tmp"))
    try:
        os.chmod(base, 0o777)
        logs = base / "logs"
        logs.mkdir()
        os.chmod(logs, 0o777)
        (logs / "ok.log").write_text("readable 1\n")
        secret = logs / "secret.log"
        secret.write_text("secret 1\n")
        os.chmod(secret, 0)
        if os.geteuid() == 0:
            os.chown(secret, 65534, 65534)  # its owner may make it readable again later in the test
        (logs / "dir.log").mkdir()
        (logs / "dir.log" / "inner").write_text("not a log\n")
        caplog.set_level(logging.WARNING, logger="logagent")
        doc = agent_config(base, [str(logs / "*.log")])
        with unprivileged():
            async with Agent(base, doc) as agent:
                assert await agent.wait_messages(1) == ["readable 1"]
                problems = [r for r in caplog.records if r.name.startswith("logagent.input.file")]
                assert any(r.getMessage() == "cannot open file: Permission denied"
                           and getattr(r, "path", "") == str(secret) for r in problems), problems
                assert any(r.getMessage() == "a directory matches the glob; skipping it"
                           and getattr(r, "path", "") == str(logs / "dir.log") for r in problems), problems
                # once readable, the file is picked up by the next scan: nothing of it was lost
                os.chmod(secret, 0o644)
                got = await agent.wait_messages(2)
                assert sorted(got) == ["readable 1", "secret 1"]
        # each problem was logged once, not at every scan
        texts = [r.getMessage() for r in caplog.records if r.name.startswith("logagent.input.file")]
        assert texts.count("cannot open file: Permission denied") == 1
        assert texts.count("a directory matches the glob; skipping it") == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_run_with_a_broken_config_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("inputs:\n  - type: file\n    paths: [/var/log/*.log]\n    max_line_bytes: lots\n"
                   "outputs:\n  - type: stdout\n")
    proc = subprocess.run([sys.executable, "-m", "logagent", "run", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{cfg}: inputs[0].max_line_bytes" in proc.stderr
    assert "lots" in proc.stderr



async def test_a_character_cut_between_cri_pieces_is_whole_again(tmp_path: Path) -> None:
    """containerd cuts long lines at 16 KiB, in bytes: a multibyte character can be split between a P piece and
    the next one. Joined, the record is valid UTF-8 and carries no flag; a really invalid byte stays flagged."""
    euro = "€".encode()
    piece = "x" * 16_382
    data = (b"2024-05-14T09:12:04.000000001Z stdout P " + piece.encode() + euro[:2] + b"\n"
            + b"2024-05-14T09:12:04.000000002Z stdout F " + euro[2:] + b" end\n"
            + b"2024-05-14T09:12:04.000000003Z stdout F bad \xff byte\n")
    (tmp_path / "c.log").write_bytes(data)
    async with Agent(tmp_path, agent_config(tmp_path, [str(tmp_path / "*.log")], format="cri")) as agent:
        await agent.wait_messages(2)
    records = agent.records()
    assert records[0]["message"] == piece + "€ end"
    assert "flags" not in records[0] and records[0]["fragments"] == 2
    assert records[1]["message"] == "bad \ufffd byte" and records[1]["flags"] == ["invalid_utf8"]
