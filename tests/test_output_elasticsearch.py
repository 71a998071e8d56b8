"""The Elasticsearch output against a local `_bulk` receiver that decodes gzip + NDJSON and answers like ES:
deterministic ids, item-by-item failures (429 retried, 400 dead-lettered, 409 on create = already written),
whole-request 429/503 with Retry-After, connection resets, slow answers, and acknowledgement only after the
backend confirmed."""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest

from logagent.record import doc_id, host_name
from tests.helpers import async_wait_for
from tests.receivers.es import BulkReceiver
from tests.receivers.harness import AckLedger, build_output, dead_letters, make_context, numbered_batches, run_output

FAST_RETRY = {"initial_backoff": "10ms", "max_backoff": "100ms"}


def _settings(url: str, **extra):
    base = {"url": url, "index": "logs-{kubernetes.namespace|system}-%Y.%m.%d",
            "batch": {"max_records": 64, "max_wait": "50ms"}, "retry": FAST_RETRY, "timeout": "5s"}
    base.update(extra)
    return base


async def test_every_record_is_stored_once_with_its_deterministic_id(tmp_path) -> None:
    rec = await BulkReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    batches = numbered_batches(ledger, 3, 100, meta={"kubernetes": {"namespace": "shop", "pod": "web-1"}})
    out = build_output("elasticsearch", _settings(rec.url), ctx)
    await run_output(out, batches)
    await rec.stop()

    expected = {doc_id(b.meta, r): r["message"] for b in batches for r in b.records}
    assert {i: d["message"] for i, d in rec.docs.items()} == expected
    assert rec.auto_docs == [] and rec.conflicts == 0 and rec.items_seen == 300
    assert set(rec.index_of.values()) == {"logs-shop-2024.05.01"}
    sample = rec.docs[doc_id(batches[0].meta, batches[0].records[5])]
    # lean by default: the batch's Kubernetes metadata and the host, the record's message and stream, its time as
    # @timestamp; bookkeeping (offset, input, path) left out
    assert sample == {"kubernetes": {"namespace": "shop", "pod": "web-1"}, "host": host_name(),
                      "message": "line 5", "stream": "stdout", "@timestamp": batches[0].records[5]["time"]}
    assert rec.content_types == {"application/x-ndjson"}
    assert rec.requests >= 5  # 300 records cut at 64 per request
    assert sorted(ledger.acked) == [0, 1, 2] and ledger.violations == []
    assert dead_letters(ctx) == []


async def test_partial_bulk_failures_retry_429_dead_letter_400_and_accept_409(tmp_path) -> None:
    rec = await BulkReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs or r["message"].endswith("bad"))
    batches = numbered_batches(ledger, 2, 50, message=lambda i: f"line {i}" + (" bad" if i % 10 == 3 else ""))
    # documents 0-9 were written by an earlier run (a replay after a crash): ES answers 409 on create
    for r in [r for r in batches[0].records[:10] if not r["message"].endswith("bad")]:
        rec.docs[doc_id(batches[0].meta, r)] = {"message": r["message"]}

    def fault(meta, doc, attempt):
        if doc["message"].endswith("bad"):
            return 400, "mapper_parsing_exception", "failed to parse field [level] of type [long]"
        if doc["offset"] % 700 == 0 and attempt == 1:
            return 429, "es_rejected_execution_exception", "rejected execution of coordinating operation"
        return None

    rec.item_fault = fault
    out = build_output("elasticsearch", _settings(rec.url, fields=["offset"]), ctx)
    await run_output(out, batches)
    await rec.stop()

    all_records = [(b.meta, r) for b in batches for r in b.records]
    bad = [r for _, r in all_records if r["message"].endswith("bad")]
    good = {doc_id(m, r): r["message"] for m, r in all_records if not r["message"].endswith("bad")}
    assert {i: d["message"] for i, d in rec.docs.items()} == good
    assert rec.conflicts == 9  # the 9 good ones among the first 10 were there already
    throttled = [doc_id(m, r) for m, r in all_records if r["offset"] % 700 == 0 and not r["message"].endswith("bad")]
    assert throttled and all(rec.attempts[i] == 2 for i in throttled)
    dl = dead_letters(ctx)
    assert sorted(d["record"]["message"] for d in dl) == sorted(r["message"] for r in bad)
    assert all(d["reason"].startswith("mapper_parsing_exception: failed to parse field [level]") for d in dl)
    assert all(d["output"] == "out" and d["record"]["_es"]["_id"] == doc_id(batches[0].meta, {"offset":
               d["record"]["offset"]}) for d in dl)
    assert sorted(ledger.acked) == [0, 1] and ledger.violations == []


