"""Files on pod volumes, found on the host: emptyDir directories under /var/lib/kubelet/pods/<uid>/ and hostPath
directories, tagged with the pod that writes them. Real directory trees in a temp dir (the stage's `root`), real
pods from the fake API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from logagent.component import Context
from logagent.config import Section
from logagent.kubernetes.stage import KubernetesMetadata
from logagent.record import Batch
from tests.helpers import async_wait_for
from tests.kube_apiserver import FakeApiServer, make_pod

UID = "0b7f4c1e-9a2d-4e3f-8c5b-6d7e8f9a0b1c"


def make_stage(url: str | None, root: Path, **extra: Any) -> KubernetesMetadata:
    data: dict[str, Any] = {"node_name": "node-a", "root": str(root), "backoff_initial": "20ms",
                            "backoff_max": "200ms", "token_file": "/nonexistent/token",
                            "ca_file": "/nonexistent/ca.crt", **extra}
    if url is not None:
        data["api_server"] = url
    else:
        data["api"] = False
    settings = KubernetesMetadata.parse_settings(Section(data, "pipeline[0]", "test.yaml"))
    ctx = Context(config=None, checkpoints=None, dead_letter=None)  # type: ignore[arg-type]
    return KubernetesMetadata("kubernetes", settings, ctx)


def write_log(path: Path, *lines: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def tagged(stage: KubernetesMetadata, path: str, tag: str = "vol") -> Batch | None:
    batch = Batch(tag, [{"message": "hello", "offset": 0}], {"input": "volumes", "path": path})
    out = list(stage.process(batch))
    return out[0] if out else None


async def test_empty_dir_file_is_tagged_with_the_pod_found_by_uid(api: FakeApiServer, tmp_path: Path) -> None:
    path = write_log(tmp_path / f"var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/app-logs/2024/app.log",
                     "started")
    stage = make_stage(api.url, tmp_path, tag_rewrite=True)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        # the watch has not delivered the pod yet: what the path says
        first = tagged(stage, path)
        assert first is not None
        assert first.meta["kubernetes"] == {"pod_uid": UID, "volume": "app-logs"}
        assert first.tag == "vol"  # namespace and pod unknown: tag left alone
        api.add(make_pod("billing-0", "finance", uid=UID, labels={"app": "billing"}, empty_dirs=("app-logs",),
                         owner=("StatefulSet", "billing")))
        await async_wait_for(lambda: stage.cache.by_uid(UID), what="pod through the watch")
        later = tagged(stage, path)
        assert later is not None
        assert later.meta["kubernetes"] == {
            "namespace": "finance", "pod": "billing-0", "pod_uid": UID, "node": "node-a", "volume": "app-logs",
            "labels": {"app": "billing"}, "owner": {"kind": "StatefulSet", "name": "billing"}}
        assert later.tag == "vol.finance.billing-0.app-logs"
    finally:
        await stage.stop()


async def test_exclude_annotation_applies_to_the_pods_volume_files(api: FakeApiServer, tmp_path: Path) -> None:
    path = write_log(tmp_path / f"var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/scratch/debug.log", "x")
    api.add(make_pod("noisy", uid=UID, annotations={"logagent.io/exclude": "true"}, empty_dirs=("scratch",)))
    stage = make_stage(api.url, tmp_path)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        assert tagged(stage, path) is None
        assert stage.ctx.services.file_overrides(path) == {"exclude": True}
    finally:
        await stage.stop()


async def test_host_path_files_belong_to_the_pod_that_writes_there(api: FakeApiServer, tmp_path: Path) -> None:
    own = write_log(tmp_path / "data/app-a/requests.log", "GET /")
    deep = write_log(tmp_path / "data/app-a/archive/old.log", "GET /old")
    shared = write_log(tmp_path / "data/shared/both.log", "who?")
    read_only = write_log(tmp_path / "data/other/nobody.log", "nobody writes here")
    outside = write_log(tmp_path / "srv/unmounted.log", "not a volume")
    api.add(make_pod("app-a", "web", uid="uid-a", host_paths={"logs": "/data/app-a/"}))
    # the agent itself (or a log shipper) mounts the whole tree read-only: it owns nothing
    api.add(make_pod("reader", "ops", uid="uid-reader", read_only_host_paths={"all": "/data"}))
    api.add(make_pod("writer-1", "web", uid="uid-w1", host_paths={"shared": "/data/shared"}))
    api.add(make_pod("writer-2", "web", uid="uid-w2", host_paths={"shared": "/data/shared"}))
    api.add(make_pod("elsewhere", "web", uid="uid-else", node="node-b", host_paths={"x": "/srv"}))
    # a node debugger mounting the whole host writable is no log volume's owner
    api.add(make_pod("node-debugger", "default", uid="uid-debug", host_paths={"host-root": "/"}))
    stage = make_stage(api.url, tmp_path, host_path_volumes=True, tag_rewrite=True)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        for path in (own, deep):
            batch = tagged(stage, path)
            assert batch is not None
            assert batch.meta["kubernetes"] == {"namespace": "web", "pod": "app-a", "pod_uid": "uid-a",
                                                "node": "node-a", "volume": "logs"}
            assert batch.tag == "vol.web.app-a.logs"
        # two pods write the same directory: the writer cannot be known, so no pod is named
        for path in (shared, read_only, outside):
            batch = tagged(stage, path)
            assert batch is not None and "kubernetes" not in batch.meta and batch.tag == "vol"
        # one of the two writers is deleted: while its metadata is retained, the live writer wins
        api.delete("uid-w2")
        await async_wait_for(lambda: (stage.cache.by_uid("uid-w2") or {}).get("deleted"), what="deletion seen")
        batch = tagged(stage, shared)
        assert batch is not None and batch.meta["kubernetes"]["pod"] == "writer-1"
    finally:
        await stage.stop()


async def test_host_path_sub_path_mount_narrows_the_owner(api: FakeApiServer, tmp_path: Path) -> None:
    mine = write_log(tmp_path / "var/applogs/team-a/x.log", "a")
    theirs = write_log(tmp_path / "var/applogs/team-b/y.log", "b")
    pod_a = make_pod("team-a", uid="uid-team-a", host_paths={"logs": "/var/applogs"})
    pod_a["spec"]["containers"][0]["volumeMounts"][0]["subPath"] = "team-a"
    pod_b = make_pod("team-b", uid="uid-team-b", host_paths={"logs": "/var/applogs"})
    pod_b["spec"]["containers"][0]["volumeMounts"][0]["subPath"] = "team-b"
    api.add(pod_a)
    api.add(pod_b)
    stage = make_stage(api.url, tmp_path, host_path_volumes=True)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        a, b = tagged(stage, mine), tagged(stage, theirs)
        assert a is not None and a.meta["kubernetes"]["pod"] == "team-a"
        assert b is not None and b.meta["kubernetes"]["pod"] == "team-b"
    finally:
        await stage.stop()


async def test_host_path_ownership_is_off_unless_configured(api: FakeApiServer, tmp_path: Path) -> None:
    own = write_log(tmp_path / "data/app-a/requests.log", "GET /")
    api.add(make_pod("app-a", "web", uid="uid-a", host_paths={"logs": "/data/app-a"}))
    stage = make_stage(api.url, tmp_path)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        batch = tagged(stage, own)
        assert batch is not None and "kubernetes" not in batch.meta
    finally:
        await stage.stop()


async def test_host_path_owner_follows_pods_arriving_later(api: FakeApiServer, tmp_path: Path) -> None:
    own = write_log(tmp_path / "data/late/app.log", "hi")
    stage = make_stage(api.url, tmp_path, host_path_volumes=True)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        first = tagged(stage, own)
        assert first is not None and "kubernetes" not in first.meta
        api.add(make_pod("late", uid="uid-late", host_paths={"logs": "/data/late"}))
        await async_wait_for(lambda: (b := tagged(stage, own)) is not None and "kubernetes" in b.meta,
                             what="owner known once the pod arrives")
        batch = tagged(stage, own)
        assert batch is not None and batch.meta["kubernetes"]["pod"] == "late"
    finally:
        await stage.stop()
