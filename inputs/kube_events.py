"""`kube_events` input: the cluster's Events, list+watched and shipped once (kube-eventer's job).

Every agent of the DaemonSet runs this input, but only the holder of a `coordination.k8s.io/v1` Lease
(`logagent.kubernetes.lease`) reads: the others wait to take over. The leader lists `/api/v1/events` once (pages
of `page_size`), then watches from the list's resourceVersion with bookmarks, and ships every ADDED and MODIFIED
event as one record (a MODIFIED event is the same Event seen again: a higher `count`, a new `last_timestamp`).

Position and exactly-once:
  * Each batch carries the resourceVersion reached after it; it is checkpointed (state dir, like file offsets)
    only when every output acknowledged the batch, and the leader writes that acknowledged resourceVersion into
    the Lease (annotation `logagent.io/events-resource-version`) on every renew, so that the agent that takes over
    on another node resumes from it.
  * Document ids come from the event's uid and resourceVersion (`source_id` kube-events, position `event_key`), the
    same on every node: what a new leader ships again between the last handed-over position and the old leader's
    death is stored once by Elasticsearch.
  * After `410 Gone` (the position was compacted away) or with no position, the input lists again; listed events at
    or below the acknowledged resourceVersion are not shipped again (resourceVersions are etcd revisions, which
    only grow), the rest are, with the same ids.
  * DELETED (an Event's one-hour TTL) is not shipped: it was shipped when it was created.
Filters (`types`, `namespaces`, `reasons`, `kinds` of the involved object) drop events before shipping; they are
counted in `logagent_dropped_records_total{reason="filtered"}` and their position still advances.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from logagent import metrics
from logagent.backoff import Backoff
from logagent.component import Context, Emit, Input
from logagent.config import Section
from logagent.kubernetes.access import ApiAccess, parse_access
from logagent.kubernetes.api import ApiError, Gone
from logagent.kubernetes.client import ApiClient, node_name
from logagent.kubernetes.lease import LeaderElector
from logagent.record import Batch, Record

log = logging.getLogger("logagent.inputs.kube_events")

RV_ANNOTATION = "logagent.io/events-resource-version"
CHECKPOINT_KEY = "events"
SOURCE_ID = "kube-events"


@dataclass(frozen=True)
class KubeEventsSettings:
    access: ApiAccess
    tag: str
    identity: str | None
    lease_namespace: str
    lease_name: str
    lease_duration: float
    renew_deadline: float
    retry_period: float
    read_from: str
    types: frozenset[str]
    namespaces: frozenset[str]
    reasons: frozenset[str]
    kinds: frozenset[str]
    page_size: int
    watch_timeout: float
    request_timeout: float
    backoff_initial: float
    backoff_max: float


def _rv_int(rv: str | None) -> int | None:
    try:
        return int(rv) if rv is not None else None
    except ValueError:
        return None


def event_record(ev: dict[str, Any], watch_type: str) -> Record:
    meta = ev.get("metadata") or {}
    inv = ev.get("involvedObject") or ev.get("regarding") or {}
    src = ev.get("source") or {}
    rv, uid = str(meta.get("resourceVersion") or ""), str(meta.get("uid") or "")
    rec: Record = {
        "message": ev.get("message") or ev.get("note") or "",
        "reason": ev.get("reason"), "type": ev.get("type"), "count": ev.get("count") or 1,
        "first_timestamp": ev.get("firstTimestamp"), "last_timestamp": ev.get("lastTimestamp"),
        "event_time": ev.get("eventTime"),
        "time": ev.get("lastTimestamp") or ev.get("eventTime") or meta.get("creationTimestamp"),
        "involved_object": {k: inv.get(f) for k, f in (("kind", "kind"), ("namespace", "namespace"),
                                                       ("name", "name"), ("uid", "uid"),
                                                       ("field_path", "fieldPath"), ("api_version", "apiVersion"))
                            if inv.get(f)},
        "source": {k: v for k, v in (("component", src.get("component") or ev.get("reportingComponent")),
                                     ("host", src.get("host") or ev.get("reportingInstance"))) if v},
        "namespace": meta.get("namespace"), "event_name": meta.get("name"), "event_uid": uid,
        "resource_version": rv, "watch_type": watch_type, "event_key": f"{uid}:{rv}",
    }
    return rec


class KubeEventsInput(Input[KubeEventsSettings]):
    settings: KubeEventsSettings

    @classmethod
    def parse_settings(cls, section: Section) -> KubeEventsSettings:
        s = KubeEventsSettings(
            access=parse_access(section),
            tag=section.str("tag", "kube-events"),
            identity=section.str("identity", None),
            lease_namespace=section.str("lease_namespace", "logagent"),
            lease_name=section.str("lease_name", "logagent-kube-events"),
            lease_duration=section.duration("lease_duration", 15.0),
            renew_deadline=section.duration("renew_deadline", 10.0),
            retry_period=section.duration("retry_period", 2.0),
            read_from=section.str("read_from", "head", choices=("head", "tail")),
            types=frozenset(section.str_list("types", [])),
            namespaces=frozenset(section.str_list("namespaces", [])),
            reasons=frozenset(section.str_list("reasons", [])),
            kinds=frozenset(section.str_list("kinds", [])),
            page_size=section.int("page_size", 500, min=1),
            watch_timeout=section.duration("watch_timeout", 300.0),
            request_timeout=section.duration("request_timeout", 10.0),
            backoff_initial=section.duration("backoff_initial", 0.5),
            backoff_max=section.duration("backoff_max", 30.0),
        )
        if not 0 < s.retry_period < s.renew_deadline < s.lease_duration:
            raise section.error("expected 0 < retry_period < renew_deadline < lease_duration", "lease_duration")
        if s.backoff_initial <= 0:
            raise section.error("must be more than 0", "backoff_initial")
        section.done()
        return s

    def __init__(self, name: str, settings: KubeEventsSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.identity = settings.identity or node_name(None)
        self.elector: LeaderElector | None = None
        self.tracker = ctx.checkpoints.tracker(name)
        saved = self.tracker.committed.get(CHECKPOINT_KEY)
        self.acked: str | None = saved if isinstance(saved, str) else None
        self.tracker.listeners.append(self._on_ack)
        self.leading = asyncio.Event()
        self.shipped = 0
        self.relists = 0
        self._stop = asyncio.Event()
        self._last_pos: str | None = self.acked  # the position the last token or set() carried
        self._filtered = metrics.DROPPED.labels(component=name, reason="filtered")

    def _on_ack(self, key: str, position: Any) -> None:
        if key == CHECKPOINT_KEY and isinstance(position, str):
            self.acked = position

    def _newer(self, a: str | None, b: str | None) -> str | None:
        ia, ib = _rv_int(a), _rv_int(b)
        if ia is None or ib is None:
            return a or b
        return a if ia >= ib else b

    async def stop(self) -> None:
        self._stop.set()

    # -- leadership -----------------------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        s = self.settings
        try:
            creds = s.access.credentials()
        except (ValueError, OSError) as e:
            metrics.ERRORS.labels(component=self.name, kind="api_config").inc()
            self.log.error("kubernetes API credentials unusable; cluster events are not read", extra={"error": str(e)})
            return
        if creds is None:
            self.log.error("not in a cluster and no api_server or kubeconfig set; cluster events are not read")
            return
        client = ApiClient(creds, s.request_timeout)
        self.elector = LeaderElector(
            client, s.lease_namespace, s.lease_name, self.identity, lease_duration=s.lease_duration,
            renew_deadline=s.renew_deadline, retry_period=s.retry_period,
            annotations=lambda: {RV_ANNOTATION: self.acked} if self.acked else {})
        try:
            while not self._stop.is_set():
                if not await self.elector.acquire(self._stop):
                    break
                start = self._newer(self.elector.annotation(RV_ANNOTATION), self.acked)
                self.acked = self._last_pos = start
                self.log.info("leading: collecting cluster events", extra={"identity": self.identity,
                                                                           "resource_version": start})
                self.leading.set()
                tasks = [asyncio.create_task(self._collect(client, emit, start), name=f"{self.name}-watch"),
                         asyncio.create_task(self.elector.hold(), name=f"{self.name}-lease"),
                         asyncio.create_task(self._stop.wait())]
                try:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in tasks:
                        t.cancel()
                    for t in tasks:
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await t
                    self.leading.clear()
                if tasks[0] in done and not tasks[0].cancelled() and tasks[0].exception() is not None:
                    self.log.error("cluster events collection failed", exc_info=tasks[0].exception())
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.elector.release(), s.request_timeout)
            await client.close()

    # -- list + watch ---------------------------------------------------------------------------------------
    async def _collect(self, client: ApiClient, emit: Emit, rv: str | None) -> None:
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        while True:
            try:
                if rv is None:
                    rv = await self._list(client, emit)
                rv = await self._watch(client, emit, rv)
                backoff.reset()
            except Gone:
                self.log.info("events resourceVersion expired (410); listing again", extra={"resource_version": rv})
                metrics.ERRORS.labels(component=self.name, kind="watch_gone").inc()
                rv = None
            except (asyncio.TimeoutError, OSError, ApiError, ValueError) as e:  # HttpError is an OSError
                delay = backoff.next()
                metrics.ERRORS.labels(component=self.name, kind="api_unavailable").inc()
                self.log.warning("events request failed; retrying", extra={
                    "error": f"{type(e).__name__}: {str(e)[:200]}", "retry_in": round(delay, 3)})
                await asyncio.sleep(delay)
            except Exception:
                # whatever the server sent, collection must go on: log it loudly, list again after a pause
                delay = backoff.next()
                metrics.ERRORS.labels(component=self.name, kind="watch_failed").inc()
                self.log.exception("events watch failed unexpectedly; listing again", extra={"retry_in": delay})
                rv = None
                await asyncio.sleep(delay)

    async def _list(self, client: ApiClient, emit: Emit) -> str:
        """List every event; ship those newer than the acknowledged position. The list's resourceVersion."""
        self.relists += 1
        first_ever = self.acked is None  # neither this agent nor a previous leader acknowledged anything
        floor = _rv_int(self.acked)
        params = {"limit": str(self.settings.page_size)}
        rv = "0"
        while True:
            doc = await client.request("GET", "/api/v1/events", params=params)
            rv = str((doc.get("metadata") or {}).get("resourceVersion") or rv)
            items = doc.get("items") or []
            if not (first_ever and self.settings.read_from == "tail"):
                fresh = [ev for ev in items if floor is None or (_rv_int(
                    (ev.get("metadata") or {}).get("resourceVersion")) or 0) > floor]
                await self._ship(emit, [("ADDED", ev) for ev in fresh], rv)
            cont = (doc.get("metadata") or {}).get("continue")
            if not cont:
                break
            params = {"limit": str(self.settings.page_size), "continue": cont}
        if self.tracker.outstanding(CHECKPOINT_KEY) == 0 and self._newer(rv, self.acked) == rv:
            self.tracker.set(CHECKPOINT_KEY, rv)
            self.acked = self._last_pos = rv
        return rv

    async def _watch(self, client: ApiClient, emit: Emit, rv: str) -> str:
        s = self.settings
        params = {"watch": "1", "resourceVersion": rv, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(int(max(1, s.watch_timeout)))}
        async with client.http().stream("GET", f"{client.creds.server}/api/v1/events?{urlencode(params)}",
                                        headers=client.tokens.header(),
                                        read_timeout=s.watch_timeout + s.request_timeout) as resp:
            if resp.status == 410:
                raise Gone("410 Gone")
            if resp.status != 200:
                raise ApiError(f"HTTP {resp.status} watching events: {(await resp.read())[:200]!r}")
            buf = b""
            async for chunk in resp.chunks():
                buf += chunk
                if b"\n" not in buf:
                    continue
                *lines, buf = buf.split(b"\n")
                changes: list[tuple[str, dict[str, Any]]] = []
                for line in lines:
                    if not line.strip():
                        continue
                    ev = orjson.loads(line)
                    kind, obj = ev.get("type"), ev.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            raise Gone(str(obj.get("message")))
                        raise ApiError(f"watch error: {obj.get('code')} {obj.get('message')}")
                    rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                    if kind in ("ADDED", "MODIFIED"):
                        changes.append((kind, obj))
                await self._ship(emit, changes, rv)
        return rv

    def _wanted(self, ev: dict[str, Any]) -> bool:
        s = self.settings
        inv = ev.get("involvedObject") or ev.get("regarding") or {}
        return ((not s.types or ev.get("type") in s.types)
                and (not s.namespaces or (ev.get("metadata") or {}).get("namespace") in s.namespaces)
                and (not s.reasons or ev.get("reason") in s.reasons)
                and (not s.kinds or inv.get("kind") in s.kinds))

    async def _ship(self, emit: Emit, changes: list[tuple[str, dict[str, Any]]], rv: str) -> None:
        """One batch for what one read brought, carrying the position reached after it."""
        records = [event_record(ev, kind) for kind, ev in changes if self._wanted(ev)]
        if len(records) < len(changes):
            self._filtered.inc(len(changes) - len(records))
        if not records:
            if self.tracker.outstanding(CHECKPOINT_KEY) == 0 and self._newer(rv, self.acked) == rv:
                self.tracker.set(CHECKPOINT_KEY, rv)  # bookmarks, filtered events: nothing to wait for
                self.acked = self._last_pos = rv
            return
        meta = {"input": self.name, "source": "kube-events", "source_id": SOURCE_ID, "pos_key": "event_key"}
        size = self.ctx.config.limits.batch_max_records
        for i in range(0, len(records), size):
            part = records[i:i + size]
            # Tokens commit in order: only the last part may carry the new position.
            last = i + size >= len(records)
            pos = rv if last else self._last_pos
            self.shipped += len(part)
            await emit(Batch(self.settings.tag, part, meta, self.tracker.token(CHECKPOINT_KEY, pos),
                             sum(len(r["message"]) for r in part)))
            if last:
                self._last_pos = rv
