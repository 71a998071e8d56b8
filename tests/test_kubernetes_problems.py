"""Kernel incidents reported to Kubernetes (node_problems stage) against the fake API server over real HTTP.

The kernel records enter a real Pipeline exactly as the kmsg input makes them (raw `/dev/kmsg` records with
facility 0, decoded by the input's own decoder, in a batch with the input's meta): the signatures stage raises the
incidents, the node_problems stage patches nodes/status and posts Events. The boot id comes from a file the test
rewrites, standing in for /proc/sys/kernel/random/boot_id across a reboot.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from logagent.config import parse_config
from logagent.inputs.kmsg import KmsgDecoder
from logagent.metrics import REGISTRY
from logagent.pipeline import Pipeline
from logagent.record import Batch
from tests.helpers import async_wait_for
from tests.kube_apiserver import FakeApiServer
from tests.kube_objects import make_node, rbac_refuses

NODE = "node-a"


def kernel_batch(lines: list[str], first_seq: int, boot_id: str, prio: int = 2) -> Batch:
    """What the kmsg input emits for these kernel printks (facility 0, level 2; prio 12: written by a process)."""
    raws = [f"{prio},{first_seq + i},{(first_seq + i) * 1000},-;{line}\n".encode() for i, line in enumerate(lines)]
    records, _ = KmsgDecoder().decode(raws, 1_700_000_000 * 10**9)
    meta = {"input": "kernel", "source": "kmsg", "boot_id": boot_id, "source_id": f"kmsg:{boot_id}",
            "pos_key": "seq"}
    return Batch("kernel", records, meta)


def config(tmp_path: Path, api: FakeApiServer, boot_file: Path, **problems: Any) -> dict[str, Any]:
    # Reports stay open for their group's window (fs: 120 s shipped) in case more of them comes: a short window
    # through the documented site-rules file, so the incident closes in a second.
    site_rules = tmp_path / "site.yaml"
    site_rules.write_text("version: 1\ngroups:\n  fs: 1\n  network: 1\n")
    return {
        "state_dir": str(tmp_path / "state"), "grace_period": "5s", "http": {"enabled": False},
        "inputs": [{"type": "file", "name": "files", "paths": [str(tmp_path / "logs" / "*.log")]}],
        "pipeline": [
            {"type": "signatures", "match": ["kernel"], "flush_interval": "50ms", "rules_files": [str(site_rules)]},
            {"type": "node_problems", "match": [], "api_server": api.url, "node_name": NODE,
             "token_file": "/nonexistent", "ca_file": "/nonexistent", "boot_id_path": str(boot_file),
             "heartbeat_interval": "300ms", "backoff_initial": "20ms", "backoff_max": "200ms", **problems},
        ],
        "outputs": [{"type": "file", "path": str(tmp_path / "out.jsonl"), "fsync": False}],
    }


class Running:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.pipeline = Pipeline(parse_config(doc, "test.yaml"))

    async def __aenter__(self) -> Pipeline:
        await self.pipeline.start()
        return self.pipeline

    async def __aexit__(self, *exc: Any) -> None:
        self.pipeline.request_stop()
        await self.pipeline.shutdown()


def ours(api: FakeApiServer) -> dict[str, dict[str, Any]]:
    return {t: c for t, c in api.conditions(NODE).items() if t not in ("Ready", "MemoryPressure")}


async def test_a_permanent_problem_sets_its_condition_and_a_reboot_clears_it(api: FakeApiServer,
                                                                              tmp_path: Path) -> None:
    api.add_node(make_node(NODE))
    boot_file = tmp_path / "boot_id"
    boot_a, boot_b = str(uuid.uuid4()), str(uuid.uuid4())
    boot_file.write_text(boot_a + "\n")
    doc = config(tmp_path, api, boot_file)
    async with Running(doc) as p:
        # every configured type is reported False from the start, the kubelet's conditions untouched
        await async_wait_for(lambda: len(ours(api)) == 5, timeout=30, what="our conditions patched")
        assert {t: c["status"] for t, c in ours(api).items()} == dict.fromkeys(
            ["KernelDeadlock", "ReadonlyFilesystem", "FilesystemShutdown", "GPUFallenOffBus", "NetworkDeviceWatchdog"],
            "False")
        assert ours(api)["ReadonlyFilesystem"]["reason"] == "FilesystemIsNotReadOnly"
        assert REGISTRY.get_sample_value("logagent_node_problem_condition",
                                         {"type": "ReadonlyFilesystem", "reason": "fs_remount_readonly"}) == 0
        before = ours(api)["ReadonlyFilesystem"]["lastTransitionTime"]
        await p.inject(kernel_batch(["EXT4-fs error (device sdb1): ext4_journal_check_start:83: comm kworker: "
                                     "Detected aborted journal",
                                     "EXT4-fs (sdb1): Remounting filesystem read-only"], 500, boot_a))
        await async_wait_for(lambda: ours(api)["ReadonlyFilesystem"]["status"] == "True", timeout=30,
                             what="ReadonlyFilesystem True")
        cond = ours(api)["ReadonlyFilesystem"]
        assert cond["reason"] == "fs_remount_readonly"
        assert "Remounting filesystem read-only" in cond["message"] or "sdb1" in cond["message"]
        assert cond["lastTransitionTime"] >= before
        assert api.conditions(NODE)["Ready"]["reason"] == "KubeletReady"  # only our types touched
        # NPD's metrics: a counter per problem reason, a gauge per condition
        assert REGISTRY.get_sample_value("logagent_node_problem_condition",
                                         {"type": "ReadonlyFilesystem", "reason": "fs_remount_readonly"}) == 1
        # the event and the count when the report closed
        await async_wait_for(lambda: [e for e in api.events.values() if e["reason"] == "fs_remount_readonly"],
                             timeout=30, what="the node event")
        assert REGISTRY.get_sample_value("logagent_node_problems_total", {"reason": "fs_remount_readonly"}) >= 1
        assert all(ct.startswith("application/strategic-merge-patch+json") for _, ct, _ in api.node_patches)
        # heartbeats keep coming, the transition time stays
        beats = len(api.node_patches)
        await async_wait_for(lambda: len(api.node_patches) >= beats + 2, timeout=30, what="two heartbeats")
        assert ours(api)["ReadonlyFilesystem"]["lastTransitionTime"] == cond["lastTransitionTime"]
    saved = json.loads((tmp_path / "state" / "node-conditions.json").read_text())
    assert saved["boot_id"] == boot_a and saved["conditions"]["ReadonlyFilesystem"]["status"] == "True"

    # the agent restarts in the same boot: the problem is still there (the kernel does not say it twice)
    api.node_patches.clear()
    async with Running(doc):
        await async_wait_for(lambda: api.node_patches, timeout=30, what="a patch after the restart")
        assert ours(api)["ReadonlyFilesystem"]["status"] == "True"

    # a reboot: a new boot id, every condition back to False
    boot_file.write_text(boot_b + "\n")
    api.node_patches.clear()
    async with Running(doc):
        await async_wait_for(lambda: api.node_patches and ours(api)["ReadonlyFilesystem"]["status"] == "False",
                             timeout=30, what="cleared after the reboot")
        assert ours(api)["ReadonlyFilesystem"]["reason"] == "FilesystemIsNotReadOnly"
        assert REGISTRY.get_sample_value("logagent_node_problem_condition",
                                         {"type": "ReadonlyFilesystem", "reason": "fs_remount_readonly"}) == 0
    saved = json.loads((tmp_path / "state" / "node-conditions.json").read_text())
    assert saved["boot_id"] == boot_b and saved["conditions"]["ReadonlyFilesystem"]["status"] == "False"
    assert rbac_refuses(api.grants_used) == set()  # every call the shipped RBAC allows


async def test_a_storm_of_identical_incidents_is_one_event_with_a_count_and_failures_are_retried(
        api: FakeApiServer, tmp_path: Path) -> None:
    api.add_node(make_node(NODE))
    boot_file = tmp_path / "boot_id"
    boot_file.write_text(str(uuid.uuid4()))
    # the first two creates fail (500, then 429): retried with backoff, not lost
    api.fail_next("POST", "/api/v1/namespaces/default/events", 500)
    api.fail_next("POST", "/api/v1/namespaces/default/events", 429)
    # a small burst and 4 requests a second: the rate limit, not the machine's speed, bounds the requests
    async with Running(config(tmp_path, api, boot_file, conditions=[], events_burst=3, events_qps=4)) as p:
        started = time.monotonic()
        for i in range(40):
            await p.inject(kernel_batch(["nf_conntrack: nf_conntrack: table full, dropping packet"], 100 + i * 2000,
                                        "b"))
        await async_wait_for(lambda: [e for e in api.events.values() if e.get("count") == 40], timeout=30,
                             what="one event counting 40")
        (ev,) = api.events.values()
        assert ev["involvedObject"] == {"kind": "Node", "name": NODE, "uid": NODE, "apiVersion": "v1"}
        assert (ev["type"], ev["reason"], ev["metadata"]["namespace"]) == ("Warning", "conntrack_table_full",
                                                                           "default")
        assert ev["message"] == "nf_conntrack: nf_conntrack: table full, dropping packet"
        assert ev["source"] == {"component": "logagent", "host": NODE}
        creates = [w for w in api.event_writes if w[0] == "create"]
        assert len(creates) == 1  # the rest were patches of the same event
        elapsed = time.monotonic() - started
        # aggregated while requests were in flight or waiting for the rate limit (the 2 refused creates included)
        assert len(api.event_writes) + 2 <= 3 + 4 * elapsed + 1
        assert len(api.event_writes) < 40
        problems = p.stages[1].stage
        assert problems.recorder.stats.retries == 2
        # no conditions configured: nodes/status is never patched
        assert api.node_patches == []
        assert rbac_refuses(api.grants_used) == set()  # every call the shipped RBAC allows


async def test_the_condition_is_set_while_the_report_is_still_open(api: FakeApiServer, tmp_path: Path) -> None:
    """With the shipped windows (an fs report stays open 120 s for more lines) the condition comes at once; the
    Event comes when the report closes (here: at shutdown, when open reports are flushed)."""
    api.add_node(make_node(NODE))
    boot_file = tmp_path / "boot_id"
    boot_file.write_text(str(uuid.uuid4()))
    doc = config(tmp_path, api, boot_file)
    doc["pipeline"][0].pop("rules_files")
    async with Running(doc) as p:
        await async_wait_for(lambda: len(ours(api)) == 5, timeout=30, what="our conditions patched")
        await p.inject(kernel_batch(["XFS (nvme1n1): Corruption of in-memory data detected.  Shutting down "
                                     "filesystem"], 700, "b"))
        await async_wait_for(lambda: ours(api)["FilesystemShutdown"]["status"] == "True", timeout=30,
                             what="FilesystemShutdown True")
        assert ours(api)["FilesystemShutdown"]["reason"] == "xfs_shutdown"
        assert "nvme1n1" in ours(api)["FilesystemShutdown"]["message"]
        assert api.events == {}  # the report is still open
    (ev,) = api.events.values()
    assert ev["reason"] == "xfs_shutdown" and ev["involvedObject"]["kind"] == "Node"


async def test_a_problem_written_from_userspace_sets_no_condition_and_posts_no_event(api: FakeApiServer,
                                                                                     tmp_path: Path) -> None:
    """`logger -p kern.crit` or `echo '<2>...' > /dev/kmsg` gives facility 1 (user): the record is shipped and the
    event flagged `injected`, but the node is not marked broken."""
    api.add_node(make_node(NODE))
    boot_file = tmp_path / "boot_id"
    boot_file.write_text(str(uuid.uuid4()))
    doc = config(tmp_path, api, boot_file)
    # by default a userspace record raises no incident at all; a fault-injection drill reports it, flagged
    doc["pipeline"][0]["injected"] = "report"
    async with Running(doc) as p:
        await async_wait_for(lambda: len(ours(api)) == 5, timeout=30, what="our conditions patched")
        await p.inject(kernel_batch(["EXT4-fs (sdb1): Remounting filesystem read-only"], 900, "b", prio=12))
        out = tmp_path / "out.jsonl"
        await async_wait_for(lambda: out.exists() and b'"injected":true' in out.read_bytes(), timeout=30,
                             what="the flagged incident shipped")
        beats = len(api.node_patches)
        await async_wait_for(lambda: len(api.node_patches) >= beats + 2, timeout=30, what="two heartbeats")
        assert ours(api)["ReadonlyFilesystem"]["status"] == "False"
    assert api.events == {}
