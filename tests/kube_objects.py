"""The fake API server's writable objects: Nodes (status PATCH), core/v1 Events (create, patch, cluster-wide
list+watch) and coordination.k8s.io/v1 Leases, answering as the real server does.

- PATCH /api/v1/nodes/<name>/status with `application/strategic-merge-patch+json` merges `status.conditions` by
  their `type` (the patch strategy Kubernetes declares for NodeCondition) and leaves every other condition alone;
  `application/merge-patch+json` (RFC 7386) replaces the list whole, as the real server does; any other content
  type is 415. A condition without `type` or with a `status` other than True/False/Unknown is 422 Invalid.
- POST /api/v1/namespaces/<ns>/events: 409 AlreadyExists for a taken name, 400 when the body's namespace is not the
  URL's, 422 when the involved object's namespace differs from the event's or `reason`/`involvedObject` is
  missing, or `message` is longer than 1024 bytes (the note limit of events.k8s.io). `generateName` works.
  PATCH .../events/<name> (strategic merge or merge patch) is 404 for an event that is not there.
- GET /api/v1/events (and per namespace): list with metadata.resourceVersion; `watch=1` streams ADDED / MODIFIED
  / DELETED from a resourceVersion, BOOKMARKs when asked, and 410 Gone (HTTP status) for a resourceVersion older
  than the compaction point (`expire_events()`).
- Leases: GET, POST (409 AlreadyExists), PUT with optimistic concurrency (409 Conflict when the body's
  metadata.resourceVersion is not the stored one, as two electors racing see it), DELETE.
- Faults: `fail_next(method, path_prefix, status, times)` answers the next matching requests with that status.
Every object write takes the next resourceVersion of the one server-wide counter, as etcd revisions do.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
# patchMergeKey of the lists the fake's objects have (from the Kubernetes types)
_MERGE_KEYS = {"conditions": "type", "addresses": "type"}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_merge(target: Any, patch: Any, key: str = "") -> Any:
    """Strategic merge patch for the fields the fake knows: lists with a merge key merge item by item (an item
    with `$patch: delete` is removed), other lists are replaced, null deletes a field."""
    if isinstance(patch, list) and key in _MERGE_KEYS and isinstance(target, list):
        mk = _MERGE_KEYS[key]
        out = [copy.deepcopy(t) for t in target]
        for item in patch:
            pos = next((i for i, t in enumerate(out) if t.get(mk) == item.get(mk)), None)
            if item.get("$patch") == "delete":
                if pos is not None:
                    out.pop(pos)
            elif pos is None:
                out.append(copy.deepcopy(item))
            else:
                out[pos] = strategic_merge(out[pos], item)
        return out
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = strategic_merge(out.get(k), v, k)
    return out


def make_node(name: str, uid: str | None = None) -> dict[str, Any]:
    """A Node as the kubelet leaves it: its own conditions (Ready, MemoryPressure...) already there."""
    kubelet = [{"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": _now(),
                "lastTransitionTime": _now()}
               for t, s, r, m in (("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient"),
                                  ("Ready", "True", "KubeletReady", "kubelet is posting ready status"))]
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "uid": uid or str(uuid.uuid4()), "labels": {}},
            "status": {"conditions": kubelet}}


class ObjectsMixin:
    """Mixed into FakeApiServer (which provides `rv`, `compacted`, `token`, `_notify`, `_changed`, `_seq`,
    `_status`, `_end_gen`)."""

    rv: int
    token: str | None

    def _init_objects(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.node_patches: list[tuple[str, str, Any]] = []  # (node, content type, body) in arrival order
        self.events: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> event
        self.event_history: list[tuple[int, str, dict[str, Any]]] = []
        self.events_compacted = 0
        self.event_writes: list[tuple[str, str, str]] = []  # (verb, namespace, name)
        self.event_watches: list[str | None] = []  # resourceVersion each event watch asked for
        self.event_lists = 0
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.lease_writes: list[tuple[str, str, int]] = []  # (verb, holderIdentity, HTTP status)
        self._faults: list[list[Any]] = []
        self.grants_used: set[tuple[str, str, str, str]] = set()  # (apiGroup, resource, verb, namespace or "")

    def _object_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._faults_and_auth)
        r = app.router
        r.add_get("/api/v1/nodes/{name}", self._get_node)
        r.add_patch("/api/v1/nodes/{name}/status", self._patch_node_status)
        r.add_get("/api/v1/events", self._list_events)
        r.add_get("/api/v1/namespaces/{ns}/events", self._list_events)
        r.add_post("/api/v1/namespaces/{ns}/events", self._create_event)
        r.add_patch("/api/v1/namespaces/{ns}/events/{name}", self._patch_event)
        leases = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        r.add_post(leases, self._create_lease)
        r.add_get(leases + "/{name}", self._get_lease)
        r.add_put(leases + "/{name}", self._update_lease)
        r.add_delete(leases + "/{name}", self._delete_lease)

    # -- test controls --------------------------------------------------------------------------------------
    def fail_next(self, method: str, path_prefix: str, status: int = 500, times: int = 1) -> None:
        self._faults.append([method, path_prefix, status, times])

    def add_node(self, node: dict[str, Any]) -> None:
        self.rv += 1
        node = copy.deepcopy(node)
        node["metadata"]["resourceVersion"] = str(self.rv)
        self.nodes[node["metadata"]["name"]] = node

    def conditions(self, node: str) -> dict[str, dict[str, Any]]:
        return {c["type"]: c for c in self.nodes[node]["status"].get("conditions") or ()}

    def add_event(self, namespace: str, name: str, reason: str, message: str, kind: str = "Pod",
                  obj_name: str = "web-0", type_: str = "Normal") -> dict[str, Any]:
        """An event as another component (kubelet, scheduler) would create it."""
        ev = {"kind": "Event", "apiVersion": "v1", "metadata": {"name": name, "namespace": namespace},
              "involvedObject": {"kind": kind, "namespace": namespace if kind != "Node" else "", "name": obj_name,
                                 "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{namespace}/{obj_name}")),
                                 "apiVersion": "v1"},
              "reason": reason, "message": message, "type": type_, "count": 1,
              "firstTimestamp": _now(), "lastTimestamp": _now(), "source": {"component": "kubelet", "host": "n1"}}
        return self._store_event("ADDED", ev)

    def bump_event(self, namespace: str, name: str) -> dict[str, Any]:
        """The same event seen again by its reporter: count + 1 (a MODIFIED with a new resourceVersion)."""
        ev = copy.deepcopy(self.events[(namespace, name)])
        ev["count"] = int(ev.get("count") or 1) + 1
        ev["lastTimestamp"] = _now()
        return self._store_event("MODIFIED", ev)

    def expire_events(self) -> None:
        """Compaction: every event resourceVersion handed out so far is too old to watch from."""
        self.rv += 1
        self.events_compacted = self.rv
        self.end_watches()  # type: ignore[attr-defined]

    def _store_event(self, type_: str, ev: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        ev = copy.deepcopy(ev)
        meta = ev["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(self.rv)
        self.events[(meta["namespace"], meta["name"])] = ev
        self.event_history.append((self.rv, type_, ev))
        self._notify()  # type: ignore[attr-defined]
        return ev

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _grant_of(self, request: web.Request) -> tuple[str, str, str, str]:
        """What RBAC must allow for this request: (apiGroup, resource[/subresource], verb, namespace)."""
        parts = request.path.strip("/").split("/")
        group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
        ns = ""
        if rest[:1] == ["namespaces"] and len(rest) > 2:
            ns, rest = rest[1], rest[2:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        if request.method == "GET":
            verb = "watch" if request.query.get("watch") in ("1", "true") else ("get" if len(rest) > 1 else "list")
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[request.method]
        return group, resource, verb, ns

    @web.middleware
    async def _faults_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.grants_used.add(self._grant_of(request))
        if request.path == "/api/v1/pods":
            return await handler(request)  # the pods handler does its own auth bookkeeping
        for f in self._faults:
            if f[3] > 0 and f[0] == request.method and request.path.startswith(f[1]):
                f[3] -= 1
                return self._fail(f[2], "InternalError" if f[2] >= 500 else "TooManyRequests", "injected fault")
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._fail(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    def _fail(self, code: int, reason: str, message: str) -> web.Response:
        return web.json_response(self._status(code, reason, message), status=code)  # type: ignore[attr-defined]

    async def _body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except ValueError as e:
            raise web.HTTPBadRequest(text=json.dumps(self._status(400, "BadRequest", str(e))),  # type: ignore
                                     content_type="application/json") from None

    def _patched(self, request: web.Request, obj: dict[str, Any], patch: Any) -> dict[str, Any] | web.Response:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        if ctype == SMP:
            return strategic_merge(obj, patch)
        if ctype == MERGE:
            return merge_patch(obj, patch)
        return self._fail(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                          f"accepted media types include: {SMP}, {MERGE}")

    # -- nodes ----------------------------------------------------------------------------------------------
    async def _get_node(self, request: web.Request) -> web.Response:
        node = self.nodes.get(request.match_info["name"])
        if node is None:
            return self._fail(404, "NotFound", f'nodes "{request.match_info["name"]}" not found')
        return web.json_response(node)

    async def _patch_node_status(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        node = self.nodes.get(name)
        if node is None:
            return self._fail(404, "NotFound", f'nodes "{name}" not found')
        patch = await self._body(request)
        self.node_patches.append((name, request.headers.get("Content-Type", ""), patch))
        if not isinstance(patch, dict) or set(patch) - {"status", "metadata"}:
            return self._fail(422, "Invalid", "a status patch may only change status")
        new = self._patched(request, node, patch)
        if isinstance(new, web.Response):
            return new
        for i, c in enumerate(new.get("status", {}).get("conditions") or ()):
            if not c.get("type") or c.get("status") not in ("True", "False", "Unknown"):
                return self._fail(422, "Invalid", f"status.conditions[{i}]: type and status True|False|Unknown "
                                  f"are required")
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        self.nodes[name] = new
        return web.json_response(new)

    # -- events ---------------------------------------------------------------------------------------------
    async def _create_event(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        ev = await self._body(request)
        meta = ev.get("metadata") or {}
        if meta.get("namespace", ns) != ns:
            return self._fail(400, "BadRequest", "the namespace of the provided object does not match the "
                              "namespace sent on the request")
        inv = ev.get("involvedObject")
        if not isinstance(inv, dict) or not ev.get("reason"):
            return self._fail(422, "Invalid", "involvedObject and reason are required")
        if inv.get("namespace") and inv["namespace"] != ns:
            return self._fail(422, "Invalid", "involvedObject.namespace: does not match event.namespace")
        if len(str(ev.get("message", "")).encode()) > 1024:
            return self._fail(422, "Invalid", "message: Too long: may not be longer than 1024")
        if not meta.get("name"):
            if not meta.get("generateName"):
                return self._fail(422, "Invalid", "metadata.name or generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if (ns, meta["name"]) in self.events:
            return self._fail(409, "AlreadyExists", f'events "{meta["name"]}" already exists')
        meta["namespace"] = ns
        ev["metadata"] = meta
        self.event_writes.append(("create", ns, meta["name"]))
        return web.json_response(self._store_event("ADDED", ev), status=201)

    async def _patch_event(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        ev = self.events.get((ns, name))
        if ev is None:
            return self._fail(404, "NotFound", f'events "{name}" not found')
        patch = await self._body(request)
        new = self._patched(request, ev, patch)
        if isinstance(new, web.Response):
            return new
        self.event_writes.append(("patch", ns, name))
        return web.json_response(self._store_event("MODIFIED", new))

    async def _list_events(self, request: web.Request) -> web.StreamResponse:
        ns = request.match_info.get("ns")
        q = request.query
        if q.get("watch") in ("1", "true"):
            return await self._watch_events(request, ns)
        self.event_lists += 1
        items = [e for (n, _), e in self.events.items() if ns is None or n == ns]
        return web.json_response({"kind": "EventList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": str(self.rv)}, "items": items})

    async def _watch_events(self, request: web.Request, ns: str | None) -> web.StreamResponse:
        q = request.query
        since = int(q.get("resourceVersion") or "0")
        self.event_watches.append(q.get("resourceVersion"))
        if since and since < self.events_compacted:
            return self._fail(410, "Expired", f"too old resource version: {since} ({self.events_compacted})")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        bookmarks = q.get("allowWatchBookmarks") == "true"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(q.get("timeoutSeconds") or 1800)
        end_gen = self._end_gen  # type: ignore[attr-defined]
        try:
            if not since:
                since = self.rv
                for e in list(self.events.values()):
                    await resp.write(json.dumps({"type": "ADDED", "object": e}).encode() + b"\n")
            while self._end_gen == end_gen:  # type: ignore[attr-defined]
                seen = self._seq  # type: ignore[attr-defined]
                for rv, type_, obj in [h for h in self.event_history if h[0] > since]:
                    since = rv
                    if ns is None or obj["metadata"]["namespace"] == ns:
                        await resp.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")
                if bookmarks and self.rv > since:
                    since = self.rv
                    await resp.write(json.dumps({"type": "BOOKMARK", "object": {
                        "kind": "Event", "apiVersion": "v1", "metadata": {"resourceVersion": str(since)}}}).encode()
                        + b"\n")
                left = deadline - loop.time()
                if left <= 0:
                    break
                async with self._changed:  # type: ignore[attr-defined]
                    if self._seq == seen:  # type: ignore[attr-defined]
                        try:
                            await asyncio.wait_for(self._changed.wait(), left)  # type: ignore[attr-defined]
                        except asyncio.TimeoutError:
                            pass
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    # -- leases ---------------------------------------------------------------------------------------------
    def _lease_answer(self, verb: str, body: dict[str, Any], resp: web.Response) -> web.Response:
        self.lease_writes.append((verb, str((body.get("spec") or {}).get("holderIdentity", "")), resp.status))
        return resp

    async def _get_lease(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        lease = self.leases.get((ns, name))
        if lease is None:
            return self._fail(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        return web.json_response(lease)

    def _lease_invalid(self, body: Any) -> str | None:
        if not isinstance(body, dict) or not isinstance(body.get("spec", {}), dict):
            return "expected a Lease"
        d = body.get("spec", {}).get("leaseDurationSeconds")
        if d is not None and (not isinstance(d, int) or d <= 0):
            return "spec.leaseDurationSeconds: must be greater than 0"
        return None

    async def _create_lease(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        body = await self._body(request)
        problem = self._lease_invalid(body)
        if problem:
            return self._fail(422, "Invalid", problem)
        name = (body.get("metadata") or {}).get("name")
        if (ns, name) in self.leases:
            return self._lease_answer("create", body, self._fail(
                409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists'))
        self.rv += 1
        body["metadata"] = {**body.get("metadata", {}), "namespace": ns, "uid": str(uuid.uuid4()),
                            "resourceVersion": str(self.rv)}
        self.leases[(ns, name)] = body
        return self._lease_answer("create", body, web.json_response(body, status=201))

    async def _update_lease(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        body = await self._body(request)
        problem = self._lease_invalid(body)
        if problem:
            return self._fail(422, "Invalid", problem)
        current = self.leases.get((ns, name))
        if current is None:
            return self._lease_answer("update", body, self._fail(
                404, "NotFound", f'leases.coordination.k8s.io "{name}" not found'))
        if (body.get("metadata") or {}).get("resourceVersion") != current["metadata"]["resourceVersion"]:
            return self._lease_answer("update", body, self._fail(
                409, "Conflict", f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": the '
                "object has been modified; please apply your changes to the latest version and try again"))
        self.rv += 1
        body["metadata"] = {**current["metadata"], **{k: v for k, v in body["metadata"].items()
                                                      if k in ("annotations", "labels")},
                            "resourceVersion": str(self.rv)}
        self.leases[(ns, name)] = body
        return self._lease_answer("update", body, web.json_response(body))

    async def _delete_lease(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if self.leases.pop((ns, name), None) is None:
            return self._fail(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})


def rbac_refuses(used: set[tuple[str, str, str, str]], rbac_file: str = "conf/kubernetes/10-rbac.yaml") -> set[Any]:
    """The requests in `used` that the shipped RBAC does NOT allow (ClusterRole anywhere, Role in its namespace)."""
    import yaml

    with open(rbac_file, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    allowed: set[tuple[str, str, str, str | None]] = set()
    for d in docs:
        if d["kind"] not in ("ClusterRole", "Role"):
            continue
        ns = d["metadata"].get("namespace") if d["kind"] == "Role" else None
        for r in d["rules"]:
            for g in r["apiGroups"]:
                for res in r["resources"]:
                    for v in r["verbs"]:
                        allowed.add((g, res, v, ns))
    return {u for u in used if (u[0], u[1], u[2], None) not in allowed and (u[0], u[1], u[2], u[3]) not in allowed}
