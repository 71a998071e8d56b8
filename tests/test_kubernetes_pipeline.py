"""The node agent as deployed: the real file tailer over a kubelet-style tree (CRI logs under /var/log/pods, emptyDir
volumes under /var/lib/kubelet/pods), the kubernetes stage fed by the fake API server's list+watch, a file output.
Pod annotations steer the tailer (exclude, multiline, parser); a pod created after start is tagged; emptyDir files
carry their pod's metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from logagent import registry
from logagent.config import parse_config
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for
from tests.kube_apiserver import FakeApiServer, make_pod

pytest.importorskip("logagent.parsers.factory", reason="needs the CRI parser")

TS = "2024-05-01T10:00:00.{:09d}Z"


def cri(*lines: str, stream: str = "stdout") -> str:
    return "".join(f"{TS.format(i)} {stream} F {line}\n" for i, line in enumerate(lines))


def pod_log(root: Path, pod: dict[str, Any], container: str, text: str) -> Path:
    m = pod["metadata"]
    path = root / "var/log/pods" / f"{m['namespace']}_{m['name']}_{m['uid']}" / container / "0.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


async def test_node_agent_tags_container_and_volume_logs_and_obeys_annotations(api: FakeApiServer,
                                                                                tmp_path: Path) -> None:
    root = tmp_path / "host"
    java = make_pod("orders-5f6d7c8b9-abcde", "shop", uid="uid-orders", labels={"app": "orders",
                    "pod-template-hash": "5f6d7c8b9"}, annotations={"logagent.io/multiline": "java"},
                    containers={"orders": ("registry/orders:3.1", "c" * 64, 0)},
                    owner=("ReplicaSet", "orders-5f6d7c8b9"), empty_dirs=("app-logs",))
    quiet = make_pod("chatty", "shop", uid="uid-chatty", annotations={"logagent.io/exclude": "true"})
    jsonapp = make_pod("api-0", "shop", uid="uid-api", annotations={"logagent.io/parser": "json"},
                       containers={"api": ("registry/api:1", "d" * 64, 0)}, owner=("StatefulSet", "api"))
    for pod in (java, quiet, jsonapp):
        api.add(pod)
    # a java app's log: each record starts with a timestamp header; the trace lines continue the ERROR record
    first, last = "2024-05-01 10:00:00.100 INFO order 1 placed", "2024-05-01 10:00:00.300 INFO order 2 placed"
    trace = ["2024-05-01 10:00:00.200 ERROR order failed", "java.lang.IllegalStateException: no stock",
             "\tat shop.Orders.place(Orders.java:42)", "\tat shop.Api.handle(Api.java:7)"]
    pod_log(root, java, "orders", cri(first, *trace, last))
    pod_log(root, quiet, "app", cri(*(f"noise {i}" for i in range(50))))
    pod_log(root, jsonapp, "api", cri('{"level":"warn","msg":"slow"}'))
    volume_file = root / "var/lib/kubelet/pods/uid-orders/volumes/kubernetes.io~empty-dir/app-logs/audit.log"
    volume_file.parent.mkdir(parents=True)
    volume_file.write_text("audit: order 1\n")

    output = tmp_path / "out.jsonl"
    cfg = parse_config({
        "state_dir": str(tmp_path / "state"), "http": {"enabled": False},
        "inputs": [
            {"type": "file", "name": "containers", "paths": [f"{root}/var/log/pods/*/*/*.log"], "format": "cri",
             "tag": "kube", "poll_interval": "100ms"},
            {"type": "file", "name": "volumes", "tag": "volume", "poll_interval": "100ms",
             "paths": [f"{root}/var/lib/kubelet/pods/*/volumes/kubernetes.io~empty-dir/*/*.log"]},
        ],
        "pipeline": [{"type": "kubernetes", "api_server": api.url, "node_name": "node-a", "root": str(root),
                      "token_file": "/nonexistent", "ca_file": "/nonexistent", "tag_rewrite": True,
                      "backoff_initial": "20ms", "backoff_max": "200ms"}],
        "outputs": [{"type": "file", "name": "out", "path": str(output), "fsync": False}],
    }, "<test>")
    registry.validate(cfg)
    pipeline = Pipeline(cfg)
    await pipeline.start()
    try:
        await async_wait_for(lambda: len(read_records(output)) >= 5, timeout=20, what="first records")
        # a pod scheduled after start: the watch delivers it, then its container starts writing
        late = make_pod("late-job-x1", "batch", uid="uid-late", labels={"run": "nightly"},
                        containers={"worker": ("registry/worker:2", "e" * 64, 0)}, owner=("Job", "late-job"))
        api.add(late)
        cache = pipeline.ctx.services.kubernetes.cache
        await async_wait_for(lambda: cache.by_uid("uid-late"), timeout=20, what="late pod through the watch")
        pod_log(root, late, "worker", cri("nightly run done"))
        await async_wait_for(lambda: any(r["message"] == "nightly run done" for r in read_records(output)),
                             timeout=20, what="late pod's record")
    finally:
        pipeline.request_stop()
        await pipeline.shutdown()

    records = read_records(output)
    by_message = {r["message"] if isinstance(r["message"], str) else json.dumps(r["message"]): r for r in records}
    # multiline annotation: the trace is one record
    assert [r["message"] for r in records if r.get("kubernetes", {}).get("pod") == java["metadata"]["name"]
            and r["input"] == "containers"] == [first, "\n".join(trace), last]
    orders = by_message[first]
    assert orders["kubernetes"] == {
        "namespace": "shop", "pod": "orders-5f6d7c8b9-abcde", "pod_uid": "uid-orders", "container": "orders",
        "container_id": "c" * 64, "restart_count": 0, "image": "registry/orders:3.1", "node": "node-a",
        "labels": {"app": "orders", "pod-template-hash": "5f6d7c8b9"},
        "annotations": {"logagent.io/multiline": "java"}, "owner": {"kind": "Deployment", "name": "orders"}}
    # exclude annotation: nothing of that pod
    assert not [r for r in records if "noise" in str(r["message"])]
    # parser annotation: the JSON body became fields
    api_rec = next(r for r in records if r.get("kubernetes", {}).get("pod") == "api-0")
    assert api_rec["json"] == {"level": "warn", "msg": "slow"}
    assert api_rec["kubernetes"]["owner"] == {"kind": "StatefulSet", "name": "api"}
    # the emptyDir file: tagged with its pod, found by uid
    audit = by_message["audit: order 1"]
    assert audit["kubernetes"]["pod"] == "orders-5f6d7c8b9-abcde" and audit["kubernetes"]["volume"] == "app-logs"
    assert "container" not in audit["kubernetes"]
    # the pod created after start is fully tagged
    late_rec = by_message["nightly run done"]
    assert late_rec["kubernetes"]["labels"] == {"run": "nightly"}
    assert late_rec["kubernetes"]["image"] == "registry/worker:2"
    assert len(records) == 3 + 1 + 1 + 1