async def test_whole_request_429_honours_retry_after_then_503_then_succeeds(tmp_path) -> None:
    rec = await BulkReceiver().start()
    rec.plan = [("status", 429, {"Retry-After": "1"},
                 b'{"error":{"type":"es_rejected_execution_exception","reason":"queue full"},"status":429}'),
                ("status", 503, {}, b'{"error":{"type":"unavailable_shards_exception","reason":"x"}}')]
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    batches = numbered_batches(ledger, 1, 20)
    out = build_output("elasticsearch", _settings(rec.url, batch={"max_records": 100, "max_wait": "20ms"}), ctx)
    await run_output(out, batches)
    await rec.stop()

    assert len(rec.docs) == 20 and rec.requests == 3
    waited = rec.request_log[1]["loop_time"] - rec.request_log[0]["loop_time"]
    assert waited >= 0.95  # Retry-After: 1 wins over the 10-100ms backoff
    assert ledger.acked == [0] and ledger.violations == [] and dead_letters(ctx) == []


async def test_resets_and_timeouts_are_retried_and_replays_are_not_duplicated(tmp_path) -> None:
    rec = await BulkReceiver().start()
    # reset before storing; store then reset (client never sees the answer); answer after the client timed out
    rec.plan = ["reset", "reset_after_store", ("slow", 1.5)]
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    batches = numbered_batches(ledger, 3, 30)
    out = build_output("elasticsearch", _settings(rec.url, timeout="500ms", max_in_flight=1,
                                                  batch={"max_records": 30, "max_wait": "20ms"}), ctx)
    await run_output(out, batches)
    await async_wait_for(lambda: len(rec.docs) == 90, timeout=10, what="slow request stored")
    await rec.stop()

    expected = {doc_id(b.meta, r) for b in batches for r in b.records}
    assert set(rec.docs) == expected
    assert rec.conflicts >= 30  # the replays of stored requests were answered 409 and counted as success
    assert sorted(ledger.acked) == [0, 1, 2] and ledger.violations == [] and dead_letters(ctx) == []


async def test_whole_request_client_error_is_dead_lettered_with_the_reason(tmp_path) -> None:
    rec = await BulkReceiver().start()
    rec.plan = [("status", 400, {"Content-Type": "application/json"},
                 b'{"error":{"type":"illegal_argument_exception","reason":"index name too long"},"status":400}')]
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: False)
    batches = numbered_batches(ledger, 1, 5)
    out = build_output("elasticsearch", _settings(rec.url), ctx)
    await run_output(out, batches)
    await rec.stop()
    dl = dead_letters(ctx)
    assert [d["record"]["message"] for d in dl] == [f"line {i}" for i in range(5)]
    assert {d["reason"] for d in dl} == {"http_400: illegal_argument_exception: index name too long"}
    assert rec.docs == {} and ledger.acked == [0]


