"""Shared delivery machinery for the HTTP outputs (Elasticsearch, Loki, SLS): written once, used by all three.

What lives here:
- `HttpSettings` and `parse_http_settings`: the settings every HTTP output shares (url, batching, requests in
  flight, compression, retry, timeout, TLS, auth, extra headers), parsed once from the output's `Section`.
- `Delivery`: the engine. An output hands it pipeline batches already turned into *items* (one per record,
  in the output's own pre-encoded form) grouped by a partition *key* (a Loki tenant; one key for ES and SLS).
  Items accumulate per key into a request, cut by records, bytes or age. Each key has its own request queue and
  at most `max_in_flight` requests in flight, so one tenant's backlog or 429s do not stall another's. A
  request is retried (exponential backoff with full jitter, at least `Retry-After`) until the backend accepted
  every item or rejected it for good; rejected items go to the dead-letter file with the backend's reason.
- Acknowledgement: every pipeline batch becomes one or more `_Chunk`s (one per key, via `AckToken.split`);
  a chunk's token is acknowledged when each of its items is confirmed or dead-lettered, never earlier.
- A cached RFC 3339 -> ns parser for record times. (Compression lives in `logagent.compression`; `compress` is
  re-exported here for the outputs.)

What it must never do: drop an item without dead-lettering it, acknowledge before the backend confirmed,
retry what the backend said is permanent, grow without bound (`send` awaits once `buffer_max_bytes` of items
are pending: that is the backpressure that holds the inputs), or log a secret (auth values are kept out of
reprs and logs).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import re
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from logagent import metrics
from logagent.backoff import full_jitter
from logagent.component import Output
from logagent.compression import compress as compress  # re-exported for the outputs
from logagent.config import Section
from logagent.record import AckToken, Batch, Shape, noop_token, parse_shape
from logagent.redact import mask
from logagent.rotating import RotatingSecret, usable_token

log = logging.getLogger("logagent.delivery")

Item = TypeVar("Item")
_Settings = TypeVar("_Settings")  # an output's settings dataclass

# ---------------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class BatchSettings:
    max_records: int
    max_bytes: int
    max_wait: float


@dataclass(frozen=True)
class RetrySettings:
    initial_backoff: float
    max_backoff: float
    max_retry_after: float  # a server asking for longer than this is waited this long, then retried


@dataclass(frozen=True)
class TlsSettings:
    verify: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None


@dataclass(frozen=True)
class AuthSettings:
    """`kind` is none, basic, bearer or api_key. Secret values are excluded from repr: never logged."""

    kind: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    # a token given as {file: PATH} is read again when the file changes (a projected, rotating token)
    token_file: RotatingSecret | None = field(default=None, repr=False, compare=False)

    def header(self) -> str | None:
        if self.kind == "basic":
            raw = f"{self.user}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        token = self.token_file.current() if self.token_file is not None else self.token
        if self.kind == "bearer":
            return f"Bearer {token}"
        if self.kind == "api_key":
            return f"ApiKey {token}"
        return None

    def secret_values(self) -> list[str]:
        """What this auth sends that must never be shown: masked in error text (`logagent.redact`)."""
        token = self.token_file.current() if self.token_file is not None else self.token
        header = self.header()
        values = [v for v in (self.password, token, header) if v]
        if header and " " in header:
            values.append(header.split(" ", 1)[1])  # the encoded credential without its scheme
        return values


@dataclass(frozen=True)
class HttpSettings:
    url: str
    batch: BatchSettings
    max_in_flight: int  # requests in flight per partition key
    buffer_max_bytes: int  # items pending (not yet acknowledged) across keys before `send` waits
    compression: str
    retry: RetrySettings
    timeout: float
    tls: TlsSettings
    auth: AuthSettings
    headers: tuple[tuple[str, str], ...]
    fields: Shape = field(default_factory=Shape, compare=False)  # what of a record is shipped (`fields`)


COMPRESSIONS = ("none", "gzip", "snappy", "lz4")
# extra `headers` whose values are credentials: masked in error text like the auth settings' values
_SENSITIVE_HEADER = re.compile(r"(?i)auth|token|key|secret|sign|cookie|pass")


def parse_http_settings(
    section: Section,
    *,
    default_url: str | None = None,
    compressions: Sequence[str] = COMPRESSIONS,
    default_compression: str = "gzip",
    default_max_records: int = 5000,
    default_max_bytes: int = 5 * 1024 * 1024,
    max_bytes_limit: int | None = None,
) -> HttpSettings:
    """Read the shared keys; the output reads its own keys and calls `section.done()` afterwards."""
    url = section.str("url", default_url) if default_url is not None else section.str("url")
    if not url.startswith(("http://", "https://")):
        raise section.error(f"expected an http:// or https:// URL, got {url!r}", "url")
    b = section.section("batch")
    max_bytes = b.size("max_bytes", default_max_bytes)
    if max_bytes_limit is not None and max_bytes > max_bytes_limit:
        raise b.error(f"must be at most {max_bytes_limit} bytes for this backend, got {max_bytes}", "max_bytes")
    batch = BatchSettings(
        max_records=b.int("max_records", default_max_records, min=1),
        max_bytes=max_bytes,
        max_wait=b.duration("max_wait", 1.0),
    )
    b.done()
    r = section.section("retry")
    retry = RetrySettings(
        initial_backoff=r.duration("initial_backoff", 0.5),
        max_backoff=r.duration("max_backoff", 60.0),
        max_retry_after=r.duration("max_retry_after", 300.0),
    )
    r.done()
    if retry.initial_backoff > retry.max_backoff:
        raise r.error("initial_backoff must not exceed max_backoff", "initial_backoff")
    t = section.section("tls")
    tls = TlsSettings(
        verify=t.bool("verify", True),
        ca_file=t.str("ca_file", None),
        cert_file=t.str("cert_file", None),
        key_file=t.str("key_file", None),
    )
    t.done()
    if tls.key_file and not tls.cert_file:
        raise t.error("key_file needs cert_file", "key_file")
    if tls.ca_file or tls.cert_file:
        _check_tls_files(t, tls)
    auth = _parse_auth(section.section("auth"))
    headers = tuple(section.str_map("headers", {}).items())
    max_in_flight = section.int("max_in_flight", 4, min=1)
    compression = section.str("compression", default_compression, choices=tuple(compressions))
    fields = parse_shape(section, "lean")
    return HttpSettings(
        url=url.rstrip("/"),
        batch=batch,
        max_in_flight=max_in_flight,
        buffer_max_bytes=section.size("buffer_max_bytes", max(64 * 1024 * 1024, 4 * max_bytes)),
        compression=compression,
        retry=retry,
        timeout=section.duration("timeout", 30.0),
        tls=tls,
        auth=auth,
        headers=headers,
        fields=fields,
    )


def _parse_auth(a: Section) -> AuthSettings:
    kinds = [k for k in ("user", "bearer_token", "api_key") if a.has(k)]
    if len(kinds) > 1:
        raise a.error("give one of user/password, bearer_token or api_key", here=True)
    if a.has("user"):
        user = a.str("user")
        if ":" in user:  # RFC 7617: the first colon ends the user-id, the server would read another user
            raise a.error("a user name for basic auth cannot contain ':'", "user")
        auth = AuthSettings("basic", user=user, password=a.secret("password", ""))
    elif a.has("bearer_token") or a.has("api_key"):
        key = "bearer_token" if a.has("bearer_token") else "api_key"
        token = _header_token(a, key)
        spec = a.data.get(key)
        rotating = RotatingSecret(str(spec["file"]), token) if isinstance(spec, dict) and "file" in spec else None
        auth = AuthSettings("bearer" if key == "bearer_token" else "api_key", token=token, token_file=rotating)
    else:
        auth = AuthSettings("none")
    a.done()
    return auth


def _header_token(a: Section, key: str) -> str:
    """A token goes into the Authorization header as written. A line break in it (a secret file holding two lines)
    makes aiohttp refuse every request before sending, so it is refused here, naming the key, never the value."""
    token = a.secret(key)
    if not usable_token(token):
        raise a.error("must be a single line of printable characters, and not empty", key)
    return str(token)


def _check_tls_files(t: Section, tls: TlsSettings) -> None:
    """Load the CA and the client certificate once at load time, so that a wrong path, a file that is not PEM, a key
    that does not match its certificate or a passphrase-protected key is a config error naming the key (and
    `logagent check` sees it) — not an OSError without a file name when the output starts, nor a passphrase
    prompt on a terminal a daemon does not have."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise t.error(f"cannot read {path}: {e.strerror}", key) from None
    if tls.ca_file:
        try:
            ssl.create_default_context(cafile=tls.ca_file)
        except ssl.SSLError as e:
            raise t.error(f"no usable CA certificate in {tls.ca_file} ({e.reason or e})", "ca_file") from None

    def no_passphrase() -> bytes:
        raise ValueError("passphrase-protected")

    if tls.cert_file:
        try:
            ssl.create_default_context().load_cert_chain(tls.cert_file, tls.key_file, password=no_passphrase)
        except ValueError:
            raise t.error("the client key is passphrase-protected; give an unencrypted key (mounted as a secret)",
                          "key_file" if tls.key_file else "cert_file") from None
        except ssl.SSLError as e:
            raise t.error(f"cannot use {tls.cert_file} with the key in {tls.key_file or tls.cert_file} "
                          f"({e.reason or e})", "cert_file") from None


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---------------------------------------------------------------------------------------------------------------
# Time helpers


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds, from either form the HTTP spec allows: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, retry: RetrySettings, retry_after: float | None) -> float:
    """Full jitter (logagent.backoff), but never less than the server asked."""
    delay = full_jitter(attempt, retry.initial_backoff, retry.max_backoff)
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry.max_retry_after))
    return delay


