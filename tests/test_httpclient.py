"""logagent.httpclient against real servers on 127.0.0.1: aiohttp's server (an independent HTTP/1.1 implementation)
and raw asyncio servers that misbehave on purpose (close idle or mid-answer, answer early, answer slowly)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from logagent.httpclient import HttpClient, HttpError


class AioServer:
    """aiohttp.web on an ephemeral port; remembers which client port sent each request (connection reuse)."""

    def __init__(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.handler = handler
        self.peers: list[int] = []
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer[1] if peer else -1)
        self.bodies.append(await request.read())
        self.headers.append(dict(request.headers))
        return await self.handler(request)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(self.runner, sock, ssl_context=ssl_context)
        await site.start()
        scheme = "https" if ssl_context else "http"
        return f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        await self.runner.cleanup()


class RawServer:
    """asyncio.start_server with a handler that writes exact bytes: for what a polite server never does."""

    def __init__(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]) -> None:
        self.handler = handler
        self.connections = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """The head and a Content-Length body of one request."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


OK_KEEP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_keep_alive_reuses_one_connection_and_headers_are_case_insensitive() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"{len(await request.read())}", headers={"Retry-After": "7"})

    srv = AioServer(handler)
    url = await srv.start()
    client = HttpClient(headers={"X-Default": "d"})
    try:
        for i in range(5):
            r = await client.post(url + "/_bulk?x=1", b"a" * (i + 1), {"Content-Type": "application/x-ndjson"})
            assert (r.status, r.body) == (200, str(i + 1).encode())
            assert r.headers.get("retry-after") == "7" and r.headers["RETRY-AFTER"] == "7"
        assert len(set(srv.peers)) == 1, srv.peers  # one TCP connection for the five requests
        assert srv.bodies == [b"a" * (i + 1) for i in range(5)]
        h = srv.headers[0]
        assert h["Host"] == url.removeprefix("http://") and h["X-Default"] == "d"
        assert h["Content-Type"] == "application/x-ndjson" and h["Content-Length"] == "1"
    finally:
        await client.close()
        await srv.stop()


async def test_connection_close_answer_is_not_reused() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="bye", headers={"Connection": "close"})

    srv = AioServer(handler)
    url = await srv.start()
    client = HttpClient()
    try:
        for _ in range(3):
            assert (await client.post(url, b"x")).body == b"bye"
        assert len(set(srv.peers)) == 3
    finally:
        await client.close()
        await srv.stop()


async def test_server_closing_an_idle_connection_and_the_keepalive_race() -> None:
    """Connection 1 answers one request and then closes as the second arrives, without answering (the server's
    keep-alive timer fired just as the client reused it): the request goes once more, on a new connection."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK_KEEP)
        await writer.drain()
        if n == 1:
            await reader.readuntil(b"\r\n\r\n")  # the reused connection's next request: dropped unanswered
            return
        while True:
            await read_request(reader)
            writer.write(OK_KEEP)
            await writer.drain()

    srv = RawServer(handler)
    url = await srv.start()
    client = HttpClient()
    try:
        assert (await client.post(url, b"1")).status == 200
        assert (await client.post(url, b"2")).status == 200  # retried on connection 2
        assert srv.connections == 2
        assert (await client.post(url, b"3")).status == 200  # connection 2 is kept
        assert srv.connections == 2
    finally:
        await client.close()
        await srv.stop()


async def test_a_new_connection_closed_before_or_during_the_answer_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            return  # closed, no answer
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()  # then closed 90 bytes short

    srv = RawServer(handler)
    url = await srv.start()
    client = HttpClient()
    try:
        with pytest.raises(HttpError, match="before answering"):
            await client.post(url, b"x")
        with pytest.raises(HttpError, match="mid-answer|closed"):
            await client.post(url, b"x")
        assert srv.connections == 2
    finally:
        await client.close()
        await srv.stop()


async def test_chunked_and_gzip_answers_are_decoded_and_close_framed_too() -> None:
    payload = os.urandom(300_000).hex().encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/chunked":
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(payload), 65_537):
                await resp.write(payload[i:i + 65_537])
            await resp.write_eof()
            return resp
        return web.Response(body=gzip.compress(payload), headers={"Content-Encoding": "gzip"})

    srv = AioServer(handler)
    url = await srv.start()

    async def close_framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + payload)
        await writer.drain()

    raw = RawServer(close_framed)
    raw_url = await raw.start()
    client = HttpClient()
    try:
        assert (await client.post(url + "/chunked", b"x")).body == payload
        r = await client.post(url + "/gz", b"x")
        assert r.body == payload and r.headers["content-encoding"] == "gzip"
        assert (await client.post(raw_url, b"x")).body == payload  # framed by the connection's end
    finally:
        await client.close()
        await srv.stop()
        await raw.stop()


async def test_slow_answer_times_out_and_the_connection_is_not_reused() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            await release.wait()  # never answers in time
            return
        writer.write(OK_KEEP)
        await writer.drain()

    srv = RawServer(handler)
    url = await srv.start()
    client = HttpClient(timeout=0.5)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await client.post(url, b"x")
        assert loop.time() - t0 < 10  # the deadline, not the server, ended it
        assert (await client.post(url, b"y")).status == 200
        assert srv.connections == 2
    finally:
        release.set()
        await client.close()
        await srv.stop()


async def test_large_bodies_both_ways_and_the_answer_size_limit() -> None:
    body = os.urandom(24 * 1024 * 1024)
    big = os.urandom(8 * 1024 * 1024)

    async def handler(request: web.Request) -> web.StreamResponse:
        got = await request.read()
        if request.path == "/big":
            return web.Response(body=big)
        return web.Response(text=hashlib.sha256(got).hexdigest())

    srv = AioServer(handler)
    url = await srv.start()
    client = HttpClient(max_response_bytes=4 * 1024 * 1024)
    try:
        r = await client.post(url + "/sum", body)
        assert r.body.decode() == hashlib.sha256(body).hexdigest()
        with pytest.raises(HttpError, match="larger than"):
            await client.post(url + "/big", b"x")
        roomy = HttpClient(max_response_bytes=16 * 1024 * 1024)
        assert (await roomy.post(url + "/big", b"x")).body == big
        await roomy.close()
    finally:
        await client.close()
        await srv.stop()


async def test_an_early_answer_before_the_body_is_read_is_returned() -> None:
    """A server refusing a too-large body answers 413 from the head alone, half-closes and discards the rest of
    the body (nginx's lingering close): the client returns that answer and does not reuse the connection."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\n"
                     b"too big!")
        await writer.drain()
        writer.write_eof()
        while await reader.read(1 << 20):
            pass

    srv = RawServer(handler)
    url = await srv.start()
    client = HttpClient()
    try:
        r = await client.post(url, os.urandom(32 * 1024 * 1024))
        assert (r.status, r.body) == (413, b"too big!")
        r = await client.post(url, b"small")
        assert r.status == 413 and srv.connections == 2
    finally:
        await client.close()
        await srv.stop()


