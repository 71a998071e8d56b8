"""Issue 10, attack 4: credentials leaking through backend error bodies into the agent's own log.

A real HTTP server on 127.0.0.1 plays a misbehaving backend (or a proxy in front of it): every error it answers
echoes the request's headers — the Authorization header included — in its body, first as a retryable 503, then as
a 401 that rejects the request for good. The agent runs as it is deployed (`logagent run`, a subprocess, at DEBUG)
with an Elasticsearch output using a bearer token read from a file and a Loki output using basic auth read from the
environment. Its stderr must tell what the backend said (the masked excerpt) and never hold a credential; nor may
the dead-letter file. The Kubernetes API client's errors are held to the same rule.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from logagent.kubernetes.api import ApiCredentials, PodWatcher, WatchSettings
from logagent.kubernetes.cache import PodCache
from tests.helpers import async_wait_for

TOKEN = "eS-t0ken-4f9c2a71d3b84e6f9a0c5d2e7b1f8a3c"
PASSWORD = "Loki-pa55w0rd-9d2b7e41"
BASIC = base64.b64encode(f"shipper:{PASSWORD}".encode()).decode()
KUBE_TOKEN = "kube-sa-token-0b8e3f6a2c9d4e1f7a5b"


class EchoingBackend:
    """Answers each POST with the next status of `plan` (then 401 for good), the body echoing every request header
    as a broken proxy or a debug endpoint does; records what it was sent."""

    def __init__(self, plan: list[int]) -> None:
        self.plan = plan
        self.seen: list[tuple[str, int]] = []
        self.auth: set[str] = set()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> EchoingBackend:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        status = self.plan.pop(0) if self.plan else 401
        self.seen.append((request.path, status))
        self.auth.add(request.headers.get("Authorization", ""))
        echoed = "\r\n".join(f"{k}: {v}" for k, v in request.headers.items())
        if request.path.endswith("/_bulk"):
            body = json.dumps({"error": {"type": "security_exception", "reason": (
                f"unable to authenticate user for REST request [{request.path}], request headers were:\n{echoed}")},
                "status": status})
            return web.Response(status=status, text=body, content_type="application/json")
        return web.Response(status=status, text=f"upstream refused the request\r\n{echoed}\r\n")


async def test_a_token_echoed_in_an_error_body_never_reaches_the_agents_stderr(tmp_path: Path) -> None:
    backend = await EchoingBackend([503, 503, 503, 503]).start()
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"line {i}\n" for i in range(5)))
    (tmp_path / "es-token").write_text(TOKEN + "\n")
    fast = {"initial_backoff": "20ms", "max_backoff": "50ms"}
    cfg = {
        "state_dir": str(tmp_path / "state"), "log_level": "debug", "http": {"enabled": False},
        "grace_period": "2s",
        "inputs": [{"type": "file", "name": "app", "paths": [str(log_file)], "poll_interval": "100ms"}],
        "outputs": [
            {"type": "elasticsearch", "name": "es", "url": backend.url, "index": "logs", "retry": fast,
             "batch": {"max_wait": "20ms"}, "auth": {"bearer_token": {"file": str(tmp_path / "es-token")}}},
            {"type": "loki", "name": "loki", "url": backend.url, "retry": fast, "batch": {"max_wait": "20ms"},
             "auth": {"user": "shipper", "password": {"env": "LOKI_PASSWORD"}}},
        ],
    }
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    stderr = tmp_path / "agent.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "logagent", "run", "-c", str(path)], stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, "LOKI_PASSWORD": PASSWORD})
    dead = tmp_path / "state/dead-letter.jsonl"
    try:
        def settled() -> bool:
            paths = [p for p, status in backend.seen if status == 401]
            return any(p.endswith("/_bulk") for p in paths) and any("push" in p for p in paths) \
                and dead.exists() and dead.read_text().count("\n") >= 10
        await async_wait_for(settled, timeout=60, what="both outputs retried, then rejected for good")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)
        await backend.stop()

    # the backend did get the credentials (that is what it echoed), and did echo them
    assert backend.auth == {f"Bearer {TOKEN}", f"Basic {BASIC}"}
    text = stderr.read_text()
    logs = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    retried = [e for e in logs if e.get("msg") == "request will be retried"]
    refused = [e for e in logs if e.get("msg") == "backend refused a request for good; records dead-lettered"]
    assert {e["output"] for e in retried} == {"es", "loki"} and [e["output"] for e in refused] == ["es"]
    # the operator still learns what the backend said, with the credential masked
    es_reason = next(e["reason"] for e in retried if e["output"] == "es")
    assert es_reason.startswith("HTTP 503: security_exception: unable to authenticate user")
    assert "Authorization: ***" in es_reason
    for secret in (TOKEN, PASSWORD, BASIC):
        assert secret not in text, f"a credential reached the agent's stderr: {secret[:6]}..."
        assert secret not in dead.read_text()
    assert "\r" not in "".join(e.get("reason", "") for e in logs)


async def test_the_kubernetes_client_masks_its_token_in_api_error_bodies(tmp_path: Path) -> None:
    backend = await EchoingBackend([403] * 1000).start()
    creds = ApiCredentials(server=backend.url, token=KUBE_TOKEN, token_file=None, ca_file=None)
    watcher = PodWatcher(creds, WatchSettings(node_name="node-a", backoff_initial=0.01, backoff_max=0.05),
                         PodCache(60.0, ()))
    task = asyncio.create_task(watcher.run())
    try:
        await async_wait_for(lambda: watcher.last_error, timeout=20, what="the first API error")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await backend.stop()
    error: Any = watcher.last_error
    assert "HTTP 403 from /api/v1/pods: upstream refused the request" in str(error)
    assert KUBE_TOKEN not in str(error) and "Authorization: ***" in str(error)
