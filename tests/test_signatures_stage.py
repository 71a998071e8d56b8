"""The `signatures` stage: kernel batches pass unchanged and yield event batches; incidents time out through the
timer; OOM kills in Kubernetes containers carry the pod's metadata and the container's last lines; permanent
problems set node conditions; settings errors name the file and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from logagent import metrics
from logagent.component import Context
from logagent.config import ConfigError, Section
from logagent.inputs.kmsgformat import parse_capture
from logagent.kubernetes.cache import PodCache
from logagent.kubernetes.stage import KubernetesShared
from logagent.record import AckToken, Batch
from logagent.services import Services
from logagent.signatures.attribution import ContainerTails, parse_memcg
from logagent.signatures.stage import SignatureDetector, record_time
from tests.helpers import async_wait_for

DATA = Path(__file__).parent / "data" / "kernel"  # a copy of ../shared/testdata/kernel
POD_UID = "3c1d8e0f-7a2b-4c5d-9e8f-0a1b2c3d4e5f"
CID = "5f0e2c7a91d4b3e8" + "a" * 48
# what the kmsg input says about the batches it reads (the hand-made records below are facility 0: the kernel's)
KMSG_META = {"source": "kmsg", "source_id": "kmsg:b", "pos_key": "seq"}


def make_stage(tmp_path: Path, services: Services | None = None, **settings: Any) -> SignatureDetector:
    ctx = Context(config=None, checkpoints=None, dead_letter=None)  # type: ignore[arg-type]
    if services is not None:
        ctx.services = services
    section = Section(settings, "stages[0]", str(tmp_path / "agent.yaml"))
    return SignatureDetector("sig", SignatureDetector.parse_settings(section), ctx)


def kmsg_batches(chunk: int) -> list[Batch]:
    """The sample capture as the kmsg input emits it: records with seq, time_ns, level, userspace."""
    recs = parse_capture((DATA / "kmsg_sample.txt").read_bytes())
    boot_ns = 1_700_000_000 * 10**9
    rows = [{"message": r.message, "seq": r.seq, "time_ns": boot_ns + r.usec * 1000, "level": r.level,
             "facility": r.facility, "userspace": r.userspace} for r in recs]
    meta = {"input": "kmsg", "source": "kmsg", "source_id": "kmsg:boot-1", "pos_key": "seq"}
    return [Batch("kernel", rows[i:i + chunk], meta, AckToken()) for i in range(0, len(rows), chunk)]


def events_of(outputs: list[Batch]) -> list[dict[str, Any]]:
    return [rec for b in outputs if b.tag == "events.kernel" for rec in b.records]


def test_kernel_batches_pass_unchanged_and_incidents_become_events(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    before = metrics.KERNEL_SIGNATURES.labels(category="oom", signature="oom_killed_process")._value.get()
    out: list[Batch] = []
    for batch in kmsg_batches(chunk=10):
        records = list(batch.records)
        result = list(stage.process(batch))
        assert result[0] is batch and batch.records == records and batch.tag == "kernel"
        for derived in result[1:]:
            assert derived.tag == "events.kernel" and derived.ack is not batch.ack
            derived.ack.done()  # a no-op token: acknowledging it touches no input position
        out += result
    out += [stage.events_batch(stage.assembler.flush())]
    events = events_of(out)
    expected = [json.loads(line) for line in (DATA / "kmsg_sample.events.jsonl").read_text().splitlines()]
    multi = [e for e in events if e["first_seq"] != e["last_seq"] or len(e["headline_seqs"]) > 1]
    assert [(e["first_seq"], e["last_seq"], e["headline_seqs"], e["category"], e["signature"]) for e in multi] == [
        (x["first_seq"], x["last_seq"], x["headline_seqs"], x["category"], x["signature"]) for x in expected]
    oom = next(e for e in events if e["category"] == "oom")
    assert oom["fields"]["pid"] == "71308" and oom["fields"]["anon_rss_kb"] == "1037920448"
    assert oom["lines"][0].startswith("python3 invoked oom-killer") and len(oom["lines"]) == 65
    assert oom["time"] == "2023-11-15T00:13:23.881257Z" and oom["pos_key"] == "first_seq"  # boot + 7203.881257 s
    assert oom["source_id"] == "kmsg:boot-1#signatures" and oom["severity"] == "error"
    # path-only attribution: the sample's memcg names a burstable pod and its container
    assert oom["kubernetes"] == {"pod_uid": "6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d", "qos_class": "Burstable",
                                 "container_id": "8d41c7f0a2b94e3c9f1a6b7d2e5c8a0f3b6d9e2c1a4f7b0d3e6a9c2f5b8e1d4a"}
    after = metrics.KERNEL_SIGNATURES.labels(category="oom", signature="oom_killed_process")._value.get()
    assert after - before == 1
    # the read-only remount is a permanent condition
    assert "fs_remount_readonly:nvme1n1" in stage.conditions
    assert metrics.KERNEL_CONDITIONS.labels(signature="fs_remount_readonly", device="nvme1n1")._value.get() == 1


def test_batches_of_other_tags_pass_untouched(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    batch = Batch("host", [{"message": "nf_conntrack: table full, dropping packet"}], {}, AckToken())
    assert list(stage.process(batch)) == [batch] and stage.assembler.pending == 0


async def test_timer_flushes_a_stale_report_through_the_inject_hook(tmp_path: Path) -> None:
    rules = tmp_path / "fast.yaml"
    rules.write_text("groups:\n  hung_task: 0.2\n")
    injected: list[Batch] = []

    async def inject(batch: Batch) -> None:
        injected.append(batch)

    stage = make_stage(tmp_path, Services(inject=inject), rules_files=[str(rules)], flush_interval="50ms")
    await stage.start()
    try:
        batch = Batch("kernel", [
            {"message": "INFO: task kubelet:2210 blocked for more than 362 seconds.", "seq": 5, "userspace": False,
             "time": 1.0},
            {"message": '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.', "seq": 6,
             "userspace": False, "time": 1.0}], KMSG_META, AckToken())
        assert list(stage.process(batch)) == [batch]  # the report may still grow: nothing emitted yet
        await async_wait_for(lambda: injected, timeout=10, what="the timed-out hung task event")
        (event,) = injected[0].records
        assert (event["signature"], event["first_seq"], event["last_seq"]) == ("hung_task_blocked", 5, 6)
        assert stage.assembler.pending == 0
    finally:
        await stage.stop()


async def test_without_inject_hook_timed_out_reports_ride_the_next_batch(tmp_path: Path) -> None:
    rules = tmp_path / "fast.yaml"
    rules.write_text("groups:\n  hung_task: 0.1\n")
    stage = make_stage(tmp_path, rules_files=[str(rules)], flush_interval="20ms")
    await stage.start()
    try:
        stage.process(Batch("kernel", [{"message": "INFO: task a:1 blocked for more than 120 seconds.", "seq": 1,
                                        "userspace": False}], KMSG_META, AckToken()))
        await async_wait_for(lambda: stage._held, timeout=10, what="the timer to expire the report")
        nxt = Batch("kube.x", [{"message": "hello"}], {}, AckToken())
        out = list(stage.process(nxt))
        assert out[0] is nxt and [e["signature"] for e in out[1].records] == ["hung_task_blocked"]
    finally:
        await stage.stop()


# -- OOM attribution --------------------------------------------------------------------------------------------
def _pod() -> dict[str, Any]:
    return {"metadata": {"uid": POD_UID, "namespace": "shop", "name": "cart-7d9f", "labels": {"app": "cart"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "cart", "image": "cart:1.2"}]},
            "status": {"containerStatuses": [{"name": "cart", "containerID": f"containerd://{CID}",
                                              "restartCount": 0, "image": "cart:1.2"}]}}


def _memcg_oom_batch() -> Batch:
    memcg = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/"
             f"cri-containerd-{CID}.scope")
    lines = [
        "cart invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=996",
        "CPU: 3 PID: 81234 Comm: cart Not tainted 6.1.0 #1",
        "Call Trace:",
        " <TASK>",
        " dump_stack_lvl+0x45/0x5e",
        " </TASK>",
        "memory: usage 524288kB, limit 524288kB, failcnt 42",
        "Tasks state (memory values in pages):",
        f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-{CID[:16]}.scope,"
        f"mems_allowed=0,oom_memcg={memcg.rsplit('/', 1)[0]},task_memcg={memcg},task=cart,pid=81234,uid=0",
        "Memory cgroup out of memory: Killed process 81234 (cart) total-vm:538488kB, anon-rss:519120kB, "
        "file-rss:928kB, shmem-rss:0kB, UID:0 pgtables:1068kB oom_score_adj:996",
    ]
    return Batch("kernel", [{"message": m, "seq": 500 + i, "userspace": False, "time": 50.0}
                            for i, m in enumerate(lines)], KMSG_META, AckToken())


def _container_batch(n: int, cid: str | None = CID) -> Batch:
    kmeta = {"namespace": "shop", "pod": "cart-7d9f", "pod_uid": POD_UID, "container": "cart"}
    if cid:
        kmeta["container_id"] = cid
    return Batch("kube.shop.cart-7d9f.cart", [{"message": f"allocating buffer {i}", "offset": i * 20}
                                             for i in range(n)],
                 {"path": "/var/log/pods/x/cart/0.log", "kubernetes": kmeta}, AckToken())


def test_oom_event_carries_pod_metadata_and_the_containers_last_lines(tmp_path: Path) -> None:
    cache = PodCache()
    cache.upsert(_pod())
    stage = make_stage(tmp_path, Services(kubernetes=KubernetesShared(cache)), last_lines=20)
    logs = _container_batch(35)
    assert list(stage.process(logs)) == [logs]
    stage.process(_memcg_oom_batch())
    (event,) = [stage.event_record(inc) for inc in stage.assembler.flush()]
    assert (event["category"], event["signature"]) == ("oom", "memcg_oom_killed")
    k = event["kubernetes"]
    assert (k["namespace"], k["pod"], k["container"], k["pod_uid"], k["container_id"], k["image"]) == (
        "shop", "cart-7d9f", "cart", POD_UID, CID, "cart:1.2")
    assert event["container_last_lines"] == [f"allocating buffer {i}" for i in range(15, 35)]
    assert event["container_lines_matched_by"] == "container_id"
    assert event["fields"]["constraint"] == "CONSTRAINT_MEMCG" and event["fields"]["comm"] == "cart"
    assert event["first_seq"] == 500 and event["last_seq"] == 509


def test_oom_attribution_without_the_api_uses_the_path_and_pod_logs(tmp_path: Path) -> None:
    stage = make_stage(tmp_path)
    stage.process(_container_batch(3, cid=None))  # a /var/log/pods file read without the API: no container id
    stage.process(_memcg_oom_batch())
    (event,) = [stage.event_record(inc) for inc in stage.assembler.flush()]
    assert event["kubernetes"] == {"pod_uid": POD_UID, "container_id": CID, "qos_class": "Burstable"}
    assert event["container_last_lines"] == ["allocating buffer 0", "allocating buffer 1", "allocating buffer 2"]
    assert event["container_lines_matched_by"] == "pod_only"


@pytest.mark.parametrize("path,uid,cid,qos", [
    ("/kubepods/burstable/pod6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d/8d41c7f0a2b9" + "0" * 52,
     "6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d", "8d41c7f0a2b9" + "0" * 52, "Burstable"),
    ("/kubepods/pod6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d/" + "ab" * 32,
     "6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d", "ab" * 32, "Guaranteed"),
    ("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f2a9c1e_3b7d_4e8a_a1c2_9d0e4f5b6c7d.slice/"
     "docker-" + "cd" * 32 + ".scope", "6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d", "cd" * 32, "Besteffort"),
    ("/kubepods.slice/kubepods-pod6f2a9c1e_3b7d_4e8a_a1c2_9d0e4f5b6c7d.slice/crio-" + "ef" * 32 + ".scope",
     "6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d", "ef" * 32, "Guaranteed"),
    ("/kubepods/burstable/pod6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d", "6f2a9c1e-3b7d-4e8a-a1c2-9d0e4f5b6c7d", None,
     "Burstable"),
])
def test_memcg_paths_of_both_cgroup_versions_name_pod_and_container(path: str, uid: str, cid: str | None,
                                                                     qos: str) -> None:
    owner = parse_memcg(path)
    assert owner is not None and (owner.pod_uid, owner.container_id, owner.qos_class) == (uid, cid, qos)


def test_non_kubernetes_memcgs_are_not_attributed() -> None:
    assert parse_memcg("/system.slice/docker.service") is None and parse_memcg("/") is None


def test_container_tails_are_bounded_in_containers_and_bytes() -> None:
    tails = ContainerTails(lines=5, max_containers=3, max_bytes=10_000, max_line_bytes=100)
    for n in range(5):
        tails.add({"container_id": f"c{n}" * 8, "pod_uid": f"p{n}", "container": "app"}, [f"line {n}"] * 9)
    assert len(tails) == 3 and tails.last("c0" * 8) is None and tails.last("c4" * 8) == (["line 4"] * 5,
                                                                                          "container_id")
    tails.add({"container_id": "big" * 8, "pod_uid": "pb"}, ["x" * 5000] * 5)
    assert tails.bytes <= 10_000 and tails.last("big" * 8)[0] == ["x" * 100] * 5  # long lines are cut


# -- settings ---------------------------------------------------------------------------------------------------
def test_a_bad_rules_file_is_a_config_error_naming_both_files(tmp_path: Path) -> None:
    bad = tmp_path / "mine.yaml"
    bad.write_text("rules:\n  - signature: raid\n    category: storage\n    keywords: [md]\n    patterns: [md]\n")
    with pytest.raises(ConfigError) as e:
        make_stage(tmp_path, rules_files=[str(bad)])
    msg = str(e.value)
    assert "agent.yaml: stages[0].rules_files" in msg and f"{bad}: rules[0] (raid).category" in msg


def test_disabling_an_unknown_rule_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stages\[0\].disable: no rule named 'link_dwn'"):
        make_stage(tmp_path, disable=["link_dwn"])
    stage = make_stage(tmp_path, disable=["link_down"])
    out = list(stage.process(Batch("kernel", [{"message": "ixgbe 0000:01:00.0 eth0: NIC Link is Down", "seq": 1,
                                               "userspace": False}], KMSG_META, AckToken())))
    assert len(out) == 1 and stage.assembler.flush() == []


def test_record_time_reads_the_inputs_time_fields() -> None:
    assert record_time({"time_ns": 1_700_000_000_500_000_000}) == 1_700_000_000.5
    assert record_time({"time": "2023-11-14T22:13:20.250000000Z"}) == 1_700_000_000.25
    assert record_time({"time": 12.5}) == 12.5 and record_time({"time": "yesterday"}) is None


def test_stage_is_registered_under_signatures() -> None:
    from logagent.registry import STAGES

    assert STAGES["signatures"] == "logagent.signatures.stage:SignatureDetector"


async def test_stop_delivers_open_reports(tmp_path: Path) -> None:
    got: list[Batch] = []

    async def inject(batch: Batch) -> None:
        got.append(batch)

    stage = make_stage(tmp_path, Services(inject=inject))
    await stage.start()
    stage.process(Batch("kernel", [{"message": "Kernel panic - not syncing: Fatal exception", "seq": 9,
                                    "userspace": False}], KMSG_META, AckToken()))
    await stage.stop()
    assert [r["signature"] for b in got for r in b.records] == ["kernel_panic"]
