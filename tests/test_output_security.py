"""TLS and authentication of the HTTP outputs (the shared part in `logagent.delivery`), against real receivers on
127.0.0.1: mutual TLS with a throwaway CA made at test time (the receiver requires a client certificate signed by
it), bearer tokens and Elasticsearch API keys checked byte for byte by the receiver, secrets read from the
environment and from files, config errors for secrets that cannot be read or used, and what a 401 does
(dead-lettered with the backend's reason and logged as an error, never retried). Secrets must never reach a log
line (checked on every captured record rendered by the agent's own JSON formatter, at DEBUG) nor a settings repr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from logagent import metrics
from logagent.config import ConfigError
from logagent.record import doc_id
from logagent.selflog import JsonFormatter
from logagent.timefmt import rfc3339_ns
from tests.helpers import async_wait_for
from tests.receivers import Receiver
from tests.receivers.es import BulkReceiver
from tests.receivers.harness import AckLedger, build_output, dead_letters, make_context, numbered_batches, run_output
from tests.receivers.loki import LokiReceiver

FAST_RETRY = {"initial_backoff": "10ms", "max_backoff": "100ms"}

# The example key of Elastic's "create API key" documentation: the header carries `encoded`, which is
# base64("<id>:<api_key>"), exactly as the API returned it.
API_KEY_ID = "VuaCfGcBCdbkQm-e5aOx"
API_KEY_SECRET = "ui2lp2axTNmsyakw9tvNnw"
API_KEY_ENCODED = base64.b64encode(f"{API_KEY_ID}:{API_KEY_SECRET}".encode()).decode()
BEARER = "dGhpcy1pcy1hLXRlc3QtYmVhcmVyLXRva2Vu-7f3a"

# ES's answer to credentials it does not accept (security_exception, with the schemes it offers).
ES_401_REASON = "unable to authenticate with provided credentials and anonymous access is not allowed for this request"


def _es_settings(url: str, **extra: Any) -> dict[str, Any]:
    base = {"url": url, "index": "logs", "batch": {"max_records": 20, "max_wait": "30ms"}, "retry": FAST_RETRY,
            "timeout": "5s"}
    base.update(extra)
    return base


def _loki_settings(url: str, **extra: Any) -> dict[str, Any]:
    base = {"url": url, "batch": {"max_records": 20, "max_wait": "30ms"}, "retry": FAST_RETRY, "timeout": "5s"}
    base.update(extra)
    return base


def _rendered_logs(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as the agent would write it (message, extra fields, exception text)."""
    fmt = JsonFormatter()
    return "\n".join(fmt.format(r) for r in caplog.records)


def _counter(name: str, kind: str) -> Callable[[], float]:
    child = metrics.ERRORS.labels(component=name, kind=kind)
    return lambda: child._value.get()


# ---------------------------------------------------------------------------------------------------------------
# A throwaway PKI (openssl CLI, EC P-256 keys: fast to make)


