"""What the backend outputs ship (`fields`: lean by default, `all`, or lean plus named fields), the two encodings
of Elasticsearch documents agreeing byte for byte, and document ids from source + position."""

from __future__ import annotations

import orjson
import pytest

from logagent.config import ConfigError
from logagent.record import AckToken, Batch, doc_id, host_name, position_id
from tests.receivers.es import BulkReceiver
from tests.receivers.harness import AckLedger, build_output, make_context, run_output

KUBE = {"namespace": "shop", "pod": "web-0", "pod_uid": "u-1", "container": "main"}
META = {"input": "containers", "path": "/var/log/containers/web-0_shop_main-x.log", "source_id": "92a150103d95958b",
        "pos_key": "offset", "kubernetes": KUBE}


def cri_record(i: int, **extra: object) -> dict[str, object]:
    """A record as the CRI parser makes it."""
    return {"message": f"GET /api/{i} 200 \"quoted\" 100%", "offset": i * 165,
            "time": f"2024-05-14T09:{i // 60 % 60:02d}:{i % 60:02d}.{i:09d}Z", "time_ns": 1715677923 * 10**9 + i,
            "stream": "stderr" if i % 3 == 0 else "stdout", "fragments": 1, "lines": 1, **extra}


def cri_batch(n: int, ledger: AckLedger | None = None, idx: int = 0) -> Batch:
    ref: list[Batch] = []
    token = ledger.token(idx, ref) if ledger is not None else AckToken()
    b = Batch("kube", [cri_record(i) for i in range(n)], dict(META), token)
    ref.append(b)
    return b


async def test_elasticsearch_ships_lean_documents_by_default(tmp_path) -> None:
    rec = await BulkReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    batches = [cri_batch(50, ledger, 0)]
    flagged = cri_batch(3, ledger, 1)
    flagged.meta["source_id"] = "other-file"
    flagged.records[1]["flags"] = ["truncated"]
    batches.append(flagged)
    out = build_output("elasticsearch", {"url": rec.url, "batch": {"max_wait": "50ms"}}, ctx)
    await run_output(out, batches)
    await rec.stop()

    assert rec.items_seen == 53 and sorted(ledger.acked) == [0, 1]
    first = batches[0].records[7]
    assert rec.docs[f"92a150103d95958b:{7 * 165:x}"] == {
        "kubernetes": KUBE, "host": host_name(), "message": first["message"], "stream": first["stream"],
        "@timestamp": first["time"]}
    # a record with flags ships them (and its batch takes the per-record path)
    assert rec.docs[doc_id(flagged.meta, flagged.records[1])]["flags"] == ["truncated"]
    assert set(rec.docs[doc_id(flagged.meta, flagged.records[0])]) == {"kubernetes", "host", "message", "stream",
                                                                       "@timestamp"}


async def test_fields_all_ships_every_field_and_a_list_adds_named_ones(tmp_path) -> None:
    rec = await BulkReceiver().start()
    ctx = make_context(tmp_path / "all")
    out = build_output("elasticsearch", {"url": rec.url, "fields": "all", "batch": {"max_wait": "50ms"}}, ctx)
    await run_output(out, [cri_batch(5)])
    r = cri_record(2)
    shipped = {**{k: v for k, v in META.items() if k not in ("source_id", "pos_key")}, **r, "@timestamp": r["time"]}
    assert rec.docs[doc_id(META, r)] == shipped

    rec.docs.clear()
    ctx = make_context(tmp_path / "list")
    out = build_output("elasticsearch", {"url": rec.url, "fields": ["offset", "path"], "batch": {"max_wait": "50ms"}},
                       ctx)
    await run_output(out, [cri_batch(5)])
    await rec.stop()
    assert rec.docs[doc_id(META, r)] == {"path": META["path"], "kubernetes": KUBE, "host": host_name(),
                                         "message": r["message"], "offset": r["offset"], "stream": r["stream"],
                                         "@timestamp": r["time"]}


