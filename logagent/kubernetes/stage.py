"""`kubernetes` stage: who wrote this batch. Path metadata + the pod cache -> `meta["kubernetes"]`.

Per batch (never per line): the file path is resolved once (cached), the pod looked up in the cache by uid /
container id / name, and the resulting dict (built once per pod version and shared by every batch of the file)
put in `batch.meta["kubernetes"]`. A pod the watch has not delivered yet gets what the path says; later batches
get the rest. Pod annotations steer collection:

    logagent.io/exclude: "true"          the pod's records are dropped (counted: dropped_records{reason=excluded})
    logagent.io/multiline: java|python|go|node|ruby      } told to the file tailer when it opens the file,
    logagent.io/parser: json|text                        } through ctx.services.file_overrides(path)

Files on pod volumes: an emptyDir file (/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>/...)
gets its pod by uid; with `host_path_volumes: true`, any other path gets the one pod that mounts a hostPath
directory holding it writable (`PodCache.host_path_owner`; none when several pods write there).

Sidecar envelopes (see logagent.sidecar) written to the stdout of a container declared as a sidecar
(`sidecar_containers`, or the pod's `logagent.io/sidecar` annotation) are unwrapped (`envelope.py`): the original
message, file name (`sidecar_file`) and non-identity fields come back instead of a JSON string inside a CRI line.
From any other container such a line is ordinary. The identity this stage sets (`meta["kubernetes"]`) comes from
the file's path and the API server only, never from a record's content (`logagent.identity`).

This stage must never wait for the API server: the watch runs in the background and only fills the cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logagent import metrics
from logagent.component import Context, Stage
from logagent.config import Section
from logagent.kubernetes.access import ApiAccess, parse_access
from logagent.kubernetes.cache import PodCache, PodEntry, container_meta, pod_meta
from logagent.kubernetes.envelope import EnvelopeUnwrapper, declared_sidecars
from logagent.kubernetes.path import PathInfo, PathResolver
from logagent.record import Batch

if TYPE_CHECKING:  # the API client (and its HTTP stack) is imported only when `api: true` starts it
    from logagent.kubernetes.api import ApiCredentials, PodWatcher

log = logging.getLogger("logagent.kubernetes")

EXCLUDE = "logagent.io/exclude"
MULTILINE = "logagent.io/multiline"
PARSER = "logagent.io/parser"


@dataclass(frozen=True)
class KubernetesSettings:
    api: bool
    access: ApiAccess  # kubeconfig, context, api_server, token_file, ca_file (logagent.kubernetes.access)
    node_name: str | None
    annotations: tuple[str, ...]
    deleted_pod_retention: float
    tag_rewrite: bool
    root: str
    host_path_volumes: bool
    sidecar_unwrap: bool
    sidecar_containers: frozenset[str]
    watch_timeout: float
    request_timeout: float
    backoff_initial: float
    backoff_max: float
    sync_timeout: float


class KubernetesShared:
    """What every kubernetes stage of a pipeline shares (`ctx.services.kubernetes`): the pod cache (built with the
    first stage's settings) and one list+watch, however many kubernetes stages the config has."""

    def __init__(self, cache: PodCache) -> None:
        self.cache = cache
        self.watcher: PodWatcher | None = None
        self.task: asyncio.Task[None] | None = None
        self.users = 0


class KubernetesMetadata(Stage[KubernetesSettings]):
    settings: KubernetesSettings

    @classmethod
    def parse_settings(cls, section: Section) -> KubernetesSettings:
        s = KubernetesSettings(
            api=section.bool("api", True),
            access=parse_access(section),
            node_name=section.str("node_name", None),
            annotations=tuple(section.str_list("annotations", [])),
            deleted_pod_retention=section.duration("deleted_pod_retention", 300.0),
            tag_rewrite=section.bool("tag_rewrite", False),
            root=section.str("root", ""),
            host_path_volumes=section.bool("host_path_volumes", False),
            sidecar_unwrap=section.bool("sidecar_unwrap", True),
            sidecar_containers=frozenset(section.str_list("sidecar_containers", [])),
            watch_timeout=section.duration("watch_timeout", 300.0),
            request_timeout=section.duration("request_timeout", 10.0),
            backoff_initial=section.duration("backoff_initial", 0.5),
            backoff_max=section.duration("backoff_max", 30.0),
            sync_timeout=section.duration("sync_timeout", 5.0),
        )
        if s.backoff_initial <= 0:
            raise section.error("must be more than 0", "backoff_initial")
        section.done()
        return s

    def __init__(self, name: str, settings: KubernetesSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.resolver = PathResolver(settings.root)
        shared = ctx.services.kubernetes
        if shared is None:
            shared = ctx.services.kubernetes = KubernetesShared(
                PodCache(settings.deleted_pod_retention, settings.annotations))
        self._shared = shared
        self.cache: PodCache = shared.cache
        # path -> (pod entry it was built from, its version, meta dict or None, excluded, a declared sidecar's log)
        self._by_path: dict[str, tuple[PodEntry | None, int, dict[str, Any] | None, bool, bool]] = {}
        self._host_owner: dict[str, tuple[int, PodEntry | None, str | None]] = {}
        self._dropped = metrics.DROPPED.labels(component=name, reason="excluded")
        self._envelopes = EnvelopeUnwrapper(name)

    # -- lifecycle ------------------------------------------------------------------------------------------
    @property
    def watcher(self) -> PodWatcher | None:
        return self._shared.watcher

    async def start(self) -> None:
        self.ctx.services.file_overrides = self.file_overrides
        self._shared.users += 1
        if self._shared.task is not None or not self.settings.api:
            return
        creds = self._credentials()
        if creds is None:
            return
        from logagent.kubernetes.api import PodWatcher, WatchSettings

        node = self.settings.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
        s = self.settings
        watch = WatchSettings(node_name=node, watch_timeout=s.watch_timeout, request_timeout=s.request_timeout,
                              backoff_initial=s.backoff_initial, backoff_max=s.backoff_max)
        self._shared.watcher = PodWatcher(creds, watch, self.cache)
        self._shared.task = asyncio.create_task(self._shared.watcher.run(), name="kubernetes-watch")
        log.info("watching pods", extra={"server": creds.server, "node": node})
        if s.sync_timeout > 0:
            # Inputs start after stages: a short, bounded wait for the first list lets the annotations of pods
            # already running steer the files the tailer opens at once. Past it, the path metadata is used.
            try:
                await asyncio.wait_for(self._shared.watcher.synced.wait(), s.sync_timeout)
            except asyncio.TimeoutError:
                log.warning("pods not listed yet; starting with path metadata only",
                            extra={"waited": s.sync_timeout, "error": self._shared.watcher.last_error})

    def _credentials(self) -> ApiCredentials | None:
        try:
            creds = self.settings.access.credentials()
        except (ValueError, OSError) as e:
            metrics.ERRORS.labels(component=self.name, kind="api_config").inc()
            log.error("kubernetes API credentials unusable; tagging from paths only", extra={"error": str(e)})
            return None
        if creds is None:
            log.warning("not in a cluster and no api_server or kubeconfig set; tagging from paths only")
        return creds

    async def stop(self) -> None:
        self._shared.users -= 1
        if self._shared.users <= 0 and self._shared.task is not None:
            task = self._shared.task
            while not task.done():  # again if a cancel was lost in a race (Python 3.11's wait_for can lose one)
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            if not task.cancelled() and task.exception() is not None:
                log.debug("kubernetes watch ended with an error", extra={"error": repr(task.exception())})
            self._shared.task = None
            self._shared.watcher = None

    # -- lookups --------------------------------------------------------------------------------------------
    def _entry_for(self, info: PathInfo) -> PodEntry | None:
        cache = self.cache
        entry = cache.pod(info.pod_uid)
        if entry is None and info.container_id:
            entry = cache.find_container(info.container_id)
        if entry is None and info.layout != "volume":
            entry = cache.find(info.namespace, info.pod)
            if entry is not None and info.pod_uid and entry.uid != info.pod_uid:
                entry = None  # same name, other pod (a StatefulSet's next incarnation)
        return entry

    def lookup(self, path: str) -> tuple[dict[str, Any] | None, bool]:
        """(meta["kubernetes"] for the file, excluded?) — cached per path and pod version."""
        entry = self._lookup(path)
        return entry[2], entry[3]

    def _lookup(self, path: str) -> tuple[PodEntry | None, int, dict[str, Any] | None, bool, bool]:
        info = self.resolver.resolve(path)
        volume: str | None = None
        if info is not None:
            entry = self._entry_for(info)
        elif self.settings.host_path_volumes:
            entry, volume = self._host_path_owner(path)
        else:
            return None, 0, None, False, False
        version = entry.version if entry is not None else 0
        cached = self._by_path.get(path)
        if cached is not None and cached[0] is entry and cached[1] == version:
            return cached
        if entry is not None:
            if info is not None:
                meta = container_meta(entry, info.container, info.restart_count, info.container_id)
                volume = info.volume
            else:
                meta = pod_meta(entry)
            if volume is not None:
                meta["volume"] = volume
            excluded = entry.annotations.get(EXCLUDE, "").lower() == "true"
        elif info is not None:
            meta, excluded = info.as_meta(), False
        else:
            meta, excluded = None, False
        # a declared sidecar: by name on this node, or by its own pod (the API's view, never the file's content)
        container = info.container if info is not None else None
        sidecar = container is not None and (container in self.settings.sidecar_containers or (
            entry is not None and container in declared_sidecars(entry.annotations)))
        if len(self._by_path) > 20000:
            self._by_path.clear()
        result = self._by_path[path] = (entry, version, meta, excluded, sidecar)
        return result

    def _host_path_owner(self, path: str) -> tuple[PodEntry | None, str | None]:
        """`PodCache.host_path_owner`, remembered per path until the cache changes (it scans every pod)."""
        gen = self.cache.generation
        memo = self._host_owner.get(path)
        if memo is not None and memo[0] == gen:
            return memo[1], memo[2]
        root = self.settings.root.rstrip("/")
        owner = None
        if not root or path.startswith(root + "/"):
            owner = self.cache.host_path_owner(path[len(root):])
        entry, volume = owner if owner else (None, None)
        if len(self._host_owner) > 20000:
            self._host_owner.clear()
        self._host_owner[path] = (gen, entry, volume)
        return entry, volume

    def file_overrides(self, path: str) -> dict[str, Any] | None:
        """Asked by the file tailer when it opens a file: what the pod's annotations say about reading it."""
        info = self.resolver.resolve(path)
        if info is not None:
            entry = self._entry_for(info)
        elif self.settings.host_path_volumes:
            entry = self._host_path_owner(path)[0]
        else:
            return None
        if entry is None:
            return None
        ann = entry.annotations
        out: dict[str, Any] = {}
        if ann.get(EXCLUDE, "").lower() == "true":
            out["exclude"] = True
        if ann.get(MULTILINE):
            out["multiline"] = ann[MULTILINE]
        if ann.get(PARSER):
            out["parser"] = ann[PARSER]
        return out or None

    # -- the hot path ---------------------------------------------------------------------------------------
    def process(self, batch: Batch) -> Iterable[Batch]:
        path = batch.meta.get("path")
        sidecar = False
        if path is not None:
            _, _, kmeta, excluded, sidecar = self._lookup(path)
            if excluded:
                self._dropped.inc(batch.count())
                return ()
            if kmeta is not None:
                # A new meta dict: the input may reuse its own between batches of one file.
                batch.meta = {**batch.meta, "kubernetes": kmeta}
                if self.settings.tag_rewrite:
                    batch.tag = self._tag(batch.tag, kmeta)
        if self.settings.sidecar_unwrap and batch.count():
            self._envelopes.process(batch, sidecar)
        return (batch,)

    @staticmethod
    def _tag(tag: str, kmeta: dict[str, Any]) -> str:
        """`<tag>.<namespace>.<pod>.<container or volume>`; unchanged until all three are known. One f-string per
        batch is cheaper than caching it."""
        leaf = kmeta.get("container") or kmeta.get("volume")
        ns, pod = kmeta.get("namespace"), kmeta.get("pod")
        if ns and pod and leaf:
            return f"{tag}.{ns}.{pod}.{leaf}"
        return tag
