"""Component states and supervision: a task that fails is restarted with backoff, and everybody can see it.

Every input, stage and output (and the pipeline's router) has a state:

    starting -> running <-> degraded        (degraded: works, but not as configured: e.g. polling without inotify)
                  |  ^
                  v  |
               restarting                  (its task failed or ended early; restarted after a backoff)
                  ...
               stopped                     (shutdown, or replaced by a reload)

The state is exported as `logagent_component_state{component,kind,state}` (1 for the current state, 0 for the
others), `/readyz` answers 503 naming every component that is restarting (and lists degraded ones, still
answering 200: records flow), and `/healthz` lists components that are not running in its body.

How a component reports itself degraded (the file input when inotify cannot be had)::

    self.report_degraded("inotify unavailable (EMFILE): polling every 1s")   # logged once per change of reason
    ...
    self.report_recovered()                                                  # back to running

(`Component.report_degraded` / `report_recovered` in logagent.component; they are no-ops outside a pipeline.)

Supervision (`Supervisor.run`): the task's coroutine is run; if it raises, or returns while the pipeline is not
stopping, the failure is logged with its traceback, counted in `logagent_component_restarts_total`, the state
becomes `restarting` and, after a backoff (0.5 s doubling to 30 s, reset once a run lasted 60 s), the component's
`restart` hook is called (inputs are rebuilt from their config and resume from their acknowledged positions)
and it runs again. It never gives up: a component that cannot run stays `restarting`, visibly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from logagent import metrics
from logagent.metricslib import Counter, Gauge

log = logging.getLogger("logagent.supervisor")

STARTING, RUNNING, DEGRADED, RESTARTING, STOPPED = "starting", "running", "degraded", "restarting", "stopped"
STATES = (STARTING, RUNNING, DEGRADED, RESTARTING, STOPPED)

COMPONENT_STATE = Gauge(
    "logagent_component_state", "1 for the state each component is in (starting, running, degraded, restarting, "
    "stopped), 0 for the others", ["component", "kind", "state"], registry=metrics.REGISTRY)
RESTARTS = Counter("logagent_component_restarts_total", "Component tasks restarted after a failure",
                   ["component", "kind"], registry=metrics.REGISTRY)

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 30.0
HEALTHY_RUN = 60.0  # a run that lasted this long resets the backoff


@dataclass
class ComponentStatus:
    kind: str
    name: str
    state: str = STARTING
    reason: str = ""
    since: float = 0.0  # monotonic time of the last state change
    restarts: int = 0


class Health:
    """The states of all components of one pipeline (in `ctx.services.health`)."""

    def __init__(self) -> None:
        self.components: dict[tuple[str, str], ComponentStatus] = {}

    def set(self, kind: str, name: str, state: str, reason: str = "") -> None:
        st = self.components.get((kind, name))
        if st is None:
            st = self.components[(kind, name)] = ComponentStatus(kind, name)
            old = None
        else:
            old = st.state
        if old == state and st.reason == reason:
            return
        st.state, st.reason, st.since = state, reason, time.monotonic()
        for s in STATES:
            COMPONENT_STATE.labels(component=name, kind=kind, state=s).set(1 if s == state else 0)

    def degraded(self, kind: str, name: str, reason: str) -> None:
        st = self.components.get((kind, name))
        if st is not None and st.state == DEGRADED and st.reason == reason:
            return
        if st is not None and st.state in (RESTARTING, STOPPED):
            return  # the supervisor's state wins; the component reports again when it runs
        log.warning("component degraded", extra={"component": name, "kind": kind, "reason": reason})
        self.set(kind, name, DEGRADED, reason)

    def recovered(self, kind: str, name: str) -> None:
        st = self.components.get((kind, name))
        if st is not None and st.state == DEGRADED:
            log.info("component recovered", extra={"component": name, "kind": kind, "was": st.reason})
            self.set(kind, name, RUNNING)

    def remove(self, kind: str, name: str) -> None:
        """A component gone for good (reload removed it): its series leave /metrics."""
        if self.components.pop((kind, name), None) is not None:
            for s in STATES:
                try:
                    COMPONENT_STATE.remove(name, kind, s)
                except KeyError:
                    pass

    def not_running(self) -> dict[str, str]:
        """`kind:name` -> "state: reason" for every component not plainly running."""
        return {f"{st.kind}:{st.name}": f"{st.state}: {st.reason}" if st.reason else st.state
                for st in self.components.values() if st.state in (DEGRADED, RESTARTING)}

    def restarting(self) -> dict[str, str]:
        return {k: v for k, v in self.not_running().items() if v.startswith(RESTARTING)}

    def degraded_components(self) -> dict[str, str]:
        return {k: v for k, v in self.not_running().items() if v.startswith(DEGRADED)}


class Supervisor:
    def __init__(self, health: Health, stopping: Callable[[], bool]) -> None:
        self.health = health
        self.stopping = stopping

    async def run(self, kind: str, name: str, body: Callable[[], Awaitable[None]],
                  restart: Callable[[], Awaitable[Callable[[], Awaitable[None]]]] | None = None,
                  stopping: Callable[[], bool] | None = None) -> None:
        """Run `body()` until it returns while stopping (the pipeline's, or this component's `stopping`); after a
        failure wait the backoff, get the next body from `restart` (or run the same one again) and run it.
        Cancellation ends it."""
        stop = stopping or self.stopping
        backoff = INITIAL_BACKOFF
        last_reason: str | None = None  # a failure like the last one is logged without its traceback again
        while True:
            self.health.set(kind, name, RUNNING)
            started = time.monotonic()
            reason = await self._once(kind, name, body, stop, quiet=last_reason)
            if reason is None:
                self.health.set(kind, name, STOPPED)
                return
            last_reason = reason
            metrics.ERRORS.labels(component=name, kind=f"{kind}_crashed").inc()
            RESTARTS.labels(component=name, kind=kind).inc()
            if time.monotonic() - started >= HEALTHY_RUN:
                backoff = INITIAL_BACKOFF
                last_reason = None
            st = self.health.components.get((kind, name))
            if st is not None:
                st.restarts += 1
            while True:
                self.health.set(kind, name, RESTARTING, reason)
                log.warning("restarting component", extra={"component": name, "kind": kind,
                                                           "delay_s": round(backoff, 2), "reason": reason})
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                if stop():
                    self.health.set(kind, name, STOPPED)
                    return
                if restart is None:
                    break
                try:
                    body = await restart()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # e.g. the input cannot be built again: keep trying, visibly
                    log.exception("component restart failed", extra={"component": name, "kind": kind})
                    reason = f"restart failed: {type(e).__name__}: {e}"[:300]

    async def _once(self, kind: str, name: str, body: Callable[[], Awaitable[None]],
                    stop: Callable[[], bool], quiet: str | None = None) -> str | None:
        """None when the body ended as it should (while stopping), else why it failed."""
        try:
            await body()
        except asyncio.CancelledError:
            self.health.set(kind, name, STOPPED)
            raise
        except Exception as e:
            if stop():
                log.exception("component failed while stopping", extra={"component": name, "kind": kind})
                return None
            reason = f"{type(e).__name__}: {e}"[:300]
            if reason == quiet:  # the same failure again: its traceback was logged the first time
                log.error("component failed again; restarting it", extra={"component": name, "kind": kind,
                                                                         "reason": reason})
            else:
                log.exception("component failed; restarting it", extra={"component": name, "kind": kind})
            return reason
        if stop():
            return None
        log.error("component task ended unexpectedly; restarting it", extra={"component": name, "kind": kind})
        return "ended unexpectedly"
