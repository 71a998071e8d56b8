"""Single-object requests to the API server (nodes/status patches, events, leases), sharing the watch's
credentials (`api.py`); the access settings components configure are in `access.py`. Non-2xx answers raise the
`api` errors."""

from __future__ import annotations

import os
import socket
import time
from typing import Any
from urllib.parse import urlencode

import orjson

from logagent.httpclient import HttpClient
from logagent.kubernetes.api import (
    ApiCredentials,
    ApiError,
    Conflict,
    Gone,
    NotFound,
    TokenSource,
)

_ERRORS: dict[int, type[ApiError]] = {404: NotFound, 409: Conflict, 410: Gone}


class ApiClient:
    """Plain requests to the API server (get / create / patch / update / delete of single objects) with the same
    credentials as the watch: bearer token re-read on rotation, CA, client certificates. One connection pool
    (logagent.httpclient) per client, opened lazily in the running loop; `close()` when done. Non-2xx answers raise
    `ApiError` (or `NotFound`, `Conflict`, `Gone`) carrying the HTTP status and the Status reason; connection
    failures raise `HttpError` (an OSError) or TimeoutError."""

    def __init__(self, creds: ApiCredentials, request_timeout: float = 10.0) -> None:
        self.creds = creds
        self.tokens = TokenSource(creds.token, creds.token_file)
        self.request_timeout = request_timeout
        self._http: HttpClient | None = None
        self.requests = 0

    def http(self) -> HttpClient:
        """The connection pool, opened on first use (in the running loop); a whole request within 3x
        `request_timeout`, as before."""
        if self._http is None:
            self._http = HttpClient(ssl_context=self.creds.ssl_context(), timeout=self.request_timeout * 3)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      params: dict[str, str] | None = None) -> dict[str, Any]:
        headers = self.tokens.header()
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = orjson.dumps(body)
        self.requests += 1
        url = f"{self.creds.server}{path}" + (f"?{urlencode(params)}" if params else "")
        resp = await self.http().request(method, url, data or b"", headers)
        raw = resp.body
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


def node_name(configured: str | None) -> str:
    return configured or os.environ.get("NODE_NAME") or socket.gethostname()


def now_rfc3339(micro: bool = False) -> str:
    """The API server's Time (seconds) or MicroTime format, UTC."""
    t = time.time()
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return f"{base}.{int(t % 1 * 1e6):06d}Z" if micro else f"{base}Z"
