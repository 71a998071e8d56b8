"""The Loki output against a local push receiver that decodes snappy + protobuf (or JSON) and validates entries
like Loki: labels from Kubernetes metadata, structured metadata, time order per stream, tenants in separate lanes,
429/503 retried, 400 for too-old entries dead-lettered entry by entry with Loki's reason, resets and timeouts."""

from __future__ import annotations

import asyncio

from logagent.delivery import rfc3339_ns
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


async def test_too_old_entries_are_dead_lettered_one_by_one_with_lokis_reason(tmp_path) -> None:
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 2, 40, meta=kube("web-1"))
    old = {r["message"] for b in batches for r in b.records if r["offset"] // 100 in (3, 17, 41, 42)}
    for b in batches:
        for r in b.records:
            if r["message"] in old:
                r["time"] = "2024-04-01T00:00:00Z"  # a month behind: Loki refuses it
    rec = await LokiReceiver(reject_before_ns=rfc3339_ns("2024-05-01T00:00:00Z")).start()
    out = build_output("loki", _settings(rec.url, batch={"max_records": 40, "max_wait": "20ms"}), ctx)
    await run_output(out, batches)
    await rec.stop()

    stored = _stored_index(rec)
    assert sorted(line for (_, _, line) in stored) == sorted(
        r["message"] for b in batches for r in b.records if r["message"] not in old)
    dl = dead_letters(ctx)
    assert sorted(d["record"]["line"] for d in dl) == sorted(old)
    assert all(d["reason"].startswith("loki_400: entry with timestamp") and "entry too far behind" in d["reason"]
               for d in dl)
    assert all('pod="web-1"' in d["record"]["labels"] for d in dl)
    assert sorted(ledger.acked) == [0, 1]


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
