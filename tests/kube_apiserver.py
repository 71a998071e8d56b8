"""A small Kubernetes API server for tests: pods list+watch over real HTTP on 127.0.0.1, as the real one speaks it.

- GET /api/v1/pods (list): PodList with metadata.resourceVersion; honours fieldSelector=spec.nodeName=...,
  limit and continue (pages; the continue token is opaque and carries the snapshot's resourceVersion, so after a
  compaction it is answered with HTTP 410 "Expired", as the real server does), bearer-token auth (401 Status
  otherwise).
- GET /api/v1/pods?watch=1 (watch): chunked newline-delimited JSON events ADDED / MODIFIED / DELETED from the
  given resourceVersion (resourceVersion 0 or absent: the current pods as synthetic ADDED events first), BOOKMARK
  events when allowWatchBookmarks=true, ends after timeoutSeconds; a resourceVersion older than the compaction
  point gets 410 (HTTP status, or an ERROR event with a Status of code 410, as the real server does depending on
  when it notices).
- Faults on demand: drop the next watch connection after N events (no terminating chunk; optionally in the
  middle of the N-th event's JSON line), expire history (410), end all watches, rotate the accepted token.
- Every request's raw query string is kept (`queries`), so tests can check the exact wire form.
- Nodes (status PATCH), Events (create/patch, cluster-wide list+watch) and Leases: see tests/kube_objects.py.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.kube_objects import ObjectsMixin


def make_pod(name: str, namespace: str = "default", node: str = "node-a", uid: str | None = None,
             labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
             containers: dict[str, tuple[str, str, int]] | None = None,
             owner: tuple[str, str] | None = None, host_paths: dict[str, str] | None = None,
             read_only_host_paths: dict[str, str] | None = None,
             empty_dirs: tuple[str, ...] = ()) -> dict[str, Any]:
    """containers: name -> (image, container id without runtime prefix, restart count).
    host_paths / read_only_host_paths: volume name -> host directory, mounted by the first container (writable /
    readOnly) at /mnt/<volume>; empty_dirs: emptyDir volume names, mounted the same way."""
    containers = containers or {"app": ("registry.local/app:1.0", uuid.uuid4().hex + uuid.uuid4().hex, 0)}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                            "labels": labels or {}, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": str(uuid.uuid4()), "controller": True}]
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for paths, read_only in ((host_paths or {}, False), (read_only_host_paths or {}, True)):
        for v, p in paths.items():
            volumes.append({"name": v, "hostPath": {"path": p, "type": "DirectoryOrCreate"}})
            mounts.append({"name": v, "mountPath": f"/mnt/{v}", **({"readOnly": True} if read_only else {})})
    for v in empty_dirs:
        volumes.append({"name": v, "emptyDir": {}})
        mounts.append({"name": v, "mountPath": f"/mnt/{v}"})
    specs = [{"name": n, "image": img} for n, (img, _, _) in containers.items()]
    if mounts:
        specs[0]["volumeMounts"] = mounts
    return {
        "kind": "Pod", "apiVersion": "v1", "metadata": meta,
        "spec": {"nodeName": node, "volumes": volumes, "containers": specs},
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
class FakeApiServer(ObjectsMixin):
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
    drop_mid_line: bool = False  # ...and the cut falls in the middle of the drop_after-th event's line
    queries: list[str] = field(default_factory=list)  # raw query strings, in arrival order
    compact_after_page: bool = False  # compact history right after the next first page that has a continue token
    active_watches: int = 0

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()
        self._end_gen = 0
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self.url = ""
        self._init_objects()

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self, ssl_context: Any = None) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self._pods)
        self._object_routes(app)
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
        self.queries.append(request.query_string)
        if self.token is not None and auth != f"Bearer {self.token}":
            self.unauthorized += 1
            return web.json_response(self._status(401, "Unauthorized", "Unauthorized"), status=401)
        q = request.query
        node = self._node_of(q.get("fieldSelector"))
        if q.get("watch") in ("1", "true"):
            return await self._watch(request, node)
        start, snapshot = 0, self.rv
        if "continue" in q:
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"]))
                start, snapshot = int(token["start"]), int(token["rv"])
            except (ValueError, KeyError, TypeError):
                return web.json_response(self._status(400, "BadRequest", "continue key is not valid"), status=400)
            if snapshot < self.compacted:
                return web.json_response(self._status(
                    410, "Expired", "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."), status=410)
        else:
            self.lists += 1
            self.list_selectors.append(q.get("fieldSelector"))
        rv_asked = q.get("resourceVersion")
        if (q.get("resourceVersionMatch") == "Exact" and rv_asked and int(rv_asked) < self.compacted):
            return web.json_response(self._status(410, "Expired", f"too old resource version: {rv_asked} "
                                                  f"({self.compacted})"), status=410)
        # Pages after the first are served from the first one's snapshot; the fake keeps no old snapshots, so
        # it pages over the current pods (tests do not change pods in the middle of a paged list).
        items = [p for p in self.pods.values() if node is None or p["spec"]["nodeName"] == node]
        limit = int(q.get("limit", "0"))
        if limit and self.page_size_cap:
            limit = min(limit, self.page_size_cap)  # a server may return fewer than asked; never pages unasked
        limit = limit or len(items) or 1
        page = items[start:start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(snapshot)}
        if start + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": snapshot, "start": start + limit}).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
            if self.compact_after_page and start == 0:
                self.compact_after_page = False
                self.rv += 1
                self.compacted = self.rv
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
        mid_line, self.drop_mid_line = self.drop_mid_line, False
        end_gen = self._end_gen
        sent = 0
        self.active_watches += 1
        try:
            if not since:
                # resourceVersion 0 / unset means "any": the current state as ADDED events, then changes.
                since = self.rv
                for obj in list(self.pods.values()):
                    if node is None or obj["spec"]["nodeName"] == node:
                        await resp.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
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
                    line = json.dumps({"type": type_, "object": obj}).encode() + b"\n"
                    sent += 1
                    if drop_after is not None and sent >= drop_after:
                        if mid_line:
                            await resp.write(line[: len(line) // 2])
                        else:
                            await resp.write(line)
                        # Cut the connection mid-stream: no terminating chunk.
                        assert request.transport is not None
                        request.transport.close()
                        return resp
                    await resp.write(line)
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