def _pki(d: Path) -> tuple[str, str, str]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
        "-out", "ca.pem", "-days", "2", "-subj", "/CN=logagent httpclient test CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "srv.key",
        "-out", "srv.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    return str(d / "ca.pem"), str(d / "srv.pem"), str(d / "srv.key")


async def test_tls_with_a_test_ca_verified_and_refused(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available to make test certificates")
    ca, cert, key = _pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="secure")

    srv = AioServer(handler)
    url = await srv.start(ssl_context=server_ctx)
    trusting = HttpClient(ssl_context=ssl.create_default_context(cafile=ca))
    default = HttpClient()
    try:
        for _ in range(3):
            assert (await trusting.post(url, b"x")).body == b"secure"
        assert len(set(srv.peers)) == 1  # TLS connections are kept alive too
        with pytest.raises(HttpError, match="TLS|certificate"):
            await default.post(url, b"x")
    finally:
        await trusting.close()
        await default.close()
        await srv.stop()


async def test_url_credentials_become_basic_auth_and_refused_connections_are_errors() -> None:
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization"))
        return web.Response(status=204)

    srv = AioServer(handler)
    url = await srv.start()
    client = HttpClient()
    try:
        r = await client.post(url.replace("http://", "http://elastic:p%40ss@"), b"x")
        assert r.status == 204 and r.body == b""
        assert seen == ["Basic ZWxhc3RpYzpwQHNz"]  # base64("elastic:p@ss")
    finally:
        await srv.stop()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(HttpError, match="cannot connect"):
            await client.post(f"http://127.0.0.1:{port}/", b"x")
    await client.close()


async def test_a_streamed_answer_arrives_piece_by_piece_and_a_silent_server_times_out() -> None:
    """A watch-like answer: chunks sent with pauses are seen as they come; a server that goes quiet longer than
    `read_timeout` ends the stream with a timeout; a stream read to its end leaves the connection reusable, one
    left early closes it."""
    go = asyncio.Event()
    quiet_until = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if request.path == "/watch":
            for i in range(3):
                await resp.write(b'{"n": %d}\n' % i)
                await go.wait()  # the client has seen the line before the next is sent
                go.clear()
        elif request.path == "/quiet":
            await resp.write(b'{"n": 0}\n')
            await quiet_until.wait()
        await resp.write_eof()
        return resp

    srv = AioServer(handler)
    url = await srv.start()
    client = HttpClient(timeout=5)
    try:
        seen = []
        async with client.stream("GET", url + "/watch?watch=1", read_timeout=5) as resp:
            assert resp.status == 200 and resp.headers["transfer-encoding"] == "chunked"
            async for chunk in resp.chunks():
                seen.append(chunk)
                go.set()
        assert b"".join(seen) == b'{"n": 0}\n{"n": 1}\n{"n": 2}\n' and len(seen) >= 3
        async with client.stream("GET", url + "/done") as resp:
            assert await resp.read() == b""
        assert len(set(srv.peers)) == 1  # both read to their end: one connection

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            async with client.stream("GET", url + "/quiet", read_timeout=0.5) as resp:
                async for _ in resp.chunks():
                    pass
        assert loop.time() - t0 < 10
        async with client.stream("GET", url + "/watch") as resp:
            async for _ in resp.chunks():
                break  # left early
        go.set()
        assert (await client.request("GET", url + "/done")).status == 200
        watch, done, quiet, left, last = srv.peers
        assert watch == done == quiet  # the idle connection was reused for the quiet stream...
        assert len({quiet, left, last}) == 3  # ...but neither it after its timeout nor the abandoned one after
    finally:
        go.set()
        quiet_until.set()
        await client.close()
        await srv.stop()
