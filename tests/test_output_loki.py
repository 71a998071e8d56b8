"""The Loki output against a local push receiver that decodes snappy + protobuf (or JSON) and validates entries
like Loki: labels from Kubernetes metadata, structured metadata, time order per stream, tenants in separate lanes,
429/503 retried, partial 400s read entry by entry (nothing accepted resent), Loki's limits kept up front, resets and
timeouts."""

from __future__ import annotations

import asyncio
import logging

import pytest

from logagent import metrics
from logagent.timefmt import rfc3339_ns
from tests.helpers import async_wait_for
from tests.receivers.harness import AckLedger, build_output, dead_letters, make_context, numbered_batches, run_output
from tests.receivers.loki import LokiReceiver

FAST_RETRY = {"initial_backoff": "10ms", "max_backoff": "100ms"}


def kube(pod: str, ns: str = "shop", app: str = "web") -> dict:
    return {"kubernetes": {"namespace": ns, "pod": pod, "pod_uid": f"uid-{pod}", "container": "main",
                           "node": "node-a", "labels": {"app": app}}}


def _settings(url: str, **extra):
    base = {"url": url, "batch": {"max_records": 50, "max_wait": "30ms"}, "retry": FAST_RETRY, "timeout": "5s"}
    base.update(extra)
    return base


def _stored_index(rec: LokiReceiver) -> dict[tuple[str, int, str], dict]:
    """(tenant, time, line) -> labels, for exact-once checks over all tenants and streams."""
    out: dict[tuple[str, int, str], dict] = {}
    for (tenant, labels), entries in rec.streams.items():
        for (ts, line) in entries:
            assert (tenant, ts, line) not in out, "stored twice"
            out[(tenant, ts, line)] = dict(labels)
    return out


async def test_protobuf_push_labels_metadata_and_time_order(tmp_path) -> None:
    rec = await LokiReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: any(
        (rfc3339_ns(r["time"]), r["message"]) in entries for entries in rec.streams.values()))
    batches = numbered_batches(ledger, 2, 40, meta=kube("web-1")) + numbered_batches(ledger, 1, 40, meta=kube("web-2"))
    for b in batches:
        b.records.reverse()  # newest first: the output must sort entries per stream
    out = build_output("loki", _settings(rec.url), ctx)
    await run_output(out, batches)
    await rec.stop()

    assert rec.content_types == {"application/x-protobuf"} and rec.unsorted_streams == 0
    assert rec.duplicates == 0 and rec.entries_stored == 120
    web1 = {"namespace": "shop", "pod": "web-1", "container": "main", "app": "web", "node": "node-a", "job": "in"}
    web2 = dict(web1, pod="web-2")
    got = rec.stored("")
    assert sorted((labels["pod"], ts, line) for labels, ts, line, _ in got) == sorted(
        [("web-1", rfc3339_ns(r["time"]), r["message"]) for b in batches[:2] for r in b.records]
        + [("web-2", rfc3339_ns(r["time"]), r["message"]) for r in batches[2].records])
    assert {frozenset(labels.items()) for labels, *_ in got} == {frozenset(web1.items()), frozenset(web2.items())}
    assert {(md["pod_uid"], md["filename"]) for labels, _, _, md in got if labels["pod"] == "web-2"} == {
        ("uid-web-2", "/var/log/app.log")}
    assert sorted(ledger.acked) == [0, 0, 1] and ledger.violations == [] and dead_letters(ctx) == []


async def test_json_encoding_with_gzip(tmp_path) -> None:
    rec = await LokiReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 2, 30, meta=kube("api-0", app="api"))
    out = build_output("loki", _settings(rec.url, encoding="json", labels={"app": "{kubernetes.labels.app}"},
                                         structured_metadata={"offset": "{offset}"}), ctx)
    await run_output(out, batches)
    await rec.stop()
    assert rec.content_types == {"application/json"}
    got = rec.stored("")
    assert sorted((ts, line, md["offset"]) for _, ts, line, md in got) == sorted(
        (rfc3339_ns(r["time"]), r["message"], str(r["offset"])) for b in batches for r in b.records)
    assert {frozenset(labels.items()) for labels, *_ in got} == {frozenset({"app": "api"}.items())}
    assert sorted(ledger.acked) == [0, 1]


def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "logagent.output.out"]


