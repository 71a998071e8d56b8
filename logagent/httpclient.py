"""The outputs' HTTP/1.1 client: h11 (the protocol) over asyncio streams (the I/O), with a keep-alive pool.

Why not aiohttp: importing aiohttp costs ~10.5 MB of RSS (its C parsers, multidict, yarl, propcache, frozenlist and
~50 modules); h11 costs ~0.4 MB (measured with `python -S` after asyncio, see benchmarks/README.md). The idle
agent's RSS target (25 MB, issue 11) cannot be met with aiohttp loaded. The outputs need little of it: a POST of a
body already encoded, the status, the headers and the (small) response body; no proxies, no cookies, no redirects.

What this client does, and is tested for against real servers on 127.0.0.1 (tests/test_httpclient.py):
- keep-alive: a connection is reused while the server keeps it open, for at most `keepalive_timeout` seconds of
  idleness; `Connection: close` and HTTP/1.0 answers close it. Connections per host are not limited (the
  outputs bound their requests in flight themselves).
- a reused connection the server closed meanwhile (the keep-alive race: EOF or reset before any byte of the
  answer) is retried once on a new connection; any other failure is raised, never retried here.
- responses framed by Content-Length, chunked transfer coding, or the connection's end (h11 does the framing);
  `Content-Encoding: gzip`/`deflate` answers are decoded; an answer larger than `max_response_bytes` is refused.
- one deadline (`timeout`) for the whole request: connect, TLS handshake, send, answer.
- TLS with the `ssl.SSLContext` the output built (its CA, client certificate, verification), SNI by host name.
- a server that answers early (e.g. 413) and closes while the body is still being sent: its answer is returned.

Errors are `HttpError` (a `ConnectionError`: the outputs count them as transport errors and retry with backoff)
or `asyncio.TimeoutError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import h11

if TYPE_CHECKING:  # imported for https only: an agent whose config needs no TLS never loads it (logagent.tls)
    import ssl

USER_AGENT = "logagent/0.1"
_READ = 65536


class HttpError(ConnectionError):
    """The request failed on the wire: refused, reset, closed mid-answer, or an answer that is not HTTP/1.1."""


class _ClosedBeforeAnswer(HttpError):
    """EOF or reset before the first byte of the answer: on a reused connection, the keep-alive race."""


class Headers(Mapping[str, str]):
    """Response headers, looked up without regard to case (`get("Retry-After")`); repeated names keep every
    value (`getall`), the mapping view answers the first."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[bytes, bytes]]) -> None:
        self._items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in items]

    def __getitem__(self, name: str) -> str:
        key = name.lower()
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(name)

    def getall(self, name: str) -> list[str]:
        key = name.lower()
        return [v for k, v in self._items if k == key]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(k for k, _ in self._items))

    def __len__(self) -> int:
        return len(dict.fromkeys(k for k, _ in self._items))

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass
class ClientResponse:
    status: int
    headers: Headers
    body: bytes


@dataclass
class _Origin:
    scheme: str
    host: str
    port: int
    host_header: bytes
    target: bytes
    basic: bytes | None  # Authorization from user:password in the URL


class _Conn:
    __slots__ = ("reader", "writer", "h11", "idle_since", "reused")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.reused = False

    def usable(self, now: float, keepalive: float) -> bool:
        return (now - self.idle_since < keepalive and not self.writer.transport.is_closing()
                and not self.reader.at_eof())

    def close(self) -> None:
        self.writer.transport.abort()


