"""The self-monitoring HTTP server: `/metrics`, `/healthz`, `/readyz`.

`/metrics` is the Prometheus text format of `logagent.metrics.REGISTRY` (pipeline counters plus process CPU and
memory). `/healthz` answers "is this process worth keeping": the event loop still runs its heartbeat and the
pipeline's own tasks are alive (components that are not running are named in its `reason`). `/readyz` answers "can
it take more work": the pipeline started, every output is reachable or buffering below its limit and no component
is restarting; a 503 names each component that is not ready (`"not_ready": {"input:app": "restarting: OSError:
..."}`). Degraded components (working, not as configured: `report_degraded` in logagent.component) are listed
under `"degraded"` (only when there are any), with a 200.

This server only reads state. It must never block the event loop (no file or network I/O in a handler) and never
expose record contents: a scrape costs the pipeline nothing it would notice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from logagent import metrics
from logagent.config import Section

log = logging.getLogger("logagent.http")

DEFAULT_ADDRESS = "127.0.0.1:2020"


@dataclass(frozen=True)
class ServerSettings:
    """The agent's own http server (`http:`); the outputs' client settings are `logagent.delivery.HttpSettings`."""

    enabled: bool
    host: str  # "" binds every interface
    port: int  # 0 lets the kernel choose (tests); the bound port is logged
    stall_timeout: float  # /healthz fails when the loop heartbeat is older than this


def parse_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:2020' / '[::1]:2020' / ':2020' -> (host, port). Raises ValueError."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError
    port = int(port_text)
    if port > 65535:
        raise ValueError
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError  # an IPv6 literal needs brackets, or the port is ambiguous
    return host, port


def parse_server_settings(section: Section) -> ServerSettings:
    """`address: HOST:PORT`, or `address: HOST` plus `port: N` — the second form takes a bare IPv6 literal, which
    is what the DaemonSet gets from the downward API (`status.podIP`) on IPv6 clusters."""
    if section.has("port"):
        port = section.int("port", min=0, max=65535)
        host = section.str("address", DEFAULT_ADDRESS.rpartition(":")[0]).strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or (host.count(":") == 1 and host.rpartition(":")[2].isdigit()):
            raise section.error(f"with port set, address is a host or IP without a port, got {host!r}", "address")
    else:
        address = section.str("address", DEFAULT_ADDRESS)
        try:
            host, port = parse_address(address)
        except ValueError:
            raise section.error(f'expected HOST:PORT like "127.0.0.1:2020" or "[::1]:2020", got {address!r}',
                                "address") from None
    settings = ServerSettings(
        enabled=section.bool("enabled", True),
        host=host,
        port=port,
        stall_timeout=section.duration("stall_timeout", 10.0),
    )
    if settings.stall_timeout < 1.0:
        raise section.error("must be at least 1s: shorter stalls are normal under load", "stall_timeout")
    section.done()
    return settings


class LoopHeartbeat:
    """A task that ticks every `interval` seconds; the age of its last tick tells whether the loop is responsive.

    A loop blocked by a synchronous call or starved by a task that never yields stops ticking, so the age grows
    past the stall timeout and both `/healthz` and the systemd watchdog notice.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.last_tick = time.monotonic()
        self.max_lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.last_tick = time.monotonic()
        self._task = asyncio.create_task(self._beat(), name="heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.max_lag = max(self.max_lag, now - self.last_tick - self.interval)
            self.last_tick = now

    def age(self) -> float:
        return time.monotonic() - self.last_tick

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


# health() -> (ok, reason); readiness() -> (ok, {"component": "why not ready"})
HealthCheck = Callable[[], tuple[bool, str]]
ReadinessCheck = Callable[[], tuple[bool, dict[str, str]]]
# readiness_details() -> ({"component": "why not ready"}, {"component": "why degraded"})
ReadinessDetails = Callable[[], tuple[dict[str, str], dict[str, str]]]


class ListenError(Exception):
    """The http server cannot bind its address: the agent does not start (the DaemonSet's probes would kill an
    agent running without its endpoints later, for a reason much harder to see)."""


class HealthServer:
    """aiohttp.web server for the three endpoints; `start` binds (raising ListenError if it cannot), `stop`
    closes."""

    def __init__(self, settings: ServerSettings, health: HealthCheck, readiness: ReadinessCheck,
                 details: ReadinessDetails | None = None) -> None:
        self.settings = settings
        self._health = health
        self._readiness = readiness
        self._details = details
        self._runner: Any = None
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> list[tuple[str, int]]:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host or None, self.settings.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            address = f"[{self.settings.host}]:{self.settings.port}" if ":" in self.settings.host \
                else f"{self.settings.host}:{self.settings.port}"
            raise ListenError(f"http.address: cannot listen on {address} for /metrics, /healthz and /readyz: "
                              f"{os.strerror(e.errno) if e.errno else e}. Free the port or set another http.address "
                              "(http.enabled: false runs without the endpoints)") from None
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        server = getattr(site, "_server", None)
        self.bound = [s.getsockname()[:2] for s in (server.sockets if server is not None else ())]
        log.info("http server listening", extra={"addresses": [f"{h}:{p}" for h, p in self.bound]})
        return self.bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(metrics.REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: Any) -> Any:
        from aiohttp import web

        ok, reason = self._health()
        body = orjson.dumps({"status": "ok" if ok else "unhealthy", "reason": reason})
        return web.Response(body=body, status=200 if ok else 503, content_type="application/json")

    async def _readyz(self, request: Any) -> Any:
        from aiohttp import web

        degraded: dict[str, str] = {}
        if self._details is not None:
            not_ready, degraded = self._details()
            ok = not not_ready
        else:
            ok, not_ready = self._readiness()
        doc: dict[str, Any] = {"status": "ready" if ok else "not ready", "not_ready": not_ready}
        if degraded:
            doc["degraded"] = degraded
        body = orjson.dumps(doc)
        return web.Response(body=body, status=200 if ok else 503, content_type="application/json")
