"""Variant container logs (tests/data/containers_variants/) written to the rules of shared/testdata/containers/README.md
with content the shared files do not have: other Java/Python/Go traces and log formats, CRI/docker edge cases.
Their `*.expected.jsonl` were derived by hand from the README. `test_parsers_containers` and `test_e2e_containers`
run them like the shared files (`logagent cat`, the joiners in any chunking, the real tailer); this module checks
the expectations themselves and the fixes the variants led to."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from logagent.parsers.factory import make_joiner
from tests.parsers_support import VARIANTS, case_names, case_path, run_chunks
from tests.parsers_support import expected as expected_case
from tests.parsers_support import run_file as run_case
from tests.parsers_support import settings as parser_settings

CASES = case_names(VARIANTS)


def run_file(name: str, fmt: str = "auto") -> list[dict[str, Any]]:
    return run_case(f"{VARIANTS.name}/{name}", fmt)


def physical_lines(case: str) -> list[bytes]:
    data = case_path(case).read_bytes()
    lines = data.split(b"\n")
    return lines[:-1] if lines[-1] == b"" else lines


def test_variant_files_are_present() -> None:
    assert {"cri_partials", "cri_ist_offset", "cri_dst_offsets", "docker_splits", "multiline_java_suppressed",
            "multiline_java_log4j", "multiline_python_gunicorn", "multiline_python_asyncio", "multiline_go_fatal",
            "multiline_go_httppanic"} <= {c.rsplit("/", 1)[1] for c in CASES}
    for case in CASES:
        assert case_path(case).is_file()


@pytest.mark.parametrize("name", CASES)
def test_expected_files_are_consistent_with_their_logs(name: str) -> None:
    """The hand-written expectations account for every physical line once, and `lines` counts the message."""
    recs = expected_case(name)
    assert sum(r["fragments"] for r in recs) == len(physical_lines(name))
    for r in recs:
        assert r["lines"] == r["message"].count("\n") + 1
        assert r["fragments"] >= r["lines"]
        assert r["stream"] in ("stdout", "stderr")


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)\Z")


def utc_ns(ts: str) -> int:
    """Independent reading of an RFC 3339 timestamp (datetime keeps microseconds only, so the fraction is added)."""
    m = _RFC3339.match(ts)
    assert m is not None, ts
    head, frac, zone = m.groups()
    zone = "+00:00" if zone == "Z" else zone
    dt = datetime.strptime(head + zone, "%Y-%m-%dT%H:%M:%S%z").astimezone(UTC)
    return int(dt.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


@pytest.mark.parametrize("name", CASES)
def test_records_start_at_their_first_physical_line_and_keep_its_time(name: str) -> None:
    data = case_path(name).read_bytes()
    starts = {0} | {i + 1 for i, b in enumerate(data) if b == 0x0A}
    for rec in run_case(name):
        assert rec["offset"] in starts
        end = data.find(b"\n", rec["offset"])
        line = data[rec["offset"]:end if end >= 0 else len(data)].decode()
        assert line.startswith(rec["time"] + " ") or f'"time":"{rec["time"]}"' in line
        assert rec["time_ns"] == utc_ns(rec["time"])


def test_offsets_across_a_dst_switch_and_half_hour_zones_convert_to_utc() -> None:
    times = {r["time"]: r["time_ns"] for r in run_file("cri_dst_offsets") + run_file("cri_ist_offset")}
    # 01:59:59.999999999-08:00 and 03:00:00-07:00 are one nanosecond apart in UTC
    assert times["2024-03-10T03:00:00.000001-07:00"] - times["2024-03-10T01:59:59.999999999-08:00"] == 1_001
    assert times["2024-05-14T15:30:00+05:30"] == utc_ns("2024-05-14T10:00:00Z")


def run_bytes(data: bytes, fmt: str = "auto") -> list[dict[str, Any]]:
    return run_chunks(make_joiner(parser_settings(format=fmt), "app.log"), data)


def test_a_stray_first_line_does_not_make_a_cri_file_raw() -> None:
    data = (b"torn write before the runtime's first line\n   \n"
            b"2024-05-14T09:00:00Z stdout F hello\n2024-05-14T09:00:01.5Z stderr F world\n")
    records = run_bytes(data)
    assert records[0]["message"] == "torn write before the runtime's first line"
    assert records[0]["flags"] == ["unparsed"]
    assert records[1]["flags"] == ["unparsed"]  # the whitespace-only line is not CRI either
    assert [(r.get("stream"), r["message"], r.get("flags")) for r in records[2:]] == [
        ("stdout", "hello", None), ("stderr", "world", None)]


def test_a_plain_log_quoting_one_cri_line_stays_raw() -> None:
    data = b"starting\nreplaying: 2024-05-14T09:00:00Z stdout F x\n2024-05-14T09:00:00Z stdout F quoted\nstopping\n"
    records = run_bytes(data)
    assert [r["message"] for r in records] == data.decode().splitlines()
    assert not [r for r in records if "flags" in r or "stream" in r]


def test_a_fraction_longer_than_nanoseconds_is_not_a_cri_timestamp() -> None:
    data = b"2024-05-14T09:00:00.1Z stdout F ok\n2024-05-14T09:00:00.1234567890Z stdout F ten digits\n"
    records = run_bytes(data, "cri")
    assert records[0]["time_ns"] == utc_ns("2024-05-14T09:00:00.1Z")
    assert records[1]["flags"] == ["unparsed"]
    assert records[1]["message"] == "2024-05-14T09:00:00.1234567890Z stdout F ten digits"


def grouped(mode: str, text: str, stream: str = "stderr") -> list[list[str]]:
    data = "".join(f"2024-05-14T09:00:00.{i + 1:06d}Z {stream} F {line}\n"
                   for i, line in enumerate(text.split("\n"))).encode()
    joiner = make_joiner(parser_settings(format="cri", multiline=mode), "app.log")
    return [r["message"].split("\n") for r in run_chunks(joiner, data)]


def test_python_traceback_after_indented_lines_is_not_right_after_the_header() -> None:
    text = ("ERROR:    Exception in ASGI application\n"
            "  + Exception Group Traceback (most recent call last):\n"
            "  | ExceptionGroup: unhandled errors in a TaskGroup (1 sub-exception)\n"
            "  +------------------------------------\n"
            "Traceback (most recent call last):\n"
            '  File "/app/main.py", line 3, in <module>\n'
            "KeyError: 'k'")
    lines = text.split("\n")
    assert grouped("python", text) == [lines[0:4], lines[4:7]]


def test_python_blank_line_after_frames_joins_only_if_the_trace_goes_on() -> None:
    text = ("Traceback (most recent call last):\n"
            '  File "/app/main.py", line 3, in <module>\n'
            "\n"
            '  File "/app/lib.py", line 9, in run\n'
            "ValueError: x\n"
            "Traceback (most recent call last):\n"
            '  File "/app/main.py", line 5, in <module>\n'
            "\n"
            "2024-05-14 09:00:01,000 INFO next")
    lines = text.split("\n")
    assert grouped("python", text) == [lines[0:5], lines[5:7], [""], lines[8:9]]


def test_json_log_lines_are_one_record_in_java_and_python_modes() -> None:
    java = ('2024-05-14 09:00:00.000 ERROR 1 --- [main] c.e.App : failed\n'
            'java.lang.IllegalStateException: x\n'
            '\tat c.e.App.run(App.java:10)\n'
            '{"@timestamp":"2024-05-14T09:00:01Z","level":"ERROR",'
            '"stack_trace":"java.lang.X: y\\n\\tat a.B(B.java:1)"}\n'
            '{"level":"INFO","message":"next"}')
    lines = java.split("\n")
    assert grouped("java", java, "stdout") == [lines[0:3], lines[3:4], lines[4:5]]
    python = ('Traceback (most recent call last):\n  File "/app/a.py", line 1, in <module>\n'
              '{"levelname": "ERROR", "exc_info": "Traceback (most recent call last):\\n  File \\"/app/b.py\\""}')
    lines = python.split("\n")
    assert grouped("python", python) == [lines[0:2], lines[2:3]]


def test_go_recovered_panic_reported_by_kubernetes_starts_a_dump() -> None:
    text = ('E0514 09:12:04.123456       1 runtime.go:79] Observed a panic: "boom" (boom)\n'
            "goroutine 7 [running]:\n"
            "k8s.io/apimachinery/pkg/util/runtime.logPanic({0x1b2c3d0?, 0x2e4f5a0})\n"
            "\t/go/pkg/mod/k8s.io/apimachinery@v0.29.0/pkg/util/runtime/runtime.go:75 +0x85\n"
            "panic: boom [recovered]\n"
            "\tpanic: boom\n"
            "\n"
            "goroutine 7 [running]:\n"
            "main.main()\n"
            "\t/src/main.go:9 +0x1d\n"
            "I0514 09:12:05.000000       1 main.go:20] restarted")
    lines = text.split("\n")
    assert grouped("go", text) == [lines[0:4], lines[4:10], lines[10:11]]
