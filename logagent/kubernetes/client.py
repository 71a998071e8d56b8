"""Single-object requests to the API server (nodes/status patches, events, leases), sharing the watch's
credentials (`api.py`), and the access settings components configure. Non-2xx answers raise the `api` errors."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from logagent.kubernetes.api import (
    ApiCredentials,
    ApiError,
    Conflict,
    Gone,
    NotFound,
    TokenSource,
    in_cluster_credentials,
    kubeconfig_credentials,
)

_ERRORS: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 410: Gone}


class ApiClient:
    """Plain requests to the API server (get / create / patch / update / delete of single objects) with the same
    credentials as the watch: bearer token re-read on rotation, CA, client certificates. One session per client,
    opened lazily in the running loop; `close()` when done. Non-2xx answers raise `ApiError` (or `NotFound`,
    `Conflict`, `Gone`) carrying the HTTP status and the Status reason; connection failures raise aiohttp's errors."""

    def __init__(self, creds: ApiCredentials, request_timeout: float = 10.0) -> None:
        self.creds = creds
        self.tokens = TokenSource(creds.token, creds.token_file)
        self.timeout = aiohttp.ClientTimeout(total=request_timeout * 3, sock_connect=request_timeout,
                                             sock_read=request_timeout)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ctx = self.creds.ssl_context()
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                ssl=ctx if ctx is not None else False, limit=4))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      params: dict[str, str] | None = None) -> dict[str, Any]:
        headers = self.tokens.header()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = orjson.dumps(body)
        self.requests += 1
        async with self.session().request(method, f"{self.creds.server}{path}", data=data, params=params,
                                          headers=headers, timeout=self.timeout) as resp:
            raw = await resp.read()
            if 200 <= resp.status < 300:
                doc = orjson.loads(raw) if raw else {}
                return doc if isinstance(doc, dict) else {}
            if resp.status == 401:
                self.tokens.current(force=True)
            reason = message = None
            try:
                status_doc = orjson.loads(raw)
                if isinstance(status_doc, dict):
                    reason, message = status_doc.get("reason"), status_doc.get("message")
            except orjson.JSONDecodeError:
                pass
            err = _ERRORS.get(resp.status, ApiError)(
                f"HTTP {resp.status} {method} {path}: {reason or ''} {str(message or raw[:200])[:300]}".strip())
            err.status, err.reason = resp.status, reason
            raise err


@dataclass(frozen=True)
class ApiAccess:
    """Where and how to reach the API server, as components configure it (same keys as the kubernetes stage)."""

    kubeconfig: str | None = None
    context: str | None = None
    api_server: str | None = None
    token_file: str | None = None
    ca_file: str | None = None

    def credentials(self) -> ApiCredentials | None:
        """None when not in a cluster and nothing is configured; ValueError/OSError for unusable settings."""
        if self.kubeconfig:
            return kubeconfig_credentials(self.kubeconfig, self.context, self.api_server)
        return in_cluster_credentials(self.api_server, self.token_file, self.ca_file)


def parse_access(section: Any) -> ApiAccess:
    """The API access keys of a config section (`kubeconfig`, `context`, `api_server`, `token_file`, `ca_file`)."""
    access = ApiAccess(section.str("kubeconfig", None), section.str("context", None), section.str("api_server", None),
                       section.str("token_file", None), section.str("ca_file", None))
    if access.api_server is not None and not access.api_server.startswith(("http://", "https://")):
        raise section.error(f"expected an http:// or https:// URL, got {access.api_server!r}", "api_server")
    return access


def node_name(configured: str | None) -> str:
    return configured or os.environ.get("NODE_NAME") or socket.gethostname()


def now_rfc3339(micro: bool = False) -> str:
    """The API server's Time (seconds) or MicroTime format, UTC."""
    t = time.time()
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return f"{base}.{int(t % 1 * 1e6):06d}Z" if micro else f"{base}Z"
