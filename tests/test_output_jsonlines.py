"""The JSON-lines encoding of the stdout and file outputs: the batch-level splice of the shared fields gives exactly
the bytes of encoding each merged record, whatever the records hold; and the file output writes them."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from logagent.outputs.jsonlines import encode_batch
from logagent.record import AckToken, Batch

# Keys that collide with the shared fields on purpose, and text that looks like the splice's own separators.
KEYS = st.sampled_from(["message", "offset", "time", "stream", "flags", "input", "path", "kubernetes", "source_id",
                        "pos_key", "x"])
TRICKY_TEXT = st.sampled_from(["", "},{", "}\n{", '"},{"input":"x",', "\\", "\u00e9\u4e2d\U0001f600", "\x00", "{"])
TEXT = st.one_of(st.text(max_size=40), TRICKY_TEXT)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
                    TEXT, st.binary(max_size=8))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(TEXT, inner, max_size=3)), max_leaves=8)
RECORDS = st.dictionaries(KEYS, VALUES, max_size=6)
META = st.dictionaries(KEYS, VALUES, max_size=4)


def reference(meta: dict, records: list[dict]) -> bytes:
    """What an output must write: the shared fields, then each record's own (internal keys left out); on a clash
    the record's value wins, except on identity fields (record content never overrides identity)."""
    shared = {k: v for k, v in meta.items() if k not in ("source_id", "pos_key")}
    own = {k: v for k, v in shared.items() if k in ("input", "path", "kubernetes", "offset", "host")}
    return b"".join(orjson.dumps({**shared, **r, **own}, default=str) + b"\n" for r in records)


@settings(max_examples=400, deadline=None)
@given(meta=META, records=st.lists(RECORDS, max_size=8))
def test_encoding_equals_merged_records(meta: dict, records: list[dict]) -> None:
    assert encode_batch(Batch("t", records, meta)) == reference(meta, records)


@settings(max_examples=300, deadline=None)
@given(meta=st.dictionaries(st.sampled_from(["input", "path", "kubernetes", "source_id"]), VALUES, min_size=1),
       records=st.lists(st.dictionaries(st.sampled_from(["message", "offset", "x"]), VALUES, min_size=1), max_size=8))
def test_spliced_encoding_with_separate_keys(meta: dict, records: list[dict]) -> None:
    assert encode_batch(Batch("t", records, meta)) == reference(meta, records)


def test_container_batch_takes_the_splice_and_keeps_every_field(monkeypatch) -> None:
    from logagent.outputs import jsonlines

    def merged(batch: Batch) -> bytes:
        raise AssertionError("a plain container batch must not need one merged dict per record")

    monkeypatch.setattr(jsonlines, "_encode_merged", merged)
    meta = {"input": "c", "path": "/var/log/containers/a.log", "source_id": "s1", "pos_key": "offset",
            "kubernetes": {"namespace": "shop", "labels": {"app": "web"}}}
    records = [{"message": f'm{i} }},{{"input":"fake"}}', "offset": i * 100, "time": "2024-05-14T09:12:03.5Z",
                "stream": "stdout", "fragments": 1, "lines": 1} for i in range(1000)]
    data = encode_batch(Batch("kube", records, meta))
    assert data == reference(meta, records)
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 1001
    first = orjson.loads(lines[0])
    assert list(first) == ["input", "path", "kubernetes", "message", "offset", "time", "stream", "fragments", "lines"]
    assert first["message"] == 'm0 },{"input":"fake"}' and first["input"] == "c"


def test_values_only_default_str_encodes_keep_the_batch() -> None:
    records = [{"message": "a", "tags": {"x"}}, {"message": "b", "raw": b"\xff"}]
    meta = {"input": "c"}
    data = encode_batch(Batch("t", records, meta))
    assert data == reference(meta, records)
    assert [orjson.loads(line)["message"] for line in data.splitlines()] == ["a", "b"]


async def test_file_output_appends_lines_and_acknowledges(tmp_path) -> None:
    from tests.receivers.harness import build_output, make_context

    path = tmp_path / "out" / "records.jsonl"
    out = build_output("file", {"path": str(path), "fsync": True}, make_context(tmp_path))
    await out.start()
    acked = []
    meta = {"input": "c", "path": "/x.log", "source_id": "s", "pos_key": "offset"}
    batches = [Batch("t", [{"message": f"{b}-{i}", "offset": i} for i in range(50)], meta,
                       AckToken(lambda b=b: acked.append(b))) for b in range(3)]
    for batch in batches:
        await out.send(batch)
    await out.stop()
    assert acked == [0, 1, 2]
    written = path.read_bytes()
    assert written == b"".join(reference(meta, b.records) for b in batches)
    assert [orjson.loads(line)["message"] for line in written.splitlines()][::50] == ["0-0", "1-0", "2-0"]
