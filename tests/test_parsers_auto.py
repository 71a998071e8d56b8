"""`multiline: auto` on the corpus of tests/data/multiline_auto/: every trace of every runtime one record, every
ordinary line its own record, per stream — fed whole, in any chunking (hypothesis), through `logagent cat` and
through the real tailer; the false-join count on the whole mixed corpus is zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logagent.parsers.factory import make_joiner
from tests.auto_support import false_joins, load, names
from tests.parsers_support import case_path, expected, run_chunks
from tests.parsers_support import settings as parser_settings

CASES = names()


def run(data: bytes, cuts: list[int] | range = (), **keys: object) -> list[dict]:
    joiner = make_joiner(parser_settings(format="cri", multiline="auto", **keys), "app.log")
    return run_chunks(joiner, data, cuts)


def per_stream(records: list[dict]) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for r in records:
        out.setdefault(r["stream"], []).append(r["message"].split("\n"))
    return out


def test_corpus_covers_every_runtime() -> None:
    assert {"java", "python", "go", "node", "ruby", "php", "dotnet", "dart", "ordinary", "mixed"} <= set(CASES)
    for name in CASES:
        corpus = load(name)
        assert corpus.records and len(corpus.physical) == sum(len(r.lines) for r in corpus.records)


@pytest.mark.parametrize("name", CASES)
def test_every_trace_one_record_every_other_line_its_own(name: str) -> None:
    corpus = load(name)
    records = run(corpus.cri())
    assert per_stream(records) == corpus.expected()
    # the record's fields: the first line's timestamp, one fragment per physical line, nothing flagged
    want = {r.stream: [] for r in corpus.records}
    for r in corpus.records:
        want[r.stream].append((corpus.time_of(r), len(r.lines), len(r.lines)))
    have: dict[str, list[tuple[str, int, int]]] = {}
    for r in records:
        have.setdefault(r["stream"], []).append((r["time"], r["fragments"], r["lines"]))
        assert "flags" not in r
    assert have == want


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_chunking_gives_the_same_records(name: str, data: st.DataObject) -> None:
    raw = load(name).cri()
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(raw) - 1), max_size=60))
    assert run(raw, cuts) == run(raw)


@pytest.mark.parametrize("name", CASES)
def test_line_by_line_reads_give_the_same_records(name: str) -> None:
    raw = load(name).cri()
    ends = [i + 1 for i, b in enumerate(raw) if b == 0x0A]
    assert run(raw, ends) == run(raw)


def test_false_joins_on_the_whole_corpus_are_zero() -> None:
    ordinary = joined = traces = broken = 0
    for name in CASES:
        corpus = load(name)
        o, j, t, b = false_joins(corpus, per_stream(run(corpus.cri())))
        ordinary, joined, traces, broken = ordinary + o, joined + j, traces + t, broken + b
    print(f"\nauto corpus: {ordinary} ordinary lines, {joined} falsely joined; "
          f"{traces} traces, {broken} not one record")
    assert ordinary >= 220 and traces >= 60
    assert joined == 0 and broken == 0


@pytest.mark.parametrize("name", CASES)
def test_logagent_cat_multiline_auto(name: str, tmp_path: Path) -> None:
    corpus = load(name)
    path = tmp_path / "0.log"
    path.write_bytes(corpus.cri())
    proc = subprocess.run([sys.executable, "-m", "logagent", "cat", "--multiline", "auto", str(path)],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    got = [json.loads(line) for line in proc.stdout.split(b"\n") if line]
    assert per_stream(got) == corpus.expected()


def test_shipped_kubernetes_config_groups_container_logs_with_auto() -> None:
    """The false-join rate above is zero, so the production config (conf/logagent.yaml, the DaemonSet's ConfigMap
    holds it byte for byte) makes `auto` the default of its container and pod-volume inputs."""
    root = Path(__file__).resolve().parent.parent
    doc = yaml.safe_load((root / "conf" / "logagent.yaml").read_text())
    inputs = {i["name"]: i for i in doc["inputs"] if i["type"] == "file"}
    assert inputs["containers"]["multiline"] == "auto" and inputs["pod-volumes"]["multiline"] == "auto"
    assert "multiline" not in inputs["host"]  # syslog and other host files are left alone
    joiner = make_joiner(parser_settings(format=inputs["containers"]["format"], multiline="auto"), "x.log")
    corpus = load("mixed")
    assert per_stream(run_chunks(joiner, corpus.cri())) == corpus.expected()


# -- the language modes' test data (tests/data/containers*, written by others to the per-language rules) -----------

AGREEING = ["containers/multiline_go_panic", "containers/multiline_java", "containers/multiline_python",
            "containers_variants/multiline_go_fatal", "containers_variants/multiline_go_httppanic",
            "containers_variants/multiline_java_log4j"]


def auto_on_case(case: str) -> dict[str, list[list[str]]]:
    joiner = make_joiner(parser_settings(format="auto", multiline="auto"), "x.log")
    return per_stream(run_chunks(joiner, case_path(case).read_bytes()))


def expected_case(case: str) -> dict[str, list[list[str]]]:
    return per_stream(expected(case))


@pytest.mark.parametrize("case", AGREEING)
def test_auto_gives_the_language_modes_records_on_their_test_files(case: str) -> None:
    assert auto_on_case(case) == expected_case(case)


def _split_off(records: list[list[str]], line: str) -> list[list[str]]:
    """The records with `line` taken out of the record it ends, as a record of its own right after it."""
    out = []
    for rec in records:
        if len(rec) > 1 and rec[-1] == line:
            out += [rec[:-1], [line]]
        else:
            out.append(rec)
    return out


def _join_next(records: list[list[str]], first: str) -> list[list[str]]:
    """The record starting with `first` joined with the record after it."""
    i = next(i for i, r in enumerate(records) if r[0] == first)
    return records[:i] + [records[i] + records[i + 1]] + records[i + 2:]


def test_auto_differs_from_the_language_modes_only_where_they_join_ordinary_lines() -> None:
    """Where `java` / `python` (every untimestamped line continues; a Traceback right after a header line is a
    new group) group differently, auto keeps ordinary lines apart and keeps a report's own header with it."""
    want = expected_case("containers_variants/multiline_java_suppressed")
    want["stdout"] = _split_off(_split_off(want["stdout"], "debug: warmup cache size=0"),
                                "\tat this.line.only.looks.like.a.frame(Stdout.java:1)")
    assert auto_on_case("containers_variants/multiline_java_suppressed") == want
    want = expected_case("containers_variants/multiline_python_gunicorn")
    want["stderr"] = _join_next(want["stderr"], "Exception ignored in: <function Connection.__del__ at 0x7f3a2c1d5e40>")
    assert auto_on_case("containers_variants/multiline_python_gunicorn") == want
    # asyncio's "Task exception was never retrieved" / "future: <Task ... exception=...>" / traceback: the future
    # line (python: a line of its own) goes with the traceback it introduces
    want = expected_case("containers_variants/multiline_python_asyncio")
    want["stderr"] = _join_next(want["stderr"], next(r[0] for r in want["stderr"] if r[0].startswith("future: <Task")))
    assert auto_on_case("containers_variants/multiline_python_asyncio") == want