async def test_partial_400_stores_accepted_entries_once_and_dead_letters_each_refused_one(tmp_path, caplog) -> None:
    """Loki 3 as deployed: stream sharding on (a resent entry lands in another __stream_shard__ and is stored
    again), service_name discovered (the messages name labels we did not send), a GroupedErrors answer. Too old
    (several in one second: "3 errors like: ..."), too new, too long and a stream whose label value is too long
    are refused in the same requests; everything else must be stored exactly once."""
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    web = numbered_batches(ledger, 2, 40, meta=kube("web-1"))
    api = numbered_batches(ledger, 1, 40, meta=kube("api-0", app="api"), source_id="file:api",
                           message=lambda i: f"api {i}")
    bad_stream = numbered_batches(ledger, 1, 5, meta=kube("x" * 2100, app="big"), source_id="file:big",
                                  message=lambda i: f"big pod line {i}")
    cause: dict[str, str] = {}
    for b in web + api:
        for r in b.records:
            n = r["offset"] // 100
            if n in (3, 4, 5) or n == 61:
                r["time"] = f"2024-04-01T00:00:00.{n:09d}Z" if n != 61 else "2024-04-01T00:00:07Z"
                cause[r["message"]] = "has timestamp too old"
            elif n in (17, 42):
                r["time"] = "2024-06-01T00:00:00Z"
                cause[r["message"]] = "has timestamp too new"
            elif n == 20:
                r["message"] = r["message"] + " " + "L" * 5000
                cause[r["message"]] = "Max entry size '4096' bytes exceeded"
    for r in bad_stream[0].records:
        cause[r["message"]] = "has label value too long"
    rec = await LokiReceiver(reject_before_ns=rfc3339_ns("2024-05-01T00:00:00Z"),
                             reject_after_ns=rfc3339_ns("2024-05-02T00:00:00Z"), max_line_bytes=4096,
                             discover_service_name=True, shard_streams=3).start()
    # The output believes in bigger limits than this Loki has: Loki's refusals decide.
    out = build_output("loki", _settings(rec.url, batch={"max_records": 200, "max_wait": "20ms"},
                                         max_label_value_length=4096), ctx)
    with caplog.at_level(logging.WARNING):
        await run_output(out, [*web, *api, *bad_stream])
    await rec.stop()

    every = [r["message"] for b in [*web, *api, *bad_stream] for r in b.records]
    stored = _stored_index(rec)  # asserts nothing is stored twice, across shards
    assert sorted(line for (_, _, line) in stored) == sorted(m for m in every if m not in cause)
    assert rec.duplicates == 0 and any("__stream_shard__" in dict(labels) for (_, labels) in rec.streams)
    dl = dead_letters(ctx)
    assert sorted(d["record"]["line"] for d in dl) == sorted(cause)  # each refused line once
    for d in dl:
        assert cause[d["record"]["line"]] in d["reason"], d["reason"][:200]
        assert any(d["reason"].removeprefix("loki_400: ").removeprefix("3 errors like: ") in body
                   or d["reason"].removeprefix("loki_400: ") in body for _, body in rec.answers)
    too_old_same_second = {d["reason"] for d in dl if d["record"]["line"] in {"line 3", "line 4", "line 5"}}
    assert len(too_old_same_second) == 1 and "3 errors like: " in next(iter(too_old_same_second))
    long_label = [d for d in dl if "label value too long" in d["reason"]]
    assert "x" * 2100 in long_label[0]["reason"]  # the whole value, not cut at 500 characters
    # one error line per cause, naming it
    errors = _errors(caplog)
    assert sorted(e.reason for e in errors) == sorted({d["reason"] for d in dl})
    assert sorted(ledger.acked) == [0, 0, 0, 1] and ledger.violations == []


async def test_ingester_refusals_beyond_the_listed_ten_are_found_by_the_oldest_acceptable_time(tmp_path) -> None:
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 1, 40, meta=kube("web-1"))
    behind = set()
    for r in batches[0].records[:15]:  # 15 refused by the ingester; its answer lists 10 of them
        r["time"] = r["time"].replace("2024-05-01T10", "2024-05-01T08")
        behind.add(r["message"])
    batches += numbered_batches(ledger, 1, 10, meta=kube("api-0", app="api"), source_id="file:api",
                                message=lambda i: f"api {i}")
    rec = await LokiReceiver(ingester_behind_ns=rfc3339_ns("2024-05-01T09:00:00Z")).start()
    out = build_output("loki", _settings(rec.url, batch={"max_records": 100, "max_wait": "20ms"}), ctx)
    await run_output(out, batches)
    await rec.stop()
    assert "total ignored: 15 out of 40" in rec.answers[0][1] and rec.answers[0][1].count("ignored, reason") == 10
    stored = _stored_index(rec)
    assert sorted(line for (_, _, line) in stored) == sorted(
        r["message"] for b in batches for r in b.records if r["message"] not in behind)
    dl = dead_letters(ctx)
    assert sorted(d["record"]["line"] for d in dl) == sorted(behind)
    assert all("entry too far behind" in d["reason"] for d in dl)


