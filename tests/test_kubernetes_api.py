"""The kubernetes stage against a real HTTP API server on 127.0.0.1 speaking list/watch: metadata through the
watch, pods created later, dropped watches, bookmarks, 410 relists, auth and token rotation, an unreachable API."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from logagent import metrics
from logagent.component import Context
from logagent.config import Section
from logagent.kubernetes.stage import KubernetesMetadata
from logagent.record import Batch
from tests.helpers import async_wait_for
from tests.kube_apiserver import FakeApiServer, make_pod

CID_A = "a" * 64
CID_B = "b" * 64


def make_stage(url: str | None, name: str = "kubernetes", **extra: Any) -> KubernetesMetadata:
    data: dict[str, Any] = {"node_name": "node-a", "backoff_initial": "20ms", "backoff_max": "200ms",
                            "watch_timeout": 30, "request_timeout": "2s",
                            "token_file": "/nonexistent/token", "ca_file": "/nonexistent/ca.crt", **extra}
    if url is not None:
        data["api_server"] = url
    settings = KubernetesMetadata.parse_settings(Section(data, "pipeline[0]", "test.yaml"))
    ctx = Context(config=None, checkpoints=None, dead_letter=None)  # type: ignore[arg-type]
    return KubernetesMetadata(name, settings, ctx)


def pod_path(pod: dict[str, Any], container: str = "app", restart: int = 0) -> str:
    m = pod["metadata"]
    return f"/var/log/pods/{m['namespace']}_{m['name']}_{m['uid']}/{container}/{restart}.log"


def batch_for(path: str, n: int = 3) -> Batch:
    return Batch("kube", [{"message": f"line {i}", "offset": i * 10} for i in range(n)],
                 {"input": "containers", "path": path, "source_id": "fp:1", "pos_key": "offset"})


def kube(stage: KubernetesMetadata, path: str) -> dict[str, Any] | None:
    out = list(stage.process(batch_for(path)))
    return out[0].meta.get("kubernetes") if out else None


async def test_pod_metadata_arrives_through_list_and_watch(api: FakeApiServer) -> None:
    web = make_pod("web-5d8f7c-x2x9z", "shop", uid="uid-web",
                   labels={"app": "web", "pod-template-hash": "5d8f7c"},
                   annotations={"team": "payments", "secret-ish": "no", "logagent.io/multiline": "java"},
                   containers={"nginx": ("nginx:1.27", CID_A, 0)}, owner=("ReplicaSet", "web-5d8f7c"))
    other_node = make_pod("elsewhere", "shop", node="node-b", uid="uid-elsewhere")
    api.add(web)
    api.add(other_node)
    stage = make_stage(api.url, annotations=["team"])
    await stage.start()
    try:
        cache = stage.cache
        await async_wait_for(lambda: cache.synced, what="first list")
        assert kube(stage, pod_path(web, "nginx")) == {
            "namespace": "shop", "pod": "web-5d8f7c-x2x9z", "pod_uid": "uid-web", "container": "nginx",
            "container_id": CID_A, "restart_count": 0, "image": "nginx:1.27", "node": "node-a",
            "labels": {"app": "web", "pod-template-hash": "5d8f7c"},
            "annotations": {"team": "payments", "logagent.io/multiline": "java"},
            "owner": {"kind": "Deployment", "name": "web"},
        }
        # one list, of this node only, then a watch from its resourceVersion with bookmarks
        assert api.lists == 1 and api.list_selectors == ["spec.nodeName=node-a"]
        assert cache.by_uid("uid-elsewhere") is None
        await async_wait_for(lambda: api.watches, what="watch request")
        w = api.watches[0]
        assert (w.resource_version, w.field_selector, w.bookmarks) == ("1002", "spec.nodeName=node-a", True)
        assert w.timeout == "30"

        # a pod created after start: tagged once the watch delivers it; until then, path metadata only
        late = make_pod("late", "jobs", uid="uid-late", labels={"batch": "nightly"},
                        containers={"worker": ("busybox:1", CID_B, 2)}, owner=("Job", "nightly-28950000"))
        path = pod_path(late, "worker", 2)
        assert kube(stage, path) == {"namespace": "jobs", "pod": "late", "pod_uid": "uid-late",
                                     "container": "worker", "restart_count": 2}
        api.add(late)
        meta = await async_wait_for(lambda: (k := kube(stage, path)) and "labels" in k and k, what="late pod")
        assert meta["labels"] == {"batch": "nightly"} and meta["container_id"] == CID_B
        assert meta["owner"] == {"kind": "CronJob", "name": "nightly"}

        # a change to the pod reaches later batches
        web["metadata"]["labels"]["version"] = "2"
        api.modify(web)
        await async_wait_for(lambda: kube(stage, pod_path(web, "nginx"))["labels"].get("version") == "2",
                             what="modified labels")
        assert api.lists == 1
    finally:
        await stage.stop()


async def test_dropped_watch_resumes_from_last_resource_version_without_relist(api: FakeApiServer) -> None:
    api.add(make_pod("first", uid="uid-first"))
    stage = make_stage(api.url)
    await stage.start()
    try:
        await async_wait_for(lambda: api.active_watches == 1, what="watch connected")
        api.drop_after = None
        # the current watch is ended; the next one is cut after one event, without a terminating chunk
        api.drop_after = 1
        api.end_watches()
        await async_wait_for(lambda: len(api.watches) == 2 and api.active_watches == 1, what="second watch")
        second = make_pod("second", uid="uid-second")
        api.add(second)
        rv_second = api.rv
        await async_wait_for(lambda: len(api.watches) == 3, what="reconnect after the cut")
        assert api.watches[2].resource_version == str(rv_second)
        third = make_pod("third", uid="uid-third", labels={"n": "3"})
        api.add(third)
        await async_wait_for(lambda: "labels" in (kube(stage, pod_path(third)) or {}), what="third pod tagged")
        # the pod delivered just before the cut is known from the API (image is not in the path)
        assert kube(stage, pod_path(second))["image"] == "registry.local/app:1.0"
        assert api.lists == 1, "a dropped watch resumes from its resourceVersion: no relist"
    finally:
        await stage.stop()


async def test_bookmarks_move_the_resource_version(api: FakeApiServer) -> None:
    api.add(make_pod("p", uid="uid-p"))
    stage = make_stage(api.url)
    await stage.start()
    try:
        await async_wait_for(lambda: api.active_watches == 1, what="watch connected")
        rv = api.bookmark()
        watcher = stage.watcher
        assert watcher is not None
        await async_wait_for(lambda: watcher.resource_version == str(rv), what="bookmark applied")
        api.end_watches()
        await async_wait_for(lambda: len(api.watches) == 2, what="re-watch")
        assert api.watches[1].resource_version == str(rv)
        assert api.lists == 1
    finally:
        await stage.stop()


@pytest.mark.parametrize("as_event", [False, True], ids=["http-410", "error-event-410"])
async def test_expired_resource_version_relists(as_event: bool) -> None:
    api = FakeApiServer(gone_as_event=as_event)
    await api.start()
    gone = make_pod("gone", uid="uid-gone", labels={"x": "1"})
    api.add(gone)
    stage = make_stage(api.url)
    await stage.start()
    try:
        await async_wait_for(lambda: api.active_watches == 1, what="watch connected")
        # history compacted, and a deletion the watch never got to deliver
        api.pods.pop("uid-gone")
        api.expire()
        fresh = make_pod("fresh", uid="uid-fresh", labels={"y": "2"})
        api.add(fresh)
        await async_wait_for(lambda: api.lists == 2, what="relist after 410")
        await async_wait_for(lambda: "labels" in (kube(stage, pod_path(fresh)) or {}), what="fresh pod")
        # the relist noticed the pod that went away: kept (retention) but marked deleted
        assert stage.cache.by_uid("uid-gone")["deleted"] is True
        assert kube(stage, pod_path(gone))["labels"] == {"x": "1"}
        watcher = stage.watcher
        assert watcher is not None and int(watcher.resource_version or 0) >= api.compacted
    finally:
        await stage.stop()
        await api.stop()


async def test_api_unreachable_records_still_flow_with_path_metadata() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    stage = make_stage(f"http://127.0.0.1:{port}", sync_timeout="300ms")
    t0 = time.monotonic()
    await stage.start()
    assert time.monotonic() - t0 < 3.0, "start waits for the first list only up to sync_timeout"
    try:
        pod = make_pod("lonely", "ns1", uid="uid-lonely")
        t0 = time.monotonic()
        for _ in range(200):
            meta = kube(stage, pod_path(pod))
        assert time.monotonic() - t0 < 1.0, "the stage must never wait for the API"
        assert meta == {"namespace": "ns1", "pod": "lonely", "pod_uid": "uid-lonely", "container": "app",
                        "restart_count": 0}
        watcher = stage.watcher
        assert watcher is not None
        await async_wait_for(lambda: watcher.last_error is not None, what="connection error seen")
        assert "Connect" in watcher.last_error or "refused" in watcher.last_error.lower()
    finally:
        await asyncio.wait_for(stage.stop(), 2.0)


async def test_no_api_configured_tags_from_paths_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    stage = make_stage(None)
    await stage.start()
    assert stage.watcher is None
    pod = make_pod("p", "ns", uid="u-1")
    assert kube(stage, pod_path(pod)) == {"namespace": "ns", "pod": "p", "pod_uid": "u-1", "container": "app",
                                          "restart_count": 0}
    await stage.stop()


async def test_deleted_pods_keep_their_metadata_for_the_retention_time(api: FakeApiServer) -> None:
    pod = make_pod("dying", uid="uid-dying", labels={"app": "batch"},
                   containers={"app": ("img:1", CID_A, 0)})
    api.add(pod)
    stage = make_stage(api.url, deleted_pod_retention="1s")
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        api.delete("uid-dying")
        await async_wait_for(lambda: (stage.cache.by_uid("uid-dying") or {}).get("deleted"), what="DELETED seen")
        deleted_at = time.monotonic()
        # the last lines, read after the DELETED event, are still tagged; the kernel side finds the container too
        assert kube(stage, pod_path(pod))["labels"] == {"app": "batch"}
        assert stage.cache.by_container_id(f"containerd://{CID_A}")["pod"] == "dying"
        await async_wait_for(lambda: stage.cache.by_uid("uid-dying") is None, timeout=5, what="purged")
        assert time.monotonic() - deleted_at >= 0.9
        assert "labels" not in kube(stage, pod_path(pod))
        assert stage.cache.by_container_id(CID_A) is None
    finally:
        await stage.stop()


def dropped(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "logagent_dropped_records_total", {"component": name, "reason": "excluded"}) or 0.0


async def test_exclude_annotation_drops_and_counts_and_steers_the_tailer(api: FakeApiServer) -> None:
    quiet = make_pod("quiet", uid="uid-quiet", annotations={"logagent.io/exclude": "true"})
    javaapp = make_pod("javaapp", uid="uid-java",
                       annotations={"logagent.io/multiline": "java", "logagent.io/parser": "json"})
    api.add(quiet)
    api.add(javaapp)
    stage = make_stage(api.url, name="k8s-exclude")
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        before = dropped("k8s-exclude")
        assert list(stage.process(batch_for(pod_path(quiet), n=7))) == []
        assert dropped("k8s-exclude") - before == 7
        assert len(list(stage.process(batch_for(pod_path(javaapp))))) == 1
        overrides = stage.ctx.services.file_overrides
        assert overrides(pod_path(quiet)) == {"exclude": True}
        assert overrides(pod_path(javaapp)) == {"multiline": "java", "parser": "json"}
        assert overrides("/var/log/syslog") is None
        assert overrides(pod_path(make_pod("unknown"))) is None
    finally:
        await stage.stop()


async def test_rotated_service_account_token_is_read_again(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("token-one\n")
    api = FakeApiServer(token="token-one")
    await api.start()
    api.add(make_pod("before", uid="uid-before"))
    stage = make_stage(api.url, token_file=str(token))
    await stage.start()
    try:
        await async_wait_for(lambda: api.active_watches == 1, what="authenticated watch")
        assert api.unauthorized == 0
        # the server moves to a new token before the file does: 401s, retried with backoff, no crash
        api.token = "token-two"
        api.end_watches()
        await async_wait_for(lambda: api.unauthorized >= 2, what="401s while the file is stale")
        # kubelet rotates the projected token: atomic replace of the file
        tmp = tmp_path / "token.new"
        tmp.write_text("token-two\n")
        os.replace(tmp, token)
        await async_wait_for(lambda: api.active_watches == 1, what="watch with the rotated token")
        assert api.watches[-1].auth == "Bearer token-two"
        after = make_pod("after", uid="uid-after", labels={"ok": "yes"})
        api.add(after)
        await async_wait_for(lambda: "labels" in (kube(stage, pod_path(after)) or {}), what="tagged after rotation")
    finally:
        await stage.stop()
        await api.stop()


async def test_paged_list_collects_every_page(api: FakeApiServer) -> None:
    api.page_size_cap = 2
    for i in range(5):
        api.add(make_pod(f"p{i}", uid=f"uid-{i}"))
    stage = make_stage(api.url)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        assert sorted(stage.cache.by_uid(f"uid-{i}")["pod"] for i in range(5)) == [f"p{i}" for i in range(5)]
        assert api.lists == 1
    finally:
        await stage.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kube-test",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
@pytest.mark.parametrize("mode", ["ca-data", "ca-file", "insecure"])
async def test_kubeconfig_out_of_cluster_over_tls(tmp_path: Path, mode: str) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    api = FakeApiServer(token="kubeconfig-token")
    await api.start(ssl_context=server_ctx)
    api.add(make_pod("tls", uid="uid-tls", labels={"secure": "yes"}))
    cluster: dict[str, Any] = {"server": api.url}
    if mode == "ca-data":
        cluster["certificate-authority-data"] = base64.b64encode(cert.read_bytes()).decode()
    elif mode == "ca-file":
        cluster["certificate-authority"] = cert.name  # relative to the kubeconfig's directory
    else:
        cluster["insecure-skip-tls-verify"] = True
    import yaml

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "kubeconfig-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
    }))
    stage = make_stage(None, kubeconfig=str(kubeconfig))
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced over TLS")
        assert kube(stage, pod_path(make_pod("tls", uid="uid-tls")))["labels"] == {"secure": "yes"}
    finally:
        await stage.stop()
        await api.stop()


async def test_watch_cut_in_the_middle_of_a_json_line_resumes_after_the_last_whole_event(
        api: FakeApiServer) -> None:
    stage = make_stage(api.url)
    await stage.start()
    try:
        await async_wait_for(lambda: api.active_watches == 1, what="watch connected")
        api.drop_after, api.drop_mid_line = 2, True
        api.end_watches()
        await async_wait_for(lambda: len(api.watches) == 2 and api.active_watches == 1, what="second watch")
        whole = make_pod("whole", uid="uid-whole", labels={"got": "whole"})
        api.add(whole)
        rv_whole = api.rv
        halved = make_pod("halved", uid="uid-halved", labels={"got": "halved"})
        api.add(halved)  # its line is cut in two, then the connection closes without a terminating chunk
        await async_wait_for(lambda: len(api.watches) == 3, what="reconnect after the cut")
        # resumed from the last event that arrived whole: the half line was neither applied nor skipped over
        assert api.watches[2].resource_version == str(rv_whole)
        await async_wait_for(lambda: "labels" in (kube(stage, pod_path(halved)) or {}), what="halved pod re-sent")
        assert kube(stage, pod_path(halved))["labels"] == {"got": "halved"}
        assert kube(stage, pod_path(whole))["labels"] == {"got": "whole"}
        assert api.lists == 1
        watcher = stage.watcher
        assert watcher is not None and watcher.last_error is not None  # the cut was seen as an error, then retried
    finally:
        await stage.stop()


async def test_requests_carry_the_exact_wire_form_and_the_bearer_token(api: FakeApiServer,
                                                                      tmp_path: Path) -> None:
    api.token = "s3cret"
    # no token file: requests go without Authorization and the server refuses them (401), retried with backoff
    stage = make_stage(api.url, sync_timeout="100ms")
    await stage.start()
    try:
        await async_wait_for(lambda: api.unauthorized >= 2, what="unauthenticated requests refused")
        assert api.auth_seen[0] is None and not api.watches and not stage.cache.synced
    finally:
        await stage.stop()
    api.unauthorized = 0
    api.auth_seen.clear()
    api.queries.clear()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    stage = make_stage(api.url, token_file=str(token))
    await stage.start()
    try:
        await async_wait_for(lambda: api.active_watches == 1, what="watch connected")
        list_q, watch_q = api.queries[0], api.queries[1]
        list_params = dict(kv.split("=", 1) for kv in list_q.split("&"))
        # the selector's "=" travels percent-encoded, as client-go sends it
        assert list_params["fieldSelector"] == "spec.nodeName%3Dnode-a"
        assert list_params["resourceVersion"] == "0" and "watch" not in list_params
        watch_params = dict(kv.split("=", 1) for kv in watch_q.split("&"))
        assert watch_params["watch"] == "1" and watch_params["allowWatchBookmarks"] == "true"
        assert watch_params["fieldSelector"] == "spec.nodeName%3Dnode-a"
        assert watch_params["resourceVersion"] == str(api.rv)
        assert api.auth_seen == ["Bearer s3cret", "Bearer s3cret"] and api.unauthorized == 0
    finally:
        await stage.stop()


async def test_expired_continue_token_falls_back_to_one_unpaged_list(api: FakeApiServer) -> None:
    api.page_size_cap = 2
    for i in range(5):
        api.add(make_pod(f"p{i}", uid=f"uid-{i}"))
    api.compact_after_page = True  # the first page's continue token is too old by the time it is used
    stage = make_stage(api.url)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        continues = [q for q in api.queries if "continue=" in q]
        assert len(continues) == 1, "one continue request, answered 410 Expired"
        assert api.lists == 2, "the paged list, then one unpaged list"
        assert "limit=" not in [q for q in api.queries if "watch=" not in q][-1]
        assert sorted(stage.cache.by_uid(f"uid-{i}")["pod"] for i in range(5)) == [f"p{i}" for i in range(5)]
        await async_wait_for(lambda: api.active_watches == 1, what="watch after the list")
    finally:
        await stage.stop()


async def test_owner_resolution_for_every_workload_kind(api: FakeApiServer) -> None:
    cases = {
        "deploy": (("ReplicaSet", "web-6b9f7d8c4"), {"pod-template-hash": "6b9f7d8c4"}, ("Deployment", "web")),
        "bare-rs": (("ReplicaSet", "handmade"), {}, ("ReplicaSet", "handmade")),
        "rs-other-hash": (("ReplicaSet", "web-6b9f7d8c4"), {"pod-template-hash": "zzz"},
                          ("ReplicaSet", "web-6b9f7d8c4")),
        "ds": (("DaemonSet", "node-exporter"), {}, ("DaemonSet", "node-exporter")),
        "sts": (("StatefulSet", "db"), {}, ("StatefulSet", "db")),
        "cron": (("Job", "backup-28950120"), {}, ("CronJob", "backup")),
        "dated-job": (("Job", "backup-20240101"), {}, ("Job", "backup-20240101")),
        "plain-job": (("Job", "migrate"), {}, ("Job", "migrate")),
        "static": (("Node", "node-a"), {}, ("Node", "node-a")),
    }
    for name, (owner, labels, _) in cases.items():
        api.add(make_pod(name, uid=f"uid-{name}", owner=owner, labels=labels))
    api.add(make_pod("orphan", uid="uid-orphan"))
    stage = make_stage(api.url)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced")
        for name, (_, _, (kind, owner_name)) in cases.items():
            assert stage.cache.by_uid(f"uid-{name}")["owner"] == {"kind": kind, "name": owner_name}, name
        assert "owner" not in stage.cache.by_uid("uid-orphan")
        # a pod arriving later through the watch is resolved the same way
        api.add(make_pod("later", uid="uid-later", owner=("ReplicaSet", "api-5c4d"),
                         labels={"pod-template-hash": "5c4d"}))
        await async_wait_for(lambda: stage.cache.by_uid("uid-later"), what="later pod")
        assert kube(stage, pod_path(make_pod("later", uid="uid-later")))["owner"] == {
            "kind": "Deployment", "name": "api"}
    finally:
        await stage.stop()


async def test_a_pod_object_the_cache_cannot_read_is_skipped_and_counted(api: FakeApiServer) -> None:
    api.add(make_pod("good", uid="uid-good", labels={"ok": "1"}))
    broken = make_pod("broken", uid="uid-broken")
    broken["spec"]["volumes"] = "not-a-list-of-volumes"
    api.add(broken)
    before = metrics.REGISTRY.get_sample_value(
        "logagent_errors_total", {"component": "kubernetes", "kind": "bad_pod"}) or 0.0
    stage = make_stage(api.url)
    await stage.start()
    try:
        await async_wait_for(lambda: stage.cache.synced, what="synced despite the broken pod")
        assert stage.cache.by_uid("uid-good")["labels"] == {"ok": "1"}
        assert stage.cache.by_uid("uid-broken") is None
        api.modify(broken)  # through the watch too
        api.add(make_pod("after", uid="uid-after", labels={"ok": "2"}))
        await async_wait_for(lambda: stage.cache.by_uid("uid-after"), what="watch goes on past the broken pod")
        after = metrics.REGISTRY.get_sample_value(
            "logagent_errors_total", {"component": "kubernetes", "kind": "bad_pod"}) or 0.0
        assert after - before == 2
        assert api.lists == 1
    finally:
        await stage.stop()


async def test_api_that_accepts_but_never_answers_blocks_nothing() -> None:
    """A black hole (TCP accepted, no HTTP answer): start returns after sync_timeout, batches flow meanwhile."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read(65536)  # take the request, answer nothing

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stage = make_stage(f"http://127.0.0.1:{port}", sync_timeout="500ms")
    try:
        t0 = time.monotonic()
        await stage.start()
        waited = time.monotonic() - t0
        assert 0.4 <= waited < 3.0
        assert held, "the list request reached the black hole"
        pod = make_pod("stuck", "ns2", uid="uid-stuck")
        t0 = time.monotonic()
        metas = [kube(stage, pod_path(pod)) for _ in range(500)]
        assert time.monotonic() - t0 < 1.0
        assert metas[-1] == {"namespace": "ns2", "pod": "stuck", "pod_uid": "uid-stuck", "container": "app",
                             "restart_count": 0}
        assert not stage.cache.synced
    finally:
        await asyncio.wait_for(stage.stop(), 2.0)
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_start_waits_for_the_first_list_so_annotations_steer_files_opened_at_once(
        api: FakeApiServer) -> None:
    api.add(make_pod("javaapp", uid="uid-java", annotations={"logagent.io/multiline": "java"}))
    stage = make_stage(api.url)
    await stage.start()
    try:
        # no waiting here: by the time inputs start (after stages), the first list is in
        assert stage.cache.synced
        assert stage.ctx.services.file_overrides(pod_path(make_pod("javaapp", uid="uid-java"))) == {
            "multiline": "java"}
    finally:
        await stage.stop()
