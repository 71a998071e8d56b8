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
from tests.parsers_support import run_chunks
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
    assert ordinary >= 200 and traces >= 55
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
