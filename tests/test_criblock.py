"""`CriBlock` (issue 11): the CRI fast path keeps a chunk's records as the bytes they were read from.

A block must be indistinguishable from the list of records `cri_records` makes from the same lines, for every
operation the agent applies to it: reading and setting records by index (the joiner puts `P` pieces right),
settling, extending, `with_key` (the envelope and flag scans) and `es_items` (the Elasticsearch encoder), which
read it in place. Each test runs the same operations on a block and on the list and compares, over generated
CRI files (the strategies of tests/test_speedups.py: odd timestamps, invalid UTF-8, lone surrogates, ...).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logagent import speedups
from logagent.parsers.cri import STREAMS, CriJoiner
from logagent.record import Batch
from tests.test_speedups import _codec, _loki, _offsets, _parts, _sls, cri_file, cri_records

pytestmark = pytest.mark.skipif(None in (speedups.cri_block, speedups.cri_chunk, speedups.with_key,
                                        speedups.es_items),
                                reason="the native accelerator is not built (pip install -e . builds it)")

GOOD = (b"2024-05-14T09:12:03.123456789Z stdout F GET /healthz 200\n"
        b"2024-05-14T09:12:03.2Z stderr P a long line, \n"
        b"2024-05-14T09:59:59.9Z stdout F {\"logagent.sidecar\":1} \"q\" \\ \x01\n"
        b"2024-05-14T10:00:00.1Z stderr F and its end \xc3\xa9 \xf0\x9f\x98\x80\n")


def _pair(data: bytes, base: int = 0, max_line: int = 1 << 20) -> tuple[Any, list[dict[str, Any]]] | None:
    """(block, the records cri_chunk makes of the same bytes), or None when both decline. cri_chunk is the block's
    records; the reference they are checked against is `cri_records` (the joiner's native path over decoded lines,
    written apart from the block) on the same lines."""
    assert speedups.cri_block is not None and speedups.cri_chunk is not None and speedups.cri_records is not None
    last = data.rfind(b"\n")
    stop = last if last >= 0 else len(data)
    block = speedups.cri_block(data, stop, base, max_line, STREAMS)
    chunk = speedups.cri_chunk(data, stop, base, max_line, STREAMS)
    assert (block is None) == (chunk is None)
    if block is None or chunk is None:
        return None
    assert block[1] == chunk[1]  # the same pieces
    lines = [line.decode() for line in data[:stop].split(b"\n")]  # (the block took them: valid UTF-8)
    assert speedups.cri_records(lines, _offsets(lines, base), STREAMS) == chunk
    return block[0], chunk[0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_file(), st.integers(0, 1 << 40), st.integers(60, 200))
def test_a_block_holds_what_cri_chunk_makes(data: bytes, base: int, max_line: int) -> None:
    got = _pair(data, base, max_line)
    if got is not None:
        block, records = got
        assert len(block) == len(records)
        assert block.records() == records


def test_records_are_made_once_and_kept() -> None:
    got = _pair(GOOD)
    assert got is not None
    block, records = got
    first = block[0]
    assert first is block[0] and first == records[0]
    first["flags"] = ["seen"]  # set in place (the envelope stage flags records so)
    assert block.records()[0] is first and block.records()[0]["flags"] == ["seen"]
    assert block[-1] == records[-1]
    with pytest.raises(IndexError):
        block[len(records)]
    with pytest.raises(TypeError):
        del block[0]


# an operation: ("set", i, record | None) puts a record right or sets it aside; ("get", i) reads one
ops = st.lists(st.one_of(st.tuples(st.just("get"), st.integers(0, 40)),
                         st.tuples(st.just("set"), st.integers(0, 40), st.none() | cri_records())), max_size=12)


def _apply(block: Any, model: list[Any], steps: list[Any]) -> dict[int, list[dict[str, Any]]]:
    more: dict[int, list[dict[str, Any]]] = {}
    for step in steps:
        if not model:
            break
        i = step[1] % len(model)
        if step[0] == "get":
            assert block[i] == model[i]
        else:
            block[i] = model[i] = step[2]
            if step[2] is None and i % 3 == 0:
                more[i] = [{"message": f"joined {i}", "offset": i, "time": "2024-05-14T09:12:03Z",
                            "time_ns": 1715677923000000000, "stream": "stderr", "fragments": 2, "lines": 1}]
    return more


def _settled(model: list[Any], more: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, rec in enumerate(model):
        if rec is not None:
            out.append(rec)
        else:
            out.extend(more.get(i, ()))
    return out


def _worked(data: bytes, base: int, steps: list[Any]) -> tuple[Any, list[dict[str, Any]]] | None:
    """A block of `data` with `steps` applied and settled, and the list of records the same steps leave (None when
    cri_block and cri_chunk both decline the bytes)."""
    got = _pair(data, base)
    if got is None:
        return None
    block, records = got
    model: list[Any] = list(records)
    more = _apply(block, model, steps)
    assert block.settle(more or None) is block
    return block, _settled(model, more)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_file(), ops, cri_file(), st.lists(cri_records(), max_size=3))
def test_set_settle_and_extend_as_a_list_would(data: bytes, steps: list[Any], other: bytes,
                                               given_records: list[dict[str, Any]]) -> None:
    worked = _worked(data, 100, steps)
    if worked is None:
        return
    block, settled = worked
    expected = settled
    assert block.records() == expected
    second = _pair(other, 1 << 30)
    if second is not None:
        block.extend(second[0])
        expected += second[1]
    block.extend(given_records)
    expected += given_records
    assert len(block) == len(expected) and block.records() == expected


KEYS = [("message", '{"logagent.sidecar":'), ("message", "é"), ("message", ""), ("message", "\ud800"),
        ("message", "GET"), ("time", "2024-05-14T09"), ("time", "2024-05-14T10:00:00.1Z"), ("stream", "std"),
        ("stream", "stderr"), ("offset", None), ("offset", "1"), ("flags", None), ("fragments", None),
        ("nokey", None), ("lines", "x")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_file(), ops, st.sampled_from(KEYS))
def test_with_key_on_a_block_finds_what_it_finds_in_the_list(data: bytes, steps: list[Any],
                                                              key: tuple[str, str | None]) -> None:
    assert speedups.with_key is not None
    worked = _worked(data, 0, steps)
    if worked is None:
        return
    block, settled = worked
    expected = speedups.with_key(settled, *key)
    hits = speedups.with_key(block, *key)
    assert hits == expected
    # the hits are the block's own records: what a stage sets on them is shipped
    kept = block.records()
    assert all(any(h is r for r in kept) for h in hits)


def test_with_key_not_vacuous() -> None:
    assert speedups.with_key is not None
    got = _pair(GOOD)
    assert got is not None
    block = got[0]
    hits = speedups.with_key(block, "message", '{"logagent.sidecar":')
    assert [h["offset"] for h in hits] == [GOOD.index(b"2024-05-14T09:59")]
    assert speedups.with_key(block, "flags", None) == []
    assert len(speedups.with_key(block, "stream", "stderr")) == 2


def _items(rows: Any, date_hours: bool, middle: bytes | None) -> tuple[Any, list[str]]:
    assert speedups.es_items is not None
    calls: list[str] = []

    def first(t: str) -> bytes:
        calls.append(t)
        return b'{"create":{"_index":"h-' + t[:13].encode() + b'"'
    prefix: Any = first if date_hours else b'{"create":{}}\n{'
    try:
        return speedups.es_items(rows, prefix, middle, date_hours), calls
    except Exception as e:  # both must fail alike
        return type(e).__name__, calls


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_file(), ops, st.booleans(), st.sampled_from([None, b'"}}\n{"host":"n",']))
def test_es_items_of_a_block_are_those_of_its_records(data: bytes, steps: list[Any], date_hours: bool,
                                                     middle: bytes | None) -> None:
    worked = _worked(data, 4096, steps)
    if worked is None:
        return
    block, settled = worked
    assert _items(block, date_hours, middle) == _items(settled, date_hours, middle)


def test_es_items_not_vacuous() -> None:
    got = _pair(GOOD, 4096)
    assert got is not None
    block, records = got
    items, calls = _items(block, True, b'"}}\n{')
    assert items is not None and len(items) == 4 and items == _items(records, True, b'"}}\n{')[0]
    assert calls == ["2024-05-14T09:12:03.123456789Z", "2024-05-14T10:00:00.1Z"]  # one call per hour
    assert b'"message":"and its end \xc3\xa9 \xf0\x9f\x98\x80"' in items[3]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_file(), ops, st.sampled_from([{"stdout": b"\x12\x0a\x06stream\x12\x06stdout", "stderr": b"\x12\x01e"},
                                         {"stdout": b"\x12\x00"}, {}]))
def test_sls_logs_of_a_block_are_those_of_its_records(data: bytes, steps: list[Any], pairs: dict[str, bytes]) -> None:
    assert speedups.sls_logs is not None
    worked = _worked(data, 4096, steps)
    if worked is None:
        return
    block, settled = worked
    shared = b"\x12\x0c\x0a\x04host\x12\x04node"
    assert speedups.sls_logs(block, shared, pairs) == speedups.sls_logs(settled, shared, pairs)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_file(), ops, st.sampled_from(["message", "offset", "time", "time_ns", "stream", "fragments", "lines",
                                         "flags"]))
def test_a_column_is_the_records_values(data: bytes, steps: list[Any], key: str) -> None:
    worked = _worked(data, 77, steps)
    if worked is None:
        return
    block, settled = worked
    try:
        expected: Any = [r[key] for r in settled]
    except KeyError:
        expected = KeyError
    try:
        column: Any = block.column(key)
    except KeyError:
        column = KeyError
    assert column == expected


def test_sls_and_columns_not_vacuous() -> None:
    assert speedups.sls_logs is not None
    got = _pair(GOOD, 4096)
    assert got is not None
    block, records = got
    pairs = {"stdout": b"\x12\x01o", "stderr": b"\x12\x01e"}
    logs = speedups.sls_logs(block, b"", pairs)
    assert logs is not None and len(logs) == 4 and logs == speedups.sls_logs(records, b"", pairs)
    assert block.column("message")[3] == "and its end é 😀"
    assert block.column("time_ns") == [r["time_ns"] for r in records]


def test_the_joiner_and_the_batch_keep_the_block() -> None:
    """The file input's joiner answers a chunk with a block (pieces put right inside it); a batch holding it counts
    and encodes its records without making them, and makes them when a stage asks for `records`."""
    joiner = CriJoiner()
    rows = joiner.feed_chunk(GOOD, len(GOOD) - 1, 0, 1 << 20)
    assert rows is not None and not isinstance(rows, list)
    assert [r["message"] for r in rows.records()] == ["GET /healthz 200", '{"logagent.sidecar":1} "q" \\ \x01',
                                                      "a long line, and its end é 😀"]
    python = CriJoiner(native=False).feed_chunk(GOOD, len(GOOD) - 1, 0, 1 << 20)
    assert python is None  # (the lines path answers there)
    meta = {"source_id": "file:abc", "pos_key": "offset", "path": "/p", "kubernetes": {"namespace": "shop"}}
    fresh = joiner.feed_chunk(GOOD, len(GOOD) - 1, 0, 1 << 20)
    assert fresh is not None
    batch = Batch("kube", fresh, meta)
    assert batch.count() == 3 and batch.block is fresh
    native = _codec(True, {}).items(batch)
    assert batch.block is fresh  # encoded in place
    assert native == _codec(False, {}).items(Batch("kube", rows.records(), meta))
    assert batch.records == rows.records() and batch.block is None


CODECS = [("es", {}), ("es", {"index": "logs-%Y.%m.%d.%H"}), ("es", {"document_ids": False}), ("loki", {}),
          ("loki", {"max_line_size": 64}), ("loki", {"labels": {"stream": "{stream}"}}), ("sls", {}),
          ("sls", {"fields": ["offset"]})]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_file(), ops, st.sampled_from(CODECS))
def test_outputs_ship_a_block_as_its_records(data: bytes, steps: list[Any], codec: tuple[str, dict[str, Any]]) -> None:
    """Each backend's codec gives the same parts for a batch holding a block as for the batch of its records."""
    worked = _worked(data, 4096, steps)
    if worked is None:
        return
    block, settled = worked
    meta = {"source_id": "file:abc", "pos_key": "offset", "path": "/var/log/containers/web.log",
            "kubernetes": {"namespace": "shop", "pod": "web-0", "container": "main"}}
    kind, settings_ = codec
    make: Any = {"es": lambda: _codec(True, settings_), "loki": lambda: _loki(True, settings_),
                 "sls": lambda: _sls(True, settings_)}[kind]
    assert _parts(make(), Batch("kube", block, dict(meta), flagged=0)) == _parts(
        make(), Batch("kube", settled, dict(meta), flagged=0))
