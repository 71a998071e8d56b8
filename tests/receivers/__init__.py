"""Test receivers: local HTTP servers on 127.0.0.1 that decode the real wire formats of the backends and answer
like them, faults included. Each decodes independently of the output code (own NDJSON parsing, protobuf classes
built here from the public schema text, own LZ4/snappy calls, own SLS signature check) so a bug in an encoder
cannot be mirrored by the receiver.

Faults are scripted per request with `Receiver.plan`: a list consumed one entry per request, each one of
    "ok"                      answer normally
    ("status", 429, {"Retry-After": "1"}, body)   whole-request error, nothing stored
    "reset"                   close the connection after reading the request, nothing stored
    "reset_after_store"       store the request, then close the connection (the client never sees the answer)
    ("slow", seconds)         wait, then answer normally
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web


class Receiver:
    """Base: an aiohttp app on 127.0.0.1:<free port>, started in the running loop (`await start()`)."""

    def __init__(self) -> None:
        self.plan: list[Any] = []
        self.requests = 0  # requests seen, including failed ones
        self.request_log: list[dict[str, Any]] = []  # per request: time, outcome, headers of interest
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.scheme = "http"
        self.app = web.Application(client_max_size=64 * 1024 * 1024)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    async def start(self, port: int = 0, ssl_context: Any = None) -> Receiver:
        # auto_decompress off: the receiver must see the bytes on the wire and undo the encoding itself, so a
        # body that claims gzip but is not (or the reverse) fails here as it would at the real service.
        self.runner = web.AppRunner(self.app, access_log=None, auto_decompress=False)
        await self.runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self.runner, sock, ssl_context=ssl_context)
        self.scheme = "https" if ssl_context is not None else "http"
        await site.start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def fault(self, request: web.Request) -> tuple[web.StreamResponse | None, bool]:
        """Apply the next planned fault. Returns (response to send instead, store-then-reset flag)."""
        self.requests += 1
        step = self.plan.pop(0) if self.plan else "ok"
        entry: dict[str, Any] = {"loop_time": asyncio.get_running_loop().time(), "step": step}
        self.request_log.append(entry)
        if step == "ok":
            return None, False
        if step == "reset":
            await request.read()
            assert request.transport is not None
            request.transport.abort()
            raise ConnectionResetError("receiver: scripted reset")
        if step == "reset_after_store":
            return None, True
        if isinstance(step, tuple) and step[0] == "slow":
            await asyncio.sleep(step[1])
            return None, False
        if isinstance(step, tuple) and step[0] == "status":
            _, status, headers, body = (*step, None, None)[:4]
            await request.read()
            return web.Response(status=status, headers=headers or {}, body=body or b""), False
        raise AssertionError(f"unknown plan step {step!r}")

    @staticmethod
    def reset(request: web.Request) -> None:
        assert request.transport is not None
        request.transport.abort()
        raise ConnectionResetError("receiver: scripted reset after store")


def run_forever(receiver: Receiver, port: int, ready_file: str | None = None) -> None:
    """Run a receiver in this process (for benchmarks and subprocess tests); writes its port to ready_file."""

    async def main() -> None:
        await receiver.start(port)
        if ready_file:
            with open(ready_file + ".tmp", "w") as fh:
                fh.write(str(receiver.port))
            import os

            os.replace(ready_file + ".tmp", ready_file)
        await asyncio.Event().wait()

    asyncio.run(main())
