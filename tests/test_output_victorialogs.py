"""The `victorialogs` output against a receiver that answers as VictoriaLogs' Elasticsearch bulk endpoint does:
the field mapping from query args or VL-* headers, numeric tenants, `_id` ignored (replays stored twice),
`{"errors":false,"items":[]}`, and a 200 with an empty body for a document it cannot parse."""

from __future__ import annotations

import logging

import pytest

from logagent.config import ConfigError
from tests.receivers.harness import AckLedger, build_output, dead_letters, make_context, numbered_batches, run_output
from tests.receivers.victorialogs import MISSING_MSG, VictoriaLogsReceiver

FAST_RETRY = {"initial_backoff": "10ms", "max_backoff": "100ms"}
KUBE = {"kubernetes": {"namespace": "shop", "pod": "web-1", "container": "main", "labels": {"app": "web"}}}


def _settings(url: str, **extra):
    base = {"url": url, "batch": {"max_records": 50, "max_wait": "20ms"}, "retry": FAST_RETRY, "timeout": "5s"}
    base.update(extra)
    return base


@pytest.mark.parametrize("items_mode", ["empty", "per_item"])
async def test_the_preset_maps_message_time_stream_and_tenant(tmp_path, items_mode) -> None:
    rec = await VictoriaLogsReceiver(items_mode=items_mode).start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 2, 30, meta=KUBE)
    batches[0].records[2]["flags"] = ["truncated"]
    out = build_output("victorialogs", _settings(rec.url, account_id=12, project_id=3), ctx)
    await run_output(out, batches)
    await rec.stop()
    assert len(rec.rows) == 60 and dead_letters(ctx) == [] and sorted(ledger.acked) == [0, 1]
    by_msg = {row["_msg"]: row for row in rec.rows}
    assert sorted(by_msg) == sorted(r["message"] for b in batches for r in b.records)
    row = by_msg["line 2"]
    assert row["_time"] == batches[0].records[2]["time"]
    assert row["_stream"] == ('{input="in",kubernetes.namespace="shop",kubernetes.pod="web-1",'
                              'kubernetes.container="main"}')
    assert row["_tenant"] == "12:3" and row["kubernetes.labels.app"] == "web" and row["flags"] == '["truncated"]'
    assert MISSING_MSG not in by_msg
    assert all("_id" not in a["create"] for a in rec.actions)  # VictoriaLogs ignores _id: none is sent


async def test_replays_are_stored_twice_because_victorialogs_does_not_dedupe_by_id(tmp_path) -> None:
    rec = await VictoriaLogsReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    out = build_output("victorialogs", _settings(rec.url), ctx)
    rec.plan = ["reset_after_store"]  # stored, but the answer is lost: the agent sends the request again
    await run_output(out, numbered_batches(ledger, 1, 10, meta=KUBE))
    await rec.stop()
    assert len(rec.rows) == 20 and len({row["_msg"] for row in rec.rows}) == 10
    assert ledger.acked == [0]


async def test_without_the_mapping_every_row_reads_missing_msg(tmp_path) -> None:
    """What the issue saw: the plain elasticsearch output pointed at VictoriaLogs."""
    rec = await VictoriaLogsReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    out = build_output("elasticsearch", _settings(f"{rec.url}/insert/elasticsearch"), ctx)
    await run_output(out, numbered_batches(ledger, 1, 5, meta=KUBE))
    await rec.stop()
    assert [row["_msg"] for row in rec.rows] == [MISSING_MSG] * 5


async def test_the_mapping_given_as_vl_headers_works_too(tmp_path) -> None:
    rec = await VictoriaLogsReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    headers = {"VL-Msg-Field": "message", "VL-Time-Field": "@timestamp", "VL-Stream-Fields": "kubernetes.pod",
               "AccountID": "7"}
    out = build_output("elasticsearch", _settings(f"{rec.url}/insert/elasticsearch", headers=headers,
                                                  document_ids=False), ctx)
    await run_output(out, numbered_batches(ledger, 1, 5, meta=KUBE))
    await rec.stop()
    assert sorted(row["_msg"] for row in rec.rows) == [f"line {i}" for i in range(5)]
    assert {(row["_stream"], row["_tenant"]) for row in rec.rows} == {('{kubernetes.pod="web-1"}', "7:0")}


async def test_an_unparsable_document_answer_is_bounded_and_visible(tmp_path, caplog) -> None:
    rec = await VictoriaLogsReceiver().start()
    rec.plan = [("status", 200, {}, b"")] * 3  # VictoriaLogs' answer when it stops parsing a request
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    out = build_output("victorialogs", _settings(rec.url), ctx)
    with caplog.at_level(logging.ERROR):
        await run_output(out, numbered_batches(ledger, 1, 5, meta=KUBE))
    await rec.stop()
    dl = dead_letters(ctx)
    assert len(dl) == 5 and all(d["reason"].startswith("unreadable_response: HTTP 200") for d in dl)
    assert len([r for r in caplog.records if "not a bulk response" in r.getMessage()]) == 3
    assert ledger.acked == [0]


def test_settings_name_the_key(tmp_path) -> None:
    ctx = make_context(tmp_path)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.document_ids: not used by VictoriaLogs"):
        build_output("victorialogs", {"url": "http://x", "document_ids": True}, ctx)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.account_id"):
        build_output("victorialogs", {"url": "http://x", "account_id": -1}, ctx)
    out = build_output("victorialogs", {"url": "http://vl:9428", "stream_fields": ["kubernetes.pod"],
                                        "ignore_fields": ["offset"]}, ctx)
    assert out.codec.url == ("http://vl:9428/insert/elasticsearch/_bulk?_msg_field=message&_time_field=@timestamp"
                             "&_stream_fields=kubernetes.pod&ignore_fields=offset"
                             "&filter_path=errors,items.*.status,items.*.error")
