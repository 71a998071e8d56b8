"""An OOM kill in a Kubernetes container, end to end, as on a node (root; real /dev/kmsg).

The agent tails the container's CRI log through the kubelet's /var/log/containers link, learns the pod from a local
API server's list+watch, and reads the real /dev/kmsg. The test makes the container write some lines, then writes
a memcg OOM report into /dev/kmsg, one record per write as the kernel prints it. Exactly one OOM event must come
out: category oom, signature memcg_oom_killed, the victim's pid and command, the pod's metadata (labels included)
and the last lines the container wrote.

Records written from userspace carry facility 1 (prio 12 for `<4>`): they are not the kernel's, so the stage runs
with `injected: report` (a fault-injection drill): the rules classify them by their text all the same, and the
event says it was injected. Pid and command are new on every run, and the kmsg input starts at the
buffer's end (`read_from: tail`), so reports of earlier runs still in the kernel buffer cannot be taken for this one.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_support import ContainerLog
from tests.filetail import Agent, agent_config
from tests.helpers import async_wait_for, kmsg_writable
from tests.kube_apiserver import FakeApiServer, make_pod

LAST_LINES = 5


pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not kmsg_writable(), reason="needs root and a readable, writable /dev/kmsg")]


def oom_report(comm: str, pid: int, pod_uid: str, container_id: str) -> list[str]:
    """A cgroup v1 memcg OOM report as a 6.1 kernel prints it, one printk per line."""
    pod_cg = f"/kubepods/burstable/pod{pod_uid}"
    return [
        f"{comm} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=985",
        f"CPU: 1 PID: {pid} Comm: {comm} Not tainted 6.1.0-18-amd64 #1 Debian 6.1.76-1",
        "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014",
        "Call Trace:",
        " <TASK>",
        " dump_stack_lvl+0x44/0x5c",
        " dump_header+0x4a/0x211",
        " oom_kill_process.cold+0xb/0x10",
        " </TASK>",
        "memory: usage 262144kB, limit 262144kB, failcnt 118",
        "swap: usage 0kB, limit 9007199254740988kB, failcnt 0",
        f"Memory cgroup stats for {pod_cg}/{container_id}:",
        "Tasks state (memory values in pages):",
        "[  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents oom_score_adj name",
        f"[{pid:7d}]     0 {pid:5d}   134489    65530   593920        0           985 {comm}",
        (f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={container_id},mems_allowed=0,"
         f"oom_memcg={pod_cg}/{container_id},task_memcg={pod_cg}/{container_id},task={comm},pid={pid},uid=0"),
        (f"Memory cgroup out of memory: Killed process {pid} ({comm}) total-vm:537956kB, anon-rss:262120kB, "
         f"file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:580kB oom_score_adj:985"),
    ]


def write_kmsg(lines: list[str]) -> None:
    """One write, one record. The kernel rate-limits writers per open descriptor (10 records per 5 s unless
    kernel.printk_devkmsg=on, then "output lines suppressed"): a descriptor per record, as separate tools would
    write them, leaves the system setting alone."""
    for line in lines:
        fd = os.open("/dev/kmsg", os.O_WRONLY)
        try:
            os.write(fd, f"<4>{line}\n".encode())
        finally:
            os.close(fd)


async def test_oom_kill_in_a_tailed_container_carries_its_pod_and_last_lines(api: FakeApiServer,
                                                                             tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:6]
    comm, pid = f"cart-{run}", random.randrange(200_000, 4_000_000)
    log = ContainerLog(tmp_path / "node", namespace="shop", pod=f"cart-7d9f-{run}", container="cart")
    api.add(make_pod(log.pod, log.namespace, uid=log.uid, labels={"app": "cart", "run": run},
                     containers={"cart": ("registry.local/cart:1.2", log.container_id, 0)},
                     owner=("ReplicaSet", "cart-7d9f")))
    log.create()
    # The shortest window a report stays open for more of its headlines, through the documented site-rules file,
    # so the event is out in seconds rather than after the shipped 10 s.
    site_rules = tmp_path / "site.yaml"
    site_rules.write_text("version: 1\ngroups:\n  oom: 2\n")
    doc = agent_config(tmp_path, [log.glob], format="auto", tag="kube", poll_interval="100ms", top={"pipeline": [
        {"type": "kubernetes", "api_server": api.url, "node_name": "node-a", "root": str(log.root),
         "token_file": "/nonexistent", "ca_file": "/nonexistent", "backoff_initial": "20ms",
         "backoff_max": "200ms"},
        {"type": "signatures", "match": ["kernel", "kube*"], "last_lines": LAST_LINES,
         "rules_files": [str(site_rules)], "flush_interval": "100ms", "injected": "report"},
    ]})
    doc["inputs"].append({"type": "kmsg", "name": "kernel", "tag": "kernel", "read_from": "tail",
                          "flush_interval": "50ms"})
    written = [f"cart {run}: allocating buffer {i} of 64 MiB" for i in range(8)]

    async with Agent(tmp_path, doc) as agent:
        log.write("".join(f"2024-05-14T09:12:05.{i:09d}Z stdout F {text}\n" for i, text in enumerate(written))
                  .encode())
        await async_wait_for(lambda: [r["message"] for r in agent.records() if r.get("input") == "files"]
                             == written, timeout=20, what="the container's lines delivered")
        report = oom_report(comm, pid, log.uid, log.container_id)
        write_kmsg(report)

        def events() -> list[dict[str, Any]]:
            return [r for r in agent.records() if r.get("category") == "oom"
                    and (r.get("fields", {}).get("pid") == str(pid) or comm in r.get("first_line", ""))]
        await async_wait_for(events, timeout=20, what="the OOM event")
        # the kernel records themselves passed through too (the stage never holds or drops them)
        await async_wait_for(lambda: any(f"Killed process {pid} ({comm})" in r["message"] for r in agent.records()
                                         if r.get("input") == "kernel"), timeout=20, what="the kernel records")
        (event,) = events()

    assert (event["category"], event["signature"]) == ("oom", "memcg_oom_killed")
    assert event["fields"]["pid"] == str(pid) and event["fields"]["comm"] == comm
    assert event["fields"]["constraint"] == "CONSTRAINT_MEMCG"
    assert event["first_line"].startswith(f"{comm} invoked oom-killer")
    assert event["last_line"].startswith(f"Memory cgroup out of memory: Killed process {pid} ({comm})")
    assert event["injected"] is True  # written by userspace: classified by its text, flagged
    # the whole report is one event: every record of it, in order, and its three headlines
    assert event["lines"] == report
    assert event["last_seq"] - event["first_seq"] == len(report) - 1
    assert event["signatures"] == ["oom_killer_invoked", "oom_kill_constraint", "memcg_oom_killed"]
    k = event["kubernetes"]
    assert (k["namespace"], k["pod"], k["pod_uid"], k["container"], k["container_id"]) == (
        log.namespace, log.pod, log.uid, log.container, log.container_id)
    assert k["labels"] == {"app": "cart", "run": run} and k["image"] == "registry.local/cart:1.2"
    assert event["container_last_lines"] == written[-LAST_LINES:]
    assert event["container_lines_matched_by"] == "container_id"
    # the container's own records carry the same pod (through the watch) and are not events
    container_records = [r for r in agent.records() if r.get("input") == "files"]
    assert [r["message"] for r in container_records] == written
    assert all(r["kubernetes"]["labels"] == {"app": "cart", "run": run} for r in container_records)
