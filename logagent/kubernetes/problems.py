"""`node_problems` stage: kernel incidents reported to Kubernetes, as Node Problem Detector does.

The stage takes no batches of its own (`match: []` is its default; batches routed to it pass unchanged). It offers
`ctx.services.node_problems`, which the `signatures` stage calls with the event records of every incident it
raises. That is the only way in: conditions and Events come from incidents the kernel rules raised on
kernel-originated records, never from a record that merely looks like an incident. An incident with a headline
written from userspace (`injected`: logger, a write to /dev/kmsg) is counted
(`logagent_dropped_records_total{reason="injected"}`) and not reported.

For every incident:
  * an Event on the Node (type Warning, reason = signature, message = headline), in `event_namespace`;
  * for an OOM kill attributed to a pod: an Event on that Pod (involvedObject with its uid and the container's
    fieldPath), message = the container, the headline and the last lines the container wrote;
  * condition types configured for its signatures turn True (`conditions.py`), patched at once on nodes/status.
Every condition is patched again each `heartbeat_interval`. Counts: `logagent_node_problems_total{reason}`
(NPD's problem_counter) and `logagent_node_problem_condition{type,reason}` (NPD's problem_gauge).

Nothing here waits on the pipeline's path: `submit` only updates in-memory state; requests run in the stage's
own tasks with backoff (`events.py` for Events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from logagent import metrics
from logagent.backoff import Backoff
from logagent.component import Context, Stage
from logagent.config import Section
from logagent.kubernetes.access import ApiAccess, parse_access
from logagent.kubernetes.api import ApiError
from logagent.kubernetes.client import ApiClient, node_name
from logagent.kubernetes.conditions import ConditionRule, ConditionState, parse_condition_rules, read_boot_id, trim
from logagent.kubernetes.events import SMP, EventRecorder
from logagent.record import Batch, Record

log = logging.getLogger("logagent.kubernetes.problems")

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
EVENT_MESSAGE_MAX = 1024  # events.k8s.io's note limit; core/v1 messages are kept to it too


@dataclass(frozen=True)
class ProblemSettings:
    access: ApiAccess
    node_name: str | None
    conditions: tuple[ConditionRule, ...]
    heartbeat_interval: float
    boot_id_path: str
    node_events: bool
    pod_events: bool
    event_namespace: str
    series_window: float
    events_burst: int
    events_qps: float
    max_series: int
    request_timeout: float
    backoff_initial: float
    backoff_max: float


def pod_event_message(rec: Record, container: str) -> str:
    """`container <c>: <headline>` then the container's last lines, newest kept when it must be cut."""
    head = f"container {container}: {trim(str(rec.get('first_line') or rec.get('message') or ''), 400)}"
    lines = [str(x) for x in rec.get("container_last_lines") or ()]
    if not lines:
        return head
    out = head + "\nlast lines:"
    budget = EVENT_MESSAGE_MAX - len(out.encode()) - 1
    kept: list[str] = []
    for line in reversed(lines):
        line = line[:300]
        cost = len(line.encode()) + 1
        if cost > budget:
            break
        kept.append(line)
        budget -= cost
    return out + "".join("\n" + x for x in reversed(kept))


