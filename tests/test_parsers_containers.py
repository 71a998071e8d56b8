"""Every container log case reproduces its `*.expected.jsonl` exactly: through `logagent cat` run as a program,
through the joiners fed the whole file, and fed in many small pieces (as a tailer reads a growing file).

Cases: the shared files (`tests/data/containers/`, a copy of ../shared/testdata/containers) and the variants
written to the same rules (`tests/data/containers_variants/`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.parsers_support import DATA, by_stream, case_format, case_mode, case_names, case_path, expected, run_file

CASES = case_names()


def test_shared_data_is_present() -> None:
    assert {"cri_basic", "cri_local_tz", "docker_json", "multiline_java", "multiline_python",
            "multiline_go_panic"} <= {c.rsplit("/", 1)[1] for c in case_names(DATA)}


@pytest.mark.parametrize("name", CASES)
def test_logagent_cat_reproduces_expected(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "logagent", "cat", "--multiline", case_mode(name), str(case_path(name))],
        capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    got = [json.loads(line) for line in proc.stdout.split(b"\n") if line]
    assert by_stream(got) == by_stream(expected(name))
    # nothing flagged; docker's `attrs` is the only extra field
    assert all(set(r) - {"attrs"} == {"time", "stream", "message", "fragments", "lines"} for r in got)
    assert len(got) == len(expected(name))


def test_logagent_cat_dash_reads_stdin_like_the_file() -> None:
    name = next(c for c in CASES if c.endswith("/multiline_java"))
    argv = [sys.executable, "-m", "logagent", "cat", "--multiline", case_mode(name)]
    from_file = subprocess.run([*argv, str(case_path(name))], capture_output=True, timeout=60)
    with open(case_path(name), "rb") as f:
        from_stdin = subprocess.run([*argv, "-"], stdin=f, capture_output=True, timeout=60)
    assert from_stdin.returncode == 0, from_stdin.stderr.decode()
    assert from_stdin.stdout == from_file.stdout
    got = [json.loads(line) for line in from_stdin.stdout.split(b"\n") if line]
    assert by_stream(got) == by_stream(expected(name))


def test_logagent_cat_dash_prints_records_of_a_pipe_as_they_arrive() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "logagent", "cat", "--format", "raw", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"first line\nsecond\n")
        proc.stdin.flush()
        # printed while stdin is still open: the reader does not wait for a full buffer or EOF
        assert json.loads(proc.stdout.readline())["message"] == "first line"
        assert json.loads(proc.stdout.readline())["message"] == "second"
        proc.stdin.write(b"third")
        proc.stdin.close()
        assert [json.loads(line)["message"] for line in proc.stdout.read().splitlines()] == ["third"]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("fmt", ["auto", "explicit"])
def test_joiners_reproduce_expected(name: str, fmt: str) -> None:
    if fmt == "explicit":
        fmt = case_format(name)
    records = run_file(name, fmt)
    assert by_stream(records) == by_stream(expected(name))
    assert not [r for r in records if "flags" in r]


@pytest.mark.parametrize("name", CASES)
def test_record_offset_is_the_first_physical_line_of_the_record(name: str) -> None:
    data = case_path(name).read_bytes()
    starts = {0} | {i + 1 for i, b in enumerate(data) if b == 0x0A}
    for rec in run_file(name):
        assert rec["offset"] in starts
        end = data.find(b"\n", rec["offset"])
        line = data[rec["offset"]:end if end >= 0 else len(data)].decode()
        # the first physical line carries the record's timestamp (CRI: first field; docker: the "time" value)
        assert line.startswith(rec["time"] + " ") or f'"time":"{rec["time"]}"' in line


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("piece", [1, 7, 64, 333, 4096, 16_385])
def test_small_reads_give_the_same_records(name: str, piece: int) -> None:
    size = case_path(name).stat().st_size
    whole = run_file(name)
    assert run_file(name, cuts=range(piece, size, piece)) == whole


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_chunking_gives_the_same_records(name: str, data: st.DataObject) -> None:
    size = case_path(name).stat().st_size
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=size - 1), max_size=40))
    records = run_file(name, cuts=cuts)
    assert records == run_file(name)
    assert by_stream(records) == by_stream(expected(name))
