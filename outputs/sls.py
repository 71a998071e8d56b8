"""`sls` output: records into Alibaba Cloud Simple Log Service (SLS) with the PutLogs API.

Settings (besides the shared HTTP ones in `logagent.delivery`: batch, max_in_flight, retry, timeout, tls,
headers, buffer_max_bytes; `auth` is not used — SLS signs every request with the AccessKey):

    endpoint: cn-hangzhou.log.aliyuncs.com   # region endpoint; requests go to <project>.<endpoint>
    project: my-project
    logstore: k8s-logs
    access_key_id: {env: SLS_AK_ID}          # secrets: inline, {env: NAME} or {file: PATH}; never logged
    access_key_secret: {file: /etc/sls/secret}
    security_token: {file: /var/run/sls/token}   # optional STS token (x-acs-security-token)
    url: https://127.0.0.1:8443              # optional: connect here instead (a proxy, a test receiver); the
                                             # Host header still names <project>.<endpoint>
    topic: "{kubernetes.namespace}"          # LogGroup Topic (template; default empty)
    source: "10.0.0.12"                      # LogGroup Source (default: this host's name)
    log_tags: {cluster: prod-1}              # LogGroup LogTags (static)

Wire format (SLS API "PutLogs" and "data encoding", `outputs/proto/sls_logs.proto`): `POST
/logstores/<logstore>/shards/lb`, body a protobuf `LogGroup{Logs, Topic, Source, LogTags}` with each `Log{Time,
Contents, Time_ns}`, hand-encoded here from the schema's field numbers (kept by measurement: the batch-level
contents are encoded once per batch as bytes, which the generated classes cannot splice in; with them the same
LogGroup takes ~1.3x longer, `benchmarks/bench_protobuf.py`; the dead-letter path reads a Log back with the
generated `outputs/proto/sls_logs_pb2.py`), LZ4 block-compressed, with headers
`x-log-bodyrawsize`, `x-log-compresstype: lz4`, `x-log-apiversion: 0.6.0`, `x-log-signaturemethod: hmac-sha1`,
`Content-MD5` (uppercase hex of the sent body), `Content-Type: application/x-protobuf`, `Date` (RFC 1123 GMT) and
`Authorization: LOG <AccessKeyId>:<base64 HMAC-SHA1(secret, signing string)>`. The signing string (SLS "request
signatures" page) is `VERB \\n Content-MD5 \\n Content-Type \\n Date \\n` + each `x-log-*`/`x-acs-*` header as
`name:value\\n` sorted by name + the resource path (with sorted `?k=v&...` if there is a query). Requests are
signed again on every attempt, so a retry never carries a stale Date.

Credentials: each of the three given as `{file: PATH}` is read again when its file changes (an STS token and its
temporary AccessKey pair rotated by a sidecar or a CSI driver), looked at no more than once a second and at once
after an authentication error; every attempt is signed with the current values. `SecurityTokenExpired` with a
file-backed token is retried (the token is about to be rotated), logged as an error at the first attempts; any
authentication error right after the credentials changed is retried with the new ones. Static credentials (inline,
`{env: NAME}`) cannot change, so their authentication errors are permanent.

Contents: every field of the shipped record (the output's `fields` shape: lean by default, see
`logagent.record.Shape`; `time` is Time/Time_ns and the host is Source, so neither is repeated as a content)
becomes a key/value; nested mappings (kubernetes metadata) are flattened with dots (`kubernetes.namespace`);
non-string values are JSON. Batch-level fields are encoded once per batch. `time_ns` (else `time`) gives Time and
Time_ns (now when missing).

Answers: 2xx accepted. `WriteQuotaExceed`, `ShardWriteQuotaExceed`, 429 and 5xx (and transport errors) are
retried with backoff. `RequestTimeExpired` is retried too and logged as an error with the measured clock skew
(SLS refuses requests whose Date is more than 15 minutes off; fixing the clock fixes delivery, dead-lettering
would not). Authentication errors (`Unauthorized`, `SignatureNotMatch`, `InvalidAccessKeyId`,
`SecurityTokenExpired`...) are permanent: the records are dead-lettered and an error is logged and counted
(`logagent_errors_total{kind="auth"}`) every time — unless the credentials rotate (above).
`PostBodyTooLarge`/413 splits the request; any other 4xx is dead-lettered with `errorCode: errorMessage`.

Must never: log the AccessKey secret or the security token, send a Content-MD5 of the uncompressed body, send
more than SLS's 4096 logs or 10 MB raw body in one request.
"""