class HttpClient:
    """`await client.post(url, body, headers)` -> ClientResponse. `close()` ends the idle connections."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0,
                 headers: Mapping[str, str] | None = None, keepalive_timeout: float = 30.0,
                 max_response_bytes: int = 64 * 1024 * 1024) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        self._header_names = {k.lower() for k, _ in self.headers}
        self.keepalive_timeout = keepalive_timeout
        self.max_response_bytes = max_response_bytes
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._origins: dict[str, _Origin] = {}
        self._closed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str] | None = None) -> ClientResponse:
        return await self.request("POST", url, body, headers)

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None) -> ClientResponse:
        """The whole answer, within `timeout` from connect to the answer's last byte."""
        async with asyncio.timeout(self.timeout):
            ex = await self._begin(method, url, body, headers, None)
            try:
                chunks = [c async for c in ex.chunks(self.max_response_bytes)]
            finally:
                ex.finish()
        data = b"".join(chunks)
        encoding = ex.headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate") and data:
            try:
                data = zlib.decompress(data, 47 if encoding != "deflate" else 15)
            except zlib.error:
                try:
                    data = zlib.decompress(data, -15)  # raw deflate, as some servers send it
                except zlib.error as e:
                    raise HttpError(f"answer from {ex.where} is not {encoding}: {e}") from None
        return ClientResponse(ex.status, ex.headers, data)

    @contextlib.asynccontextmanager
    async def stream(self, method: str, url: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
                     *, read_timeout: float | None = None) -> AsyncIterator[StreamResponse]:
        """A streamed answer (a Kubernetes watch): connecting and sending within `timeout`, then each read of the
        answer (its head included) within `read_timeout` (None: no limit). The body is not decoded."""
        async with asyncio.timeout(self.timeout):
            ex = await self._begin(method, url, body, headers, read_timeout)
        try:
            yield StreamResponse(ex)
        finally:
            ex.finish()

    async def _begin(self, method: str, url: str, body: bytes, headers: Mapping[str, str] | None,
                     read_timeout: float | None) -> _Exchange:
        if self._closed:
            raise HttpError("the client is closed")
        origin = self._origin(url)
        request = self._head(method, origin, body, headers)
        conn = await self._acquire(origin)
        for attempt in (1, 2):
            ex = _Exchange(self, conn, origin, read_timeout)
            try:
                await ex.send(request, body)
                await ex.read_head()
                return ex
            except _ClosedBeforeAnswer:
                ex.finish()
                if not conn.reused or attempt == 2:
                    raise
            except BaseException:
                ex.finish()
                raise
            # the server closed the idle connection just as we reused it: once more on a fresh one
            conn = await self._connect(origin)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # -- internals --------------------------------------------------------------------------------------------
    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
            port = parts.port or (443 if parts.scheme == "https" else 80)
            host = parts.hostname
            shown = f"[{host}]" if ":" in host else host
            default = port == (443 if parts.scheme == "https" else 80)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            basic = None
            if parts.username is not None:
                cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
                basic = b"Basic " + base64.b64encode(cred)
            text = shown if default else f"{shown}:{port}"
            try:
                host_header = text.encode("ascii")
            except UnicodeEncodeError:
                host_header = text.encode("idna")  # imports the idna codec (and stringprep) only when needed
            origin = _Origin(parts.scheme, host, port, host_header, target.encode("ascii"), basic)
            if len(self._origins) < 1024:
                self._origins[url] = origin
        return origin

    def _head(self, method: str, origin: _Origin, body: bytes,
              headers: Mapping[str, str] | None) -> h11.Request:
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        overridden = {k.lower() for k, _ in extra}
        names = self._header_names | overridden
        out: list[tuple[bytes, bytes]] = [] if b"host" in names else [(b"Host", origin.host_header)]
        out += [(k, v) for k, v in self.headers if k.lower() not in overridden]  # per-request values win
        out += extra
        if b"user-agent" not in names:
            out.append((b"User-Agent", USER_AGENT.encode()))
        if origin.basic is not None and b"authorization" not in names:
            out.append((b"Authorization", origin.basic))
        if method not in ("GET", "HEAD") or body:
            out.append((b"Content-Length", str(len(body)).encode()))
            if b"content-type" not in names:
                out.append((b"Content-Type", b"application/octet-stream"))
        return h11.Request(method=method, target=origin.target, headers=out)

    async def _acquire(self, origin: _Origin) -> _Conn:
        idle = self._idle.get((origin.scheme, origin.host, origin.port))
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.keepalive_timeout):
                conn.reused = True
                return conn
            conn.close()
        return await self._connect(origin)

    async def _connect(self, origin: _Origin) -> _Conn:
        ctx = None
        tls_errors: tuple[type[OSError], ...] = ()
        if origin.scheme == "https":
            import ssl

            ctx = self.ssl_context or ssl.create_default_context()
            tls_errors = (ssl.SSLError,)
        try:
            reader, writer = await asyncio.open_connection(
                origin.host, origin.port, ssl=ctx, server_hostname=origin.host if ctx is not None else None,
                limit=_READ)
        except tls_errors as e:
            raise HttpError(f"TLS handshake with {origin.host}:{origin.port} failed: {e}") from e
        except OSError as e:
            raise HttpError(f"cannot connect to {origin.host}:{origin.port}: {e.strerror or e}") from e
        return _Conn(reader, writer)

    def _release(self, conn: _Conn, origin: _Origin, keep: bool) -> None:
        if keep and not self._closed:
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            self._idle.setdefault((origin.scheme, origin.host, origin.port), []).append(conn)
        else:
            conn.close()