async def test_send_waits_while_the_buffer_is_full_and_resumes_when_the_backend_recovers(tmp_path) -> None:
    rec = await BulkReceiver().start()
    rec.plan = [("status", 503, {}, b"")] * 1000
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    batches = numbered_batches(ledger, 6, 40)
    out = build_output("elasticsearch", _settings(rec.url, buffer_max_bytes="16KiB",
                                                  batch={"max_records": 40, "max_wait": "10ms"}), ctx)
    await out.start()
    sent = 0

    async def feed() -> None:
        nonlocal sent
        for b in batches:
            await out.send(b)
            sent += 1

    task = asyncio.create_task(feed())
    await async_wait_for(lambda: rec.requests >= 6, what="several failing attempts")
    assert not task.done() and sent < 6  # bounded: the feeder is held while nothing is acknowledged
    held = out.delivery.buffered_bytes
    assert 0 < held <= 16 * 1024 + max(len(b.records) * 200 for b in batches)
    assert ledger.acked == []
    rec.plan = []
    await asyncio.wait_for(task, 15)
    await asyncio.wait_for(out.flush(), 15)
    await out.stop()
    await rec.stop()
    assert len(rec.docs) == 240 and sorted(ledger.acked) == list(range(6)) and ledger.violations == []
    assert out.delivery.buffered_bytes == 0