@pytest.mark.parametrize("index", ["logagent-%Y.%m.%d", "logs-{kubernetes.namespace}-%Y.%m.%d-%H", "fixed"])
@pytest.mark.parametrize("ids", [True, False])
def test_the_batch_encoding_equals_the_per_record_encoding(tmp_path, index: str, ids: bool) -> None:
    out = build_output("elasticsearch", {"url": "http://127.0.0.1:9", "index": index, "document_ids": ids},
                       make_context(tmp_path))
    codec = out.codec
    batch = cri_batch(400)  # spans several hours: one index per hour with -%H
    batch.meta["kubernetes"] = {**KUBE, "labels": {"app": "web%s"}}
    fast = codec._uniform_items(batch)
    assert fast is not None
    assert fast == codec._record_items(batch)
    action, doc = fast[3].split(b"\n")[:2]
    assert orjson.loads(action)["create"].get("_id") == (f"92a150103d95958b:{3 * 165:x}" if ids else None)
    assert orjson.loads(doc)["message"] == batch.records[3]["message"]


def test_a_batch_the_fast_path_cannot_take_is_encoded_per_record(tmp_path) -> None:
    out = build_output("elasticsearch", {"url": "http://127.0.0.1:9"}, make_context(tmp_path))
    codec = out.codec
    odd = cri_batch(3)
    odd.records[0] = {**odd.records[0], "extra": 1}
    del odd.records[0]["lines"]  # seven keys, but not the parser's seven
    assert codec._uniform_items(odd) is None
    items, nbytes = codec.items(odd)
    assert nbytes == sum(map(len, items))
    assert orjson.loads(items[0].split(b"\n")[1])["extra"] == 1


def test_a_bad_fields_value_names_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"fields: expected \"lean\", \"all\" or a list"):
        build_output("elasticsearch", {"url": "http://127.0.0.1:9", "fields": "some"}, make_context(tmp_path))


def test_document_ids_come_from_source_and_position() -> None:
    assert position_id("92a150103d95958b", 4096) == "92a150103d95958b:1000"
    assert doc_id(META, {"offset": 0}) == "92a150103d95958b:0"
    # another generation of the file has another source id: another id for the same offset
    assert doc_id({**META, "source_id": "77aa"}, {"offset": 0}) != doc_id(META, {"offset": 0})
    long_source = "x" * 200  # hashed, so an id stays far below Elasticsearch's 512-byte limit
    assert len(position_id(long_source, 1)) <= 40 and position_id(long_source, 1) == position_id(long_source, 1)
    cursor = {"source_id": "journal", "pos_key": "cursor"}
    a = doc_id(cursor, {"cursor": "s=abc;i=1"})
    assert a == doc_id(cursor, {"cursor": "s=abc;i=1"}) and a != doc_id(cursor, {"cursor": "s=abc;i=2"})


def test_sls_logs_of_a_cri_batch_equal_the_per_record_encoding_and_fields_all_keeps_time(tmp_path) -> None:
    settings = {"url": "http://127.0.0.1:9", "endpoint": "cn-test.log.aliyuncs.com", "project": "p",
                "logstore": "s", "access_key_id": "id", "access_key_secret": "secret"}
    codec = build_output("sls", settings, make_context(tmp_path / "a")).codec

    def decode_log(item: bytes) -> dict[str, object]:
        return codec.dead_record("", item)  # the generated LogGroup classes read the Log back
    batch = cri_batch(200)
    (_, fast, nbytes), = codec.parts(batch)
    assert nbytes == sum(map(len, fast))
    odd = cri_batch(200)
    odd.records.append({"message": "x", "offset": 1, "stream": "stdout", "time": "2024-05-14T09:00:00Z"})
    assert codec._uniform_logs(odd, b"") is None  # one record of another shape: the per-record path
    (_, slow, _), = codec.parts(odd)
    assert slow[:200] == fast
    r = batch.records[5]
    assert decode_log(fast[5]) == {"Time": r["time_ns"] // 10**9, "Time_ns": r["time_ns"] % 10**9, "Contents": {
        "kubernetes.namespace": "shop", "kubernetes.pod": "web-0", "kubernetes.pod_uid": "u-1",
        "kubernetes.container": "main", "message": r["message"], "stream": r["stream"]}}
    full = build_output("sls", {**settings, "fields": "all"}, make_context(tmp_path / "b")).codec
    (_, logs, _), = full.parts(batch)
    got = full.dead_record("", logs[5])["Contents"]
    assert got["time"] == r["time"] and got["offset"] == str(r["offset"]) and got["path"] == META["path"]
    assert "source_id" not in got and "pos_key" not in got