class NodeProblems(Stage[ProblemSettings]):
    settings: ProblemSettings

    @classmethod
    def parse_settings(cls, section: Section) -> ProblemSettings:
        s = ProblemSettings(
            access=parse_access(section),
            node_name=section.str("node_name", None),
            conditions=parse_condition_rules(section),
            heartbeat_interval=section.duration("heartbeat_interval", 60.0),
            boot_id_path=section.str("boot_id_path", BOOT_ID_PATH),
            node_events=section.bool("node_events", True),
            pod_events=section.bool("pod_events", True),
            event_namespace=section.str("event_namespace", "default"),
            series_window=section.duration("series_window", 600.0),
            events_burst=section.int("events_burst", 25, min=1),
            events_qps=section.float("events_qps", 1 / 30, min=0.0001),
            max_series=section.int("max_series", 1000, min=1),
            request_timeout=section.duration("request_timeout", 10.0),
            backoff_initial=section.duration("backoff_initial", 0.5),
            backoff_max=section.duration("backoff_max", 60.0),
        )
        if s.heartbeat_interval <= 0:
            raise section.error("must be more than 0", "heartbeat_interval")
        if s.backoff_initial <= 0:
            raise section.error("must be more than 0", "backoff_initial")
        section.done()
        return s

    def __init__(self, name: str, settings: ProblemSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.node = node_name(settings.node_name)
        self.client: ApiClient | None = None
        self.recorder: EventRecorder | None = None
        self.state: ConditionState | None = None
        self.patches = 0  # successful nodes/status patches
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._problems: dict[str, Any] = {}
        self._injected = metrics.DROPPED.labels(component=name, reason="injected")

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        try:
            creds = s.access.credentials()
        except (ValueError, OSError) as e:
            metrics.ERRORS.labels(component=self.name, kind="api_config").inc()
            log.error("kubernetes API credentials unusable; node problems are not reported", extra={"error": str(e)})
            return
        if creds is None:
            log.warning("not in a cluster and no api_server or kubeconfig set; node problems are not reported")
            return
        self.client = ApiClient(creds, s.request_timeout)
        self.recorder = EventRecorder(self.client, self.node, series_window=s.series_window, burst=s.events_burst,
                                      qps=s.events_qps, max_series=s.max_series, backoff_initial=s.backoff_initial,
                                      backoff_max=s.backoff_max)
        if s.conditions:
            try:
                boot_id = read_boot_id(s.boot_id_path)
                self.state = ConditionState.load(self.ctx.config.state_dir, s.conditions, boot_id)
            except (OSError, ValueError) as e:
                metrics.ERRORS.labels(component=self.name, kind="node_conditions").inc()
                log.error("node conditions disabled: boot id or state unreadable", extra={"error": str(e)})
            else:
                if self.state.reset_by_reboot:
                    log.info("new boot: node conditions reset to False", extra={"boot_id": boot_id})
                self._set_gauges()
                self._tasks.append(asyncio.create_task(self._conditions_loop(), name=f"{self.name}-conditions"))
        self._tasks.append(asyncio.create_task(self.recorder.run(), name=f"{self.name}-events"))
        self.ctx.services.node_problems = self.submit
        if self.state is not None:
            self.ctx.services.node_problems_open = self.open_problem
        log.info("reporting node problems", extra={"server": creds.server, "node": self.node,
                                                   "conditions": [r.type for r in s.conditions]})

    async def stop(self) -> None:
        if self.ctx.services.node_problems == self.submit:
            self.ctx.services.node_problems = None
        if self.ctx.services.node_problems_open == self.open_problem:
            self.ctx.services.node_problems_open = None
        if self.recorder is not None and self.recorder.pending:
            await self.recorder.flush(2.0)
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        if self.client is not None:
            await self.client.close()

    def process(self, batch: Batch) -> tuple[Batch, ...]:
        return (batch,)

    # -- incidents in ---------------------------------------------------------------------------------------
    def submit(self, records: list[Record]) -> None:
        """Event records of incidents the signatures stage raised. Synchronous; never waits."""
        for rec in records:
            try:
                self._one(rec)
            except Exception:
                metrics.ERRORS.labels(component=self.name, kind="node_problem").inc()
                log.exception("reporting a node problem failed", extra={"signature": rec.get("signature")})

    def open_problem(self, summary: dict[str, Any]) -> None:
        """A permanent problem in a report still open: its condition is set now; the Event and the count come
        when the report closes (`submit`)."""
        if summary.get("injected"):
            return
        try:
            self._conditions_from(summary)
        except Exception:
            metrics.ERRORS.labels(component=self.name, kind="node_problem").inc()
            log.exception("setting a node condition failed", extra={"signature": summary.get("signature")})

    def _conditions_from(self, rec: Record) -> None:
        if self.state is None:
            return
        reason = str(rec.get("signature") or "unknown")
        sigs = rec.get("signatures") or [reason]
        fields = rec.get("fields") if isinstance(rec.get("fields"), dict) else {}
        headline = str(rec.get("first_line") or rec.get("message") or reason)
        changed = self.state.apply([str(x) for x in sigs], fields or {}, headline)
        if changed:
            log.info("node condition set", extra={"conditions": changed, "reason": reason})
            self._set_gauges()
            self._changed.set()

    def _one(self, rec: Record) -> None:
        reason = str(rec.get("signature") or "unknown")
        if rec.get("injected"):
            # written by a process (logger, a write to /dev/kmsg), not by the kernel: shipped, never reported
            self._injected.inc()
            return
        counter = self._problems.get(reason)
        if counter is None:
            counter = self._problems[reason] = metrics.NODE_PROBLEMS.labels(reason=reason)
        counter.inc()
        headline = str(rec.get("first_line") or rec.get("message") or reason)
        assert self.recorder is not None
        if self.settings.node_events:
            node_ref = {"kind": "Node", "name": self.node, "uid": self.node, "apiVersion": "v1"}
            self.recorder.record(self.settings.event_namespace, node_ref, reason, trim(headline, EVENT_MESSAGE_MAX))
        kube = rec.get("kubernetes") if isinstance(rec.get("kubernetes"), dict) else None
        if (self.settings.pod_events and rec.get("category") == "oom" and kube and kube.get("pod_uid")
                and kube.get("namespace") and kube.get("pod")):
            container = str(kube.get("container") or "")
            pod_ref = {"kind": "Pod", "namespace": kube["namespace"], "name": kube["pod"], "uid": kube["pod_uid"],
                       "apiVersion": "v1"}
            if container:
                pod_ref["fieldPath"] = f"spec.containers{{{container}}}"
            self.recorder.record(kube["namespace"], pod_ref, reason, pod_event_message(rec, container or "?"))
        self._conditions_from(rec)

    # -- conditions out -------------------------------------------------------------------------------------
    def _set_gauges(self) -> None:
        assert self.state is not None
        for r in self.settings.conditions:
            cond = self.state.conditions[r.type]
            for reason in (r.ok_reason, *r.signatures):
                value = 1 if cond["status"] == "True" and cond["reason"] == reason else 0
                metrics.NODE_PROBLEM_CONDITION.labels(type=r.type, reason=reason).set(value)

    async def _conditions_loop(self) -> None:
        assert self.client is not None and self.state is not None
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        path = f"/api/v1/nodes/{self.node}/status"
        while True:
            self._changed.clear()
            try:
                await self.client.request("PATCH", path, self.state.patch_body(), SMP)
                self.patches += 1
                backoff.reset()
                wait = self.settings.heartbeat_interval
            except asyncio.CancelledError:
                raise
            except (asyncio.TimeoutError, OSError, ApiError) as e:
                wait = backoff.next()
                metrics.ERRORS.labels(component=self.name, kind="node_status_patch").inc()
                log.warning("patching node conditions failed; retrying",
                            extra={"node": self.node, "error": f"{type(e).__name__}: {str(e)[:200]}",
                                   "retry_in": round(wait, 3)})
                await asyncio.sleep(wait)  # a change meanwhile waits for the retry too: it is in the next body
                continue
            except Exception:
                wait = backoff.next()
                metrics.ERRORS.labels(component=self.name, kind="node_status_patch").inc()
                log.exception("patching node conditions failed unexpectedly; retrying", extra={"node": self.node})
                await asyncio.sleep(wait)
                continue
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