# ---------------------------------------------------------------------------------------------------------------
# Requests and verdicts


@dataclass
class Encoded:
    """One HTTP request body for a list of items. `context` is for the codec's `interpret` (e.g. the order in
    which Loki entries were written after sorting)."""

    body: bytes
    headers: dict[str, str]
    url: str
    context: Any = None


class RequestTooLarge(Exception):
    """Raised by `encode` when the items exceed the backend's request limit: the engine splits them in two."""


@dataclass
class Response:
    status: int
    headers: Any  # multidict from aiohttp
    body: bytes


OK, RETRY, REJECT, ITEMS, SPLIT = "ok", "retry", "reject", "items", "split"


@dataclass
class Verdict:
    """What one response means. `kind` ok/retry/reject apply to the whole request (`split`: send it in halves —
    when it is too large, or to isolate the items a backend refused without saying which, as Loki's 400 does; a
    single item that still gets `split` is dead-lettered with `reason`); `items` carries per-item
    outcomes: indices to retry and (index, reason) pairs rejected for good; all others succeeded."""

    kind: str
    reason: str = ""
    retry_after: float | None = None
    retry: list[int] = field(default_factory=list)
    reject: list[tuple[int, str]] = field(default_factory=list)


class Codec(Protocol, Generic[Item]):
    """A backend's wire format. `parts` splits a batch into keyed requests-to-be: [(key, items, nbytes)] (the key
    is what must not share a request: an index, a tenant, a logstore); the engine batches items per key, calls
    `encode` for each request and `interpret` on its answer; `dead_record` turns a refused item back into a record
    for the dead-letter file."""

    def parts(self, batch: Batch) -> list[tuple[str, list[Item], int]]: ...

    def encode(self, key: str, items: list[Item]) -> Encoded: ...

    def interpret(self, key: str, items: list[Item], encoded: Encoded, response: Response) -> Verdict: ...

    def dead_record(self, key: str, item: Item) -> dict[str, Any]: ...


