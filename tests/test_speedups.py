"""The native accelerator (logagent/_speedups.c) gives exactly what the pure-Python paths give.

Both paths run on the same generated input: CRI batches fed in sequence to a native and a pure-Python `CriJoiner`
(partial lines carry from batch to batch), record batches encoded by a native and a pure-Python `BulkCodec` and
`SlsPutLogs`, and Loki entries pushed through `push_body` both ways.
The generators aim at the accelerator's edges: timestamps one character off the accepted form (no fraction, ten
digits, `.Z`, a numeric zone, February 30th, hour 24, years out of the 64-bit range), tags other than `P`/`F`,
streams other than stdout/stderr, messages with every JSON escape, non-BMP characters and lone surrogates. A
line the accelerator declines sends its batch to Python; the results must not differ either way.

The accelerator is built by `pip install -e .` (setup.py); `.ci/setup` checks that it was.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logagent import speedups
from logagent.config import Section
from logagent.inputs.file.reader import LineSplitter
from logagent.outputs import loki, sls
from logagent.outputs.elasticsearch import BulkCodec, ElasticsearchOutput
from logagent.outputs.proto.logproto_pb2 import PushRequest
from logagent.parsers.cri import CriJoiner
from logagent.record import Batch, as_records

pytestmark = pytest.mark.skipif(None in (speedups.cri_records, speedups.cri_chunk, speedups.with_key,
                                        speedups.es_items, speedups.loki_entries, speedups.sls_logs),
                                reason="the native accelerator is not built (pip install -e . builds it)")

_GOOD_STAMPS = ["2024-05-14T09:12:03.123456789Z", "2024-05-14T09:12:03.5Z", "2024-05-14T09:12:03Z",
                "2024-02-29T23:59:59.000000001Z", "1970-01-01T00:00:00Z", "2262-04-11T23:47:16.854775807Z",
                "1677-09-21T00:12:44Z", "2024-05-14T09:59:59.99Z", "2024-05-14T10:00:00.1Z"]
_ODD_STAMPS = ["2024-05-14T09:12:03.Z", "2024-05-14T09:12:03.1234567890Z", "2024-05-14T09:12:03+02:00",
               "2024-05-14T09:12:03.5-07:30", "2023-02-29T09:12:03Z", "2024-04-31T09:12:03Z", "2024-05-14T24:00:00Z",
               "2024-05-14T09:60:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2024-05-14 09:12:03Z",
               "2024-05-14T09:12:03z", "２024-05-14T09:12:03Z", "2024-05-14T09:12:03.١Z", "2024-13-14T09:12:03Z",
               "x", ""]


@st.composite
def stamps(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(_ODD_STAMPS))
    if draw(st.booleans()):
        return draw(st.sampled_from(_GOOD_STAMPS))
    y, mo, d = draw(st.integers(1678, 2261)), draw(st.integers(1, 12)), draw(st.integers(1, 31))
    h, mi, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    frac = draw(st.text("0123456789", min_size=0, max_size=9))
    return f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}" + (f".{frac}" if frac else "") + "Z"


messages = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="ascii"), max_size=40),
    st.sampled_from(["", " ", "a \"quoted\" \\ back\\slash", "\x00\x01\x1f\x7f\b\t\n\f\r", "é ü ß", "\u2028\u2029",
                     "😀 non-BMP", "\ud800 lone surrogate", "line with  two  spaces", "F P stdout"]),
)


@st.composite
def good_cri_lines(draw: st.DrawFn) -> str:
    stamp = draw(st.sampled_from(_GOOD_STAMPS)) if draw(st.booleans()) else draw(stamps())
    return f"{stamp} {draw(st.sampled_from(['stdout', 'stderr']))} {draw(st.sampled_from('FFFP'))} {draw(messages)}"


@st.composite
def cri_lines(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from(["", "not a cri line", "2024-05-14T09:12:03Z stdout F", "2024-05-14T09:12:03Z",
                                     "2024-05-14T09:12:03Z  stdout F x", "2024-05-14T09:12:03Z stdout  F x"]))
    stream = draw(st.sampled_from(["stdout", "stderr"] * 6 + ["stdin", "STDOUT", "stdou"]))
    tag = draw(st.sampled_from(["F"] * 8 + ["P"] * 3 + ["F:x", "X", "", "PF"]))
    return f"{draw(stamps())} {stream} {tag} {draw(messages)}"


def _offsets(lines: list[str], start: int) -> list[int]:
    out = []
    for line in lines:
        out.append(start)
        start += len(line.encode("utf-8", "surrogatepass")) + 1
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.lists(good_cri_lines(), max_size=12), st.lists(cri_lines(), max_size=12)), max_size=5),
       st.integers(8, 400))
def test_cri_native_and_python_joiners_agree(batches: list[list[str]], max_bytes: int) -> None:
    native = CriJoiner(max_record_bytes=max_bytes, clock=lambda: 0.0, native=True)
    python = CriJoiner(max_record_bytes=max_bytes, clock=lambda: 0.0, native=False)
    pos = 0
    for lines in batches:
        offsets = _offsets(lines, pos)
        pos = offsets[-1] + len(lines[-1].encode("utf-8", "surrogatepass")) + 1 if lines else pos
        assert native.feed(lines, offsets) == python.feed(lines, offsets)
        assert native.held_from() == python.held_from()
    assert native.flush(1.0, force=True) == python.flush(1.0, force=True)


def test_cri_native_path_takes_the_common_batch() -> None:
    """Not vacuous: the accelerator answers for the common batch (F lines, some P pieces), and the joiner using it
    gives the records the Python path gives."""
    lines = ["2024-05-14T09:12:03.123456789Z stdout F GET /healthz 200",
             "2024-05-14T09:12:03.2Z stderr P a long line, ",
             "2024-05-14T09:12:03.3Z stdout F between",
             "2024-05-14T09:12:04Z stderr F and its end",
             "2024-05-14T09:12:05.000000001Z stdout F é 😀 \"q\""]
    offsets = _offsets(lines, 100)
    assert speedups.cri_records is not None
    got = speedups.cri_records(lines, offsets, ("stdout", "stderr"))
    assert got is not None and got[1] == [1]
    records = CriJoiner(native=True).feed(lines, offsets)
    assert records == CriJoiner(native=False).feed(lines, offsets)
    assert [r["message"] for r in records] == ["GET /healthz 200", "between", "a long line, and its end",
                                               "é 😀 \"q\""]
    assert records[2]["fragments"] == 2 and records[2]["time_ns"] == 1715677923200000000
    # a numeric zone: declined, the Python path answers
    assert speedups.cri_records(["2024-05-14T09:12:03+02:00 stdout F x"], [0], ("stdout", "stderr")) is None


_ODD_BYTES = [b"\xff", b"\xc3", b"\xe2\x82", b"\x00", b"\r", b"\xf0\x9f\x98\x80", b"\xed\xa0\x80"]


@st.composite
def cri_file(draw: st.DrawFn) -> bytes:
    """A CRI file's bytes: mostly good lines, some odd ones, now and then a byte that is not valid UTF-8 (alone or
    a character cut in two) or a line longer than the splitter's limit."""
    out = []
    for _ in range(draw(st.integers(0, 30))):
        line = (draw(good_cri_lines()) if draw(st.integers(0, 3)) else draw(cri_lines())).encode("utf-8",
                                                                                                "surrogatepass")
        if draw(st.integers(0, 9)) == 0:
            at = draw(st.integers(0, len(line)))
            line = line[:at] + draw(st.sampled_from(_ODD_BYTES)) + line[at:]
        if draw(st.integers(0, 14)) == 0:
            line += b"x" * draw(st.integers(60, 300))
        out.append(line)
    return b"\n".join(out) + (b"\n" if draw(st.booleans()) else b"")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cri_file(), st.lists(st.integers(1, 400), min_size=1, max_size=8), st.integers(8, 400),
       st.integers(80, 200))
