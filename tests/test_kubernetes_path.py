"""Pod identity from paths: every kubelet layout, link resolution, root prefix, the per-path cache."""

from __future__ import annotations

import os
from pathlib import Path

from logagent.kubernetes.path import PathInfo, PathResolver, parse_path

CID = "4f7c1e2b9a0d3c5e6f8a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6"
UID = "8d1f2a3b-4c5d-6e7f-8091-a2b3c4d5e6f7"


def test_containers_name_without_link_gives_name_fields_and_container_id() -> None:
    info = parse_path(f"/var/log/containers/web-7d4b9c-x2x9z_shop_nginx-{CID}.log")
    assert info == PathInfo("containers", "shop", "web-7d4b9c-x2x9z", None, "nginx", CID, None)
    assert info.as_meta() == {"namespace": "shop", "pod": "web-7d4b9c-x2x9z", "container": "nginx",
                              "container_id": CID}


def test_containers_link_target_gives_uid_and_restart_count(tmp_path: Path) -> None:
    pods = tmp_path / "var/log/pods" / f"shop_web-0_{UID}" / "app"
    pods.mkdir(parents=True)
    (pods / "3.log").write_text("")
    links = tmp_path / "var/log/containers"
    links.mkdir(parents=True)
    link = links / f"web-0_shop_app-{CID}.log"
    link.symlink_to(pods / "3.log")
    info = parse_path(str(link), root=str(tmp_path))
    assert info is not None
    assert (info.namespace, info.pod, info.pod_uid, info.container, info.container_id, info.restart_count) == (
        "shop", "web-0", UID, "app", CID, 3)


def test_containers_relative_link_target(tmp_path: Path) -> None:
    pods = tmp_path / "var/log/pods" / f"kube-system_coredns-abc_{UID}" / "coredns"
    pods.mkdir(parents=True)
    (pods / "0.log").write_text("")
    links = tmp_path / "var/log/containers"
    links.mkdir(parents=True)
    link = links / f"coredns-abc_kube-system_coredns-{CID}.log"
    link.symlink_to(f"../pods/kube-system_coredns-abc_{UID}/coredns/0.log")
    info = parse_path(str(link), root=str(tmp_path))
    assert info is not None and info.pod_uid == UID and info.restart_count == 0


def test_container_name_with_dashes_and_pod_with_dots() -> None:
    info = parse_path(f"/var/log/containers/my.pod-1_default_istio-proxy-{CID}.log")
    assert info is not None
    assert (info.pod, info.namespace, info.container) == ("my.pod-1", "default", "istio-proxy")


def test_pods_layout_current_and_rotated_files() -> None:
    base = f"/var/log/pods/shop_web-0_{UID}/nginx"
    cur = parse_path(f"{base}/2.log")
    assert cur == PathInfo("pods", "shop", "web-0", UID, "nginx", None, 2)
    rotated = parse_path(f"{base}/2.log.20240501-101500")
    assert rotated == PathInfo("pods", "shop", "web-0", UID, "nginx", None, 2, rotated=True)
    gz = parse_path(f"{base}/0.log.20240501-101500.gz")
    assert gz is not None and gz.restart_count == 0 and gz.rotated


def test_empty_dir_volume_files_at_any_depth() -> None:
    info = parse_path(f"/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/app-logs/sub/dir/x.log")
    assert info == PathInfo("volume", pod_uid=UID, volume="app-logs", volume_type="empty-dir")
    assert info.as_meta() == {"pod_uid": UID, "volume": "app-logs"}


def test_unrelated_and_malformed_paths_are_none() -> None:
    assert parse_path("/var/log/syslog") is None
    assert parse_path("/var/log/containers/not-a-container-log.log") is None
    assert parse_path("/var/log/containers/web_ns_app-shortid.log") is None
    assert parse_path(f"/var/log/pods/shop_web-0_{UID}/nginx/current.log") is None
    assert parse_path(f"/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~empty-dir/vol") is None  # the dir itself


def test_root_prefix_is_required_and_stripped(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert parse_path(f"/var/log/pods/a_b_{UID}/c/0.log", root=root) is None
    info = parse_path(f"{root}/var/log/pods/a_b_{UID}/c/0.log", root=root + "/")
    assert info is not None and (info.namespace, info.pod, info.container) == ("a", "b", "c")


def test_resolver_reads_a_link_once_per_path(tmp_path: Path) -> None:
    pods = tmp_path / "var/log/pods" / f"shop_web-0_{UID}" / "app"
    pods.mkdir(parents=True)
    (pods / "0.log").write_text("")
    links = tmp_path / "var/log/containers"
    links.mkdir(parents=True)
    link = links / f"web-0_shop_app-{CID}.log"
    link.symlink_to(pods / "0.log")
    resolver = PathResolver(str(tmp_path))
    first = resolver.resolve(str(link))
    assert first is not None and first.pod_uid == UID
    os.unlink(link)  # gone from disk: the cached answer stands (a path's identity never changes)
    assert resolver.resolve(str(link)) is first
