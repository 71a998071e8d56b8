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
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
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


def _literal_socket(host: str, port: int) -> socket.socket | None:
    """A bound listening socket for an IP literal, the way `loop.create_server` makes one (SO_REUSEADDR,
    IPV6_V6ONLY), or None for a name or "" (every interface), which need getaddrinfo. An IP literal needs none: the
    lookup would run on a resolver thread (libuv starts its pool of 4 for it under uvloop) and encode the host with
    the idna codec (unicodedata, stringprep), all for an answer known in advance (idle RSS, issue 11)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return sock
    return None


class ListenError(Exception):
    """The http server cannot bind its address: the agent does not start (the DaemonSet's probes would kill an
    agent running without its endpoints later, for a reason much harder to see)."""


class HealthServer:
    """The server for the three endpoints, on `asyncio.start_server` with h11 for HTTP/1.1 (keep-alive, request
    framing, malformed requests answered 400). aiohttp's server cost ~12 MB of the idle agent's RSS (measured with
    benchmarks/bench_agent.py); h11 costs ~0.4 MB. `start` binds (raising ListenError if it cannot), `stop` closes.

    GET and HEAD are served; another method gets 405 (with `Allow`), another path 404. A connection idle for
    `IDLE_TIMEOUT` seconds, or sending a request larger than h11's 16 KiB limit, is closed."""

    IDLE_TIMEOUT = 60.0
    ROUTES = ("/metrics", "/healthz", "/readyz")

    def __init__(self, settings: ServerSettings, health: HealthCheck, readiness: ReadinessCheck,
                 details: ReadinessDetails | None = None) -> None:
        self.settings = settings
        self._health = health
        self._readiness = readiness
        self._details = details
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> list[tuple[str, int]]:
        try:
            sock = _literal_socket(self.settings.host, self.settings.port)
            if sock is not None:
                server = await asyncio.start_server(self._serve, sock=sock)
            else:
                server = await asyncio.start_server(self._serve, self.settings.host or None, self.settings.port,
                                                    reuse_address=True)
        except OSError as e:
            address = f"[{self.settings.host}]:{self.settings.port}" if ":" in self.settings.host \
                else f"{self.settings.host}:{self.settings.port}"
            raise ListenError(f"http.address: cannot listen on {address} for /metrics, /healthz and /readyz: "
                              f"{os.strerror(e.errno) if e.errno else e}. Free the port or set another http.address "
                              "(http.enabled: false runs without the endpoints)") from None
        self._server = server
        self.bound = [s.getsockname()[:2] for s in server.sockets]
        log.info("http server listening", extra={"addresses": [f"{h}:{p}" for h, p in self.bound]})
        return self.bound

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # closing their transports ends the connections' tasks (a read answers EOF); cancelling them instead
            # makes asyncio.start_server log each cancellation as an error
            tasks = list(self._conns)
            for writer in list(self._writers):
                writer.transport.abort()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await self._next(conn, reader)
                if not isinstance(request, h11.Request):
                    return  # closed, idle, or a body without a request (h11 raises for that first)
                while not isinstance(await self._next(conn, reader), (h11.EndOfMessage, type(None))):
                    pass  # a body (none expected): read and dropped, within h11's framing
                if conn.their_state is h11.ERROR:
                    return
                status, headers, body = self._route(request)
                headers.append((b"Content-Length", str(len(body)).encode()))
                out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
                if request.method != b"HEAD":
                    out += conn.send(h11.Data(data=body)) or b""
                out += conn.send(h11.EndOfMessage()) or b""
                writer.write(out)
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # Connection: close, HTTP/1.0, or a client that is still sending
                conn.start_next_cycle()
        except h11.RemoteProtocolError as e:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                try:
                    writer.write(conn.send(h11.Response(status_code=e.error_status_hint, headers=[
                        (b"Content-Length", b"0"), (b"Connection", b"close")])) or b"")
                    await writer.drain()
                except (h11.LocalProtocolError, OSError):
                    pass
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            if task is not None:
                self._conns.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | h11.Data | \
            h11.EndOfMessage | None:
        """The next request event; None when the peer closed or went idle."""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(16384), self.IDLE_TIMEOUT)
                conn.receive_data(data)  # b"" is the peer's EOF: h11 answers ConnectionClosed (or an error)
                continue
            if isinstance(event, (h11.Request, h11.Data, h11.EndOfMessage)):
                return event
            return None  # ConnectionClosed or PAUSED (a pipelined request while ours is still being answered)

    def _route(self, request: h11.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        path = request.target.split(b"?", 1)[0].decode("ascii", "replace")
        if path not in self.ROUTES:
            return 404, [(b"Content-Type", b"text/plain; charset=utf-8")], b"404: Not Found"
        if request.method not in (b"GET", b"HEAD"):
            return 405, [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Allow", b"GET, HEAD")], \
                b"405: Method Not Allowed"
        if path == "/metrics":
            return 200, [(b"Content-Type", metrics.CONTENT_TYPE.encode())], metrics.exposition()
        if path == "/healthz":
            ok, reason = self._health()
            body = orjson.dumps({"status": "ok" if ok else "unhealthy", "reason": reason})
            return 200 if ok else 503, [(b"Content-Type", b"application/json")], body
        degraded: dict[str, str] = {}
        if self._details is not None:
            not_ready, degraded = self._details()
            ok = not not_ready
        else:
            ok, not_ready = self._readiness()
        doc: dict[str, Any] = {"status": "ready" if ok else "not ready", "not_ready": not_ready}
        if degraded:
            doc["degraded"] = degraded
        return 200 if ok else 503, [(b"Content-Type", b"application/json")], orjson.dumps(doc)
