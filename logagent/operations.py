"""The operational side of a running agent: health and readiness, the HTTP server, systemd notifications, pidfile.

- `health()` (for /healthz and the systemd watchdog): the event loop is responsive and the pipeline's own tasks
  (router, checkpoint writer) have not ended. Components that are not running are listed in the reason but do
  not make the process unhealthy: they are being restarted, and killing the process would not help them.
- `readiness()` (for /readyz): started, not stopping, every output reachable or buffering below its limit, and
  no component restarting. A 503 names each component that is not ready (`input:containers`: `restarting:
  OSError: ...`); degraded components (`input:containers`: `degraded: inotify unavailable: polling`) are listed
  under `degraded` with a 200, since records still flow.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from logagent import allocator

if TYPE_CHECKING:  # imported when `start` runs: a `logagent check` never loads the HTTP server
    from logagent.http import HealthServer, LoopHeartbeat
    from logagent.pipeline import Pipeline
    from logagent.sdnotify import Notifier

log = logging.getLogger("logagent.pipeline")


@dataclass
class _State:
    server: HealthServer | None = None
    heartbeat: LoopHeartbeat | None = None
    notifier: Notifier | None = None
    stall_timeout: float = 10.0
    watchdog_task: asyncio.Task[None] | None = None
    pidfile: str | None = None


class Operations:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.s = _State()

    @property
    def notifier(self) -> Notifier | None:
        return self.s.notifier

    # -- checks ---------------------------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        p = self.p
        hb = self.s.heartbeat
        if hb is not None and hb.age() > self.s.stall_timeout:
            return False, f"event loop stalled: last heartbeat {hb.age():.1f}s ago"
        if not p.stopping:
            for what, task in (("router", p._router_task), ("checkpoints", p._checkpoint_task)):
                if task is not None and task.done():
                    return False, f"{what} task ended"
            others = p.health_state.not_running()
            if others:
                return True, "ok; " + "; ".join(f"{k} {v}" for k, v in sorted(others.items()))
        return True, "ok"

    def readiness(self) -> tuple[bool, dict[str, str]]:
        details, _ = self.readiness_details()
        return not details, details

    def readiness_details(self) -> tuple[dict[str, str], dict[str, str]]:
        """(not ready: component -> why, degraded: component -> why)."""
        p = self.p
        if not p.started.is_set():
            return {"pipeline": "starting"}, {}
        if p.stopping:
            return {"pipeline": "stopping"}, {}
        not_ready: dict[str, str] = dict(p.health_state.restarting())
        for name, ro in p.outputs.items():
            try:
                ok = ro.output.ready()
            except Exception as e:
                ok = False
                log.warning("output ready() failed", extra={"output": name, "error": repr(e)})
            if not ok:
                not_ready.setdefault(f"output:{name}", "backend unreachable or buffer at its limit")
        return not_ready, p.health_state.degraded_components()

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        from logagent.http import HealthServer, LoopHeartbeat, parse_server_settings
        from logagent.sdnotify import Notifier

        s = self.s
        s.notifier = Notifier()
        s.heartbeat = heartbeat = LoopHeartbeat()
        heartbeat.start()
        settings = parse_server_settings(self.p.config.http)
        s.stall_timeout = settings.stall_timeout
        if settings.enabled:
            server = HealthServer(settings, self.health, self.readiness, self.readiness_details)
            await server.start()  # ListenError: the agent does not start (logagent.cli says why)
            s.server = server

    def ready(self) -> None:
        from logagent.reload import write_pidfile
        from logagent.sdnotify import feed_watchdog, watchdog_interval

        s = self.s
        s.pidfile = write_pidfile(self.p.config.state_dir)
        self.p.reloader.started()
        if s.notifier is None:  # `start` did not run
            return
        s.notifier.ready(f"running: {len(self.p.inputs)} inputs, {len(self.p.outputs)} outputs")
        allocator.trim()  # start-up's temporaries back to the kernel now, not at the trim thread's first round
        interval = watchdog_interval()
        if interval is not None:
            s.watchdog_task = asyncio.create_task(feed_watchdog(s.notifier, interval, self.health), name="watchdog")

    async def stopping(self) -> None:
        if self.s.notifier is not None and not self.p.reloader.restarting:  # a restart stays "reloading"
            self.s.notifier.stopping("shutting down: draining in-flight batches")
        await self.p.reloader.finish(self.p.config.grace_period)

    async def stop(self) -> None:
        from logagent.reload import remove_pidfile

        s = self.s
        if s.watchdog_task is not None and not s.watchdog_task.done():
            s.watchdog_task.cancel()
        self.p.reloader.cancel()
        if s.heartbeat is not None:
            s.heartbeat.stop()
        if s.server is not None:
            await s.server.stop()
        if s.pidfile is not None:
            remove_pidfile(s.pidfile)
