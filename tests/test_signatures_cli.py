"""`logagent classify` as users run it: a subprocess fed raw /dev/kmsg records, `dmesg -r`, `dmesg`, `dmesg -T`,
`journalctl -k` output and plain lines, from a file or stdin."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from logagent.inputs.kmsgformat import KmsgRecord, parse_capture

DATA = Path(__file__).parent / "data" / "kernel"  # a copy of ../shared/testdata/kernel
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared kernel test data not present")


def classify(*args: str, stdin: bytes | None = None) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run([sys.executable, "-m", "logagent", "classify", *args], input=stdin, capture_output=True,
                          cwd=REPO, timeout=60)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr.decode()


def sample() -> list[KmsgRecord]:
    return parse_capture((DATA / "kmsg_sample.txt").read_bytes())


def expected_sample() -> list[tuple[str, str, str, str]]:
    """(category, signature, first line, last line) of every incident in the sample, from its labels/events."""
    recs = {r.seq: r for r in sample()}
    events = [json.loads(x) for x in (DATA / "kmsg_sample.events.jsonl").read_text().splitlines()]
    labels = [json.loads(x) for x in (DATA / "kmsg_sample.labels.jsonl").read_text().splitlines()]
    spans = [(e["first_seq"], e["last_seq"], e["category"], e["signature"]) for e in events]
    spans += [(lab["seq"], lab["seq"], lab["category"], lab["signature"]) for lab in labels
              if lab["category"] != "none" and "event" not in lab]
    return [(c, s, recs[a].message, recs[b].message) for a, b, c, s in sorted(spans)]


def summary(incidents: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(i["category"], i["signature"], i["first_line"], i["last_line"]) for i in incidents]


def test_raw_kmsg_capture_file() -> None:
    rc, incidents, err = classify(str(DATA / "kmsg_sample.txt"))
    assert rc == 0, err
    assert summary(incidents) == expected_sample()
    oom = next(i for i in incidents if i["category"] == "oom")
    assert (oom["first_seq"], oom["last_seq"], oom["severity"], oom["fields"]["comm"]) == (77, 141, "error", "python3")
    assert oom["signatures"] == ["oom_killer_invoked", "oom_kill_constraint", "oom_killed_process",
                                 "oom_reaper_reaped"]


def test_edge_case_capture_on_stdin() -> None:
    rc, incidents, err = classify(stdin=(DATA / "kmsg_edge_cases.txt").read_bytes())
    assert rc == 0, err
    events = {(e["first_seq"], e["last_seq"]): e["signature"]
              for e in map(json.loads, (DATA / "kmsg_edge_cases.events.jsonl").read_text().splitlines())}
    got = {(i["first_seq"], i["last_seq"]): i["signature"] for i in incidents}
    assert events.items() <= got.items()
    gpu = next(i for i in incidents if i["signature"] == "gpu_fallen_off_bus")
    assert gpu["injected"] is True and gpu["permanent"] is True and gpu["fields"]["xid"] == "79"


def _dmesg_lines(style: str) -> bytes:
    out = []
    boot = time.mktime((2024, 3, 1, 8, 0, 0, 0, 0, -1))
    for r in sample():
        secs = r.usec / 1e6
        for text in r.message.split("\n"):  # dmesg prints each line of a multi-line record with the prefix
            if style == "dmesg-r":
                out.append(f"<{r.prio}>[{secs:12.6f}] {text}")
            elif style == "dmesg":
                out.append(f"[{secs:12.6f}] {text}")
            elif style == "dmesg-T":
                out.append(time.strftime("[%a %b %e %H:%M:%S %Y] ", time.localtime(boot + secs)) + text)
            elif style == "journalctl":
                out.append(time.strftime("%b %d %H:%M:%S", time.localtime(boot + secs)) + f" gpu-07 kernel: {text}")
            elif style == "kern.log":
                out.append(time.strftime("%b %e %H:%M:%S", time.localtime(boot + secs))
                           + f" gpu-07 kernel: [{secs:12.6f}] {text}")
    return ("\n".join(out) + "\n").encode()


@pytest.mark.parametrize("style", ["dmesg-r", "dmesg", "dmesg-T", "journalctl", "kern.log"])
def test_text_formats_give_the_same_incidents(style: str, tmp_path: Path) -> None:
    path = tmp_path / f"{style}.txt"
    path.write_bytes(_dmesg_lines(style))
    rc, incidents, err = classify(str(path))
    assert rc == 0, err
    # multi-line records print as several lines: compare the headline, not the last (continuation) line
    got = [(c, s, f) for c, s, f, _ in summary(incidents)]
    assert got == [(c, s, f) for c, s, f, _ in expected_sample()]
    assert all("first_lineno" in i and "first_seq" not in i for i in incidents)


def test_plain_lines_on_stdin_print_only_problems() -> None:
    labels = [json.loads(x) for x in (DATA / "kernel_signatures.jsonl").read_text().splitlines()]
    quiet = "\n".join(d["line"] for d in labels if d["category"] == "none" and "\n" not in d["line"])
    rc, incidents, err = classify(stdin=quiet.encode() + b"\n")
    assert (rc, incidents) == (0, []), err
    text = ("clocksource: Switched to clocksource kvm-clock\n"
            "EXT4-fs (sda1): re-mounted. Opts: errors=remount-ro\n"
            "XFS (dm-6): I/O Error Detected. Shutting down filesystem\n"
            "random: crng init done\n")
    rc, incidents, err = classify("-", stdin=text.encode())
    assert rc == 0, err
    assert incidents == [{"category": "fs", "signature": "xfs_shutdown", "severity": "critical", "permanent": True,
                          "cause": "xfs_shutdown",
                          "fields": {"device": "dm-6"},
                          "first_line": "XFS (dm-6): I/O Error Detected. Shutting down filesystem",
                          "last_line": "XFS (dm-6): I/O Error Detected. Shutting down filesystem",
                          "first_lineno": 3, "last_lineno": 3, "records": 1}]


def test_user_rules_and_errors(tmp_path: Path) -> None:
    rules = tmp_path / "site.yaml"
    rules.write_text("rules:\n  - signature: raid_degraded\n    category: hardware\n    keywords: ['md/raid']\n"
                     "    patterns: ['md/raid\\d+:(?P<device>md\\d+): Disk failure']\n")
    rc, incidents, err = classify("--rules", str(rules), "--disable", "link_down",
                                  stdin=b"md/raid1:md0: Disk failure on sdb1, disabling device.\n"
                                        b"ixgbe 0000:01:00.0 eth0: NIC Link is Down\n")
    assert rc == 0, err
    assert [(i["signature"], i["fields"]) for i in incidents] == [("raid_degraded", {"device": "md0"})]
    rules.write_text("rules:\n  - signature: raid\n    category: disk\n    keywords: [a]\n    patterns: [a]\n")
    rc, incidents, err = classify("--rules", str(rules), stdin=b"")
    assert rc == 2 and f"{rules}: rules[0] (raid).category" in err
    rc, _, err = classify(str(tmp_path / "nope.log"))
    assert rc == 2 and "nope.log" in err