async def test_an_answer_naming_no_entry_dead_letters_the_request_loudly(tmp_path, caplog) -> None:
    rec = await LokiReceiver().start()
    rec.plan = [("status", 400, {}, b"tenant 'shop/../x' is not a valid tenant ID\n")]
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    out = build_output("loki", _settings(rec.url), ctx)
    with caplog.at_level(logging.ERROR):
        await run_output(out, numbered_batches(ledger, 1, 10, meta=kube("web-1")))
    await rec.stop()
    dl = dead_letters(ctx)
    assert len(dl) == 10 and {d["reason"] for d in dl} == {"loki_400: tenant 'shop/../x' is not a valid tenant ID"}
    assert [e.reason for e in _errors(caplog)] == ["loki_400: tenant 'shop/../x' is not a valid tenant ID"]


async def test_a_300kb_line_arrives_whole_in_pieces_loki_accepts(tmp_path) -> None:
    rec = await LokiReceiver().start()  # Loki's default max_line_size: 256 KiB
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    big = ("é" * 7 + "x") * 34_000  # 306,000 bytes, multi-byte characters across the cut points
    batches = numbered_batches(ledger, 1, 3, meta=kube("web-1"), message=lambda i: big if i == 1 else f"line {i}")
    before = metrics.FLAGGED.labels(component="out", flag="line_split")._value.get()
    out = build_output("loki", _settings(rec.url), ctx)
    await run_output(out, batches)
    await rec.stop()
    assert dead_letters(ctx) == [] and rec.answers == []
    got = rec.stored("")
    pieces = sorted((md for _, _, _, md in got if "split_id" in md), key=lambda md: md["split_part"])
    lines = {(ts, line): md for _, ts, line, md in got}
    parts = sorted(((ts, line) for (ts, line), md in lines.items() if "split_id" in md))
    assert [md["split_part"] for md in pieces] == ["1/2", "2/2"] and len({md["split_id"] for md in pieces}) == 1
    assert all(len(line.encode()) <= 256 * 1024 for _, line in parts)
    assert "".join(line for _, line in parts) == big
    assert parts[0][0] == rfc3339_ns(batches[0].records[1]["time"])  # the first piece keeps the record's time
    assert sorted(line for _, _, line, md in got if "split_id" not in md) == ["line 0", "line 2"]
    assert metrics.FLAGGED.labels(component="out", flag="line_split")._value.get() == before + 1


async def test_label_values_loki_would_refuse_are_sanitised_and_counted(tmp_path, caplog) -> None:
    rec = await LokiReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    before = metrics.FLAGGED.labels(component="out", flag="label_sanitised")._value.get()
    batches = numbered_batches(ledger, 1, 4, meta=kube("web-\ufffd1", app="a" * 3000))
    out = build_output("loki", _settings(rec.url), ctx)
    with caplog.at_level(logging.WARNING):
        await run_output(out, batches)
    await rec.stop()
    assert dead_letters(ctx) == [] and rec.answers == []
    labels = {frozenset(lbl.items()) for lbl, *_ in rec.stored("")}
    assert len(labels) == 1
    got = dict(next(iter(labels)))
    assert got["pod"] == "web-1" and got["app"] == "a" * 2048
    assert metrics.FLAGGED.labels(component="out", flag="label_sanitised")._value.get() == before + 2
    warned = [r for r in caplog.records if "sanitised" in r.getMessage()]
    assert sorted(r.label for r in warned) == ["app", "pod"]


async def test_record_flags_travel_as_structured_metadata(tmp_path) -> None:
    rec = await LokiReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 1, 3, meta=kube("web-1"))
    batches[0].records[0]["flags"] = ["truncated"]
    batches[0].records[1]["flags"] = ["truncated", "invalid_utf8"]
    out = build_output("loki", _settings(rec.url), ctx)
    await run_output(out, batches)
    await rec.stop()
    flags = {line: md.get("flags") for _, _, line, md in rec.stored("")}
    assert flags == {"line 0": "truncated", "line 1": "truncated,invalid_utf8", "line 2": None}


async def test_429_with_retry_after_and_503_are_retried(tmp_path) -> None:
    rec = await LokiReceiver().start()
    rec.plan = [("status", 429, {"Retry-After": "1"}, b"Ingestion rate limit exceeded\n"),
                ("status", 503, {}, b"no healthy ingesters\n")]
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: len(rec.stored("")) >= 20)
    out = build_output("loki", _settings(rec.url), ctx)
    await run_output(out, numbered_batches(ledger, 1, 20, meta=kube("web-1")))
    await rec.stop()
    assert len(_stored_index(rec)) == 20 and rec.requests == 3
    assert rec.request_log[1]["loop_time"] - rec.request_log[0]["loop_time"] >= 0.95
    assert ledger.acked == [0] and ledger.violations == [] and dead_letters(ctx) == []


