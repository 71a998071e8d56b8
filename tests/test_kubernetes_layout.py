"""The kubernetes stage with no API at all, over a real kubelet-style tree in a temp dir: /var/log/pods files and
the /var/log/containers symlinks to them give namespace, pod, uid, container, container id and restart count."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from logagent.component import Context
from logagent.config import Section
from logagent.kubernetes.stage import KubernetesMetadata
from logagent.record import Batch

UID = "6a1c2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
CID_0 = "0" * 63 + "a"
CID_1 = "1" * 63 + "b"


def pathless_stage(root: Path, **extra: Any) -> KubernetesMetadata:
    settings = KubernetesMetadata.parse_settings(
        Section({"api": False, "root": str(root), **extra}, "pipeline[0]", "test.yaml"))
    ctx = Context(config=None, checkpoints=None, dead_letter=None)  # type: ignore[arg-type]
    return KubernetesMetadata("kubernetes", settings, ctx)


def kubelet_tree(root: Path) -> dict[str, str]:
    """A pod whose container restarted once: 0.log (first instance) and 1.log (current), each with its link."""
    pod_dir = root / "var/log/pods" / f"payments_api-7f9c6d-kx2mq_{UID}" / "api"
    pod_dir.mkdir(parents=True)
    links = root / "var/log/containers"
    links.mkdir(parents=True)
    out = {}
    for restart, cid in ((0, CID_0), (1, CID_1)):
        log = pod_dir / f"{restart}.log"
        log.write_text(f"2024-05-01T10:00:0{restart}.000000000Z stdout F instance {restart}\n")
        link = links / f"api-7f9c6d-kx2mq_payments_api-{cid}.log"
        # the kubelet writes absolute targets
        link.symlink_to(log)
        out[f"pods{restart}"] = str(log)
        out[f"link{restart}"] = str(link)
    return out


def meta_of(stage: KubernetesMetadata, path: str) -> dict[str, Any]:
    (batch,) = stage.process(Batch("kube", [{"message": "m", "offset": 0}], {"path": path}))
    return batch.meta["kubernetes"]


def test_pods_directory_gives_namespace_pod_uid_container_and_restart_count(tmp_path: Path) -> None:
    paths = kubelet_tree(tmp_path)
    stage = pathless_stage(tmp_path)
    assert meta_of(stage, paths["pods0"]) == {"namespace": "payments", "pod": "api-7f9c6d-kx2mq", "pod_uid": UID,
                                              "container": "api", "restart_count": 0}
    assert meta_of(stage, paths["pods1"])["restart_count"] == 1


def test_containers_symlink_adds_container_id_and_reads_the_rest_from_its_target(tmp_path: Path) -> None:
    paths = kubelet_tree(tmp_path)
    stage = pathless_stage(tmp_path)
    for restart, cid in ((0, CID_0), (1, CID_1)):
        assert meta_of(stage, paths[f"link{restart}"]) == {
            "namespace": "payments", "pod": "api-7f9c6d-kx2mq", "pod_uid": UID, "container": "api",
            "container_id": cid, "restart_count": restart}


def test_tag_rewrite_names_namespace_pod_and_container(tmp_path: Path) -> None:
    paths = kubelet_tree(tmp_path)
    stage = pathless_stage(tmp_path, tag_rewrite=True)
    (batch,) = stage.process(Batch("kube", [{"message": "m", "offset": 0}], {"path": paths["link1"]}))
    assert batch.tag == "kube.payments.api-7f9c6d-kx2mq.api"


def test_a_dangling_link_still_gives_what_its_name_says(tmp_path: Path) -> None:
    paths = kubelet_tree(tmp_path)
    os.unlink(paths["pods0"])  # the kubelet removed the old instance's log; the link is left dangling
    stage = pathless_stage(tmp_path)
    meta = meta_of(stage, paths["link0"])
    # readlink works on a dangling link: the target path still names uid and restart count
    assert meta["pod_uid"] == UID and meta["restart_count"] == 0 and meta["container_id"] == CID_0


def test_files_outside_the_root_or_the_layouts_pass_untagged(tmp_path: Path) -> None:
    kubelet_tree(tmp_path)
    stage = pathless_stage(tmp_path)
    other = tmp_path / "var/log/syslog"
    other.write_text("x\n")
    for path in (str(other), f"/var/log/pods/payments_api_{UID}/api/0.log"):
        (batch,) = stage.process(Batch("kube", [{"message": "m", "offset": 0}], {"path": path}))
        assert "kubernetes" not in batch.meta
    # a batch with no path at all (a kmsg batch routed through the stage) passes untouched
    (batch,) = stage.process(Batch("kernel", [{"message": "m", "seq": 1}], {"input": "kmsg"}))
    assert batch.meta == {"input": "kmsg"}