def test_cri_chunk_and_lines_paths_agree(data: bytes, reads: list[int], max_bytes: int, max_line: int) -> None:
    """`cri_chunk` from the bytes read (through `LineSplitter.feed_records`) gives the records that the splitter's
    lines and the Python joiner give, read by read, whatever the bytes: invalid UTF-8, over-long lines, reads cut
    anywhere (inside a character too)."""
    native = CriJoiner(max_record_bytes=max_bytes, clock=lambda: 0.0, native=True)
    python = CriJoiner(max_record_bytes=max_bytes, clock=lambda: 0.0, native=False)
    fast, slow = LineSplitter(max_line), LineSplitter(max_line)
    pos = 0
    i = 0
    while pos < len(data):
        piece = data[pos:pos + reads[i % len(reads)]]
        pos += len(piece)
        i += 1
        got = as_records(fast.feed_records(piece, pos, 0.0, native.feed_chunk, native.feed))
        assert got == python.feed(*slow.feed(piece, pos, 0.0))
        assert (fast.pending, fast.pending_start, fast.skipping) == (slow.pending, slow.pending_start, slow.skipping)
    assert native.feed(*fast.take_partial()) == python.feed(*slow.take_partial())
    assert native.flush(1.0, force=True) == python.flush(1.0, force=True)