from __future__ import annotations

import base64
import logging
import socket
import struct
import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson

from logagent import metrics, speedups
from logagent.component import Context
from logagent.config import Section
from logagent.delivery import (
    OK,
    REJECT,
    RETRY,
    SPLIT,
    Delivery,
    DeliveryOutput,
    Encoded,
    FieldTemplate,
    HttpSettings,
    Response,
    Verdict,
    check_template,
    compress,
    parse_http_settings,
    retry_after_seconds,
)
from logagent.outputs.protowire import ld as _ld
from logagent.outputs.protowire import varint as _varint
from logagent.record import Batch, identity_of
from logagent.redact import excerpt
from logagent.rotating import RotatingSecret
from logagent.timefmt import rfc3339_ns

log = logging.getLogger("logagent.output.sls")

# The records of the CRI parser's common path: exactly these keys; a lean shape ships message and stream.
_uniform_columns = itemgetter("message", "stream", "time_ns", "offset", "time", "fragments", "lines")
_UNIFORM_LEN = {7}
_UNIFORM_DROPPED = frozenset(("offset", "time", "time_ns", "fragments", "lines"))
_UNIFORM_OWN = frozenset(("message", "stream"))
_INT = {int}
_NANOS = struct.Struct("<I")
_MESSAGE_KEY = b"\x0a\x07message\x12"

API_VERSION = "0.6.0"
MAX_LOGS = 4096
MAX_RAW_BYTES = 10 * 1024 * 1024
RETRY_CODES = frozenset({"WriteQuotaExceed", "ShardWriteQuotaExceed", "InternalServerError", "ServerBusy",
                         "RequestTimeout"})
TOKEN_EXPIRED = frozenset({"SecurityTokenExpired"})
ROTATION_GRACE = 30.0  # seconds after credentials changed during which an auth error is retried
AUTH_CODES = frozenset({"Unauthorized", "SignatureNotMatch", "InvalidAccessKeyId", "SecurityTokenExpired",
                        "SecurityTokenInvalid", "InvalidSecurityToken", "AccessKeyIdNotFound"})


@dataclass(frozen=True)
class SlsSettings:
    http: HttpSettings
    endpoint: str
    project: str
    logstore: str
    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(repr=False)
    topic: str
    source: str
    log_tags: tuple[tuple[str, str], ...]
    # {file: PATH} credentials: key -> path, re-read when the file changes
    credential_files: tuple[tuple[str, str], ...] = ()


class Credentials:
    """The AccessKey pair and STS token as they are now: file-backed values follow their files (RotatingSecret),
    inline and env values stay. `generation` changes whenever a value does, so an authentication error can tell
    whether the request was signed with credentials that have been replaced since."""

    def __init__(self, settings: SlsSettings) -> None:
        files = dict(settings.credential_files)
        self.static = {"access_key_id": settings.access_key_id, "access_key_secret": settings.access_key_secret,
                       "security_token": settings.security_token}
        self.files = {k: RotatingSecret(path, str(self.static[k])) for k, path in files.items()}
        self.generation = 0
        self.changed_at = -1e9  # monotonic time of the last change
        self._last: tuple[str | None, ...] = self._values(force=False)

    @property
    def token_rotates(self) -> bool:
        return "security_token" in self.files

    @property
    def rotating(self) -> bool:
        return bool(self.files)

    def _values(self, force: bool) -> tuple[str | None, ...]:
        out = []
        for key in ("access_key_id", "access_key_secret", "security_token"):
            secret = self.files.get(key)
            out.append(secret.current(force=force) if secret is not None else self.static[key])
        return tuple(out)

    def current(self, force: bool = False) -> tuple[str, str, str | None, int]:
        values = self._values(force)
        if values != self._last:
            self._last = values
            self.generation += 1
            self.changed_at = time.monotonic()
        key_id, secret, token = values
        return str(key_id), str(secret), token, self.generation


# -- protobuf hand-encoding (field numbers from sls_logs.proto) --------------------------------------------------


def _pair(tag: int, key: str, value: str) -> bytes:
    """A Content (in a Log, tag 0x12) or LogTag (in a LogGroup, tag 0x32): Key = 1, Value = 2."""
    return _ld(tag, _ld(0x0A, key.encode()) + _ld(0x12, value.encode("utf-8", "surrogateescape")))


def _flatten(prefix: str, value: Any, out: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, str):
        out.append((prefix, value))
    elif value is not None:
        out.append((prefix, orjson.dumps(value, default=str).decode()))