class Pki:
    def __init__(self, d: Path) -> None:
        self.d = d
        self.ca = str(d / "ca.pem")
        self.server_cert, self.server_key = str(d / "srv.pem"), str(d / "srv.key")
        self.client_cert, self.client_key = str(d / "cli.pem"), str(d / "cli.key")
        self.rogue_cert, self.rogue_key = str(d / "rogue-cli.pem"), str(d / "rogue-cli.key")

    def server_context(self) -> ssl.SSLContext:
        """The receiver's side: its own certificate, and a client certificate signed by our CA is required."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def _openssl(d: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=30)


def _issue(d: Path, ca: str, name: str, subject: str, ext: str) -> None:
    _openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
    (d / f"{name}.ext").write_text(ext)
    _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    for ca, cn in (("ca", "logagent test CA"), ("rogue-ca", "some other CA")):
        _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2", "-subj", f"/CN={cn}")
    _issue(d, "ca", "srv", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _issue(d, "ca", "cli", "/CN=logagent-node-a", "extendedKeyUsage=clientAuth\n")
    _issue(d, "rogue-ca", "rogue-cli", "/CN=logagent-node-a", "extendedKeyUsage=clientAuth\n")
    return Pki(d)


# ---------------------------------------------------------------------------------------------------------------
# Authentication in front of a receiver, answering like the backend does


class AuthGate:
    """An aiohttp middleware put in front of a receiver's handlers. It records the client certificate the TLS
    layer verified and every Authorization header, and lets a request through only when the header is exactly
    what the backend expects; otherwise it answers 401 the way that backend does. `scheme` "ApiKey" decodes the
    value like Elasticsearch (base64 of "<id>:<api_key>", looked up by id), "Bearer" compares the token."""

    def __init__(self, receiver: Receiver, backend: str, scheme: str, secret: str, key_id: str = "") -> None:
        self.backend, self.scheme, self.secret, self.key_id = backend, scheme, secret, key_id
        self.headers: list[str | None] = []
        self.peer_subjects: list[str] = []
        self.refused = 0
        receiver.app.middlewares.append(self.middleware)

    def accepts(self, header: str | None) -> bool:
        if header is None or not header.startswith(self.scheme + " "):
            return False
        value = header[len(self.scheme) + 1:]
        if self.scheme == "ApiKey":
            try:
                key_id, _, key = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return key_id == self.key_id and key == self.secret
        return value == self.secret

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        cert = request.transport.get_extra_info("peercert")
        if cert:
            self.peer_subjects.append(dict(x[0] for x in cert["subject"])["commonName"])
        header = request.headers.get("Authorization")
        self.headers.append(header)
        if self.accepts(header):
            return await handler(request)
        self.refused += 1
        await request.read()
        if self.backend == "elasticsearch":
            err = {"type": "security_exception", "reason": ES_401_REASON,
                   "header": {"WWW-Authenticate": ['Basic realm="security", charset="UTF-8"',
                                                   'Bearer realm="security"', "ApiKey"]}}
            body = {"error": dict(err, root_cause=[err]), "status": 401}
            resp = web.json_response(body, status=401)
            resp.headers.add("WWW-Authenticate", 'Basic realm="security", charset="UTF-8"')
            resp.headers.add("WWW-Authenticate", 'Bearer realm="security"')
            resp.headers.add("WWW-Authenticate", "ApiKey")
            return resp
        # Loki has no auth of its own: the gateway in front of it (nginx, Grafana Cloud) answers plain text
        return web.Response(status=401, text="invalid authentication credentials\n",
                            headers={"WWW-Authenticate": 'Bearer realm="loki"'})


# ---------------------------------------------------------------------------------------------------------------
# Mutual TLS


async def test_mtls_with_a_client_certificate_delivers_and_acknowledges(tmp_path, pki) -> None:
    rec = BulkReceiver()
    gate = AuthGate(rec, "elasticsearch", "Bearer", BEARER)
    await rec.start(ssl_context=pki.server_context())
    assert rec.url.startswith("https://127.0.0.1:")
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    batches = numbered_batches(ledger, 3, 30)
    tls = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    out = build_output("elasticsearch", _es_settings(rec.url, tls=tls, auth={"bearer_token": BEARER}), ctx,
                       name="mtls_ok")
    await run_output(out, batches)
    await rec.stop()

    assert {i: d["message"] for i, d in rec.docs.items()} == {
        doc_id(b.meta, r): r["message"] for b in batches for r in b.records}
    assert sorted(ledger.acked) == [0, 1, 2] and ledger.violations == []
    # the receiver verified our certificate on every request (at least 90 records / 20 per request)
    assert len(gate.peer_subjects) >= 5 and set(gate.peer_subjects) == {"logagent-node-a"}
    assert gate.refused == 0 and dead_letters(ctx) == []


@pytest.mark.parametrize("client_cert", ["none", "signed_by_another_ca"])
async def test_mtls_refused_handshake_is_retried_with_tokens_pending_then_replayed(tmp_path, pki,
                                                                                   client_cert, caplog) -> None:
    """No certificate (or one our CA did not sign): the server aborts the handshake. Nothing reaches the
    backend, nothing is acknowledged or dead-lettered; the output keeps retrying and stops cleanly. The same
    batches (their tokens never completed) are then delivered by a correctly configured output: nothing lost."""
    caplog.set_level(logging.DEBUG)
    rec = BulkReceiver()
    gate = AuthGate(rec, "elasticsearch", "Bearer", BEARER)
    await rec.start(ssl_context=pki.server_context())
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
    batches = numbered_batches(ledger, 2, 15)
    tls: dict[str, str] = {"ca_file": pki.ca}
    if client_cert == "signed_by_another_ca":
        tls.update(cert_file=pki.rogue_cert, key_file=pki.rogue_key)
    name = f"mtls_refused_{client_cert}"
    transport_errors = _counter(name, "transport")
    before = transport_errors()
    out = build_output("elasticsearch", _es_settings(rec.url, tls=tls, auth={"bearer_token": BEARER}), ctx,
                       name=name)
    await out.start()
    try:
        for b in batches:
            await out.send(b)
        await async_wait_for(lambda: transport_errors() >= before + 4, timeout=15,
                             what="refused handshakes retried")
        # still retrying, nothing settled either way
        assert ledger.acked == [] and dead_letters(ctx) == []
        assert out.delivery.buffered_bytes > 0
        assert rec.docs == {} and rec.requests == 0 and gate.headers == []  # no request got past the handshake
    finally:
        await asyncio.wait_for(out.stop(), 5)
    assert ledger.acked == [] and dead_letters(ctx) == []
    retried = [r for r in caplog.records if r.getMessage() == "request will be retried" and r.name.endswith(name)]
    assert retried and all(r.reason.startswith("transport: ") for r in retried)
    assert BEARER not in _rendered_logs(caplog)

    # what the checkpoint did not pass is read again after a fix: the same batches, now with our certificate
    tls_ok = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    fixed = build_output("elasticsearch", _es_settings(rec.url, tls=tls_ok, auth={"bearer_token": BEARER}), ctx,
                         name=name + "_fixed")
    await run_output(fixed, batches)
    await rec.stop()
    assert sorted(ledger.acked) == [0, 1] and ledger.violations == []
    assert len(rec.docs) == 30 and rec.conflicts == 0 and dead_letters(ctx) == []


def test_unusable_tls_files_are_config_errors_naming_the_key(tmp_path, pki) -> None:
    """Caught when the config is loaded (so `logagent check` sees them), not when the output first connects."""
    ctx = make_context(tmp_path)
    encrypted = tmp_path / "cli-encrypted.key"
    _openssl(tmp_path, "pkey", "-in", pki.client_key, "-aes256", "-passout", "pass:hunter2", "-out", str(encrypted))
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    missing = tmp_path / "missing.pem"
    cases = [
        ({"key_file": pki.client_key}, r"tls\.key_file: key_file needs cert_file"),
        ({"ca_file": str(missing)}, rf"tls\.ca_file: cannot read {missing}: No such file or directory"),
        ({"ca_file": str(not_pem)}, rf"tls\.ca_file: no usable CA certificate in {not_pem}"),
        ({"cert_file": pki.client_cert, "key_file": str(missing)},
         rf"tls\.key_file: cannot read {missing}: No such file or directory"),
        ({"cert_file": pki.client_cert, "key_file": pki.server_key},
         rf"tls\.cert_file: cannot use {pki.client_cert} with the key in {pki.server_key} \(KEY_VALUES_MISMATCH\)"),
        ({"cert_file": pki.client_cert, "key_file": str(encrypted)},
         r"tls\.key_file: the client key is passphrase-protected"),
    ]
    for tls, message in cases:
        with pytest.raises(ConfigError, match=r"outputs\[0\]\." + message):
            build_output("elasticsearch", _es_settings("https://127.0.0.1:9", tls=tls), ctx)
    # the same files, used correctly, load
    ok = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    assert build_output("elasticsearch", _es_settings("https://127.0.0.1:9", tls=ok), ctx).settings.http.tls.cert_file


# ---------------------------------------------------------------------------------------------------------------
# Bearer tokens and API keys, secrets from env and files


def _loki_ledger(rec: LokiReceiver) -> AckLedger:
    return AckLedger(lambda meta, r: any(
        (rfc3339_ns(r["time"]), r["message"]) in entries for entries in rec.streams.values()))


@pytest.mark.parametrize("backend,auth_kind,source", [
    ("elasticsearch", "api_key", "env"),
    ("elasticsearch", "api_key", "file"),
    ("elasticsearch", "bearer_token", "file"),
    ("loki", "bearer_token", "env"),
    ("loki", "bearer_token", "file"),
])
async def test_token_is_sent_exactly_and_never_logged_nor_in_the_settings_repr(
        tmp_path, monkeypatch, caplog, backend, auth_kind, source) -> None:
    caplog.set_level(logging.DEBUG)
    secret = API_KEY_ENCODED if auth_kind == "api_key" else BEARER
    if source == "env":
        monkeypatch.setenv("LOGAGENT_TEST_SECRET", secret)
        ref: dict[str, str] = {"env": "LOGAGENT_TEST_SECRET"}
    else:
        path = tmp_path / "secret"
        path.write_text(secret + "\n")  # as `echo` and Kubernetes secret files written by hand end
        ref = {"file": str(path)}
    if backend == "elasticsearch":
        rec: Any = BulkReceiver()
        scheme = "ApiKey" if auth_kind == "api_key" else "Bearer"
        gate = AuthGate(rec, backend, scheme, API_KEY_SECRET if auth_kind == "api_key" else BEARER, API_KEY_ID)
    else:
        rec = LokiReceiver()
        gate = AuthGate(rec, backend, "Bearer", BEARER)
    # the first request fails (503 as both backends answer when overloaded): the retry path logs too
    rec.plan = [("status", 503, {"Retry-After": "0"}, b"service unavailable")]
    await rec.start()
    ctx = make_context(tmp_path)
    if backend == "elasticsearch":
        ledger = AckLedger(lambda meta, r: doc_id(meta, r) in rec.docs)
        settings = _es_settings(rec.url, auth={auth_kind: ref})
    else:
        ledger = _loki_ledger(rec)
        settings = _loki_settings(rec.url, auth={auth_kind: ref})
    out = build_output(backend, settings, ctx, name=f"tok_{backend}_{auth_kind}_{source}")
    assert secret not in repr(out.settings) and secret not in str(out.settings)
    batches = numbered_batches(ledger, 2, 25)
    await run_output(out, batches)
    await rec.stop()

    expected = f"ApiKey {API_KEY_ENCODED}" if auth_kind == "api_key" else f"Bearer {BEARER}"
    assert set(gate.headers) == {expected} and gate.refused == 0
    stored = len(rec.docs) if backend == "elasticsearch" else rec.entries_stored
    assert stored == 50 and sorted(ledger.acked) == [0, 1] and ledger.violations == []
    assert dead_letters(ctx) == []
    retried = [r for r in caplog.records if r.getMessage() == "request will be retried"]
    assert len(retried) == 1 and retried[0].reason.startswith("HTTP 503: service unavailable")
    assert secret not in _rendered_logs(caplog)


def test_missing_secret_env_or_file_is_a_config_error_naming_the_key(tmp_path, monkeypatch) -> None:
    ctx = make_context(tmp_path)
    monkeypatch.delenv("LOGAGENT_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.auth\.bearer_token\.env: environment variable "
                                          r"LOGAGENT_TEST_UNSET is not set"):
        build_output("loki", _loki_settings("http://127.0.0.1:9",
                                            auth={"bearer_token": {"env": "LOGAGENT_TEST_UNSET"}}), ctx)
    missing = tmp_path / "no-such-key"
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.auth\.api_key\.file: cannot read secret file "
                                          rf"{missing}: No such file or directory"):
        build_output("elasticsearch", _es_settings("http://127.0.0.1:9", auth={"api_key": {"file": str(missing)}}),
                     ctx)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.auth\.password: expected a string, \{env: NAME\} or "
                                          r"\{file: PATH\}"):
        build_output("elasticsearch", _es_settings("http://127.0.0.1:9",
                                                   auth={"user": "shipper", "password": {"vault": "x"}}), ctx)
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.auth: give one of user/password, bearer_token or api_key"):
        build_output("elasticsearch", _es_settings("http://127.0.0.1:9",
                                                   auth={"bearer_token": "a", "api_key": "b"}), ctx)


def test_token_with_a_line_break_is_a_config_error_that_does_not_echo_it(tmp_path) -> None:
    """A secret file holding two lines (a key pasted twice, a PEM by mistake) would make a header aiohttp refuses
    at send time: caught at load, naming the key, without printing the secret."""
    ctx = make_context(tmp_path)
    path = tmp_path / "token"
    path.write_text(f"{BEARER}\nsecond-line-{BEARER}\n")
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.auth\.bearer_token: must be a single line") as err:
        build_output("loki", _loki_settings("http://127.0.0.1:9", auth={"bearer_token": {"file": str(path)}}), ctx)
    assert BEARER not in str(err.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.auth\.api_key: must be a single line .*not empty"):
        build_output("elasticsearch", _es_settings("http://127.0.0.1:9", auth={"api_key": {"file": str(empty)}}), ctx)
    # RFC 7617: the first colon ends the user-id, so "team:shipper" would authenticate as "team"
    with pytest.raises(ConfigError, match=r"outputs\[0\]\.auth\.user: a user name for basic auth cannot contain"):
        build_output("elasticsearch", _es_settings("http://127.0.0.1:9", auth={"user": "team:shipper",
                                                                                "password": "pw"}), ctx)


# ---------------------------------------------------------------------------------------------------------------
# 401 from the backend


async def test_elasticsearch_401_is_dead_lettered_with_the_reason_and_logged_as_an_error(
        tmp_path, monkeypatch, caplog) -> None:
    """Documented (outputs/elasticsearch.py): a whole-request 4xx other than 413 dead-letters the request. Not
    retried: each request is sent once. The error log names the output and the reason, never the key."""
    caplog.set_level(logging.DEBUG)
    wrong = base64.b64encode(f"{API_KEY_ID}:not-the-key".encode()).decode()
    monkeypatch.setenv("LOGAGENT_TEST_SECRET", wrong)
    rec = BulkReceiver()
    gate = AuthGate(rec, "elasticsearch", "ApiKey", API_KEY_SECRET, API_KEY_ID)
    await rec.start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: r["message"] in {d["record"]["message"] for d in dead_letters(ctx)})
    batches = numbered_batches(ledger, 2, 20)  # 40 records, 20 per request: 2 requests
    out = build_output("elasticsearch", _es_settings(rec.url, auth={"api_key": {"env": "LOGAGENT_TEST_SECRET"}}),
                       ctx, name="es401")
    await run_output(out, batches)
    await rec.stop()

    assert gate.refused == 2 and gate.headers == [f"ApiKey {wrong}"] * 2 and rec.docs == {}
    dl = dead_letters(ctx)
    assert sorted(d["record"]["message"] for d in dl) == sorted(r["message"] for b in batches for r in b.records)
    assert {d["reason"] for d in dl} == {f"http_401: security_exception: {ES_401_REASON}"}
    assert {d["output"] for d in dl} == {"es401"}
    # acknowledged only as dead-lettered (the component contract), each batch exactly once
    assert sorted(ledger.acked) == [0, 1] and ledger.violations == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "logagent.output.es401"]
    assert len(errors) == 2
    assert {r.reason for r in errors} == {f"http_401: security_exception: {ES_401_REASON}"}
    assert all(r.records == 20 for r in errors)
    assert not [r for r in caplog.records if r.getMessage() == "request will be retried"]
    assert wrong not in _rendered_logs(caplog) and API_KEY_SECRET not in _rendered_logs(caplog)


async def test_loki_401_is_dead_lettered_with_the_reason_and_logged_as_an_error(tmp_path, caplog) -> None:
    """Documented (outputs/loki.py): other 4xx are dead-lettered and logged as an error."""
    caplog.set_level(logging.DEBUG)
    rec = LokiReceiver()
    gate = AuthGate(rec, "loki", "Bearer", BEARER)
    await rec.start()
    ctx = make_context(tmp_path)
    ledger = AckLedger(lambda meta, r: r["message"] in {d["record"]["line"] for d in dead_letters(ctx)})
    batches = numbered_batches(ledger, 1, 20)
    out = build_output("loki", _loki_settings(rec.url, auth={"bearer_token": "expired-token-0042"}), ctx,
                       name="loki401")
    await run_output(out, batches)
    await rec.stop()

    assert gate.refused == 1 and gate.headers == ["Bearer expired-token-0042"] and rec.entries_seen == 0
    dl = dead_letters(ctx)
    assert sorted(d["record"]["line"] for d in dl) == sorted(r["message"] for r in batches[0].records)
    assert {d["reason"] for d in dl} == {"http_401: invalid authentication credentials"}
    assert ledger.acked == [0] and ledger.violations == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "logagent.output.loki401"]
    assert [r.getMessage() for r in errors] == ["Loki refused a request for good; records dead-lettered"]
    assert errors[0].reason == "http_401: invalid authentication credentials"
    assert "expired-token-0042" not in _rendered_logs(caplog)
    assert json.loads(JsonFormatter().format(errors[0]))["tenant"] == ""


async def test_a_rotated_token_file_is_read_again(tmp_path, monkeypatch, caplog) -> None:
    """A projected service-account token is replaced in place before it expires: requests after the rotation carry
    the new token, nothing is refused, and neither token is logged."""
    from logagent.rotating import RotatingSecret

    monkeypatch.setattr(RotatingSecret, "check_interval", 0.0)
    caplog.set_level(logging.DEBUG)
    old, new = BEARER, BEARER[::-1]
    path = tmp_path / "token"
    path.write_text(old + "\n")
    rec = LokiReceiver()
    gate = AuthGate(rec, "loki", "Bearer", old)
    await rec.start()
    ctx = make_context(tmp_path)
    ledger = _loki_ledger(rec)
    out = build_output("loki", _loki_settings(rec.url, auth={"bearer_token": {"file": str(path)}}), ctx, name="rot")
    first, second = numbered_batches(ledger, 2, 10)
    await run_output(out, [first])
    # the token rotates: the file is replaced (as the kubelet does, by rename) and the backend now wants the new one
    (tmp_path / "token.new").write_text(new + "\n")
    os.rename(tmp_path / "token.new", path)
    gate.secret = new
    await run_output(out, [second])
    await rec.stop()
    assert gate.refused == 0
    assert gate.headers[0] == f"Bearer {old}" and gate.headers[-1] == f"Bearer {new}"
    assert rec.entries_stored == 20 and sorted(ledger.acked) == [0, 1] and dead_letters(ctx) == []
    logs = _rendered_logs(caplog)
    assert old not in logs and new not in logs
    assert "token file changed; using the new token" in logs
