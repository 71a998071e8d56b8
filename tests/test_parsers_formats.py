"""CRI and docker json-file joining edge cases, format detection, timestamps, reader flags, bounds."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from logagent.parsers.cri import CriJoiner
from logagent.parsers.detect import AutoJoiner
from logagent.parsers.docker import DockerJoiner
from logagent.parsers.factory import format_joiner, make_joiner
from logagent.parsers.timestamps import time_ns
from tests.parsers_support import run_chunks, settings

T1 = "2024-05-14T09:12:05.000000001Z"
T2 = "2024-05-14T09:12:06.25Z"
T3 = "2024-05-14T09:12:07Z"


def cri(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def offsets_of(data: bytes) -> list[int]:
    return [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A][:-1]


# -- timestamps -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ts", [
    "2024-05-14T09:12:03.101442718Z", "2024-05-14T09:12:04.5Z", "2024-05-14T09:20:03Z",
    "2024-05-14T09:40:00.118203114+02:00", "2024-05-14T09:40:04.002003+02:00", "2024-05-14T09:40:05-05:30",
    "2024-12-31T23:59:59.999999999Z",
])
def test_time_ns_is_utc_nanoseconds(ts: str) -> None:
    head, _, rest = ts.partition(".")
    if rest:
        digits = rest.rstrip("Z").split("+")[0].split("-")[0]
        zone = rest[len(digits):]
    else:
        digits, zone = "", ts[19:]
        head = ts[:19]
    whole = datetime.fromisoformat(head + ("+00:00" if zone == "Z" else zone))
    want = int(whole.timestamp()) * 1_000_000_000 + int(digits.ljust(9, "0") or 0)
    assert time_ns(ts) == want
    # the comprehension fast path of the CRI joiner agrees with time_ns
    rec = CriJoiner().feed([f"{ts} stdout F x"], [0])[0]
    assert rec["time_ns"] == want and rec["time"] == ts


@pytest.mark.parametrize("ts", ["2024-05-14", "2024-13-14T09:12:03Z", "2024-05-14T25:12:03Z", "2024-05-14T09:12:03",
                                "2024-05-14T09:12:03.1234567890Z", "hello", ""])
def test_time_ns_rejects_what_is_not_rfc3339(ts: str) -> None:
    assert time_ns(ts) is None


# -- CRI ------------------------------------------------------------------------------------------------------
def test_cri_partials_join_per_stream_with_other_stream_between() -> None:
    data = cri(f"{T1} stdout P Loading routes: ", f"{T2} stderr F warn: deprecated", f"{T3} stdout F /v1 (1 route)")
    recs = run_chunks(CriJoiner(), data)
    offs = offsets_of(data)
    assert recs == [
        {"message": "warn: deprecated", "offset": offs[1], "time": T2, "time_ns": time_ns(T2), "stream": "stderr",
         "fragments": 1, "lines": 1},
        {"message": "Loading routes: /v1 (1 route)", "offset": 0, "time": T1, "time_ns": time_ns(T1),
         "stream": "stdout", "fragments": 2, "lines": 1},
    ]


def test_cri_empty_f_ends_partials_and_empty_message_kept() -> None:
    data = cri(f"{T1} stderr P Migrating", f"{T2} stderr P  ...", f"{T3} stderr F ", f"{T3} stdout F ")
    recs = run_chunks(CriJoiner(), data)
    assert [(r["stream"], r["message"], r["fragments"]) for r in recs] == [
        ("stderr", "Migrating ...", 3), ("stdout", "", 1)]


def test_cri_p_without_f_is_held_then_flushed_flagged_incomplete() -> None:
    joiner = CriJoiner(partial_flush=5.0, clock=lambda: 100.0)
    data = cri(f"{T1} stdout F first", f"{T2} stdout P no newline yet")
    offs = offsets_of(data)
    out = joiner.feed(["{} stdout F first".format(T1), f"{T2} stdout P no newline yet"], offs)
    assert [r["message"] for r in out] == ["first"]
    assert joiner.held_from() == offs[1]
    assert joiner.flush(101.0, force=False) == []  # 1 s after the piece: partial_flush (5 s) not due
    forced = joiner.flush(0.0, force=True)
    assert [(r["message"], r["offset"], r["flags"]) for r in forced] == [("no newline yet", offs[1], ["incomplete"])]
    assert joiner.held_from() is None


def test_cri_partial_flush_timeout_uses_the_clock() -> None:
    now = [100.0]
    joiner = CriJoiner(partial_flush=5.0, clock=lambda: now[0])
    joiner.feed([f"{T1} stdout P Password: "], [0])
    assert joiner.flush(104.9) == []
    assert [r["message"] for r in joiner.flush(105.0)] == ["Password: "]


def test_cri_max_record_bytes_cuts_between_pieces_and_loses_nothing() -> None:
    pieces = [f"{i:02d}" + "x" * 38 for i in range(10)]  # 10 pieces of 40 bytes, bound 100: 2 pieces per record
    lines = [f"{T1} stdout P {p}" for p in pieces[:-1]] + [f"{T1} stdout F {pieces[-1]}"]
    data = cri(*lines)
    recs = run_chunks(CriJoiner(max_record_bytes=100), data)
    assert "".join(r["message"] for r in recs) == "".join(pieces)
    assert all(len(r["message"]) <= 100 for r in recs)
    assert [r["fragments"] for r in recs] == [2, 2, 2, 2, 2]
    assert recs[0]["flags"] == ["truncated"]
    assert all(r["flags"] == ["continued", "truncated"] for r in recs[1:-1])
    assert recs[-1]["flags"] == ["continued"]
    offs = offsets_of(data)
    assert [r["offset"] for r in recs] == offs[::2]  # each part starts at its own line: unique ids


def test_cri_line_in_no_format_is_flagged_unparsed_not_dropped() -> None:
    data = cri(f"{T1} stdout F ok", "this is not cri", f"{T2} stdin F wrong stream", "nonsense stdout F x",
               f"{T3} stdout F ok2")
    recs = run_chunks(CriJoiner(), data)
    assert [(r["message"], r.get("flags")) for r in recs] == [
        ("ok", None), ("this is not cri", ["unparsed"]), (f"{T2} stdin F wrong stream", ["unparsed"]),
        ("nonsense stdout F x", ["unparsed"]), ("ok2", None)]


def test_cri_nul_bytes_and_header_lookalikes_stay_in_the_message() -> None:
    msg = f"a\x00b\x00 {T1} stdout F inner\t "
    recs = run_chunks(CriJoiner(), cri(f"{T1} stdout P \x00", f"{T2} stdout F {msg}"))
    assert recs[0]["message"] == "\x00" + msg and recs[0]["fragments"] == 2


def test_reader_flags_survive_onto_records() -> None:
    long_line = f"{T1} stdout F " + "y" * 200
    data = (f"{T1} stdout P bad \xff byte".encode("latin-1") + b"\n" + f"{T2} stdout F end\n".encode()
            + long_line.encode() + b"\n" + f"{T3} stderr F fine\n".encode())
    recs = run_chunks(CriJoiner(), data, max_line=100)
    assert recs[0]["message"] == "bad \ufffd byteend" and recs[0]["flags"] == ["invalid_utf8"]
    assert recs[1]["flags"] == ["truncated"] and recs[1]["message"] == ("y" * 200)[: 100 - len(T1) - 10]
    assert "flags" not in recs[2]


def test_cri_future_tag_suffix_uses_first_character() -> None:
    recs = run_chunks(CriJoiner(), cri(f"{T1} stdout P:x a", f"{T2} stdout F:y b"))
    assert [(r["message"], r["fragments"]) for r in recs] == [("ab", 2)]


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["stdout", "stderr"]),
                          st.lists(st.text(alphabet="ab \t\u00e9\u2713", max_size=30), min_size=1, max_size=4)),
                max_size=25),
       st.data())
def test_cri_generated_lines_any_chunking_same_records(lines: list, data: st.DataObject) -> None:
    """Logical lines split into P pieces, streams interleaved as containerd may write them."""
    physical = []
    for i, (stream, pieces) in enumerate(lines):
        for k, piece in enumerate(pieces):
            tag = "F" if k == len(pieces) - 1 else "P"
            physical.append(f"2024-05-14T09:12:{i % 60:02d}.{i + 1}Z {stream} {tag} {piece}")
    raw = cri(*physical)
    cuts = data.draw(st.lists(st.integers(1, max(1, len(raw) - 1)), max_size=30))
    whole = run_chunks(CriJoiner(), raw)
    assert run_chunks(CriJoiner(), raw, cuts) == whole
    for stream in ("stdout", "stderr"):
        want = ["".join(p) for s, p in lines if s == stream]
        assert [r["message"] for r in whole if r["stream"] == stream] == want


# -- docker ---------------------------------------------------------------------------------------------------
def dj(log: str, stream: str = "stdout", time: str = T1, **extra: object) -> str:
    return orjson.dumps({"log": log, "stream": stream, **extra, "time": time}).decode()


def test_docker_joins_16k_splits_per_stream_and_exact_multiple_ends_with_newline_only() -> None:
    a, b = "a" * 16384, "b" * 16384
    lines = [dj(a), dj("err\n", "stderr", T2), dj(b), dj("\n", time=T3), dj("next\n", attrs={"tag": "web"})]
    data = "\n".join(lines).encode() + b"\n"
    recs = run_chunks(DockerJoiner(), data)
    assert [(r["stream"], r["message"], r["fragments"], r["time"]) for r in recs] == [
        ("stderr", "err", 1, T2), ("stdout", a + b, 3, T1), ("stdout", "next", 1, T1)]
    assert recs[2]["attrs"] == {"tag": "web"} and "attrs" not in recs[1]


def test_docker_invalid_json_is_flagged_not_dropped() -> None:
    lines = [dj("ok\n"), '{"log":"cut in the mid', '{"stream":"stdout"}', "[1,2]", dj("x\n", stream="stdin"),
             dj("nul \u0000 inside\n")]
    data = "\n".join(lines).encode() + b"\n"
    recs = run_chunks(DockerJoiner(), data)
    assert [r["message"] for r in recs] == ["ok", *lines[1:5], "nul \x00 inside"]
    assert [r.get("flags") for r in recs] == [None, ["unparsed"], ["unparsed"], ["unparsed"], ["unparsed"], None]


def test_docker_bound_cuts_between_pieces() -> None:
    lines = [dj("p" * 60), dj("q" * 60), dj("r" * 60 + "\n")]
    recs = run_chunks(DockerJoiner(max_record_bytes=100), ("\n".join(lines) + "\n").encode())
    assert [r["message"] for r in recs] == ["p" * 60, "q" * 60, "r" * 60]
    assert [r.get("flags") for r in recs] == [["truncated"], ["continued", "truncated"], ["continued"]]


# -- auto -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first,fmt", [(f"{T1} stdout F hi", "cri"), (dj("hi\n"), "docker"),
                                       ("plain application log", "raw"), ('{"level":"info"}', "raw")])
def test_auto_first_line_decides(first: str, fmt: str) -> None:
    joiner = format_joiner("auto", settings())
    assert isinstance(joiner, AutoJoiner)
    recs = run_chunks(joiner, (first + "\n" + "second line\n").encode())
    assert joiner.format == fmt
    assert recs[0]["message"] in ("hi", first)
    # after the decision, a line of another format is kept: flagged in cri/docker, plain in raw
    assert recs[1]["message"] == "second line"
    assert recs[1].get("flags") == (None if fmt == "raw" else ["unparsed"])


def test_settings_max_record_bytes_reaches_the_joiner() -> None:
    joiner = make_joiner(settings(format="cri", max_record_bytes="64"), "x.log")
    lines = [f"{T1} stdout P " + "z" * 40, f"{T1} stdout F " + "z" * 40]
    recs = run_chunks(joiner, cri(*lines))
    assert [r.get("flags") for r in recs] == [["truncated"], ["continued"]]