class _Exchange:
    """One request on one connection: send it, read the answer's events, then give the connection back (only
    when both sides finished the message cleanly) or close it."""

    def __init__(self, client: HttpClient, conn: _Conn, origin: _Origin, read_timeout: float | None) -> None:
        self.client = client
        self.conn = conn
        self.origin = origin
        self.where = f"{origin.host}:{origin.port}"
        self.read_timeout = read_timeout
        self.received = False
        self.send_error: OSError | None = None
        self.status = 0
        self.headers = Headers([])
        self.done = False  # the answer's end was read
        self._finished = False

    async def send(self, request: h11.Request, body: bytes) -> None:
        conn = self.conn
        try:
            conn.writer.write(conn.h11.send(request) or b"")
            if body:
                for chunk in conn.h11.send_with_data_passthrough(h11.Data(data=body)) or ():
                    conn.writer.write(chunk)
            conn.writer.write(conn.h11.send(h11.EndOfMessage()) or b"")
            await conn.writer.drain()
        except OSError as e:
            self.send_error = e  # the server may have answered before it stopped reading (413, 401...)

    async def _event(self) -> Any:
        conn = self.conn
        while True:
            try:
                event = conn.h11.next_event()
            except h11.RemoteProtocolError as e:
                raise HttpError(f"malformed answer from {self.where}: {e}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel that arrives as the read
                # completes, and a watch being stopped then reads on for ever (seen: a stage.stop() that hung)
                async with asyncio.timeout(self.read_timeout):
                    data = await conn.reader.read(_READ)
            except TimeoutError:
                raise  # (an OSError subclass): the server went quiet, not away
            except OSError as e:
                if not self.received:
                    raise _early(self.where, self.send_error or e) from None
                data = b""
            if not data and not self.received:
                raise _early(self.where, self.send_error)
            self.received = True
            conn.h11.receive_data(data)

    async def read_head(self) -> None:
        while True:
            event = await self._event()
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue (not asked for) and friends
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = Headers(list(event.headers))
                return
            raise HttpError(f"{self.where} closed the connection mid-answer")

    async def chunks(self, limit: int | None = None) -> AsyncIterator[bytes]:
        size = 0
        while True:
            event = await self._event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if limit is not None and size > limit:
                    raise HttpError(f"answer from {self.where} larger than {limit} bytes")
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
                return
            else:
                raise HttpError(f"{self.where} closed the connection mid-answer")

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        h = self.conn.h11
        keep = (self.done and self.send_error is None and h.our_state is h11.DONE and h.their_state is h11.DONE)
        self.client._release(self.conn, self.origin, keep)


class StreamResponse:
    """The head of a streamed answer and an iterator over its body's pieces as they arrive."""

    def __init__(self, ex: _Exchange) -> None:
        self._ex = ex
        self.status = ex.status
        self.headers = ex.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self._ex.chunks()

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        return b"".join([c async for c in self._ex.chunks(limit)])


def _early(where: str, cause: BaseException | None) -> HttpError:
    why = f": {cause}" if cause is not None else ""
    return _ClosedBeforeAnswer(f"{where} closed the connection before answering{why}")
