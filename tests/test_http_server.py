"""The self-monitoring server (logagent.http.HealthServer, asyncio + h11) as HTTP/1.1 clients see it: keep-alive,
HEAD, 405 and 404, malformed and oversized requests answered 400/431 and closed, HTTP/1.0 closed after the
answer. Real sockets on 127.0.0.1; the body of /metrics is the registry's text format."""

from __future__ import annotations

import asyncio

import pytest

from logagent.http import HealthServer, ServerSettings


async def start(ok: bool = True) -> tuple[HealthServer, int]:
    server = HealthServer(ServerSettings(enabled=True, host="127.0.0.1", port=0, stall_timeout=10.0),
                          lambda: (ok, "ok" if ok else "loop stalled"),
                          lambda: (ok, {} if ok else {"output:es": "unreachable"}))
    bound = await server.start()
    return server, bound[0][1]


async def read_answer(reader: asyncio.StreamReader, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    body = b"" if head_only else await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def test_keep_alive_three_endpoints_on_one_connection_then_head_405_and_404() -> None:
    server, port = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for path in ("/healthz", "/readyz", "/metrics"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answers = [await read_answer(reader) for _ in range(3)]  # pipelined, answered in order
        assert answers[0][0] == 200 and answers[0][2] == b'{"status":"ok","reason":"ok"}'
        assert answers[0][1]["content-type"] == "application/json"
        assert answers[1][2] == b'{"status":"ready","not_ready":{}}'
        assert answers[2][1]["content-type"].startswith("text/plain; version=")
        assert b"# TYPE logagent_input_records_total counter" in answers[2][2]

        writer.write(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await read_answer(reader, head_only=True)
        assert status == 200 and int(headers["content-length"]) > 0  # the length of the GET, no body sent

        writer.write(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        status, headers, _ = await read_answer(reader)
        assert status == 405 and headers["allow"] == "GET, HEAD"
        writer.write(b"GET /nothing?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_answer(reader))[0] == 404
    finally:
        writer.close()
        await server.stop()


async def test_unhealthy_and_not_ready_are_503_with_the_reason() -> None:
    server, port = await start(ok=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_answer(reader)
        assert status == 503 and body == b'{"status":"unhealthy","reason":"loop stalled"}'
        status, _, body = await read_answer(reader)
        assert status == 503 and body == b'{"status":"not ready","not_ready":{"output:es":"unreachable"}}'
    finally:
        writer.close()
        await server.stop()


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
], ids=["garbage", "no-host", "oversized-head"])
async def test_malformed_or_oversized_requests_are_answered_and_closed(request_bytes: bytes, status: int) -> None:
    server, port = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_bytes)
        got, headers, _ = await read_answer(reader)
        assert got == status and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and the connection ends
    finally:
        writer.close()
        await server.stop()


async def test_http10_is_closed_after_the_answer_and_stop_ends_open_connections() -> None:
    server, port = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (await read_answer(reader))[0] == 200
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()

    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)  # a keep-alive client that stays
    idle_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(idle_r))[0] == 200
    await asyncio.wait_for(server.stop(), 10)  # does not wait for the idle client to leave
    assert await asyncio.wait_for(idle_r.read(), 10) == b""
    idle_w.close()
