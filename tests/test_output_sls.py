"""The SLS output against a local PutLogs receiver that checks Host, headers, Content-MD5, LZ4 raw size, the
LogGroup protobuf and the V1 signature (its own implementation of the documented signing string): delivery with
STS tokens, quota errors and 5xx retried, auth errors dead-lettered loudly, RequestTimeExpired with a clock-skew
hint, connection resets."""

from __future__ import annotations

import asyncio
import logging
import os
import re

from logagent import metrics
from logagent.timefmt import rfc3339_ns
from tests.helpers import async_wait_for
from tests.receivers.harness import AckLedger, build_output, dead_letters, make_context, numbered_batches, run_output
from tests.receivers.sls import SlsReceiver

FAST_RETRY = {"initial_backoff": "10ms", "max_backoff": "100ms"}
ENDPOINT = "cn-hangzhou.log.aliyuncs.com"


def _settings(url: str, **extra):
    base = {"url": url, "endpoint": ENDPOINT, "project": "k8s-prod", "logstore": "k8s-logs",
            "access_key_id": "LTAI-test", "access_key_secret": "test-secret", "source": "node-a",
            "topic": "{kubernetes.namespace}", "log_tags": {"cluster": "prod-1"},
            "batch": {"max_records": 50, "max_wait": "30ms"}, "retry": FAST_RETRY, "timeout": "5s"}
    base.update(extra)
    return base


def _receiver(**kw) -> SlsReceiver:
    return SlsReceiver("k8s-prod", ENDPOINT, {"LTAI-test": "test-secret"}, **kw)


async def test_putlogs_is_signed_compressed_and_decoded_with_every_field(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STS_TOKEN", "sts-token-1")
    rec = await _receiver(security_token="sts-token-1").start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: any(g["contents"]["message"] == r["message"] for g in rec.logs))
    batches = numbered_batches(ledger, 3, 40, meta={"kubernetes": {"namespace": "shop", "pod": "web-1"}})
    batches[2].records[0]["flags"] = ["truncated", "invalid_utf8"]
    out = build_output("sls", _settings(rec.url, security_token={"env": "STS_TOKEN"}), ctx)
    assert "test-secret" not in repr(out.settings) and "sts-token-1" not in repr(out.settings)
    await run_output(out, batches)
    await rec.stop()

    assert rec.errors == [] and rec.groups >= 3
    by_message = {g["contents"]["message"]: g for g in rec.logs}
    assert len(rec.logs) == 120 and len(by_message) == 120
    r = batches[1].records[7]
    got = by_message[r["message"]]
    ns = rfc3339_ns(r["time"])
    assert (got["time"], got["time_ns"]) == (ns // 10**9, ns % 10**9)
    # lean by default: the time is the Log's Time/Time_ns and the host its group's Source, bookkeeping stays home
    assert got["contents"] == {"message": r["message"], "stream": "stdout", "kubernetes.namespace": "shop",
                               "kubernetes.pod": "web-1"}
    assert (got["topic"], got["source"], got["tags"]) == ("shop", "node-a", {"cluster": "prod-1"})
    assert by_message[batches[2].records[0]["message"]]["contents"]["flags"] == '["truncated","invalid_utf8"]'
    assert sorted(ledger.acked) == [0, 1, 2] and ledger.violations == [] and dead_letters(ctx) == []


async def test_quota_errors_and_5xx_are_retried(tmp_path) -> None:
    rec = await _receiver().start()
    quota = b'{"errorCode":"WriteQuotaExceed","errorMessage":"Project write quota exceed: inflow: 1073741824"}'
    shard = b'{"errorCode":"ShardWriteQuotaExceed","errorMessage":"shard write quota exceed"}'
    rec.plan = [("status", 403, {"Content-Type": "application/json"}, quota),
                ("status", 403, {"Content-Type": "application/json"}, shard),
                ("status", 500, {}, b'{"errorCode":"InternalServerError","errorMessage":"x"}'), "reset"]
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: len(rec.logs) >= 30)
    out = build_output("sls", _settings(rec.url, max_in_flight=1, batch={"max_records": 30, "max_wait": "10ms"}),
                       ctx)
    await run_output(out, numbered_batches(ledger, 1, 30))
    await rec.stop()
    assert rec.requests == 5 and len(rec.logs) == 30
    assert sorted(g["contents"]["message"] for g in rec.logs) == sorted(f"line {i}" for i in range(30))
    assert ledger.acked == [0] and ledger.violations == [] and dead_letters(ctx) == []


async def test_wrong_secret_is_dead_lettered_loudly_as_an_auth_error(tmp_path, caplog) -> None:
    rec = await _receiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: False)
    before = metrics.ERRORS.labels(component="out", kind="auth")._value.get()
    out = build_output("sls", _settings(rec.url, access_key_secret="wrong"), ctx)
    with caplog.at_level(logging.ERROR):
        await run_output(out, numbered_batches(ledger, 1, 5))
    await rec.stop()
    assert rec.errors == ["SignatureNotMatch"] and rec.logs == []
    dl = dead_letters(ctx)
    assert [d["record"]["Contents"]["message"] for d in dl] == [f"line {i}" for i in range(5)]
    assert {d["reason"] for d in dl} == {"auth: SignatureNotMatch: signature does not match"}
    assert metrics.ERRORS.labels(component="out", kind="auth")._value.get() == before + 1
    assert any("rejected the credentials" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert "wrong" not in caplog.text
    assert ledger.acked == [0]


async def test_request_time_expired_is_reported_with_the_clock_skew_and_retried(tmp_path, caplog) -> None:
    rec = await _receiver().start()
    rec.clock_offset = 20 * 60  # the server is 20 minutes ahead of us
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: len(rec.logs) >= 10)
    out = build_output("sls", _settings(rec.url), ctx)
    await out.start()
    with caplog.at_level(logging.ERROR):
        for b in numbered_batches(ledger, 1, 10):
            await out.send(b)
        await async_wait_for(lambda: rec.errors.count("RequestTimeExpired") >= 2, what="expired twice")
    assert ledger.acked == [] and rec.logs == []
    hint = [r.reason for r in caplog.records if hasattr(r, "reason") and "RequestTimeExpired" in r.reason]
    # HTTP dates have whole seconds: the measured skew is 1200 s give or take one
    assert hint and re.search(r"local clock is -1(199|200|201)s off", hint[0]) and "fix NTP" in hint[0]
    rec.clock_offset = 0  # NTP fixed: the next (re-signed, re-dated) attempt goes through
    await asyncio.wait_for(out.flush(), 15)
    await out.stop()
    await rec.stop()
    assert len(rec.logs) == 10 and ledger.acked == [0] and dead_letters(ctx) == []