def contents(fields: dict[str, Any]) -> bytes:
    pairs: list[tuple[str, str]] = []
    for k, v in fields.items():
        _flatten(k, v, pairs)
    return b"".join(_pair(0x12, k, v) for k, v in pairs)


def sign(secret: str, verb: str, md5: str, ctype: str, date: str, headers: dict[str, str], resource: str) -> str:
    canon = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers) if k.startswith(("x-log-", "x-acs-")))
    text = f"{verb}\n{md5}\n{ctype}\n{date}\n{canon}{resource}"
    import hashlib
    import hmac

    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()).decode()


class SlsPutLogs:
    """The codec: records -> encoded `Log`s, logs -> signed LogGroup request, response -> verdict."""

    def __init__(self, name: str, settings: SlsSettings, native: bool = True) -> None:
        self.name = name
        self.settings = settings
        self.host = f"{settings.project}.{settings.endpoint}"
        self.resource = f"/logstores/{settings.logstore}/shards/lb"
        self.url = settings.http.url + self.resource
        self.topic = FieldTemplate(settings.topic) if settings.topic else None
        tags = b"".join(_pair(0x32, k, v) for k, v in settings.log_tags)
        self.group_tail_static = _ld(0x22, settings.source.encode()) + tags
        self.credentials = Credentials(settings)
        self._expired_seen = 0
        # What of a record becomes Contents: the output's `fields` shape, without `host` (the LogGroup's Source is
        # the host) and, when lean, without `time` (the Log's Time and Time_ns carry it, to the nanosecond).
        shape = settings.http.fields
        self.drop = shape.drop | {"time"} if shape.lean else shape.drop
        self._stream_pairs: dict[str, bytes] = {st: _pair(0x12, "stream", st) for st in ("stdout", "stderr")}
        self._native = speedups.sls_logs if native else None

    def parts(self, batch: Batch) -> list[tuple[str, list[bytes], int]]:
        """Items are whole encoded `Log` messages; the partition key is the topic (a LogGroup has one)."""
        meta = batch.meta
        drop = self.drop
        shared = contents({k: v for k, v in meta.items() if k not in drop})
        ident = {k: v for k, v in identity_of(meta).items() if k not in drop}
        topic_per_batch = self.topic is None or self.topic.top_keys() <= set(meta)
        batch_topic = (self.topic.render(meta) if self.topic else "") if topic_per_batch else None
        if batch_topic is not None:
            fast = self._uniform_logs(batch, shared)
            if fast is not None:
                return [(batch_topic, fast, sum(map(len, fast)))]
        now = time.time_ns()
        by_topic: dict[str, list[bytes]] = {}
        sizes: dict[str, int] = {}
        for rec in batch.records:
            tns = rec.get("time_ns")
            ts = tns if type(tns) is int else rfc3339_ns(rec.get("time"), now)
            secs, nanos = divmod(ts, 1_000_000_000)
            own = rec if drop.isdisjoint(rec) else {k: v for k, v in rec.items() if k not in drop}
            # On a clash the record's field wins, except on identity fields (as in `Batch.shipped`: record content
            # never sets identity)
            if meta.keys().isdisjoint(own):
                body = shared + contents(own)
            else:
                body = contents({k: v for k, v in {**meta, **own, **ident}.items() if k not in drop})
            log = _ld(0x0A, b"\x08" + _varint(secs) + body + b"\x25" + struct.pack("<I", nanos))
            if batch_topic is not None:
                topic = batch_topic
            else:
                assert self.topic is not None
                topic = self.topic.render({**meta, **rec, **own})
            items = by_topic.get(topic)
            if items is None:
                items = by_topic[topic] = []
                sizes[topic] = 0
            items.append(log)
            sizes[topic] += len(log)
        return [(t, items, sizes[t]) for t, items in by_topic.items()]

    def _uniform_logs(self, batch: Batch, shared: bytes) -> list[bytes] | None:
        """The common batch (lean shape, every record with exactly the CRI parser's keys): `message` and
        `stream` per record, the rest encoded once; the same bytes as the per-record path. None otherwise."""
        if not _UNIFORM_DROPPED <= self.drop:
            return None
        if self._native is not None and _UNIFORM_OWN.isdisjoint(batch.meta):
            # the accelerator (`logagent.speedups`): the same bytes, or None for a batch it leaves to the loop below
            # (a block is encoded from its bytes: no record dict is made)
            logs = self._native(batch.rows, shared, self._stream_pairs)
            if logs is not None:
                return logs
        records = batch.records
        if set(map(len, records)) != _UNIFORM_LEN:
            return None
        try:
            cols = list(map(_uniform_columns, records))
        except KeyError:
            return None
        if not _UNIFORM_OWN.isdisjoint(batch.meta) or set(type(c[2]) for c in cols) != _INT:
            return None
        streams = self._stream_pairs
        pack = _NANOS.pack
        out = []
        for m, st, tns, *_ in cols:
            sp = streams.get(st)
            if sp is None:
                sp = streams[st] = _pair(0x12, "stream", st)
            secs, nanos = divmod(tns, 1_000_000_000)
            mb = m.encode("utf-8", "surrogateescape")
            kv = _MESSAGE_KEY + _varint(len(mb)) + mb
            body = b"\x08" + _varint(secs) + shared + b"\x12" + _varint(len(kv)) + kv + sp + b"\x25" + pack(nanos)
            out.append(b"\x0a" + _varint(len(body)) + body)
        return out

    def encode(self, key: str, items: list[bytes]) -> Encoded:
        # one copy of the items (the raw body is as large as they are): the LogGroup's tail joined in with them
        raw = b"".join([*items, _ld(0x1A, key.encode()) if key else b"", self.group_tail_static])
        body = compress("lz4", raw)
        import email.utils  # this, hashlib and hmac at the first request, not with the config (idle RSS, issue 11)
        import hashlib

        date = email.utils.formatdate(usegmt=True)
        md5 = hashlib.md5(body).hexdigest().upper()
        ctype = "application/x-protobuf"
        signed = {
            "x-log-apiversion": API_VERSION,
            "x-log-bodyrawsize": str(len(raw)),
            "x-log-compresstype": "lz4",
            "x-log-signaturemethod": "hmac-sha1",
        }
        key_id, secret, token, generation = self.credentials.current()
        if token:
            signed["x-acs-security-token"] = token
        signature = sign(secret, "POST", md5, ctype, date, signed, self.resource)
        headers = {**signed, "Content-Type": ctype, "Content-MD5": md5, "Date": date, "Host": self.host,
                   "Authorization": f"LOG {key_id}:{signature}"}
        return Encoded(body, headers, self.url, context=generation)

    def interpret(self, key: str, items: list[bytes], encoded: Encoded, r: Response) -> Verdict:
        if r.status < 300:
            self._expired_seen = 0
            return Verdict(OK)
        code, message = _error(r.body)
        reason = f"{code or 'http_' + str(r.status)}: {message}"[:500]
        retry_after = retry_after_seconds(r.headers.get("Retry-After"))
        if code in RETRY_CODES or r.status == 429 or r.status >= 500:
            return Verdict(RETRY, reason=reason, retry_after=retry_after)
        if code == "RequestTimeExpired":
            skew = _skew(r.headers.get("Date"))
            hint = (f"local clock is {skew:+.0f}s off the server's" if skew is not None
                    else "the local clock may be off")
            metrics.ERRORS.labels(component=self.name, kind="clock_skew").inc()
            reason = f"{reason} ({hint}; SLS refuses requests more than 15 minutes off: fix NTP on this node)"
            log.error("SLS refused the request time; retrying", extra={"output": self.name, "reason": reason})
            return Verdict(RETRY, reason=reason, retry_after=retry_after)
        if code == "PostBodyTooLarge" or r.status == 413:
            return Verdict(SPLIT, reason=reason)
        if code in AUTH_CODES or r.status == 401:
            return self._auth_error(code, reason, encoded, retry_after)
        return Verdict(REJECT, reason=reason)

    def _auth_error(self, code: str, reason: str, encoded: Encoded, retry_after: float | None) -> Verdict:
        creds = self.credentials
        if creds.rotating:
            *_, generation = creds.current(force=True)  # look at the files now, not in a second
            # Signed with replaced credentials, or during a rotation (three files are not written at once):
            # the next attempt is signed with what the files hold then.
            if generation != encoded.context or time.monotonic() - creds.changed_at < ROTATION_GRACE:
                log.warning("SLS refused credentials that have been rotated since; retrying with the new ones",
                            extra={"output": self.name, "reason": reason})
                return Verdict(RETRY, reason=f"auth: {reason} (credentials rotated; retrying)")
            if code in TOKEN_EXPIRED and creds.token_rotates:
                self._expired_seen += 1
                if self._expired_seen in (1, 2) or self._expired_seen % 20 == 0:
                    log.error("SLS says the security token expired and its file has not been rotated yet; "
                              "retrying until it is (check the credential refresher)",
                              extra={"output": self.name, "project": self.settings.project, "reason": reason,
                                     "times": self._expired_seen})
                return Verdict(RETRY, reason=f"auth: {reason} (waiting for the token file to rotate)",
                               retry_after=retry_after)
        return Verdict(REJECT, reason=f"auth: {reason}")

    def dead_record(self, key: str, item: bytes) -> dict[str, Any]:
        """The Log back as a mapping (for the dead-letter file): Time, Time_ns and Contents."""
        from logagent.outputs.proto.sls_logs_pb2 import Log  # protobuf's runtime: only on this rare path

        log = Log.FromString(_payload(item))
        rec: dict[str, Any] = {"Time": log.Time, "Time_ns": log.Time_ns,
                               "Contents": {_text(c.Key): _text(c.Value) for c in log.Contents}}
        return rec | ({"topic": key} if key else {})