def test_cri_chunk_takes_the_common_chunk() -> None:
    """Not vacuous: `cri_chunk` answers for good lines, and declines (None) a chunk with invalid UTF-8 in a
    message or a line over the limit, so that the lines path flags it."""
    assert speedups.cri_chunk is not None
    good = b"2024-05-14T09:12:03.5Z stdout F \xc3\xa9 ok\n2024-05-14T09:12:04Z stderr P piece\n"
    got = speedups.cri_chunk(good, len(good) - 1, 1000, 100, ("stdout", "stderr"))
    assert got is not None
    records, pieces = got
    assert [(r["message"], r["offset"], r["stream"]) for r in records] == [("é ok", 1000, "stdout"),
                                                                           ("piece", 1038, "stderr")]
    assert pieces == [1]
    bad = b"2024-05-14T09:12:03Z stdout F ok\n2024-05-14T09:12:03Z stdout F \xff\n"
    assert speedups.cri_chunk(bad, len(bad) - 1, 0, 100, ("stdout", "stderr")) is None
    assert speedups.cri_chunk(good, len(good) - 1, 0, 20, ("stdout", "stderr")) is None


def test_with_key_finds_the_records_a_stage_must_see() -> None:
    assert speedups.with_key is not None
    records: list[Any] = [{"message": '{"logagent.sidecar":1}'}, {"message": "plain"}, {"message": b"{"},
                          {"flags": ["truncated"]}, "not a dict", {"message": '{"logagent.sidecar":'},
                          {"message": '{"logagent.sidecar":"€"}'}, {"message": '{"logagent.€'}, {"message": "é"}]
    assert speedups.with_key(records, "message", '{"logagent.sidecar":') == [records[0], records[5], records[6]]
    assert speedups.with_key(records, "message", "é") == [records[8]]
    assert speedups.with_key(records, "flags", None) == [records[3]]
    assert speedups.with_key([], "flags", None) == []


def _codec(native: bool, settings: dict[str, Any]) -> BulkCodec:
    section = Section({"type": "elasticsearch", "name": "out", "url": "http://127.0.0.1:9/", **settings},
                      "outputs[0]", "test.yaml")
    section.str("type")
    section.str("name")
    return BulkCodec(ElasticsearchOutput.parse_settings(section), native=native)


_ES_SETTINGS = [{}, {"index": "logs-{kubernetes.namespace}-%Y.%m.%d.%H"}, {"document_ids": False},
                {"index": "fixed-name"}, {"index": "by-{kubernetes.pod}"}, {"fields": ["offset"]}, {"fields": "all"},
                {"index": "by-{stream}-%Y"}]


@st.composite
def cri_records(draw: st.DrawFn, odd_too: bool = True) -> dict[str, Any]:
    rec: dict[str, Any] = {"message": draw(messages), "offset": draw(st.integers(0, 1 << 62)),
                           "time": draw(stamps()), "time_ns": 1, "stream": draw(st.sampled_from(["stdout", "stderr"])),
                           "fragments": 1, "lines": 1}
    odd = draw(st.integers(0, 14)) if odd_too else -1
    if odd == 0:
        rec["offset"] = draw(st.sampled_from([-1, True, 1 << 70, "7"]))
    elif odd == 1:
        rec["stream"] = draw(st.sampled_from(["stdin", "x\"y", 3]))
    elif odd == 2:
        rec["message"] = draw(st.sampled_from([7, None, ["a"]]))
    elif odd == 3:
        del rec["lines"]
        rec["flags"] = ["truncated"]
    elif odd == 4:
        rec["extra"] = "field"
    elif odd == 5:
        rec["time"] = draw(st.sampled_from(["2024-05-14T09:12:03\"Z", "2024-05-14T09:12:03é", 5]))
    return rec


def _encode(codec: BulkCodec, batch: Batch) -> tuple[str, Any]:
    try:
        return "ok", codec.items(batch)
    except Exception as e:  # both paths must fail alike (a lone surrogate: orjson's error)
        return "error", type(e).__name__


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(cri_records(False), min_size=1, max_size=10),
                 st.lists(cri_records(), min_size=1, max_size=10)),
       st.sampled_from(_ES_SETTINGS),
       st.sampled_from(["file:0123456789abcdef", "f:%x\"", "s" * 80, None]))
