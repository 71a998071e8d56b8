"""Posting core/v1 Events about node problems: series aggregation, a rate limit, retries, never blocking.

`EventRecorder.record()` is synchronous and cheap (a dict update): the pipeline's stages call it and go on. A
background task (`run()`) posts what was recorded:

  * Series: incidents with the same involved object, type and reason within `series_window` are one Event whose
    `count` and `lastTimestamp` grow, as client-go's event correlator does. The first is created
    (`POST /api/v1/namespaces/<ns>/events`, name `<object>.<hex nanoseconds>` like client-go's), later ones
    update it with a strategic merge patch of count, lastTimestamp and message. A storm of identical incidents
    while a request is in flight or rate-limited becomes one patch with the final count.
  * Rate limit: a token bucket (`burst`, `qps`) over all requests; waiting series only accumulate counts.
  * Failures: 429, 5xx and connection errors are retried with exponential backoff and jitter; a patch answered 404
    (the event expired, events live an hour) creates a new Event; a create answered 409 (the name exists) patches
    it. Other 4xx answers are permanent: logged, counted, the series is dropped.
  * Bounds: at most `max_series` series are kept; when full, the least recently seen one that has nothing left to
    post is forgotten; if every series still has something to post, the new incident is dropped and counted.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from logagent import metrics
from logagent.backoff import Backoff
from logagent.kubernetes.api import ApiError, Conflict, NotFound
from logagent.kubernetes.client import ApiClient, now_rfc3339

log = logging.getLogger("logagent.kubernetes.events")

SMP = "application/strategic-merge-patch+json"
COMPONENT = "logagent"


@dataclass
class _Series:
    namespace: str
    involved: dict[str, Any]
    reason: str
    type: str
    message: str
    first: str
    last: str
    seen: float  # monotonic time of the last incident
    count: int = 1
    posted: int = 0  # the count the API server has (0: not created yet)
    name: str | None = None
    next_try: float = 0.0
    backoff: Backoff = field(default_factory=lambda: Backoff(0.5, 60.0))


@dataclass
class RecorderStats:
    created: int = 0
    patched: int = 0
    retries: int = 0
    failed: int = 0
    dropped: int = 0
    aggregated: int = 0  # incidents folded into an existing series


class EventRecorder:
    def __init__(self, client: ApiClient, host: str, *, series_window: float = 600.0, burst: int = 25,
                 qps: float = 1 / 30, max_series: int = 1000, backoff_initial: float = 0.5,
                 backoff_max: float = 60.0) -> None:
        self.client = client
        self.host = host
        self.series_window = series_window
        self.burst = burst
        self.qps = qps
        self.max_series = max_series
        self.backoff = (backoff_initial, backoff_max)
        self.stats = RecorderStats()
        self._series: collections.OrderedDict[tuple[Any, ...], _Series] = collections.OrderedDict()
        self._dirty: dict[tuple[Any, ...], None] = {}  # keys with something to post, in order of arrival
        self._wake = asyncio.Event()
        self._tokens = float(burst)
        self._refilled = time.monotonic()

    # -- the caller's side (synchronous, never waits) ---------------------------------------------------------
    def record(self, namespace: str, involved: dict[str, Any], reason: str, message: str,
               type_: str = "Warning") -> None:
        key = (namespace, involved.get("kind"), involved.get("namespace"), involved.get("name"),
               involved.get("uid"), type_, reason)
        now = time.monotonic()
        ts = now_rfc3339()
        s = self._series.get(key)
        if s is not None and now - s.seen > self.series_window and key not in self._dirty:
            del self._series[key]  # the last one is old: a new Event, as client-go starts a new series
            s = None
        if s is None:
            if len(self._series) >= self.max_series and not self._evict():
                self.stats.dropped += 1
                metrics.DROPPED.labels(component="kubernetes-events", reason="series_full").inc()
                return
            s = self._series[key] = _Series(namespace, involved, reason, type_, message, ts, ts, now,
                                            backoff=Backoff(*self.backoff))
        else:
            s.count += 1
            s.last, s.seen, s.message = ts, now, message
            self._series.move_to_end(key)
            self.stats.aggregated += 1
        self._dirty[key] = None
        self._wake.set()

    def _evict(self) -> bool:
        for k in self._series:
            if k not in self._dirty:
                del self._series[k]
                return True
        return False

    @property
    def pending(self) -> int:
        return len(self._dirty)

    # -- the background task --------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                now = time.monotonic()
                due = [k for k in self._dirty if self._series[k].next_try <= now]
                if not due:
                    soonest = min(self._series[k].next_try for k in self._dirty) - now
                    try:
                        await asyncio.wait_for(self._wake.wait(), max(0.01, soonest))
                    except asyncio.TimeoutError:
                        pass
                    self._wake.clear()
                    continue
                for key in due:
                    await self._take_token()
                    try:
                        await self._post(key)
                    except Exception:
                        # a bug must not end the reporting of every later problem: drop this series, go on
                        self.stats.failed += 1
                        metrics.ERRORS.labels(component="kubernetes-events", kind="event_failed").inc()
                        log.exception("posting a node problem event failed unexpectedly; dropped")
                        self._dirty.pop(key, None)
                        self._series.pop(key, None)

    async def flush(self, timeout: float) -> None:
        """At shutdown: post what is pending within `timeout` (best effort; the rest is logged)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._dirty and loop.time() < deadline:
            key = next(iter(self._dirty))
            self._series[key].next_try = 0
            try:
                await asyncio.wait_for(self._post(key), max(0.05, deadline - loop.time()))
            except asyncio.TimeoutError:
                break
        if self._dirty:
            log.warning("node problem events not posted at shutdown", extra={"events": len(self._dirty)})

    async def _take_token(self) -> None:
        while True:
            now = time.monotonic()
            self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.qps)
            self._refilled = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            await asyncio.sleep((1 - self._tokens) / self.qps)

    async def _post(self, key: tuple[Any, ...]) -> None:
        s = self._series.get(key)
        if s is None or key not in self._dirty:
            return
        count = s.count
        try:
            if s.posted == 0:
                await self._create(s, count)
                self.stats.created += 1
            else:
                await self._patch(s, count)
                self.stats.patched += 1
        except NotFound:
            s.posted, s.name = 0, None  # expired on the server: the next try creates a new Event
            s.next_try = 0
            return
        except Conflict:
            s.posted = max(s.posted, 1)  # our name exists (a retried create that did land): patch it
            s.next_try = 0
            return
        except (asyncio.TimeoutError, OSError, ApiError) as e:
            status = getattr(e, "status", None)
            if isinstance(e, ApiError) and status is not None and 400 <= status < 500 and status != 429:
                self.stats.failed += 1
                metrics.ERRORS.labels(component="kubernetes-events", kind="event_refused").inc()
                log.error("the API server refused a node problem event; dropped",
                          extra={"reason": s.reason, "error": str(e)[:300]})
                self._dirty.pop(key, None)
                self._series.pop(key, None)
                return
            self.stats.retries += 1
            delay = s.backoff.next()
            s.next_try = time.monotonic() + delay
            metrics.ERRORS.labels(component="kubernetes-events", kind="event_retry").inc()
            log.warning("posting a node problem event failed; retrying",
                        extra={"reason": s.reason, "error": f"{type(e).__name__}: {str(e)[:200]}",
                               "retry_in": round(delay, 3)})
            return
        s.posted = count
        s.backoff.reset()
        if s.count == count:
            self._dirty.pop(key, None)

    async def _create(self, s: _Series, count: int) -> None:
        if s.name is None:
            s.name = f"{s.involved.get('name')}.{time.time_ns():x}"
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "involvedObject": s.involved, "reason": s.reason, "message": s.message, "type": s.type,
            "count": count, "firstTimestamp": s.first, "lastTimestamp": s.last,
            "source": {"component": COMPONENT, "host": self.host},
            "reportingComponent": COMPONENT, "reportingInstance": self.host,
        }
        await self.client.request("POST", f"/api/v1/namespaces/{s.namespace}/events", body)

    async def _patch(self, s: _Series, count: int) -> None:
        await self.client.request("PATCH", f"/api/v1/namespaces/{s.namespace}/events/{s.name}",
                                  {"count": count, "lastTimestamp": s.last, "message": s.message}, SMP)
