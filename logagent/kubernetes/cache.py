"""PodCache: this node's pods as the API watch last described them, looked up by uid, container id or name.

The watch (api.py) writes into the cache; the enrichment stage and the kernel OOM attribution read from it. Both
run on the same event loop, so there is no locking. A deleted pod stays for `retention` seconds (default 5 min)
so that the lines its containers wrote last, read after the DELETED event, are still tagged.

Lookups never wait: a pod the watch has not delivered yet is simply not there (callers fall back to what the path
says). This module must never do I/O.

Public read API (also used by the kernel engineer through `ctx.services.kubernetes.cache`):
    by_uid(uid)            -> pod-level dict (no container fields, plus "containers": [...]) or None
    by_container_id(cid)   -> the `meta["kubernetes"]` dict of that container (id with or without "containerd://")
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ANNOTATION_PREFIX = "logagent.io/"
# CronJob-made Jobs are named "<cronjob>-<scheduled time in minutes since the epoch>". Requiring the number to be
# a plausible time (2015 .. far future) keeps "backup-20240101" (a date: ~2008 in minutes) a plain Job.
_CRONJOB_SUFFIX = re.compile(r"^(?P<cronjob>.+)-(?P<minutes>\d{8,10})$")
_CRONJOB_MIN_MINUTES = 23_667_840  # 2015-01-01T00:00Z


@dataclass(slots=True)
class ContainerState:
    name: str
    image: str | None
    container_id: str | None  # without the runtime prefix
    restart_count: int | None
    last_container_id: str | None  # the previous instance (lastState.terminated), e.g. the one just OOM-killed


@dataclass(slots=True)
class PodEntry:
    uid: str
    namespace: str
    name: str
    node: str | None
    labels: dict[str, str]
    annotations: dict[str, str]  # only the selected keys (allow-list + logagent.io/*)
    owner: dict[str, str] | None
    containers: dict[str, ContainerState]
    host_paths: tuple[tuple[str, str], ...]  # (host directory a container writes to, volume name)
    version: int
    deleted_at: float | None = None
    # every container id this pod has had while we watched it: id -> (container name, restart count or None)
    known_ids: dict[str, tuple[str, int | None]] = field(default_factory=dict)

def strip_runtime(container_id: str | None) -> str | None:
    """'containerd://abc' -> 'abc' (also docker://, cri-o://)."""
    if not container_id:
        return None
    _, sep, rest = container_id.partition("://")
    return rest if sep else container_id


def resolve_owner(meta: dict[str, Any], labels: dict[str, str]) -> dict[str, str] | None:
    """The workload that owns a pod, one level up where the name convention allows it without an API call.

    ReplicaSet -> Deployment: a Deployment's ReplicaSets are named "<deployment>-<pod-template-hash>" and their pods
    carry the `pod-template-hash` label; we strip exactly that label's value. A ReplicaSet whose name does not end
    in it (made by hand) stays a ReplicaSet. Stripping "the last dash segment" blindly would misname those.
    Job -> CronJob: see _CRONJOB_SUFFIX. DaemonSet, StatefulSet, Node (static pods) and others: as given.
    """
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if not ref:
        return None
    kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
    if kind == "ReplicaSet":
        h = labels.get("pod-template-hash")
        if h and name.endswith("-" + h):
            return {"kind": "Deployment", "name": name[: -len(h) - 1]}
    elif kind == "Job":
        m = _CRONJOB_SUFFIX.match(name)
        if m and _CRONJOB_MIN_MINUTES <= int(m["minutes"]) <= time.time() / 60 + 525_600:
            return {"kind": "CronJob", "name": m["cronjob"]}
    return {"kind": kind, "name": name}


class PodCache:
    def __init__(self, retention: float = 300.0, annotation_keys: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retention = retention
        self.annotation_keys = frozenset(annotation_keys)
        self.clock = clock
        self._pods: dict[str, PodEntry] = {}
        self._by_name: dict[tuple[str, str], str] = {}
        self._by_cid: dict[str, str] = {}  # container id -> pod uid
        self._version = 0
        self._next_purge = 0.0
        self.synced = False  # a full list has been applied at least once

    # -- writes (from the watch) ----------------------------------------------------------------------------
    def upsert(self, pod: dict[str, Any]) -> PodEntry | None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return None
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        annotations = {
            str(k): str(v) for k, v in (meta.get("annotations") or {}).items()
            if k in self.annotation_keys or str(k).startswith(ANNOTATION_PREFIX)
        }
        images: dict[str, str] = {}
        for key in ("initContainers", "containers", "ephemeralContainers"):
            for c in spec.get(key) or ():
                if c.get("name"):
                    images[c["name"]] = c.get("image")
        old = self._pods.get(uid)
        known = dict(old.known_ids) if old is not None else {}
        containers: dict[str, ContainerState] = {}
        for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
            for cs in status.get(key) or ():
                name = cs.get("name")
                if not name:
                    continue
                cid = strip_runtime(cs.get("containerID"))
                restarts = cs.get("restartCount")
                last = strip_runtime(((cs.get("lastState") or {}).get("terminated") or {}).get("containerID"))
                containers[name] = ContainerState(name, images.get(name) or cs.get("image"), cid, restarts, last)
                if cid:
                    known[cid] = (name, restarts)
                if last and last not in known:
                    known[last] = (name, restarts - 1 if isinstance(restarts, int) and restarts > 0 else None)
        for name, image in images.items():
            if name not in containers:
                containers[name] = ContainerState(name, image, None, None, None)
        if len(known) > 64:  # a crash-looping container must not grow this without bound
            known = dict(list(known.items())[-64:])
        host_paths = _writable_host_dirs(spec)
        self._version += 1
        entry = PodEntry(
            uid=uid, namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
            node=spec.get("nodeName"), labels=labels, annotations=annotations,
            owner=resolve_owner(meta, labels), containers=containers, host_paths=host_paths,
            version=self._version, known_ids=known,
        )
        if old is not None:
            self._unindex(old)
        self._pods[uid] = entry
        self._by_name[(entry.namespace, entry.name)] = uid
        for cid in known:
            self._by_cid[cid] = uid
        self._maybe_purge()
        return entry

    def delete(self, pod: dict[str, Any]) -> None:
        """The pod is gone from the API; keep it `retention` seconds for its last lines."""
        entry = self.upsert(pod)  # the DELETED event carries the final state (e.g. the last container ids)
        if entry is not None:
            entry.deleted_at = self.clock()

    def replace_all(self, pods: list[dict[str, Any]]) -> int:
        """Apply a full list (first sync or relist after 410): pods missing from it were deleted meanwhile.
        Returns how many pod objects could not be read (skipped, so one odd pod cannot block every other)."""
        seen = set()
        bad = 0
        for pod in pods:
            try:
                entry = self.upsert(pod)
            except (AttributeError, TypeError, KeyError, ValueError):
                bad += 1
                continue
            if entry is not None:
                seen.add(entry.uid)
        now = self.clock()
        for uid, entry in self._pods.items():
            if uid not in seen and entry.deleted_at is None:
                entry.deleted_at = now
        self.synced = True
        return bad

    def _unindex(self, entry: PodEntry) -> None:
        if self._by_name.get((entry.namespace, entry.name)) == entry.uid:
            del self._by_name[(entry.namespace, entry.name)]
        for cid in entry.known_ids:
            if self._by_cid.get(cid) == entry.uid:
                del self._by_cid[cid]

    def _maybe_purge(self) -> None:
        now = self.clock()
        if now < self._next_purge:
            return
        self._next_purge = now + min(1.0, self.retention / 4 if self.retention > 0 else 0.0)
        expired = [e for e in self._pods.values() if e.deleted_at is not None and now - e.deleted_at >= self.retention]
        for entry in expired:
            self._unindex(entry)
            del self._pods[entry.uid]
        if expired:
            self._version += 1

    # -- reads ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._pods)

    def pod(self, uid: str | None) -> PodEntry | None:
        if uid is None:
            return None
        self._maybe_purge()
        return self._pods.get(uid)

    def find(self, namespace: str | None, name: str | None) -> PodEntry | None:
        if namespace is None or name is None:
            return None
        self._maybe_purge()
        uid = self._by_name.get((namespace, name))
        return self._pods.get(uid) if uid else None

    def find_container(self, container_id: str | None) -> PodEntry | None:
        cid = strip_runtime(container_id)
        if not cid:
            return None
        self._maybe_purge()
        uid = self._by_cid.get(cid)
        if uid is None and 12 <= len(cid) < 64:  # a short id (docker ps style): rare, so a scan is fine
            uid = next((u for k, u in self._by_cid.items() if k.startswith(cid)), None)
        return self._pods.get(uid) if uid else None

    @property
    def generation(self) -> int:
        """Changes whenever any pod is added, changed or purged: answers derived from the whole cache (such as
        `host_path_owner`) stay valid while it does not."""
        return self._version

    def host_path_owner(self, path: str) -> tuple[PodEntry, str] | None:
        """The pod (and volume name) that writes `path` through a hostPath volume, or None.

        Only mounts a container can write through count (a read-only mount, such as this agent's own /var/log,
        owns nothing). The deepest host directory wins (/data/app over /data). If several pods write to that
        same directory the writer cannot be known: None, rather than a guess that would tag one pod's lines
        with another's name. A live pod wins over deleted ones (its predecessor's retention may overlap).
        """
        best_len = -1
        found: list[tuple[PodEntry, str]] = []
        for entry in self._pods.values():
            for hp, volume in entry.host_paths:
                # a pod mounting the whole host ("/", node debuggers) is no log volume: `hp + "/"` is "//" then
                if path == hp or path.startswith(hp + "/"):
                    if len(hp) > best_len:
                        best_len, found = len(hp), [(entry, volume)]
                    elif len(hp) == best_len and all(e is not entry for e, _ in found):
                        found.append((entry, volume))
        live = [f for f in found if f[0].deleted_at is None] or found
        return live[0] if len(live) == 1 else None

    def by_uid(self, uid: str) -> dict[str, Any] | None:
        entry = self.pod(uid)
        if entry is None:
            return None
        out = pod_meta(entry)
        out["containers"] = [
            {"container": c.name, "container_id": c.container_id, "image": c.image, "restart_count": c.restart_count}
            for c in entry.containers.values()
        ]
        if entry.deleted_at is not None:
            out["deleted"] = True
        return out

    def by_container_id(self, container_id: str) -> dict[str, Any] | None:
        entry = self.find_container(container_id)
        if entry is None:
            return None
        cid = strip_runtime(container_id) or ""
        key = cid if cid in entry.known_ids else next((k for k in entry.known_ids if k.startswith(cid)), cid)
        name, restarts = entry.known_ids.get(key, (None, None))
        if name is None:
            return None
        out = container_meta(entry, name, restart_count=restarts, container_id=key)
        if entry.deleted_at is not None:
            out["deleted"] = True
        return out


def _writable_host_dirs(spec: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(host directory, volume name) for every hostPath volume some container mounts writable. A mount with
    subPath writes below the volume's path, so that deeper directory is the one it owns."""
    volumes = {str(v.get("name", "")): str(v["hostPath"].get("path", ""))
               for v in spec.get("volumes") or () if isinstance(v.get("hostPath"), dict)}
    if not volumes:
        return ()
    out: dict[tuple[str, str], None] = {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(key) or ():
            for m in c.get("volumeMounts") or ():
                name = str(m.get("name", ""))
                if name not in volumes or m.get("readOnly"):
                    continue
                hp = volumes[name].rstrip("/") or "/"
                sub = str(m.get("subPath") or "").strip("/")
                if sub:
                    hp = f"{hp.rstrip('/')}/{sub}"
                out[(hp, name)] = None
    return tuple(out)


def pod_meta(entry: PodEntry) -> dict[str, Any]:
    out: dict[str, Any] = {"namespace": entry.namespace, "pod": entry.name, "pod_uid": entry.uid}
    if entry.labels:
        out["labels"] = entry.labels
    if entry.annotations:
        out["annotations"] = entry.annotations
    if entry.node:
        out["node"] = entry.node
    if entry.owner:
        out["owner"] = entry.owner
    return out


def container_meta(entry: PodEntry, container: str | None, restart_count: int | None = None,
                   container_id: str | None = None) -> dict[str, Any]:
    """The `meta["kubernetes"]` dict for a container of a pod. restart_count / container_id come from the path
    when it has them: a /var/log/pods/.../2.log file belongs to restart 2 even if the pod has restarted since."""
    out = pod_meta(entry)
    if container is None:
        return out
    out["container"] = container
    cs = entry.containers.get(container)
    if container_id is None and cs is not None:
        if restart_count is None or restart_count == cs.restart_count:
            container_id = cs.container_id
        elif cs.restart_count is not None and restart_count == cs.restart_count - 1:
            container_id = cs.last_container_id
        else:
            container_id = next((k for k, (n, r) in entry.known_ids.items() if n == container and r == restart_count),
                                None)
    if container_id:
        out["container_id"] = container_id
    if restart_count is None and cs is not None and container_id and container_id == cs.container_id:
        restart_count = cs.restart_count
    if restart_count is not None:
        out["restart_count"] = restart_count
    if cs is not None and cs.image:
        out["image"] = cs.image
    return out