class _Chunk:
    """The part of one pipeline batch that went to one key; its token is done when `remaining` reaches 0."""

    __slots__ = ("token", "remaining", "nbytes")

    def __init__(self, token: AckToken, remaining: int, nbytes: int) -> None:
        self.token = token
        self.remaining = remaining
        self.nbytes = nbytes


class _Request:
    __slots__ = ("key", "items", "spans", "nbytes")

    def __init__(self, key: str) -> None:
        self.key = key
        self.items: list[Any] = []
        self.spans: list[list[Any]] = []  # [chunk, count] runs in item order
        self.nbytes = 0

    def add(self, chunk: _Chunk, items: list[Any], nbytes: int) -> None:
        self.items.extend(items)
        if self.spans and self.spans[-1][0] is chunk:
            self.spans[-1][1] += len(items)
        else:
            self.spans.append([chunk, len(items)])
        self.nbytes += nbytes

    def owners(self) -> list[_Chunk]:
        out: list[_Chunk] = []
        for chunk, n in self.spans:
            out.extend([chunk] * n)
        return out


def _from_owners(key: str, items: list[Any], owners: list[_Chunk], nbytes: int) -> _Request:
    req = _Request(key)
    req.items = items
    for chunk in owners:
        if req.spans and req.spans[-1][0] is chunk:
            req.spans[-1][1] += 1
        else:
            req.spans.append([chunk, 1])
    req.nbytes = nbytes
    return req


