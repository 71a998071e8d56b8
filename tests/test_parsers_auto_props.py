"""Properties of `multiline: auto` beyond the corpus files: the batch prefilter is exactly the per-line keyword
test (ASCII, UTF-8, a message with a newline of its own); the joiner's fast path (runs of non-hits passed on as
they are) gives the same records as stepping every line; two streams interleaved in any order are grouped as
each alone; the group bounds (lines, bytes, flush timeout) hold; docker and raw files group the same way."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logagent.parsers import autotrace
from logagent.parsers.base import RawJoiner
from logagent.parsers.cri import CriJoiner
from logagent.parsers.factory import make_joiner
from logagent.parsers.multiline import MultilineJoiner
from tests.auto_support import load, names
from tests.parsers_support import run_chunks
from tests.parsers_support import settings as parser_settings

CORPUS = {name: load(name) for name in names()}
ALL_LINES = sorted({text for c in CORPUS.values() for _, text in c.physical})


def per_stream(records: list[dict]) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for r in records:
        out.setdefault(r.get("stream", "?"), []).append(r["message"].split("\n"))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(ALL_LINES), st.text(max_size=40),
                          st.sampled_from(autotrace.KEYWORDS).map(lambda k: f"é {k} ü"))))
def test_batch_prefilter_is_the_per_line_keyword_test(msgs: list[str]) -> None:
    records = [{"message": m} for m in msgs]
    want = [i for i, m in enumerate(msgs) if autotrace.has_keyword(m) and not autotrace.json_line(m)]
    assert autotrace.hits(records) == want


def test_batch_prefilter_without_the_automaton(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [{"message": m} for m in ALL_LINES]
    with_automaton = autotrace.hits(records)
    monkeypatch.setattr(autotrace, "_AUTOMATON", None)
    assert autotrace.hits(records) == with_automaton and with_automaton


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_fast_path_equals_stepping_every_line(name: str) -> None:
    data = CORPUS[name].cri()
    fast = run_chunks(MultilineJoiner(CriJoiner(), autotrace.auto, prefilter=autotrace.hits), data,
                      range(997, len(data), 997))
    # stepping every line: the joiner without a prefilter, the step told the per-line keyword verdict

    def step(msg: str, state: object) -> int:
        state.hit = autotrace.has_keyword(msg) and not autotrace.json_line(msg)  # type: ignore[attr-defined]
        return autotrace.auto(msg, state)  # type: ignore[arg-type]

    slow = run_chunks(MultilineJoiner(CriJoiner(), step), data, range(997, len(data), 997))
    assert fast == slow


def stream_part(name: str, stream: str) -> tuple[list[str], list[list[str]]]:
    """The lines one corpus file writes to one stream, and the records expected of them."""
    corpus = CORPUS[name]
    return [t for s, t in corpus.physical if s == stream], [r.lines for r in corpus.records if r.stream == stream]


@pytest.mark.parametrize("out_part,err_part", [(("java", "stdout"), ("python", "stderr")),
                                               (("node", "stderr"), ("go", "stderr")),
                                               (("dotnet", "stdout"), ("ruby", "stderr")),
                                               (("php", "stderr"), ("dart", "stderr")),
                                               (("ordinary", "stdout"), ("java", "stderr")),
                                               (("mixed", "stdout"), ("mixed", "stderr"))])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_two_streams_interleaved_in_any_order_are_grouped_apart(out_part: tuple[str, str],
                                                                 err_part: tuple[str, str], seed: int) -> None:
    """One corpus stream's lines on stdout, another's on stderr, shuffled together keeping each stream's order."""
    queue_a, want_a = stream_part(*out_part)
    queue_b, want_b = stream_part(*err_part)
    assert want_a and want_b
    rng = random.Random(seed)
    queue_a, queue_b = list(queue_a), list(queue_b)
    lines = []
    while queue_a or queue_b:
        take_a = not queue_b or (queue_a and rng.random() < 0.5)
        lines.append(("stdout", queue_a.pop(0)) if take_a else ("stderr", queue_b.pop(0)))
    data = "".join(f"2024-05-14T09:00:00.{i + 1:06d}Z {s} F {t}\n" for i, (s, t) in enumerate(lines)).encode()
    got = per_stream(run_chunks(make_joiner(parser_settings(format="cri", multiline="auto"), "x.log"), data))
    assert got.get("stdout", []) == want_a and got.get("stderr", []) == want_b


TRACE = next(r.lines for r in CORPUS["java"].records if "Caused by: org.hibernate" in "\n".join(r.lines))


def _cri(lines: list[str]) -> bytes:
    return "".join(f"2024-05-14T09:00:00.{i + 1:06d}Z stdout F {t}\n" for i, t in enumerate(lines)).encode()


def test_bounds_cut_an_auto_trace_between_lines_and_lose_nothing() -> None:
    assert len(TRACE) > 6
    recs = run_chunks(make_joiner(parser_settings(format="cri", multiline="auto", multiline_max_lines=4), "x.log"),
                      _cri(TRACE))
    assert [r["lines"] for r in recs] == [4] * (len(TRACE) // 4) + ([len(TRACE) % 4] if len(TRACE) % 4 else [])
    assert recs[0]["flags"] == ["truncated"] and recs[-1]["flags"][0] == "continued"
    assert "\n".join(r["message"] for r in recs) == "\n".join(TRACE)
    recs = run_chunks(make_joiner(parser_settings(format="cri", multiline="auto", multiline_max_bytes=256), "x.log"),
                      _cri(TRACE))
    assert len(recs) > 1 and all(len(r["message"].encode()) <= 256 or r["lines"] == 1 for r in recs)
    assert "\n".join(r["message"] for r in recs) == "\n".join(TRACE)


def test_flush_timeout_emits_a_held_trace_and_header() -> None:
    now = [100.0]
    joiner = make_joiner(parser_settings(format="cri", multiline="auto", multiline_flush="2s"), "x.log",
                         clock=lambda: now[0])
    lines = _cri(TRACE[:3]).decode().splitlines()
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    assert joiner.feed(lines, offsets) == []
    assert joiner.held_from() == 0
    assert joiner.flush(101.9) == []
    (rec,) = joiner.flush(102.0)
    assert rec["message"] == "\n".join(TRACE[:3]) and joiner.held_from() is None
    # an error header alone is held too (a trace may follow), and flushed as the line it was
    header = _cri(["2024-05-14 09:00:00.000 ERROR 1 --- [main] c.e.A : failed"]).decode().splitlines()
    assert joiner.feed(header, [500]) == [] and joiner.held_from() == 500
    (rec,) = joiner.flush(200.0)
    assert rec["lines"] == 1 and "flags" not in rec


@pytest.mark.parametrize("name", ["java", "mixed", "ordinary"])
def test_docker_and_raw_files_group_the_same_way(name: str) -> None:
    corpus = CORPUS[name]
    docker = "".join(json.dumps({"log": t + "\n", "stream": s, "time": "2024-05-14T09:00:00.000000001Z"}) + "\n"
                     for s, t in corpus.physical).encode()
    got = per_stream(run_chunks(make_joiner(parser_settings(format="docker", multiline="auto"), "x.log"), docker))
    assert got == corpus.expected()
    # raw (files on volumes): one stream per file
    for stream in ("stdout", "stderr"):
        only, want = stream_part(name, stream)
        if not only:
            continue
        joiner = MultilineJoiner(RawJoiner(), autotrace.auto, prefilter=autotrace.hits)
        raw = run_chunks(joiner, ("\n".join(only) + "\n").encode())
        assert [r["message"].split("\n") for r in raw] == want
