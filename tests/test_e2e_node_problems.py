"""A real OOM kill, reported to Kubernetes: one Event on the Pod (container, last lines) and one on the Node.

As root, the test makes a memory cgroup shaped like the kubelet's (`.../kubepods/burstable/pod<uid>/<container
id>`, under the test's own memory cgroup, removed afterwards) with a 32 MiB limit, and runs a process in it that
allocates until the kernel kills it. The kernel itself prints the OOM report into /dev/kmsg (facility 0: a
kernel-originated report, nothing written from userspace). The agent tails the container's CRI log, knows the pod
from the fake API server's watch, reads /dev/kmsg, and reports through the node_problems stage to the same fake
API server. The victim's command name is new on every run (the process is exec'd through a symlink named
`oom-<run>`, which becomes its comm), so reports of other runs or other tests in the kernel buffer are told apart.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_support import ContainerLog
from tests.filetail import Agent, agent_config
from tests.helpers import async_wait_for, kmsg_writable
from tests.kube_apiserver import FakeApiServer, make_pod
from tests.kube_objects import make_node, rbac_refuses

LAST_LINES = 5


def memcg_root() -> Path | None:
    """This process's cgroup v1 memory controller directory, when we may make children there."""
    if os.geteuid() != 0:
        return None
    try:
        rel = next(line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                   if line.split(":", 2)[1] == "memory")
    except (OSError, StopIteration, IndexError):
        return None
    base = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
    return base if (base / "memory.limit_in_bytes").exists() and os.access(base, os.W_OK) else None


pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not kmsg_writable(), reason="needs root and a readable /dev/kmsg"),
              pytest.mark.skipif(memcg_root() is None, reason="needs a writable cgroup v1 memory controller")]


def oom_kill(cgroup: Path, comm_path: Path) -> int:
    """Run a memory hog in `cgroup` until the kernel OOM-kills it; its pid."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "{comm_path}" -c '
         '"a = []\nwhile True: a.append(bytearray(1 << 20))"'])
    proc.wait(timeout=60)
    assert proc.returncode == -9, f"the hog was not OOM-killed (rc {proc.returncode})"
    return proc.pid


async def test_a_kernel_oom_kill_becomes_one_event_on_the_pod_and_one_on_the_node(api: FakeApiServer,
                                                                                  tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:6]
    comm = f"oom-{run}"
    log = ContainerLog(tmp_path / "node", namespace="shop", pod=f"cart-7d9f-{run}", container="cart")
    api.add(make_pod(log.pod, log.namespace, uid=log.uid, containers={"cart": ("registry.local/cart:1.2",
                                                                                log.container_id, 0)}))
    api.add_node(make_node("node-a"))
    log.create()
    root = memcg_root()
    assert root is not None
    pod_cg = root / f"logagent-test-{run}" / "kubepods" / "burstable" / f"pod{log.uid}"
    cgroup = pod_cg / log.container_id
    cgroup.mkdir(parents=True)
    (cgroup / "memory.limit_in_bytes").write_text(str(32 << 20))
    hog = tmp_path / comm
    os.symlink(os.path.realpath(sys.executable), hog)
    boot_file = tmp_path / "boot_id"
    boot_file.write_text(str(uuid.uuid4()))
    site_rules = tmp_path / "site.yaml"
    site_rules.write_text("version: 1\ngroups:\n  oom: 2\n")
    kube = {"api_server": api.url, "node_name": "node-a", "token_file": "/nonexistent", "ca_file": "/nonexistent",
            "backoff_initial": "20ms", "backoff_max": "200ms"}
    doc = agent_config(tmp_path, [log.glob], format="auto", tag="kube", poll_interval="100ms", top={"pipeline": [
        {"type": "kubernetes", "root": str(log.root), **kube},
        {"type": "signatures", "match": ["kernel", "kube*"], "last_lines": LAST_LINES,
         "rules_files": [str(site_rules)], "flush_interval": "100ms"},
        {"type": "node_problems", "match": [], "boot_id_path": str(boot_file), "conditions": [], **kube},
    ]})
    doc["inputs"].append({"type": "kmsg", "name": "kernel", "tag": "kernel", "read_from": "tail",
                          "flush_interval": "50ms"})
    written = [f"cart {run}: allocating buffer {i} of 64 MiB" for i in range(8)]
    try:
        async with Agent(tmp_path, doc) as agent:
            log.write("".join(f"2024-05-14T09:12:05.{i:09d}Z stdout F {t}\n" for i, t in enumerate(written)).encode())
            await async_wait_for(lambda: len([r for r in agent.records() if r.get("input") == "files"]) == 8,
                                 timeout=30, what="the container's lines delivered")
            await async_wait_for(lambda: agent.pipeline.inputs["kernel"].input.opened, timeout=30, what="kmsg opened")
            pid = oom_kill(cgroup, hog)

            def pod_events() -> list[dict[str, Any]]:
                return [e for e in api.events.values() if e["involvedObject"].get("uid") == log.uid]

            def node_events() -> list[dict[str, Any]]:
                return [e for e in api.events.values() if e["involvedObject"]["kind"] == "Node"
                        and comm in e["message"]]
            await async_wait_for(lambda: pod_events() and node_events(), timeout=30, what="both events")
            def shipped() -> list[dict[str, Any]]:
                return [r for r in agent.records() if r.get("category") == "oom"
                        and r.get("fields", {}).get("pid") == str(pid)]
            # the Events may reach the API server before the output file has the event record
            (event,) = await async_wait_for(shipped, timeout=30, what="the shipped OOM event")
    finally:
        for d in (cgroup, pod_cg, pod_cg.parent, pod_cg.parent.parent, pod_cg.parent.parent.parent):
            try:
                d.rmdir()
            except OSError:
                pass

    assert event["signature"] == "memcg_oom_killed" and not event.get("injected")
    (pod_ev,), (node_ev,) = pod_events(), node_events()
    assert pod_ev["metadata"]["namespace"] == "shop"
    assert pod_ev["involvedObject"] == {"kind": "Pod", "namespace": "shop", "name": log.pod, "uid": log.uid,
                                        "apiVersion": "v1", "fieldPath": "spec.containers{cart}"}
    assert (pod_ev["type"], pod_ev["reason"], pod_ev["count"]) == ("Warning", "memcg_oom_killed", 1)
    msg = pod_ev["message"]
    assert msg.startswith(f"container cart: {comm} invoked oom-killer")
    assert msg.split("\nlast lines:\n", 1)[1].split("\n") == written[-LAST_LINES:]
    assert node_ev["metadata"]["namespace"] == "default"
    assert node_ev["involvedObject"] == {"kind": "Node", "name": "node-a", "uid": "node-a", "apiVersion": "v1"}
    assert (node_ev["type"], node_ev["reason"], node_ev["count"]) == ("Warning", "memcg_oom_killed", 1)
    assert node_ev["message"].startswith(f"{comm} invoked oom-killer")
    assert rbac_refuses(api.grants_used) == set()  # every call the shipped RBAC allows