class _Lane:
    """One partition key: the request being filled, the in-flight limit and the tasks sending."""

    def __init__(self, key: str, max_in_flight: int) -> None:
        self.key = key
        self.pending: _Request | None = None
        self.opened = 0.0
        self.slots = asyncio.Semaphore(max_in_flight)
        self.cut: list[_Request] = []  # cut but waiting for a slot
        self.pump: asyncio.Task[None] | None = None


# ---------------------------------------------------------------------------------------------------------------
# The engine


class Delivery(Generic[Item]):
    """Batches items per key into requests, sends them with retries, dead-letters rejections, acknowledges."""

    def __init__(
        self,
        output: str,
        settings: HttpSettings,
        codec: Codec[Item],
        dead_letter: Any,
        *,
        on_permanent: Callable[[str, str], None] | None = None,
    ) -> None:
        self.output = output
        self.settings = settings
        self.codec = codec
        self.dead_letter = dead_letter
        self.on_permanent = on_permanent
        self.session: aiohttp.ClientSession | None = None
        self._lanes: dict[str, _Lane] = {}
        self._buffered = 0  # item bytes accepted and not yet resolved
        self._space = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._unacked = 0
        self._records_out = metrics.RECORDS_OUT.labels(output=output)
        self._bytes_out = metrics.BYTES_OUT.labels(output=output)
        self._retries = metrics.RETRIES.labels(output=output)
        self._inflight = metrics.INFLIGHT.labels(output=output)
        self.log = logging.getLogger(f"logagent.output.{output}")

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        ssl_arg: Any = ssl_context(s.tls) if s.url.startswith("https://") else False
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=ssl_arg, keepalive_timeout=30)
        headers = dict(s.headers)
        auth = s.auth.header()
        if auth:
            headers["Authorization"] = auth
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=s.timeout),
            headers=headers,
            auto_decompress=True,
        )
        self._ticker = asyncio.create_task(self._tick(), name=f"delivery-ticker:{self.output}")

    async def flush(self) -> None:
        """Cut every partly filled request and wait until everything handed to us is resolved."""
        while True:
            for lane in self._lanes.values():
                self._cut(lane)
                self._kick(lane)
            pumps = (ln.pump for ln in self._lanes.values() if ln.pump is not None and not ln.pump.done())
            waits = [*self._tasks, *pumps]
            if not waits:
                return
            await asyncio.wait(waits)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for lane in self._lanes.values():
            if lane.pump is not None:
                lane.pump.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def ready(self) -> bool:
        return self._buffered < self.settings.buffer_max_bytes

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    # -- intake ---------------------------------------------------------------------------------------------
    async def submit(self, token: AckToken, parts: list[tuple[str, list[Item], int]]) -> None:
        """Take one pipeline batch as (key, items, item bytes) parts. Waits while the buffer is full."""
        parts = [p for p in parts if p[1]]
        if not parts:
            token.done()
            return
        total = sum(p[2] for p in parts)
        limit = self.settings.buffer_max_bytes
        while self._buffered > 0 and self._buffered + total > limit:
            self._space.clear()
            await self._space.wait()
        tokens = [token] if len(parts) == 1 else token.split(len(parts))
        self._buffered += total
        self._unacked += len(parts)
        self._inflight.set(self._unacked)
        for (key, items, nbytes), tok in zip(parts, tokens):
            self._add(key, items, nbytes, tok)

    def _add(self, key: str, items: list[Item], nbytes: int, token: AckToken) -> None:
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(key, self.settings.max_in_flight)
        chunk = _Chunk(token, len(items), nbytes)
        b = self.settings.batch
        start = 0
        per_item = nbytes / len(items)
        while start < len(items):
            if lane.pending is None:
                lane.pending = _Request(key)
                lane.opened = time.monotonic()
            req = lane.pending
            room = b.max_records - len(req.items)
            if per_item > 0:
                # the byte limit applies to an empty request too: a big batch is cut into several requests
                room = min(room, max(1, int((b.max_bytes - req.nbytes) / per_item)))
            take = items[start:start + room] if start or room < len(items) else items
            req.add(chunk, take, int(per_item * len(take)))
            start += len(take)
            if len(req.items) >= b.max_records or req.nbytes >= b.max_bytes:
                self._cut(lane)
        self._kick(lane)

    def _cut(self, lane: _Lane) -> None:
        if lane.pending is not None and lane.pending.items:
            lane.cut.append(lane.pending)
        lane.pending = None

    def _kick(self, lane: _Lane) -> None:
        if lane.cut and (lane.pump is None or lane.pump.done()):
            lane.pump = asyncio.create_task(self._pump(lane), name=f"delivery-pump:{self.output}:{lane.key}")

    async def _pump(self, lane: _Lane) -> None:
        """Start each cut request once the lane has a free in-flight slot (per key: tenants don't block)."""
        while lane.cut:
            await lane.slots.acquire()
            req = lane.cut.pop(0)
            task = asyncio.create_task(self._deliver(lane, req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _tick(self) -> None:
        wait = self.settings.batch.max_wait
        interval = max(0.01, min(wait / 4, 0.25))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for lane in list(self._lanes.values()):
                if lane.pending is not None and now - lane.opened >= wait:
                    self._cut(lane)
                    self._kick(lane)

    # -- sending --------------------------------------------------------------------------------------------
    async def _deliver(self, lane: _Lane, req: _Request) -> None:
        try:
            attempt = 0
            queue = [req]
            while queue:
                current = queue.pop()
                try:
                    encoded = await self._encode(current)
                except RequestTooLarge:
                    if len(current.items) == 1:
                        await self._reject_all(current, "request_too_large: a single record exceeds the "
                                                        "backend's request size limit")
                        continue
                    queue.extend(self._halves(current))
                    continue
                except Exception as e:
                    # A record the codec cannot encode is bad input: narrow it down by halving, then dead-letter
                    # that one record with the error, instead of losing the request or stalling the lane.
                    metrics.ERRORS.labels(component=self.output, kind="encode").inc()
                    if len(current.items) == 1:
                        self.log.error("record cannot be encoded; dead-lettered",
                                       extra={"output": self.output, "error": f"{type(e).__name__}: {e}"})
                        await self._reject_all(current, f"encode_error: {type(e).__name__}: {e}")
                    else:
                        queue.extend(self._halves(current))
                    continue
                verdict = self._masked(await self._attempt(current, encoded))
                if verdict.kind == SPLIT:
                    if len(current.items) == 1:
                        await self._reject_all(current, verdict.reason or "request_too_large")
                    else:
                        queue.extend(self._halves(current))
                    continue
                retry_req = await self._apply(current, verdict)
                if retry_req is not None:
                    self._retries.inc()
                    delay = backoff_delay(attempt, self.settings.retry, verdict.retry_after)
                    attempt += 1
                    if attempt == 1 or attempt % 10 == 0:
                        self.log.warning("request will be retried", extra={
                            "output": self.output, "key": lane.key, "attempt": attempt,
                            "reason": verdict.reason[:300], "delay_s": round(delay, 3),
                            "records": len(retry_req.items)})
                    await asyncio.sleep(delay)
                    queue.append(retry_req)
                else:
                    attempt = 0
        finally:
            lane.slots.release()

    def _masked(self, v: Verdict) -> Verdict:
        """Reasons are logged and written with dead-lettered records: the credentials this output sends are masked
        in them wherever a backend or proxy echoed them (the codecs mask credential-shaped text already)."""
        if v.kind == OK:
            return v
        secrets = self.settings.auth.secret_values()
        secrets += [value for name, value in self.settings.headers if _SENSITIVE_HEADER.search(name)]
        if not secrets:
            return v
        v.reason = mask(v.reason, secrets)
        if v.reject:
            done: dict[str, str] = {}
            v.reject = [(i, done[r] if r in done else done.setdefault(r, mask(r, secrets))) for i, r in v.reject]
        return v

    async def _encode(self, req: _Request) -> Encoded:
        """Encode (and compress) off the event loop for big requests: a multi-MB gzip would stall every other
        lane and the inputs for tens of milliseconds. Re-done per attempt so signatures and dates are fresh."""
        if req.nbytes >= 256 * 1024:
            return await asyncio.to_thread(self.codec.encode, req.key, req.items)
        return self.codec.encode(req.key, req.items)

    def _halves(self, req: _Request) -> list[_Request]:
        owners = req.owners()
        mid = len(req.items) // 2
        per = req.nbytes // max(1, len(req.items))
        # second half first on the stack: the first half is sent first
        return [_from_owners(req.key, req.items[mid:], owners[mid:], per * (len(req.items) - mid)),
                _from_owners(req.key, req.items[:mid], owners[:mid], per * mid)]

    async def _attempt(self, req: _Request, encoded: Encoded) -> Verdict:
        assert self.session is not None
        headers = encoded.headers
        if self.settings.auth.token_file is not None:  # rotating token: the current one, per request
            headers = {**headers, "Authorization": self.settings.auth.header() or ""}
        try:
            async with self.session.post(encoded.url, data=encoded.body, headers=headers) as resp:
                body = await resp.read()
                response = Response(resp.status, resp.headers, body)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            metrics.ERRORS.labels(component=self.output, kind="transport").inc()
            return Verdict(RETRY, reason=f"transport: {type(e).__name__}: {e}")
        except Exception as e:
            # Anything else the client raises (a header it refuses, a bug) must not end the lane's task and
            # strand its records: retried with backoff, and loud, so an operator sees why nothing moves.
            metrics.ERRORS.labels(component=self.output, kind="request_failed").inc()
            self.log.exception("request could not be sent; retrying", extra={"output": self.output})
            return Verdict(RETRY, reason=f"request failed: {type(e).__name__}")
        self._bytes_out.inc(len(encoded.body))
        try:
            return self.codec.interpret(req.key, req.items, encoded, response)
        except Exception as e:  # a response we cannot read is a server problem: retry, never drop
            metrics.ERRORS.labels(component=self.output, kind="bad_response").inc()
            self.log.exception("unreadable response; retrying", extra={"output": self.output,
                                                                      "status": response.status})
            return Verdict(RETRY, reason=f"unreadable response (HTTP {response.status}): {type(e).__name__}")

    async def _apply(self, req: _Request, v: Verdict) -> _Request | None:
        """Resolve what the verdict settled; return a request with what must be retried, or None."""
        if v.kind == OK:
            for chunk, n in req.spans:
                self._settle(chunk, n, confirmed=True)
            return None
        if v.kind == RETRY:
            return req
        if v.kind == REJECT:
            if self.on_permanent is None:
                # An output with its own hook logs there; without one (Elasticsearch), a whole request refused
                # for good (401 bad credentials, 403, 404) would send every record to the dead-letter file silently.
                self.log.error("backend refused a request for good; records dead-lettered", extra={
                    "output": self.output, "key": req.key, "records": len(req.items), "reason": v.reason[:300]})
            await self._reject_all(req, v.reason)
            return None
        # per item
        owners = req.owners()
        settled = [False] * len(req.items)
        by_reason: dict[str, list[int]] = {}
        for idx, reason in v.reject:
            if 0 <= idx < len(settled) and not settled[idx]:
                settled[idx] = True
                by_reason.setdefault(reason, []).append(idx)
        retry_idx = [i for i in v.retry if 0 <= i < len(settled) and not settled[i]]
        for i in retry_idx:
            settled[i] = True
        for reason, idxs in by_reason.items():
            await self._dead_letter(req.key, [req.items[i] for i in idxs], reason)
            self._resolve([owners[i] for i in idxs], confirmed=False)
        ok = [owners[i] for i, s in enumerate(settled) if not s]
        self._resolve(ok, confirmed=True)
        if not retry_idx:
            return None
        per = req.nbytes // max(1, len(req.items))
        return _from_owners(req.key, [req.items[i] for i in retry_idx], [owners[i] for i in retry_idx],
                            per * len(retry_idx))

    async def _reject_all(self, req: _Request, reason: str) -> None:
        await self._dead_letter(req.key, req.items, reason)
        for chunk, n in req.spans:
            self._settle(chunk, n, confirmed=False)

    async def _dead_letter(self, key: str, items: list[Any], reason: str) -> None:
        try:
            records = [self.codec.dead_record(key, it) for it in items]
        except Exception:  # an item the codec cannot read back must not end the lane with its tokens pending
            records = [_dead_record_or_repr(self.codec, key, it) for it in items]
        await asyncio.to_thread(self.dead_letter.write, self.output, reason, records)
        metrics.ERRORS.labels(component=self.output, kind="rejected").inc()
        if self.on_permanent is not None:
            self.on_permanent(key, reason)

    def _resolve(self, owners: list[_Chunk], confirmed: bool) -> None:
        counts: dict[int, list[Any]] = {}
        for c in owners:
            e = counts.get(id(c))
            if e is None:
                counts[id(c)] = [c, 1]
            else:
                e[1] += 1
        for c, n in counts.values():
            self._settle(c, n, confirmed)

    def _settle(self, chunk: _Chunk, n: int, confirmed: bool) -> None:
        if confirmed:
            self._records_out.inc(n)
        chunk.remaining -= n
        if chunk.remaining == 0:
            chunk.token.done()
            self._release(chunk.nbytes)

    def _release(self, nbytes: int) -> None:
        self._buffered -= nbytes
        self._unacked -= 1
        self._inflight.set(self._unacked)
        self._space.set()


def _dead_record_or_repr(codec: Any, key: str, item: Any) -> dict[str, Any]:
    try:
        record: dict[str, Any] = codec.dead_record(key, item)
        return record
    except Exception as e:
        return {"undecodable_item": repr(item)[:1 << 16], "error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------------------------------------------
# Field templates shared by ES index names and Loki labels


# strftime codes whose value changes at most once an hour: a rendered date needs only the record's hour
_HOURLY_CODES = frozenset("YmdHyjbBhaAuwUWVGgCeIp%")


class FieldTemplate:
    """`{dotted.path}` placeholders filled from a record (`{kubernetes.labels.app}`), `{path|default}` for a
    fallback when the field is missing or empty, plus strftime codes (`%Y.%m.%d`) from the record's time (UTC)
    when `dates` is on. Literal text stays as written; `{{` and `}}` are literal braces.

    A rendering depends on nothing but `values(record)` and, with dates, the record's time to `date_granularity`
    seconds: a cache of renderings must be keyed by exactly those, so that no record decides another's route."""

    __slots__ = ("text", "parts", "fields", "has_date", "dates", "date_granularity")

    def __init__(self, text: str, dates: bool = False) -> None:
        self.text = text
        self.dates = dates
        self.parts: list[tuple[str, Any]] = []  # ("lit", str) | ("field", (path tuple, default))
        i = 0
        lit: list[str] = []
        while i < len(text):
            ch = text[i]
            if text.startswith("{{", i) or text.startswith("}}", i):
                lit.append(ch)
                i += 2
                continue
            if ch == "{":
                end = text.find("}", i)
                if end < 0:
                    raise ValueError(f"unclosed '{{' in template {text!r}")
                if lit:
                    self.parts.append(("lit", "".join(lit)))
                    lit = []
                expr = text[i + 1:end].strip()
                name, _, default = expr.partition("|")
                if not name:
                    raise ValueError(f"empty field name in template {text!r}")
                self.parts.append(("field", (tuple(name.strip().split(".")), default)))
                i = end + 1
                continue
            lit.append(ch)
            i += 1
        if lit:
            self.parts.append(("lit", "".join(lit)))
        self.fields = [p[1][0] for p in self.parts if p[0] == "field"]
        self.has_date = dates and "%" in text
        codes = {text[i + 1] for i in range(len(text) - 1) if text[i] == "%"}
        self.date_granularity = 3600 if codes <= _HOURLY_CODES else 1

    @property
    def constant(self) -> bool:
        return not self.fields and not self.has_date

    def top_keys(self) -> set[str]:
        return {f[0] for f in self.fields}

    def render(self, record: dict[str, Any], time_ns: int | None = None) -> str:
        return self.render_values(self.values(record), time_ns)

    def values(self, record: dict[str, Any]) -> tuple[str, ...]:
        """The text each placeholder takes for this record (its fallback when the field is missing or empty)."""
        out = []
        for kind, val in self.parts:
            if kind == "lit":
                continue
            path, default = val
            cur: Any = record
            for p in path:
                if isinstance(cur, dict):
                    cur = cur.get(p)
                else:
                    cur = None
                    break
            out.append(default if cur is None or cur == "" else str(cur))
        return tuple(out)

    def render_values(self, values: tuple[str, ...], time_ns: int | None = None) -> str:
        out = []
        it = iter(values)
        for kind, val in self.parts:
            out.append(val if kind == "lit" else next(it))
        text = "".join(out)
        if self.has_date:
            t = time.gmtime((time_ns if time_ns is not None else time.time_ns()) // 1_000_000_000)
            text = time.strftime(text, t)
        return text


def lookup(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = record
    for p in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


class DeliveryOutput(Output[_Settings]):
    """The output side every HTTP backend shares: a codec turns a batch into keyed parts (`codec.parts(batch)`
    -> [(key, items, nbytes)]), and the `Delivery` engine ships, retries, dead-letters and acknowledges them.
    A backend's module only builds `self.codec` and `self.delivery` in its `__init__`."""

    codec: Codec[Any]
    delivery: Delivery[Any]

    async def start(self) -> None:
        await self.delivery.start()

    async def send(self, batch: Batch) -> None:
        try:
            parts = self.codec.parts(batch)
        except Exception as e:
            parts = await self._isolate(batch, e)
        await self.delivery.submit(batch.ack, parts)

    async def _isolate(self, batch: Batch, error: Exception) -> list[tuple[str, list[Any], int]]:
        """A batch the codec cannot turn into items holds records it cannot encode (e.g. an integer beyond 64
        bits): halve it until those records stand alone, dead-letter each with the error, ship the rest.
        Costs log2(batch) extra `parts` calls per bad record, and nothing on good batches."""
        metrics.ERRORS.labels(component=self.name, kind="encode").inc()
        merged: dict[str, tuple[list[Any], list[int]]] = {}
        bad: list[tuple[int, str]] = []
        stack = [(0, len(batch.records), error)]
        while stack:
            lo, hi, err = stack.pop()
            if hi - lo == 1:
                bad.append((lo, f"encode_error: {type(err).__name__}: {err}"))
                continue
            for a, b in ((lo + (hi - lo) // 2, hi), (lo, lo + (hi - lo) // 2)):  # first half popped first
                part = Batch(batch.tag, batch.records[a:b], batch.meta, noop_token(),
                             batch.nbytes * (b - a) // max(1, len(batch.records)))
                try:
                    got = self.codec.parts(part)
                except Exception as e:
                    stack.append((a, b, e))
                    continue
                for key, items, nbytes in got:
                    entry = merged.setdefault(key, ([], [0]))
                    entry[0].extend(items)
                    entry[1][0] += nbytes
        if bad:
            shipped = list(batch.shipped())
            by_reason: dict[str, list[dict[str, Any]]] = {}
            for i, reason in sorted(bad):
                by_reason.setdefault(reason, []).append(shipped[i])
            for reason, records in by_reason.items():
                self.log.error("record cannot be encoded; dead-lettered, the rest of its batch is shipped",
                               extra={"output": self.name, "records": len(records), "error": reason[:300]})
                await asyncio.to_thread(self.ctx.dead_letter.write, self.name, reason, records)
        return [(key, items, n[0]) for key, (items, n) in merged.items()]

    async def flush(self) -> None:
        await self.delivery.flush()

    async def stop(self) -> None:
        await self.delivery.stop()

    def ready(self) -> bool:
        return self.delivery.ready()
