"""Talking to the Kubernetes API server: credentials, and ONE list+watch of this node's pods feeding a PodCache.

The protocol, as the API server speaks it:
  list   GET /api/v1/pods?fieldSelector=spec.nodeName=<node>&resourceVersion=0
         -> PodList; metadata.resourceVersion is where the watch starts. `resourceVersion=0` lets the API server
         answer from its watch cache instead of etcd, which matters when thousands of node agents relist at once.
  watch  GET /api/v1/pods?watch=1&fieldSelector=...&resourceVersion=<rv>&allowWatchBookmarks=true&timeoutSeconds=N
         -> chunked stream of newline-delimited JSON events {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR,
         "object": ...}. Every event (bookmarks included) moves our resourceVersion forward, so a dropped or timed
         out watch resumes from there with no relist. Only "410 Gone" (as the HTTP status or as an ERROR event
         whose Status has code 410: our resourceVersion was compacted away) needs a relist.
Failures reconnect with exponential backoff and full jitter; a watch that ends cleanly (timeoutSeconds) is renewed
at once.

Credentials: in-cluster (service-account token file, re-read whenever it changes because projected tokens
rotate, plus the CA file and KUBERNETES_SERVICE_HOST/PORT) or a kubeconfig (server, CA data/file, token or client
certificate/key, insecure-skip-tls-verify).

This module must never block the pipeline: nothing here is awaited by the enrichment stage, which only reads the
cache the watch fills.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson
import yaml

from logagent import metrics
from logagent.backoff import Backoff
from logagent.httpclient import HttpClient, StreamResponse
from logagent.kubernetes.cache import PodCache
from logagent.redact import excerpt
from logagent.rotating import RotatingSecret

if TYPE_CHECKING:  # imported for an https API server only (logagent.tls)
    import ssl

log = logging.getLogger("logagent.kubernetes.api")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_MAX_LIST_BYTES = 512 * 1024 * 1024  # one page of a pod list (a node's pods, paged): far below this


class ApiError(Exception):
    """The API server answered, but not with what we asked for."""

    status: int | None = None
    reason: str | None = None


class Gone(ApiError):
    """410: the resourceVersion we watch from is too old; relist."""


class Conflict(ApiError):
    """409: a create of a name that exists (reason AlreadyExists), or an update from a stale resourceVersion."""


class NotFound(ApiError):
    """404: the object is not there (deleted, or never created)."""


@dataclass(frozen=True)
class ApiCredentials:
    server: str  # base URL, e.g. https://10.96.0.1:443
    token: str | None = None  # a fixed token (kubeconfig)
    token_file: str | None = None  # re-read when it changes (service-account / projected token)
    ca_file: str | None = None
    ca_data: str | None = None  # PEM text
    client_cert_file: str | None = None
    client_key_file: str | None = None
    client_cert_data: bytes | None = None
    client_key_data: bytes | None = None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.server.startswith("https"):
            return None
        import ssl

        ctx = ssl.create_default_context()
        if self.ca_file or self.ca_data:
            ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
        elif self.client_cert_data:
            # ssl wants files: write them privately for the one call, then remove them.
            with tempfile.TemporaryDirectory(prefix="logagent-kube-") as d:
                cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
                for path, data in ((cert, self.client_cert_data), (key, self.client_key_data or b"")):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                ctx.load_cert_chain(cert, key if self.client_key_data else None)
        return ctx


def in_cluster_credentials(server: str | None = None, token_file: str | None = None,
                           ca_file: str | None = None) -> ApiCredentials | None:
    """Service-account credentials; None when not in a cluster and no server was given."""
    if server is None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            return None
        if ":" in host:  # IPv6 service address
            host = f"[{host}]"
        server = f"https://{host}:{port}"
    token_file = token_file or os.path.join(SERVICE_ACCOUNT_DIR, "token")
    ca_file = ca_file or os.path.join(SERVICE_ACCOUNT_DIR, "ca.crt")
    return ApiCredentials(
        server=server.rstrip("/"),
        token_file=token_file if os.path.exists(token_file) else None,
        ca_file=ca_file if os.path.exists(ca_file) else None,
    )


def kubeconfig_credentials(path: str, context: str | None = None, server: str | None = None) -> ApiCredentials:
    """Credentials from a kubeconfig file (the current context unless one is named). Raises ValueError."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read kubeconfig {path}: {e}") from None
    base = os.path.dirname(os.path.abspath(path))

    def named(section: str, name: str | None) -> dict[str, Any]:
        for item in doc.get(section) or ():
            if item.get("name") == name:
                return item.get(section[:-1]) or {}
        raise ValueError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

    ctx_name = context or doc.get("current-context")
    ctx = named("contexts", ctx_name)
    cluster = named("clusters", ctx.get("cluster"))
    user = named("users", ctx.get("user")) if ctx.get("user") else {}

    def file_of(key: str, where: dict[str, Any]) -> str | None:
        value = where.get(key)
        return os.path.join(base, value) if value else None

    def data_of(key: str, where: dict[str, Any]) -> bytes | None:
        value = where.get(key)
        return base64.b64decode(value) if value else None

    if user.get("exec") or user.get("auth-provider"):
        log.warning("kubeconfig exec/auth-provider credentials are not supported; using the rest of the user entry",
                    extra={"kubeconfig": path})
    ca = data_of("certificate-authority-data", cluster)
    url = server or cluster.get("server")
    if not url:
        raise ValueError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server")
    return ApiCredentials(
        server=str(url).rstrip("/"),
        token=user.get("token"),
        token_file=file_of("tokenFile", user),
        ca_file=file_of("certificate-authority", cluster),
        ca_data=ca.decode() if ca else None,
        client_cert_file=file_of("client-certificate", user),
        client_key_file=file_of("client-key", user),
        client_cert_data=data_of("client-certificate-data", user),
        client_key_data=data_of("client-key-data", user),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
    )