async def test_large_batches_are_cut_to_sls_limits(tmp_path) -> None:
    rec = await _receiver().start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: True)
    batches = numbered_batches(ledger, 1, 300, message=lambda i: f"{i:05d} " + "x" * 2000)
    out = build_output("sls", _settings(rec.url, batch={"max_records": 4096, "max_bytes": "128KiB",
                                                        "max_wait": "10ms"}), ctx)
    await run_output(out, batches)
    await rec.stop()
    assert len(rec.logs) == 300 and rec.groups >= 5
    assert max(rec.raw_sizes) <= 140 * 1024
    assert sorted(g["contents"]["message"][:5] for g in rec.logs) == [f"{i:05d}" for i in range(300)]


def test_settings_are_validated(tmp_path) -> None:
    import pytest

    from logagent.config import ConfigError

    ctx = make_context(tmp_path)
    base = _settings("http://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.batch: SLS takes at most 4096"):
        build_output("sls", dict(base, batch={"max_records": 5000}), ctx)
    with pytest.raises(ConfigError,
                       match=r"outputs\[0\]\.access_key_secret\.env: environment variable NOPE_X is not set"):
        build_output("sls", dict(base, access_key_secret={"env": "NOPE_X"}), ctx)
    s = build_output("sls", {k: v for k, v in base.items() if k != "url"}, ctx).settings
    assert s.http.url == f"https://k8s-prod.{ENDPOINT}"


def _write(path, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)  # as a refresher (or a projected volume) does: whole files, atomically


async def test_sts_credentials_rotated_mid_run_deliver_everything_and_dead_letter_nothing(tmp_path, caplog) -> None:
    """STS credentials in three files, rotated by a refresher while the agent runs. SLS expires the old token
    first (401 SecurityTokenExpired) and the files are rewritten afterwards, one by one: the output keeps the
    records, retries, and signs with the new AccessKey pair and token once they are there."""
    creds = tmp_path / "sts"
    creds.mkdir()
    _write(creds / "id", "STS.first")
    _write(creds / "secret", "secret-1")
    _write(creds / "token", "token-1")
    rec = SlsReceiver("k8s-prod", ENDPOINT, {"STS.first": "secret-1"}, security_token="token-1")
    await rec.start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: any(log["contents"]["message"] == r["message"] for log in rec.logs))
    out = build_output("sls", _settings(rec.url, access_key_id={"file": str(creds / "id")},
                                        access_key_secret={"file": str(creds / "secret")},
                                        security_token={"file": str(creds / "token")}, max_in_flight=1,
                                        batch={"max_records": 20, "max_wait": "10ms"}), ctx)
    batches = numbered_batches(ledger, 6, 20)
    await out.start()
    with caplog.at_level(logging.WARNING):
        for b in batches[:2]:
            await out.send(b)
        await async_wait_for(lambda: len(rec.logs) == 40, what="first batches with the first token")
        # the token expires at SLS; the refresher has the new credentials ready but writes them a bit later
        rec.keys["STS.second"] = "secret-2"
        rec.security_token = "token-2"
        for b in batches[2:4]:
            await out.send(b)
        await async_wait_for(lambda: rec.errors.count("SecurityTokenExpired") >= 2, what="token expired seen")
        assert len(rec.logs) == 40
        _write(creds / "id", "STS.second")
        _write(creds / "secret", "secret-2")
        _write(creds / "token", "token-2")
        for b in batches[4:]:
            await out.send(b)
        await asyncio.wait_for(out.flush(), 20)
    await out.stop()
    await rec.stop()
    got = sorted(log["contents"]["message"] for log in rec.logs)
    assert got == sorted(r["message"] for b in batches for r in b.records)
    assert dead_letters(ctx) == [] and sorted(ledger.acked) == list(range(6)) and ledger.violations == []
    expired = [r for r in caplog.records if "security token expired" in r.getMessage()]
    assert expired and expired[0].levelno == logging.ERROR
    assert not any(s in caplog.text for s in ("secret-1", "secret-2", "token-1", "token-2"))


async def test_an_expired_static_token_is_dead_lettered_loudly(tmp_path, caplog) -> None:
    """A token given inline or from the environment cannot change: SecurityTokenExpired is final there."""
    rec = await _receiver(security_token="token-2").start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: False)
    out = build_output("sls", _settings(rec.url, security_token="token-1"), ctx)
    with caplog.at_level(logging.ERROR):
        await run_output(out, numbered_batches(ledger, 1, 5))
    await rec.stop()
    dl = dead_letters(ctx)
    assert {d["reason"] for d in dl} == {"auth: SecurityTokenExpired: The security token you provided has expired"}
    assert len(dl) == 5 and any("rejected the credentials" in r.getMessage() for r in caplog.records)