async def test_basic_auth_password_from_env_is_sent_and_never_in_the_settings_repr(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ES_PW", "s3cret-pw")
    rec = await BulkReceiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    out = build_output("elasticsearch", _settings(rec.url, auth={"user": "shipper", "password": {"env": "ES_PW"}}),
                       ctx)
    assert "s3cret-pw" not in repr(out.settings)
    await run_output(out, numbered_batches(ledger, 1, 3))
    await rec.stop()
    assert rec.auth_headers == {"Basic " + base64.b64encode(b"shipper:s3cret-pw").decode()}
    assert len(rec.docs) == 3


def test_settings_errors_name_the_key(tmp_path) -> None:
    from logagent.config import ConfigError

    ctx = make_context(tmp_path)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.data_stream: give either index or data_stream"):
        build_output("elasticsearch", {"url": "http://x", "index": "a", "data_stream": "b"}, ctx)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.url: expected an http"):
        build_output("elasticsearch", {"url": "ftp://x"}, ctx)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.batch\.max_bytes"):
        build_output("elasticsearch", {"url": "http://x", "batch": {"max_bytes": "lots"}}, ctx)


def _make_ca_and_server_cert(d) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    import subprocess

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=logagent test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    return str(d / "ca.pem"), str(d / "srv.pem"), str(d / "srv.key")


async def test_https_verifies_the_server_against_the_configured_ca(tmp_path) -> None:
    import shutil
    import ssl

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make test certificates")
    ca, cert, key = _make_ca_and_server_cert(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    rec = await BulkReceiver().start(ssl_context=server_ctx)
    assert rec.url.startswith("https://")

    # trusted through tls.ca_file: delivered
    ctx = make_context(tmp_path / "a")
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    out = build_output("elasticsearch", _settings(rec.url, tls={"ca_file": ca}), ctx)
    await run_output(out, numbered_batches(ledger, 1, 5, source_id="file:a"))
    assert len(rec.docs) == 5 and ledger.acked == [0]

    # default trust store does not know our CA: verification fails, nothing is sent or acknowledged
    ctx_b = make_context(tmp_path / "b")
    ledger_b = AckLedger(lambda meta, r: True)
    out_b = build_output("elasticsearch", _settings(rec.url), ctx_b)
    await out_b.start()
    for b in numbered_batches(ledger_b, 1, 5, source_id="file:b"):
        await out_b.send(b)
    from logagent import metrics

    transport = metrics.ERRORS.labels(component="out", kind="transport")
    seen = transport._value.get()
    await async_wait_for(lambda: transport._value.get() >= seen + 2, what="TLS failures retried")
    assert ledger_b.acked == [] and len(rec.docs) == 5
    await out_b.stop()

    # verify: false accepts it (and says so in the config)
    ctx_c = make_context(tmp_path / "c")
    ledger_c = AckLedger(lambda meta, r: True)
    out_c = build_output("elasticsearch", _settings(rec.url, tls={"verify": False}), ctx_c)
    await run_output(out_c, numbered_batches(ledger_c, 1, 5, source_id="file:c"))
    await rec.stop()
    assert len(rec.docs) == 10 and ledger_c.acked == [0]


async def test_url_query_parameters_are_kept_filter_path_is_requested_and_the_filtered_answer_read(tmp_path) -> None:
    """`url` with a path prefix and a query: `/_bulk` goes after the path, the query stays, `pipeline` and
    `filter_path` are added; the receiver filters its answer as ES does, and per-item errors are still read."""
    rec = await BulkReceiver().start()
    rec.item_fault = lambda meta, doc, attempt: ((400, "mapper_parsing_exception", "failed to parse [level]")
                                                 if doc["message"] == "line 7" else None)
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 2, 20)
    batches[0].records[3]["flags"] = ["truncated", "invalid_utf8"]
    out = build_output("elasticsearch", _settings(f"{rec.url}/logs/?refresh=false&timeout=1m",
                                                  pipeline="k8s-pipeline"), ctx)
    await run_output(out, batches)
    await rec.stop()
    assert set(rec.paths) == {"/logs/_bulk"}
    assert all(q == {"refresh": "false", "timeout": "1m", "pipeline": "k8s-pipeline",
                     "filter_path": "errors,items.*.status,items.*.error"} for q in rec.queries)
    assert len(rec.docs) == 39
    dl = dead_letters(ctx)
    assert [(d["record"]["message"], d["reason"]) for d in dl] == [
        ("line 7", "mapper_parsing_exception: failed to parse [level]")]
    flagged = [d for d in rec.docs.values() if d.get("flags")]
    assert [(d["message"], d["flags"]) for d in flagged] == [("line 3", ["truncated", "invalid_utf8"])]
    # a user's own filter_path is kept as given
    own = build_output("elasticsearch", _settings(f"{rec.url}?filter_path=errors,items"), make_context(tmp_path / "b"))
    assert own.codec.url == f"{rec.url}/_bulk?filter_path=errors,items"


async def test_an_unreadable_200_is_a_bounded_visible_error_and_the_lane_moves_on(tmp_path, caplog) -> None:
    rec = await BulkReceiver().start()
    # a proxy answering 200 with its own page: three times for the first request, then the real ES answers
    page = b"<html><body>Request accepted</body></html>"
    rec.plan = [("status", 200, {"Content-Type": "text/html"}, page)] * 3 + [("status", 200, {}, b"")]
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    out = build_output("elasticsearch", _settings(rec.url, max_in_flight=1,
                                                  batch={"max_records": 10, "max_wait": "10ms"}), ctx)
    with caplog.at_level(logging.ERROR):
        await run_output(out, numbered_batches(ledger, 2, 10))
    await rec.stop()
    dl = dead_letters(ctx)
    assert sorted(d["record"]["message"] for d in dl) == [f"line {i}" for i in range(10)]
    assert {d["reason"] for d in dl} == {
        "unreadable_response: HTTP 200 with a body that is not a bulk response (42 bytes: "
        "'<html><body>Request accepted</body></html>')"}
    # the second request met one empty 200 (retried), then was written
    assert sorted(d["message"] for d in rec.docs.values()) == sorted(f"line {i}" for i in range(10, 20))
    unreadable = [r for r in caplog.records if "not a bulk response" in r.getMessage()]
    assert [r.attempt for r in unreadable] == [1, 2, 3, 1]
    assert any("refused a request for good" in r.getMessage() for r in caplog.records)
    assert sorted(ledger.acked) == [0, 1]


async def test_errors_true_with_items_that_do_not_line_up_is_bounded_too(tmp_path, caplog) -> None:
    rec = await BulkReceiver().start()
    rec.plan = [("status", 200, {"Content-Type": "application/json"}, b'{"took":1,"errors":true,"items":[]}')] * 3
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    out = build_output("elasticsearch", _settings(rec.url), ctx)
    with caplog.at_level(logging.ERROR):
        await run_output(out, numbered_batches(ledger, 1, 4))
    await rec.stop()
    assert {d["reason"] for d in dead_letters(ctx)} == {
        "unreadable_response: HTTP 200 with a body that is not a bulk response (errors: true with 0 items for 4 sent)"}
    assert rec.requests == 3 and ledger.acked == [0]