async def test_resets_and_timeouts_deliver_each_entry_once(tmp_path) -> None:
    rec = await LokiReceiver().start()
    rec.plan = ["reset", "reset_after_store", ("slow", 1.5)]
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 3, 30, meta=kube("web-1"))
    out = build_output("loki", _settings(rec.url, timeout="500ms", max_in_flight=1,
                                         batch={"max_records": 30, "max_wait": "20ms"}), ctx)
    await run_output(out, batches)
    await async_wait_for(lambda: rec.entries_stored == 90, what="slow request stored")
    await rec.stop()
    sent = sorted(r["message"] for b in batches for r in b.records)
    assert sorted(line for (_, _, line) in _stored_index(rec)) == sent
    assert rec.duplicates >= 30  # replays of stored requests, dropped by Loki as exact duplicates
    assert sorted(ledger.acked) == [0, 1, 2] and dead_letters(ctx) == []


async def test_a_rate_limited_tenant_does_not_block_another(tmp_path) -> None:
    rec = await LokiReceiver(require_tenant=True).start()
    rec.blocked_tenants = {"team-a"}
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    a = numbered_batches(ledger, 3, 20, meta=kube("a-1", ns="team-a"), source_id="file:a")
    b = numbered_batches(ledger, 3, 20, meta=kube("b-1", ns="team-b"), source_id="file:b")
    out = build_output("loki", _settings(rec.url, tenant="{kubernetes.namespace}", max_in_flight=1,
                                         batch={"max_records": 20, "max_wait": "10ms"}), ctx)
    await out.start()
    for x, y in zip(a, b):
        await out.send(x)
        await out.send(y)
    await async_wait_for(lambda: len(rec.stored("team-b")) == 60, what="team-b delivered")
    assert rec.stored("team-a") == [] and rec.requests > 3  # team-a still refused, retrying
    assert [t.ack.completed for t in b] == [True] * 3 and [t.ack.completed for t in a] == [False] * 3
    rec.blocked_tenants = set()
    await asyncio.wait_for(out.flush(), 15)
    await out.stop()
    await rec.stop()
    assert len(rec.stored("team-a")) == 60 and set(rec.tenants_seen) == {"team-a", "team-b"}
    assert all(all(lbl["namespace"] == "team-a" for lbl, *_ in [e]) for e in rec.stored("team-a"))
    assert dead_letters(ctx) == []


async def test_label_cardinality_guard_moves_new_values_to_structured_metadata(tmp_path) -> None:
    rec = await LokiReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = []
    for i in range(5):
        batches += numbered_batches(ledger, 1, 4, meta=kube(f"job-{i}"), source_id=f"file:{i}",
                                    message=lambda n, i=i: f"pod {i} line {n}")
    out = build_output("loki", _settings(rec.url, max_label_values=2,
                                         labels={"namespace": "{kubernetes.namespace}", "pod": "{kubernetes.pod}"},
                                         structured_metadata={}), ctx)
    await run_output(out, batches)
    await rec.stop()
    got = rec.stored("")
    assert len(got) == 20
    label_sets = {frozenset(labels.items()) for labels, *_ in got}
    assert label_sets == {frozenset({"namespace": "shop", "pod": "job-0"}.items()),
                          frozenset({"namespace": "shop", "pod": "job-1"}.items()),
                          frozenset({"namespace": "shop"}.items())}
    capped = sorted({md["pod"] for labels, _, _, md in got if "pod" not in labels})
    assert capped == ["job-2", "job-3", "job-4"]


def test_settings_are_validated(tmp_path) -> None:
    import pytest

    from logagent.config import ConfigError

    ctx = make_context(tmp_path)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.labels: 'bad-name' is not a valid Loki label name"):
        build_output("loki", {"url": "http://x", "labels": {"bad-name": "{a}"}}, ctx)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.compression: expected one of snappy"):
        build_output("loki", {"url": "http://x", "compression": "gzip"}, ctx)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.labels: at most 15 labels"):
        build_output("loki", {"url": "http://x", "labels": {f"l{i}": "{x}" for i in range(16)}}, ctx)


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
async def test_undecodable_bytes_are_sent_as_u_fffd_not_dead_lettered(tmp_path, encoding) -> None:
    """A line whose undecodable bytes are still surrogates (surrogateescape) cannot be a protobuf or JSON string:
    they go as U+FFFD, the record keeps its invalid_utf8 flag, nothing is dead-lettered."""
    rec = await LokiReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 1, 3, meta=kube("web-1"))
    batches[0].records[1]["message"] = b"bad \xff\xfe bytes".decode("utf-8", "surrogateescape")
    batches[0].records[1]["flags"] = ["invalid_utf8"]
    out = build_output("loki", _settings(rec.url, encoding=encoding), ctx)
    await run_output(out, batches)
    await rec.stop()
    got = {line: md.get("flags") for _, _, line, md in rec.stored("")}
    assert got == {"line 0": None, "bad \ufffd\ufffd bytes": "invalid_utf8", "line 2": None}
    assert dead_letters(ctx) == []
