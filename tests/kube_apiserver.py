"""A small Kubernetes API server for tests: pods list+watch over real HTTP on 127.0.0.1, as the real one speaks it.

- GET /api/v1/pods (list): PodList with metadata.resourceVersion; honours fieldSelector=spec.nodeName=...,
  limit and continue (pages), bearer-token auth (401 Status otherwise).
- GET /api/v1/pods?watch=1 (watch): chunked newline-delimited JSON events ADDED / MODIFIED / DELETED from the
  given resourceVersion, BOOKMARK events when allowWatchBookmarks=true, ends after timeoutSeconds; a
  resourceVersion older than the compaction point gets 410 (HTTP status, or an ERROR event with a Status of code
  410, as the real server does depending on when it notices).
- Faults on demand: drop the next watch connection after N events (no terminating chunk), expire history (410),
  end all watches, rotate the accepted token.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def make_pod(name: str, namespace: str = "default", node: str = "node-a", uid: str | None = None,
             labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
             containers: dict[str, tuple[str, str, int]] | None = None,
             owner: tuple[str, str] | None = None, host_paths: dict[str, str] | None = None) -> dict[str, Any]:
    """containers: name -> (image, container id without runtime prefix, restart count)."""
    containers = containers or {"app": ("registry.local/app:1.0", uuid.uuid4().hex + uuid.uuid4().hex, 0)}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                            "labels": labels or {}, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": str(uuid.uuid4()), "controller": True}]
    volumes = [{"name": v, "hostPath": {"path": p}} for v, p in (host_paths or {}).items()]
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": meta,
        "spec": {"nodeName": node, "volumes": volumes,
                 "containers": [{"name": n, "image": img} for n, (img, _, _) in containers.items()]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": n, "image": img, "containerID": f"containerd://{cid}", "restartCount": rc, "ready": True}
            for n, (img, cid, rc) in containers.items()]},
    }


@dataclass
class WatchRequest:
    resource_version: str | None
    field_selector: str | None
    bookmarks: bool
    timeout: str | None
    auth: str | None


@dataclass
class FakeApiServer:
    token: str | None = None
    gone_as_event: bool = False  # 410 for an expired resourceVersion as an ERROR event instead of HTTP status
    page_size_cap: int | None = None
    rv: int = 1000
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    compacted: int = 0  # a watch from a resourceVersion below this gets 410
    lists: int = 0
    list_selectors: list[str | None] = field(default_factory=list)
    watches: list[WatchRequest] = field(default_factory=list)
    auth_seen: list[str | None] = field(default_factory=list)
    unauthorized: int = 0
    drop_after: int | None = None  # the next watch connection is cut after this many events
    active_watches: int = 0

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()
        self._end_gen = 0
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self, ssl_context: Any = None) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._pods)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        self.end_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- state changes --------------------------------------------------------------------------------------
    def _record(self, type_: str, pod: dict[str, Any]) -> None:
        self.rv += 1
        pod = copy.deepcopy(pod)
        pod["metadata"]["resourceVersion"] = str(self.rv)
        if type_ == "DELETED":
            self.pods.pop(pod["metadata"]["uid"], None)
        else:
            self.pods[pod["metadata"]["uid"]] = pod
        self.history.append((self.rv, type_, pod))
        self._notify()

    def add(self, pod: dict[str, Any]) -> None:
        self._record("ADDED", pod)

    def modify(self, pod: dict[str, Any]) -> None:
        self._record("MODIFIED", pod)

    def delete(self, uid: str) -> None:
        self._record("DELETED", self.pods[uid])

    def bookmark(self) -> int:
        """A BOOKMARK at a new resourceVersion (as when other nodes' pods changed): no pod changes here."""
        self.rv += 1
        self.history.append((self.rv, "BOOKMARK", {"kind": "Pod", "apiVersion": "v1",
                                                   "metadata": {"resourceVersion": str(self.rv)}}))
        self._notify()
        return self.rv

    def expire(self) -> None:
        """Compact history: every resourceVersion handed out so far is too old. Open watches end (with an ERROR
        410 event when gone_as_event) and the next change gets the first valid resourceVersion."""
        self.rv += 1
        self.compacted = self.rv
        self.end_watches()

    def end_watches(self) -> None:
        self._end_gen += 1
        self._notify()

    def _notify(self) -> None:
        self._seq += 1

        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(wake())

    # -- HTTP -----------------------------------------------------------------------------------------------
    @staticmethod
    def _status(code: int, reason: str, message: str) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}

    def _node_of(self, selector: str | None) -> str | None:
        if not selector:
            return None
        key, _, value = selector.partition("=")
        assert key == "spec.nodeName", f"unsupported fieldSelector {selector!r}"
        return value

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.auth_seen.append(auth)
        if self.token is not None and auth != f"Bearer {self.token}":
            self.unauthorized += 1
            return web.json_response(self._status(401, "Unauthorized", "Unauthorized"), status=401)
        q = request.query
        node = self._node_of(q.get("fieldSelector"))
        if q.get("watch") in ("1", "true"):
            return await self._watch(request, node)
        if "continue" not in q:
            self.lists += 1
            self.list_selectors.append(q.get("fieldSelector"))
        items = [p for p in self.pods.values() if node is None or p["spec"]["nodeName"] == node]
        start = int(q.get("continue", "0"))
        limit = int(q.get("limit", "0")) or len(items) or 1
        if self.page_size_cap:
            limit = min(limit, self.page_size_cap)
        page = items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page})

    async def _watch(self, request: web.Request, node: str | None) -> web.StreamResponse:
        q = request.query
        self.watches.append(WatchRequest(q.get("resourceVersion"), q.get("fieldSelector"),
                                         q.get("allowWatchBookmarks") == "true", q.get("timeoutSeconds"),
                                         request.headers.get("Authorization")))
        since = int(q.get("resourceVersion") or "0")
        expired = self._status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
        if since and since < self.compacted and not self.gone_as_event:
            return web.json_response(expired, status=410)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if since and since < self.compacted:
            await resp.write(json.dumps({"type": "ERROR", "object": expired}).encode() + b"\n")
            await resp.write_eof()
            return resp
        bookmarks = q.get("allowWatchBookmarks") == "true"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(q.get("timeoutSeconds") or 1800)
        drop_after, self.drop_after = self.drop_after, None
        end_gen = self._end_gen
        sent = 0
        self.active_watches += 1
        try:
            while True:
                seen = self._seq
                if self._end_gen != end_gen:
                    if self.gone_as_event and self.compacted > since:
                        await resp.write(json.dumps({"type": "ERROR", "object": expired}).encode() + b"\n")
                    break
                for rv, type_, obj in [h for h in self.history if h[0] > since]:
                    since = rv
                    if type_ == "BOOKMARK":
                        if not bookmarks:
                            continue
                    elif node is not None and obj["spec"]["nodeName"] != node:
                        continue
                    await resp.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
                    sent += 1
                    if drop_after is not None and sent >= drop_after:
                        # Cut the connection mid-stream: no terminating chunk.
                        assert request.transport is not None
                        request.transport.close()
                        return resp
                left = deadline - loop.time()
                if left <= 0:
                    break
                async with self._changed:
                    if self._seq == seen:
                        try:
                            await asyncio.wait_for(self._changed.wait(), left)
                        except asyncio.TimeoutError:
                            pass
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.active_watches -= 1
        return resp