class TokenSource:
    """The bearer token: given inline, or read from its file and followed when kubelet rotates it
    (logagent.rotating)."""

    def __init__(self, token: str | None, token_file: str | None) -> None:
        self._static = token
        self._file = RotatingSecret.open(token_file) if token_file is not None else None
        self._seen: list[str] = []  # the tokens sent so far (the last few): an error body may echo an old one

    def secrets(self) -> list[str]:
        """Token values to mask in error text (`logagent.redact`)."""
        current = self._file.value if self._file is not None else None
        return [t for t in (self._static, current, *self._seen) if t]

    def header(self) -> dict[str, str]:
        token = self.current()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def current(self, force: bool = False) -> str | None:
        """`force` after a 401: the token may have rotated under us."""
        if self._file is None:
            return self._static
        token = self._file.current(force) or None
        if token and token not in self._seen:
            self._seen = [*self._seen[-2:], token]
        return token


@dataclass(frozen=True)
class WatchSettings:
    node_name: str
    watch_timeout: float = 300.0  # timeoutSeconds asked of the server; renewed at once when it ends
    request_timeout: float = 10.0  # connect / list read timeout
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    page_size: int = 500


class PodWatcher:
    """Keeps `cache` in step with the API server's pods on one node. `run()` until cancelled."""

    def __init__(self, creds: ApiCredentials, settings: WatchSettings, cache: PodCache) -> None:
        self.creds = creds
        self.settings = settings
        self.cache = cache
        self.tokens = TokenSource(creds.token, creds.token_file)
        self.resource_version: str | None = None
        self.lists = 0  # full lists done (first sync + relists)
        self.watches = 0  # watch requests answered with 200
        self.events = 0
        self.last_error: str | None = None
        self.synced = asyncio.Event()  # set after the first full list was applied
        self._backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        self._http: HttpClient | None = None

    @property
    def _selector(self) -> str:
        return f"spec.nodeName={self.settings.node_name}"

    async def run(self) -> None:
        # `timeout` bounds connecting, sending and the answer's head; a list's body and each read of a watch
        # have their own read timeouts (below)
        self._http = HttpClient(ssl_context=self.creds.ssl_context(),
                                timeout=max(self.settings.request_timeout, 30.0))
        try:
            while True:
                try:
                    if self.resource_version is None:
                        await self._list()
                    started = time.monotonic()
                    got = await self._watch()
                    if got == 0 and time.monotonic() - started < 1.0:
                        # A watch that closes at once with nothing in it: don't spin on it.
                        await asyncio.sleep(self._backoff.next())
                except Gone:
                    log.info("resourceVersion expired (410); relisting",
                             extra={"resource_version": self.resource_version})
                    metrics.ERRORS.labels(component="kubernetes", kind="watch_gone").inc()
                    self.resource_version = None
                except asyncio.CancelledError:
                    raise
                except (asyncio.TimeoutError, OSError, ApiError, ValueError) as e:  # HttpError is an OSError
                    self.last_error = f"{type(e).__name__}: {e}"
                    delay = self._backoff.next()
                    metrics.ERRORS.labels(component="kubernetes", kind="api_unavailable").inc()
                    log.warning("kubernetes API request failed; retrying",
                                extra={"error": self.last_error, "retry_in": round(delay, 3),
                                       "server": self.creds.server})
                    await asyncio.sleep(delay)
                except Exception as e:
                    # Whatever the server sent, the watch must not die: a dead watch means stale metadata
                    # for the rest of the agent's life. Log it loudly and start over from a fresh list.
                    self.last_error = f"{type(e).__name__}: {e}"
                    delay = self._backoff.next()
                    metrics.ERRORS.labels(component="kubernetes", kind="watch_failed").inc()
                    log.exception("kubernetes watch failed unexpectedly; relisting",
                                  extra={"error": self.last_error, "retry_in": round(delay, 3)})
                    self.resource_version = None
                    await asyncio.sleep(delay)
        finally:
            await self._http.close()
            self._http = None

    def _check(self, resp: StreamResponse, body: bytes) -> None:
        if resp.status == 200:
            return
        if resp.status == 410:
            raise Gone("410 Gone")
        if resp.status == 401:
            self.tokens.current(force=True)  # the token may have rotated under us
        raise ApiError(f"HTTP {resp.status} from /api/v1/pods: {excerpt(body, secrets=self.tokens.secrets())}")

    async def _list(self) -> None:
        assert self._http is not None
        read_timeout = max(self.settings.request_timeout, 30.0)
        items: list[dict[str, Any]] = []
        params = {"fieldSelector": self._selector, "resourceVersion": "0", "limit": str(self.settings.page_size)}
        while True:
            async with self._http.stream("GET", f"{self.creds.server}/api/v1/pods?{urlencode(params)}",
                                         headers=self.tokens.header(), read_timeout=read_timeout) as resp:
                body = await resp.read(_MAX_LIST_BYTES)
                try:
                    self._check(resp, body)
                except Gone:
                    if "continue" not in params:
                        raise
                    # The continue token expired between pages (compaction). Paging again could expire again
                    # on a busy cluster; one unpaged list is consistent by construction.
                    log.info("list continue token expired; listing again without paging")
                    items.clear()
                    params = {"fieldSelector": self._selector, "resourceVersion": "0"}
                    continue
            doc = orjson.loads(body)
            if not isinstance(doc, dict):
                raise ApiError(f"list answered with a {type(doc).__name__}, not a PodList")
            items.extend(doc.get("items") or ())
            meta = doc.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
            # Later pages are served consistently with the first one's snapshot.
            params = {"fieldSelector": self._selector, "limit": str(self.settings.page_size), "continue": cont}
        bad = self.cache.replace_all(items)
        if bad:
            metrics.ERRORS.labels(component="kubernetes", kind="bad_pod").inc(bad)
            log.warning("pod objects not understood in the list; skipped", extra={"skipped": bad})
        self.resource_version = str(meta.get("resourceVersion") or "0")
        self.lists += 1
        self.synced.set()
        self._backoff.reset()
        log.info("pods listed", extra={"pods": len(items), "resource_version": self.resource_version,
                                       "node": self.settings.node_name})

    async def _watch(self) -> int:
        """One watch request, streamed until the server ends it. Returns the number of events seen."""
        assert self._http is not None
        s = self.settings
        params = {
            "watch": "1", "fieldSelector": self._selector, "resourceVersion": self.resource_version or "0",
            "allowWatchBookmarks": "true", "timeoutSeconds": str(int(max(1, s.watch_timeout))),
        }
        seen = 0
        async with self._http.stream("GET", f"{self.creds.server}/api/v1/pods?{urlencode(params)}",
                                     headers=self.tokens.header(),
                                     read_timeout=s.watch_timeout + s.request_timeout) as resp:
            if resp.status != 200:
                self._check(resp, await resp.read())
            self.watches += 1
            self._backoff.reset()
            buf = b""
            async for chunk in resp.chunks():  # pieces as they come; a line (a pod object) may span several
                buf += chunk
                if b"\n" not in buf:
                    continue
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._apply(orjson.loads(line))
                        seen += 1
            if buf.strip():
                self._apply(orjson.loads(buf))
                seen += 1
        return seen

    def _apply_pod(self, kind: str, obj: dict[str, Any]) -> None:
        """One pod into the cache. A pod object we cannot read is skipped and counted, not fatal: failing the
        watch would only make us relist into the same object again and again."""
        try:
            if kind == "DELETED":
                self.cache.delete(obj)
            else:
                self.cache.upsert(obj)
        except (AttributeError, TypeError, KeyError, ValueError) as e:
            metrics.ERRORS.labels(component="kubernetes", kind="bad_pod").inc()
            log.warning("pod object not understood; skipped",
                        extra={"error": f"{type(e).__name__}: {e}", "event": kind,
                               "pod": str(obj.get("metadata"))[:200]})

    def _apply(self, event: dict[str, Any]) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("object") or {}, dict):
            raise ApiError(f"watch event is not an object: {str(event)[:200]}")
        kind = event.get("type")
        obj = event.get("object") or {}
        self.events += 1
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Gone(str(obj.get("message", "410 Gone")))
            raise ApiError(f"watch error event: {obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._apply_pod(kind, obj)
        elif kind != "BOOKMARK":
            raise ApiError(f"unknown watch event type {kind!r}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)

