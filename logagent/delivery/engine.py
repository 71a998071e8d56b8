"""The delivery engine (`Delivery`), shared by every HTTP output.

An output hands it pipeline batches already turned into *items* (one per record, in the output's own pre-encoded
form) grouped by a partition *key* (a Loki tenant; one key for ES and SLS). Items accumulate per key into a
request, cut by records, bytes or age. Each key has its own request queue and at most `max_in_flight` requests in
flight, so one tenant's backlog or 429s do not stall another's. A request is retried (exponential backoff with full
jitter, at least `Retry-After`) until the backend accepted every item or rejected it for good; rejected items go to
the dead-letter file with the backend's reason.

Acknowledgement: every pipeline batch becomes one or more `_Chunk`s (one per key, via `AckToken.split`); a chunk's
token is acknowledged when each of its items is confirmed or dead-lettered, never earlier.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Generic

from logagent import metrics
from logagent.backoff import full_jitter
from logagent.deadletter import DeadLetter
from logagent.delivery.codec import (
    OK,
    REJECT,
    RETRY,
    SPLIT,
    Codec,
    Encoded,
    Item,
    RequestTooLarge,
    Response,
    Verdict,
)
from logagent.delivery.settings import HttpSettings, RetrySettings, ssl_context
from logagent.httpclient import HttpClient
from logagent.record import AckToken
from logagent.redact import mask


def backoff_delay(attempt: int, retry: RetrySettings, retry_after: float | None) -> float:
    """Full jitter (logagent.backoff), but never less than the server asked."""
    delay = full_jitter(attempt, retry.initial_backoff, retry.max_backoff)
    if retry_after is not None:
        delay = max(delay, min(retry_after, retry.max_retry_after))
    return delay


class _Chunk:
    """The part of one pipeline batch that went to one key; its token is done when `remaining` reaches 0."""

    __slots__ = ("token", "remaining", "nbytes")

    def __init__(self, token: AckToken, remaining: int, nbytes: int) -> None:
        self.token = token
        self.remaining = remaining
        self.nbytes = nbytes


class _Request(Generic[Item]):
    __slots__ = ("key", "items", "spans", "nbytes")

    def __init__(self, key: str) -> None:
        self.key = key
        self.items: list[Item] = []
        self.spans: list[tuple[_Chunk, int]] = []  # (chunk, count) runs in item order
        self.nbytes = 0

    def add(self, chunk: _Chunk, items: list[Item], nbytes: int) -> None:
        self.items.extend(items)
        if self.spans and self.spans[-1][0] is chunk:
            self.spans[-1] = (chunk, self.spans[-1][1] + len(items))
        else:
            self.spans.append((chunk, len(items)))
        self.nbytes += nbytes

    def owners(self) -> list[_Chunk]:
        out: list[_Chunk] = []
        for chunk, n in self.spans:
            out.extend([chunk] * n)
        return out


def _from_owners(key: str, items: list[Item], owners: list[_Chunk], nbytes: int) -> _Request[Item]:
    req: _Request[Item] = _Request(key)
    req.items = items
    start = 0
    for i in range(1, len(owners) + 1):  # one span per run of the same chunk
        if i == len(owners) or owners[i] is not owners[start]:
            req.spans.append((owners[start], i - start))
            start = i
    req.nbytes = nbytes
    return req


class _Lane(Generic[Item]):
    """One partition key: the request being filled, the in-flight limit and the tasks sending."""

    def __init__(self, key: str, max_in_flight: int) -> None:
        self.key = key
        self.pending: _Request[Item] | None = None
        self.opened = 0.0
        self.slots = asyncio.Semaphore(max_in_flight)
        self.cut: list[_Request[Item]] = []  # cut but waiting for a slot
        self.pump: asyncio.Task[None] | None = None


class Delivery(Generic[Item]):
    """Batches items per key into requests, sends them with retries, dead-letters rejections, acknowledges."""

    def __init__(
        self,
        output: str,
        settings: HttpSettings,
        codec: Codec[Item],
        dead_letter: DeadLetter,
        *,
        on_permanent: Callable[[str, str], None] | None = None,
    ) -> None:
        self.output = output
        self.settings = settings
        self.codec = codec
        self.dead_letter = dead_letter
        self.on_permanent = on_permanent
        self.session: HttpClient | None = None
        self._lanes: dict[str, _Lane[Item]] = {}
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
        headers = dict(s.headers)
        auth = s.auth.header()
        if auth:
            headers["Authorization"] = auth
        self.session = HttpClient(ssl_context=ssl_context(s.tls) if s.url.startswith("https://") else None,
                                  timeout=s.timeout, headers=headers, keepalive_timeout=30.0)
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

    def cut(self) -> None:
        """Cut every partly filled request and start sending it (the pipeline's window for this output is full:
        no more items come until these are confirmed, so waiting for `batch.max_wait` would only stall)."""
        for lane in self._lanes.values():
            if lane.pending is not None:
                self._cut(lane)
                self._kick(lane)

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

    def _cut(self, lane: _Lane[Item]) -> None:
        if lane.pending is not None and lane.pending.items:
            lane.cut.append(lane.pending)
        lane.pending = None

    def _kick(self, lane: _Lane[Item]) -> None:
        if lane.cut and (lane.pump is None or lane.pump.done()):
            lane.pump = asyncio.create_task(self._pump(lane), name=f"delivery-pump:{self.output}:{lane.key}")

    async def _pump(self, lane: _Lane[Item]) -> None:
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
    async def _deliver(self, lane: _Lane[Item], req: _Request[Item]) -> None:
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
        secrets = self.settings.secret_values()
        if not secrets:
            return v
        v.reason = mask(v.reason, secrets)
        if v.reject:
            done: dict[str, str] = {}
            v.reject = [(i, done[r] if r in done else done.setdefault(r, mask(r, secrets))) for i, r in v.reject]
        return v

    async def _encode(self, req: _Request[Item]) -> Encoded:
        """Encode (and compress) off the event loop for big requests: a multi-MB gzip would stall every other
        lane and the inputs for tens of milliseconds. Re-done per attempt so signatures and dates are fresh."""
        if req.nbytes >= 256 * 1024:
            return await asyncio.to_thread(self.codec.encode, req.key, req.items)
        return self.codec.encode(req.key, req.items)

    def _halves(self, req: _Request[Item]) -> list[_Request[Item]]:
        owners = req.owners()
        mid = len(req.items) // 2
        per = req.nbytes // max(1, len(req.items))
        # second half first on the stack: the first half is sent first
        return [_from_owners(req.key, req.items[mid:], owners[mid:], per * (len(req.items) - mid)),
                _from_owners(req.key, req.items[:mid], owners[:mid], per * mid)]

    async def _attempt(self, req: _Request[Item], encoded: Encoded) -> Verdict:
        assert self.session is not None
        headers = encoded.headers
        if self.settings.auth.token_file is not None:  # rotating token: the current one, per request
            headers = {**headers, "Authorization": self.settings.auth.header() or ""}
        try:
            resp = await self.session.post(encoded.url, encoded.body, headers)
            response = Response(resp.status, resp.headers, resp.body)
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, OSError) as e:  # HttpError is a ConnectionError
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

    async def _apply(self, req: _Request[Item], v: Verdict) -> _Request[Item] | None:
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

    async def _reject_all(self, req: _Request[Item], reason: str) -> None:
        await self._dead_letter(req.key, req.items, reason)
        for chunk, n in req.spans:
            self._settle(chunk, n, confirmed=False)

    async def _dead_letter(self, key: str, items: list[Item], reason: str) -> None:
        try:
            records = [self.codec.dead_record(key, it) for it in items]
        except Exception:  # an item the codec cannot read back must not end the lane with its tokens pending
            records = [_dead_record_or_repr(self.codec, key, it) for it in items]
        await asyncio.to_thread(self.dead_letter.write, self.output, reason, records)
        metrics.ERRORS.labels(component=self.output, kind="rejected").inc()
        if self.on_permanent is not None:
            self.on_permanent(key, reason)

    def _resolve(self, owners: list[_Chunk], confirmed: bool) -> None:
        chunks: dict[int, _Chunk] = {}
        counts: dict[int, int] = {}
        for c in owners:
            k = id(c)
            if k in counts:
                counts[k] += 1
            else:
                counts[k] = 1
                chunks[k] = c
        for k, n in counts.items():
            self._settle(chunks[k], n, confirmed)

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


def _dead_record_or_repr(codec: Codec[Item], key: str, item: Item) -> dict[str, Any]:
    try:
        record: dict[str, Any] = codec.dead_record(key, item)
        return record
    except Exception as e:
        return {"undecodable_item": repr(item)[:1 << 16], "error": f"{type(e).__name__}: {e}"}