def _error(body: bytes) -> tuple[str, str]:
    """(errorCode, errorMessage): the message as a short excerpt, credential-shaped text masked."""
    try:
        doc = orjson.loads(body)
        return excerpt(str(doc.get("errorCode", "")), 100), excerpt(str(doc.get("errorMessage", "")), 400)
    except (orjson.JSONDecodeError, AttributeError):
        return "", excerpt(body)


def _skew(server_date: str | None) -> float | None:
    if not server_date:
        return None
    try:
        import email.utils  # the email package, for an answer's Date header: only on a clock-skew error

        return time.time() - email.utils.parsedate_to_datetime(server_date).timestamp()
    except (TypeError, ValueError):
        return None


def _text(value: object) -> str:
    """A proto2 string as parsed: str, or bytes when it held undecodable bytes."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _payload(item: bytes) -> bytes:
    """The `Log` message inside one LogGroup field-1 entry (key byte, varint length, message)."""
    pos = 1
    while item[pos] & 0x80:
        pos += 1
    return item[pos + 1:]


class SlsOutput(DeliveryOutput[SlsSettings, bytes]):
    settings: SlsSettings

    @classmethod
    def parse_settings(cls, section: Section) -> SlsSettings:
        endpoint = section.str("endpoint")
        project = section.str("project")
        for key, value in (("endpoint", endpoint), ("project", project)):
            if not value or "/" in value or ":" in value:
                raise section.error(f"expected a host name part, got {value!r}", key)
        http = parse_http_settings(section, default_url=f"https://{project}.{endpoint}", compressions=("lz4",),
                                   default_compression="lz4", default_max_records=MAX_LOGS,
                                   default_max_bytes=3 * 1024 * 1024, max_bytes_limit=MAX_RAW_BYTES // 2)
        if http.batch.max_records > MAX_LOGS:
            raise section.error(f"SLS takes at most {MAX_LOGS} logs per request", "batch")
        if http.auth.kind != "none":
            raise section.error("SLS signs requests with access_key_id/access_key_secret; remove auth", "auth")
        files = tuple((key, str(spec["file"])) for key in ("access_key_id", "access_key_secret", "security_token")
                      if isinstance(spec := section.data.get(key), dict) and "file" in spec)
        topic = check_template(section, "topic", section.str("topic", ""))
        settings = SlsSettings(
            http=http,
            endpoint=endpoint,
            project=project,
            logstore=section.str("logstore"),
            access_key_id=section.secret("access_key_id"),
            access_key_secret=section.secret("access_key_secret"),
            security_token=section.secret("security_token", None),
            topic=topic,
            source=section.str("source", socket.gethostname()),
            log_tags=tuple(section.str_map("log_tags", {}).items()),
            credential_files=files,
        )
        section.done()
        return settings

    def __init__(self, name: str, settings: SlsSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.codec = SlsPutLogs(name, settings)
        self.delivery: Delivery[bytes] = Delivery(name, settings.http, self.codec, ctx.dead_letter,
                                                  on_permanent=self._permanent)
        self._auth_errors = metrics.ERRORS.labels(component=name, kind="auth")

    def _permanent(self, key: str, reason: str) -> None:
        if reason.startswith("auth:"):
            self._auth_errors.inc()
            self.log.error("SLS rejected the credentials; records dead-lettered. Check access_key_id, "
                           "access_key_secret and security_token",
                           extra={"output": self.name, "project": self.settings.project, "reason": reason[:300]})
        else:
            self.log.error("SLS refused a request for good; records dead-lettered",
                           extra={"output": self.name, "reason": reason[:300]})