def test_es_native_and_python_encoders_agree(records: list[dict[str, Any]], es: dict[str, Any],
                                             source: str | None) -> None:
    meta: dict[str, Any] = {"input": "containers", "path": "/var/log/containers/web.log", "pos_key": "offset",
                            "kubernetes": {"namespace": "shop", "pod": "web-0", "container": "main"}}
    if source is not None:
        meta["source_id"] = source
    native, python = _codec(True, es), _codec(False, es)
    assert _encode(native, Batch("kube", records, meta)) == _encode(python, Batch("kube", records, meta))


def test_es_native_path_takes_the_common_batch() -> None:
    """Not vacuous: the accelerator encodes a plain CRI batch (across an hour boundary), byte for byte as Python."""
    lines = ["2024-05-14T09:59:59.9Z stdout F last of nine \"q\" \\ \x01",
             "2024-05-14T10:00:00.1Z stderr F first of ten é 😀"]
    records = CriJoiner().feed(lines, _offsets(lines, 4096))
    meta = {"source_id": "file:abc", "pos_key": "offset", "path": "/p", "kubernetes": {"namespace": "shop"}}
    native, python = _codec(True, {}), _codec(False, {})
    assert native._native_items(Batch("kube", records, meta)) is not None
    items, _ = native.items(Batch("kube", records, meta))
    assert (items, sum(map(len, items))) == python.items(Batch("kube", records, meta))
    action, doc = items[1].split(b"\n")[:2]
    assert orjson.loads(action) == {"create": {"_index": "logagent-2024.05.14", "_id": "file:abc:%x" % (4096 + len(
        lines[0].encode()) + 1)}}
    assert orjson.loads(doc)["message"] == "first of ten é 😀"


# what lines and metadata values hold: text, undecodable bytes kept as surrogates (\udc80-\udcff) by the reader
texts = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
                  st.sampled_from(["", "é😀", "\udcff raw byte", "a\x00b", "\udc80\udcc3"]))
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)  # from the config: never surrogates


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(['{job="logagent"}', '{app="web", pod="web-0"}', "", '{a="é"}']),
                       st.lists(st.tuples(st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(-(10 ** 12), 10 ** 12),
                                          texts, st.lists(st.tuples(names, texts), max_size=3).map(tuple)),
                                max_size=6), max_size=3))
def test_loki_native_and_python_push_bodies_agree(streams: dict[str, list[tuple[int, str, Any]]]) -> None:
    items = {labels: [(labels, ts, line, md) for ts, line, md in entries] for labels, entries in streams.items()}
    native, python = loki.push_body(items, native=True), loki.push_body(items, native=False)
    assert native == python
    req = PushRequest()
    req.ParseFromString(native)
    assert [len(s.entries) for s in req.streams] == [len(e) for e in items.values()]


def test_loki_native_path_takes_the_common_push() -> None:
    assert speedups.loki_entries is not None
    md = (("pod_uid", "uid-1"), ("filename", "/var/log/pods/a/0.log"), ("", "empty name"))
    entries = [('{app="web"}', 1_715_677_923_000_000_001, "GET / 200 é", md), ('{app="web"}', 0, "", ()),
               ('{app="web"}', -1, "before the epoch", ())]
    assert speedups.loki_entries(entries) is not None
    body = loki.push_body({'{app="web"}': entries})
    assert body == loki.push_body({'{app="web"}': entries}, native=False)
    req = PushRequest()
    req.ParseFromString(body)
    e = req.streams[0].entries
    assert (e[0].timestamp.seconds, e[0].timestamp.nanos, e[0].line) == (1_715_677_923, 1, "GET / 200 é")
    assert [(m.name, m.value) for m in e[0].structuredMetadata] == list(md)
    assert (e[2].timestamp.seconds, e[2].timestamp.nanos) == (-1, 999_999_999)


def _sls(native: bool, settings: dict[str, Any]) -> sls.SlsPutLogs:
    section = Section({"endpoint": "cn-hangzhou.log.aliyuncs.com", "project": "p", "logstore": "l",
                       "access_key_id": "a", "access_key_secret": "b", "source": "node-a", **settings},
                      "outputs[0]", "test.yaml")
    return sls.SlsPutLogs("out", sls.SlsOutput.parse_settings(section), native=native)


def _parts(codec: sls.SlsPutLogs, batch: Batch) -> tuple[str, Any]:
    try:
        return "ok", codec.parts(batch)
    except Exception as e:  # both paths must fail alike
        return "error", type(e).__name__


@st.composite
def sls_records(draw: st.DrawFn, odd_too: bool) -> dict[str, Any]:
    rec = draw(cri_records(odd_too))
    if draw(st.booleans()):  # (not a float: the encoder then parses `time`, and an invalid one gives "now")
        rec["time_ns"] = draw(st.integers(0, 1 << 63) | st.sampled_from([-1, 1 << 64]))
    return rec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(sls_records(False), min_size=1, max_size=10),
                 st.lists(sls_records(True), min_size=1, max_size=10)),
       st.sampled_from([{}, {"fields": "all"}, {"fields": ["offset"]}, {"topic": "{kubernetes.namespace}"}]))
