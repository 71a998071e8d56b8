"""Pod identity from log file paths: works with no API access at all.

Three layouts are recognised (all under a configurable root prefix, so tests can lay the tree out in a temp dir):

    /var/log/containers/<pod>_<namespace>_<container>-<64 hex container id>.log      (symlink, kubelet-made)
    /var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart count>.log[.<timestamp>[.gz]]
    /var/lib/kubelet/pods/<uid>/volumes/<plugin, e.g. kubernetes.io~empty-dir>/<volume>/...

A /var/log/containers link's target is a /var/log/pods path: it is read once (os.readlink) to learn the pod uid
and restart count, which the link's own name does not carry. Results are cached per path: the enrichment stage
calls this once per batch, and a path's identity never changes (a new container gets a new file name).

This module must never touch the API server or block: it is string work plus at most one readlink per path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

# Pod names are DNS subdomains and namespaces DNS labels: neither contains "_", which is what makes the kubelet's
# "_"-joined names splittable. Container names are DNS labels.
_CONTAINERS_RE = re.compile(
    r"(?:^|/)var/log/containers/(?P<pod>[^_/]+)_(?P<namespace>[^_/]+)_(?P<container>[^/]+)-(?P<cid>[0-9a-f]{64})\.log$"
)
_PODS_RE = re.compile(
    r"(?:^|/)var/log/pods/(?P<namespace>[^_/]+)_(?P<pod>[^_/]+)_(?P<uid>[^_/]+)/(?P<container>[^/]+)/"
    r"(?P<restart>\d+)\.log(?:\.(?P<rotated>[^/]+))?$"
)
# A link target may be relative or absolute and carries no root prefix of ours: match its tail only.
_POD_TARGET_RE = re.compile(
    r"(?:^|/)pods/(?P<namespace>[^_/]+)_(?P<pod>[^_/]+)_(?P<uid>[^_/]+)/(?P<container>[^/]+)/(?P<restart>\d+)\.log"
)
_VOLUME_RE = re.compile(
    r"(?:^|/)var/lib/kubelet/pods/(?P<uid>[^/]+)/volumes/(?P<plugin>[^/]+)/(?P<volume>[^/]+)/(?P<rest>.+)$"
)


@dataclass(frozen=True, slots=True)
class PathInfo:
    """What a path says about the pod that wrote it. Fields the layout does not carry are None."""

    layout: str  # "containers" | "pods" | "volume"
    namespace: str | None = None
    pod: str | None = None
    pod_uid: str | None = None
    container: str | None = None
    container_id: str | None = None
    restart_count: int | None = None
    volume: str | None = None
    volume_type: str | None = None  # "empty-dir", "configmap", ... (the plugin name without "kubernetes.io~")
    rotated: bool = False

    def as_meta(self) -> dict[str, Any]:
        """The fields this path gives, in the `meta["kubernetes"]` shape (None values left out)."""
        out: dict[str, Any] = {}
        for key in ("namespace", "pod", "pod_uid", "container", "container_id", "restart_count", "volume"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def parse_path(path: str, root: str = "", readlink: bool = True) -> PathInfo | None:
    """PathInfo for a container log / pod volume path, or None when the path is none of the known layouts.

    root: a prefix the tree sits under (tests use a temp dir; in a container it may be "/host").
    """
    rel = path
    if root:
        stripped = root.rstrip("/")
        if not path.startswith(stripped + "/"):
            return None
        rel = path[len(stripped):]
    if "/var/log/containers/" in rel:
        m = _CONTAINERS_RE.search(rel)
        if m is None or not rel.startswith("/var/log/containers/"):
            return None
        uid = None
        restart = None
        if readlink:
            try:
                target = os.readlink(path)
            except OSError:
                target = ""  # not a link (docker-era layouts, copies): the name alone still says a lot
            t = _POD_TARGET_RE.search(target) if target else None
            if t is not None and t["pod"] == m["pod"] and t["namespace"] == m["namespace"]:
                uid = t["uid"]
                restart = int(t["restart"])
        return PathInfo("containers", m["namespace"], m["pod"], uid, m["container"], m["cid"], restart)
    if rel.startswith("/var/log/pods/"):
        m = _PODS_RE.search(rel)
        if m is None:
            return None
        return PathInfo("pods", m["namespace"], m["pod"], m["uid"], m["container"], None, int(m["restart"]),
                        rotated=m["rotated"] is not None)
    if rel.startswith("/var/lib/kubelet/pods/"):
        m = _VOLUME_RE.search(rel)
        if m is None:
            return None
        plugin = m["plugin"]
        vtype = plugin.split("~", 1)[1] if "~" in plugin else plugin
        return PathInfo("volume", pod_uid=m["uid"], volume=m["volume"], volume_type=vtype)
    return None


class PathResolver:
    """`parse_path` with a per-path cache, bounded so that a node churning through pods does not grow it forever."""

    def __init__(self, root: str = "", max_entries: int = 20000) -> None:
        self.root = root
        self.max_entries = max_entries
        self._cache: dict[str, PathInfo | None] = {}

    def resolve(self, path: str) -> PathInfo | None:
        try:
            return self._cache[path]
        except KeyError:
            pass
        info = parse_path(path, self.root)
        if len(self._cache) >= self.max_entries:
            # Dropping everything is O(1) amortised and the next lookups re-parse cheaply; an LRU is not worth it.
            self._cache.clear()
        self._cache[path] = info
        return info

    def forget(self, path: str) -> None:
        self._cache.pop(path, None)