def test_sls_native_and_python_encoders_agree(records: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    meta = {"input": "containers", "path": "/p", "source_id": "file:1", "pos_key": "offset",
            "kubernetes": {"namespace": "shop", "pod": "web-0", "container": "main"}}
    native, python = _sls(True, settings), _sls(False, settings)
    assert _parts(native, Batch("kube", records, meta)) == _parts(python, Batch("kube", records, meta))


def test_sls_native_path_takes_the_common_batch() -> None:
    assert speedups.sls_logs is not None
    lines = ["2024-05-14T09:12:03.5Z stdout F GET / 200 é", "2024-05-14T09:12:04Z stderr F 😀"]
    records = CriJoiner().feed(lines, _offsets(lines, 0))
    meta = {"kubernetes": {"namespace": "shop"}, "source_id": "file:1", "pos_key": "offset"}
    native = _sls(True, {})
    assert native._native is not None and native._native(records, b"", native._stream_pairs) is not None
    assert native.parts(Batch("kube", records, meta)) == _sls(False, {}).parts(Batch("kube", records, meta))


def _loki(whole_batches: bool, settings: dict[str, Any]) -> loki.LokiPush:
    section = Section({"url": "http://127.0.0.1:3100", **settings}, "outputs[0]", "test.yaml")
    return loki.LokiPush("out", loki.LokiOutput.parse_settings(section), whole_batches=whole_batches)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(sls_records(False), min_size=1, max_size=10),
                 st.lists(sls_records(True), min_size=1, max_size=10)),
       st.sampled_from([{}, {"line": "json"}, {"max_line_size": 64}, {"labels": {"stream": "{stream}"}},
                        {"encoding": "json", "compression": "gzip"}]))
def test_loki_whole_batch_and_record_paths_agree(records: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """The whole-batch path of `LokiPush.parts` (labels, metadata and tenant from the batch; no bytecode per
    record) gives the items and sizes of the record-by-record path, and the same push body."""
    meta = {"kubernetes": {"namespace": "shop", "pod": "web-0", "container": "main", "pod_uid": "u-1"},
            "path": "/var/log/containers/web-0_shop_main-1.log", "input": "containers"}
    fast, slow = _loki(True, settings), _loki(False, settings)

    def outcome(codec: loki.LokiPush) -> tuple[str, Any]:
        try:
            parts = codec.parts(Batch("kube", [dict(r) for r in records], meta))
            return "ok", [(key, items, size, codec.encode(key, list(items)).body) for key, items, size in parts]
        except Exception as e:  # both paths must fail alike (a lone surrogate, an int orjson refuses)
            return "error", type(e).__name__

    assert outcome(fast) == outcome(slow)


def test_loki_whole_batch_path_takes_the_common_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: a batch of plain CRI records from a file input takes the whole-batch path."""
    taken: list[Any] = []
    whole = loki._batch_items
    monkeypatch.setattr(loki, "_batch_items", lambda *a: taken.append(whole(*a)) or taken[-1])
    meta = {"kubernetes": {"namespace": "shop", "pod": "web-0", "container": "main", "pod_uid": "u-1"},
            "path": "/var/log/containers/web-0_shop_main-1.log", "input": "containers"}
    plain = [{"message": "m", "offset": 0, "time": "2024-05-14T09:12:03Z", "time_ns": 1, "stream": "stdout",
              "fragments": 1, "lines": 1}]
    assert _loki(True, {}).parts(Batch("kube", plain, meta)) == _loki(False, {}).parts(Batch("kube", plain, meta))
    assert len(taken) == 1 and taken[0] is not None
    records = [{"message": f"line {i}", "offset": i, "time": "2024-05-14T09:12:03Z", "time_ns": 1_715_677_923 + i,
                "stream": "stdout", "fragments": 1, "lines": 1} for i in range(3)]
    got = loki._batch_items(records, ('{app="web"}', ()), (("pod_uid", "u-1"),), "", 100)
    assert got is not None
    [(tenant, items, size)] = got
    assert tenant == "" and [it[2] for it in items] == ["line 0", "line 1", "line 2"]
    assert size == sum(len(f"line {i}") for i in range(3)) + 3 * (len('{app="web"}') + 24)
    records[1]["flags"] = ["truncated"]
    assert loki._batch_items(records, ('{app="web"}', ()), (), "", 100) is None
