"""Kernel problem signatures: every label of the shared corpus, every incident of the /dev/kmsg captures, user rule
files (override, add, disable, errors), the prefilter, and the incident bounds and timeout."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from logagent.inputs.kmsgformat import KmsgRecord, parse_capture
from logagent.signatures import rules as rules_mod
from logagent.signatures.incidents import IncidentAssembler
from logagent.signatures.rules import RulesError, RuleSet, default_rules, load_rules

DATA = Path(__file__).parent / "data" / "kernel"  # a copy of ../shared/testdata/kernel
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared kernel test data not present")


def _jsonl(name: str) -> list[dict[str, Any]]:
    path = DATA / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


SIGNATURE_LABELS = _jsonl("kernel_signatures.jsonl")
CAPTURES = ("kmsg_sample", "kmsg_edge_cases")


def _verdict(rs: RuleSet, message: str) -> tuple[str, str | None]:
    m = rs.classify(message)
    return (m.rule.category, m.rule.signature) if m else ("none", None)


def _expected(label: dict[str, Any]) -> tuple[str, str | None]:
    return (label["category"], label["signature"] if label["category"] != "none" else None)


@pytest.mark.parametrize("label", SIGNATURE_LABELS,
                         ids=[f"{i}-{d['signature']}" for i, d in enumerate(SIGNATURE_LABELS)])
def test_every_corpus_line_gets_its_label(label: dict[str, Any]) -> None:
    got = _verdict(default_rules(), label["line"])
    assert got == _expected(label), (
        f"line {label['line']!r} (source: {label.get('source')}) classified as {got}, label says {_expected(label)}")


def _capture(name: str) -> list[KmsgRecord]:
    return parse_capture((DATA / f"{name}.txt").read_bytes())


def _record_labels() -> list[tuple[str, dict[str, Any]]]:
    return [(name, lab) for name in CAPTURES for lab in _jsonl(f"{name}.labels.jsonl")]


RECORD_LABELS = _record_labels()


@pytest.mark.parametrize("name,label", RECORD_LABELS,
                         ids=[f"{n}-{lab['seq']}-{lab['signature']}" for n, lab in RECORD_LABELS])
def test_every_kmsg_record_decodes_and_gets_its_label(name: str, label: dict[str, Any]) -> None:
    records = {seq: r for r in _capture(name) for seq in r.seqs}
    rec = records[label["seq"]]
    if rec.seq != label["seq"]:
        # A `+` fragment joined onto the record before it: its text is part of that record's message.
        assert label["message"] in rec.message and label["category"] == "none"
        return
    if len(rec.seqs) == 1:
        assert rec.message == label["message"], f"seq {label['seq']}: decoded {rec.message!r}"
    got = _verdict(default_rules(), rec.message)
    assert got == _expected(label), (
        f"{name} seq {label['seq']} {rec.message[:120]!r} classified as {got}, label says {_expected(label)}")
    if label.get("injected"):
        assert rec.userspace, "an injected record was written by userspace (prio >= 8)"


def _expected_incidents(name: str) -> list[dict[str, Any]]:
    keys = ("first_seq", "last_seq", "headline_seqs", "category", "signature")
    out = [{k: e[k] for k in keys} for e in _jsonl(f"{name}.events.jsonl")]
    for lab in _jsonl(f"{name}.labels.jsonl"):
        # A headline that belongs to no multi-record event is an incident of its own.
        if lab["category"] != "none" and "event" not in lab:
            out.append({"first_seq": lab["seq"], "last_seq": lab["seq"], "headline_seqs": [lab["seq"]],
                        "category": lab["category"], "signature": lab["signature"]})
    return sorted(out, key=lambda e: e["first_seq"])


def assemble_capture(name: str, rs: RuleSet | None = None, chunk: int | None = None) -> list[dict[str, Any]]:
    recs = _capture(name)
    asm = IncidentAssembler(rs or default_rules())
    chunk = chunk or len(recs)
    found = []
    for start in range(0, len(recs), chunk):
        part = recs[start:start + chunk]
        found += asm.feed([r.message for r in part], lambda i, p=part: (p[i].seq, p[i].last_seq),
                          lambda i, p=part: p[i].usec / 1e6, lambda i, p=part: p[i].userspace)
    found += asm.flush()
    return [{"first_seq": inc.first_pos, "last_seq": inc.last_pos, "headline_seqs": inc.headline_positions,
             "category": inc.category, "signature": inc.signature}
            for inc in sorted(found, key=lambda inc: inc.first_index)]


@pytest.mark.parametrize("name", CAPTURES)
@pytest.mark.parametrize("chunk", [None, 1, 7, 64])
def test_capture_incidents_are_assembled_exactly(name: str, chunk: int | None) -> None:
    """Every event of `<capture>.events.jsonl` is one incident with the same span, headlines and signature, and
    every other labelled headline is an incident of its own, whatever the batch boundaries."""
    got = assemble_capture(name, chunk=chunk)
    expected = _expected_incidents(name)
    assert got == expected, "\n".join(
        [f"missing: {e}" for e in expected if e not in got] + [f"unexpected: {g}" for g in got if g not in expected])


def test_context_lines_alone_are_never_reported() -> None:
    lines = ["Call Trace:", " <TASK>", " dump_stack+0x10/0x16", "Mem-Info:", "RIP: 0033:0x7f5c2b8e1a3d",
             "---[ end trace 5b7a9d0c3e1f2a46 ]---", "Modules linked in: xt_nat veth", "net_ratelimit: 3 callbacks "
             "suppressed"]
    asm = IncidentAssembler(default_rules())
    assert asm.feed(lines, lambda i: (i, i)) + asm.flush() == []


def test_prefilter_fallback_agrees_with_the_automaton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ahocorasick_rs the regex prefilter gives the same verdicts (it is only slower)."""
    lines = [d["line"] for d in SIGNATURE_LABELS] + [r.message for n in CAPTURES for r in _capture(n)]
    fast = default_rules().classify_batch(lines)
    monkeypatch.setattr(rules_mod, "ahocorasick_rs", None)
    slow_rules = load_rules()
    assert slow_rules._automaton is None
    slow = slow_rules.classify_batch(lines)
    assert {i: m.rule.name for i, m in fast.items()} == {i: m.rule.name for i, m in slow.items()}
    assert len(fast) == sum(1 for d in SIGNATURE_LABELS if d["category"] != "none") + sum(
        1 for n in CAPTURES for lab in _jsonl(f"{n}.labels.jsonl") if lab["category"] != "none"
        and lab["seq"] in {r.seq for r in _capture(n)})


def test_rules_tolerate_wording_of_other_kernel_versions() -> None:
    """Variants that are not in the corpus but follow the vocabulary (other kernel versions and architectures)."""
    cases = {
        "Unable to handle kernel NULL pointer dereference at virtual address 0000000000000008": "null_pointer_deref",
        "Unable to handle kernel paging request at virtual address ffff800009a3c000": "kernel_paging_fault",
        "Internal error: Oops: 96000005 [#1] PREEMPT SMP": "kernel_oops",
        "Oops: general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] "
        "PREEMPT SMP KASAN NOPTI": "general_protection_fault",
        "Oops: divide error: 0000 [#1] PREEMPT SMP NOPTI": "divide_error",
        "Out of memory (oom_kill_allocating_task): Killed process 4242 (java) total-vm:123kB, anon-rss:100kB, "
        "file-rss:0kB, shmem-rss:0kB": "oom_killed_process",
        "rcu: INFO: rcu_preempt detected expedited stalls on CPUs/tasks: { 7-... } 21004 jiffies s: 245 root: 0x80/.":
            "rcu_stall",
        "rcu: rcu_sched kthread timer wakeup didn't happen for 10002 jiffies! g1234 f0x0 RCU_GP_WAIT_FQS(5)":
            "rcu_stall",
        "watchdog: CPU4: Watchdog detected hard LOCKUP on cpu 5": "hard_lockup",
        "nvme nvme0: I/O tag 28 (401c) opcode 0x1 (I/O Cmd) QID 2 timeout, aborting req_op:WRITE(1) size:131072":
            "nvme_io_timeout",
        "I/O error, dev nvme0n1, sector 2048 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 2": "block_io_error",
        "end_request: I/O error, dev sdc, sector 1953525160": "block_io_error",
        "BTRFS error (device sda1 state EA): bdev /dev/sda1 errs: wr 1, rd 0, flush 0, corrupt 0, gen 0":
            "btrfs_error",
        "BTRFS info (device sda1 state EA): forced readonly": "btrfs_forced_readonly",
        "XFS (dm-0): Corruption of in-memory data (0x8) detected at xfs_trans_cancel+0x13e/0x170 (fs/xfs/"
        "xfs_trans.c:1097).  Shutting down filesystem.": "xfs_shutdown",
        "XFS (sdb1): Filesystem has been shut down due to log error (0x2).": "xfs_shutdown",
        "pcieport 0000:00:1c.5: AER: Correctable error message received from 0000:03:00.0": "pcie_aer_error",
        "ixgbe 0000:01:00.0 eth0: NETDEV WATCHDOG: CPU: 3: transmit queue 0 timed out 5120 ms": "netdev_tx_timeout",
        "TCP: request_sock_TCP: Possible SYN flooding on port [::]:443. Sending cookies.": "syn_flooding",
        "ip_conntrack: table full, dropping packet.": "conntrack_table_full",
        "ipv4: Neighbour table overflow.": "neighbor_table_overflow",
        "bonding: bond0: link status definitely down for interface eth1, disabling it": "link_down",
        "[UFW BLOCK] IN=eth0 OUT= MAC=00:00 SRC=1.2.3.4 DST=5.6.7.8 LEN=40 PROTO=TCP SPT=1 DPT=22": "iptables_drop_log",
        "NVRM: The NVIDIA GPU 0000:02:00.0 (PCI ID: 10de:1eb8)\ninstalled in this system has fallen off the bus "
        "and is not\nresponding to commands.": "gpu_fallen_off_bus",
        "bnxt_en 0000:3b:00.0 eth0: TX timeout detected, starting reset task!": "nic_tx_timeout",
        "i40e 0000:01:00.0 eth0: tx_timeout recovery level 1, hung_queue 3": "nic_reset",
        "EDAC skx MC2: 3 CE memory read error on CPU_SrcID#1_MC#0_Chan#1_DIMM#0": "edac_corrected_error",
        "[Hardware Error]: event severity: fatal": "cper_hardware_error",
    }
    rs = default_rules()
    wrong = {line: _verdict(rs, line)[1] for line, sig in cases.items() if _verdict(rs, line)[1] != sig}
    assert wrong == {}


def test_near_misses_of_other_wordings_stay_quiet() -> None:
    rs = default_rules()
    for line in ["IPv6: ADDRCONF(NETDEV_UP): eth0: link is not ready", "[UFW AUDIT] IN=eth0 OUT= SRC=1.2.3.4",
                 "TRACE: raw:PREROUTING:policy:2 IN=eth0 OUT= SRC=1.2.3.4", "XFS (sda1): Ending clean mount",
                 "kernel: Command line: panic=10 oops=panic hung_task_panic=1",
                 "java[4411]: segfault at 8 ip 00007f sp 00007ffd error 4 in libjvm.so[7f+1000]"]:
        assert _verdict(rs, line) == ("none", None), line


# -- user rules -------------------------------------------------------------------------------------------------
def test_user_rules_override_add_and_disable(tmp_path: Path) -> None:
    user = tmp_path / "site.yaml"
    user.write_text("""
rules:
  - signature: conntrack_table_full        # same name: replaces the shipped rule
    category: network
    severity: critical
    keywords: ["table full"]
    patterns: ['conntrack\\w*: (?:\\w+: )?table full']
  - signature: raid_degraded               # new: tried before the shipped rules
    category: hardware
    severity: error
    permanent: true
    keywords: ["md/raid"]
    patterns: ['md/raid\\d+:(?P<device>md\\d+): Disk failure on (?P<disk>\\w+)']
disable: [link_down]
""")
    rs = load_rules([str(user)])
    m = rs.classify("nf_conntrack: table full, dropping packet")
    assert (m.rule.signature, m.rule.severity) == ("conntrack_table_full", "critical")
    assert len([r for r in rs.rules if r.name == "conntrack_table_full"]) == 1
    m = rs.classify("md/raid1:md0: Disk failure on sdb1, disabling device.")
    assert (m.rule.signature, m.rule.permanent, m.fields) == ("raid_degraded", True, {"device": "md0", "disk": "sdb1"})
    assert rs.classify("i40e 0000:3d:00.1 enp61s0f1: NIC Link is Down") is None
    assert rs.without(["raid_degraded"]).classify("md/raid1:md0: Disk failure on sdb1") is None


@pytest.mark.parametrize("body,where", [
    ("rules:\n  - signature: x\n    category: kernel\n    keywords: [a]\n    patterns: [a]\n",
     "rules[0] (x).category"),
    ("rules:\n  - signature: y\n    category: fs\n    keywords: [a]\n    patterns: ['a(']\n",
     "rules[0] (y).patterns[0]"),
    ("rules:\n  - signature: z\n    category: fs\n    patterns: [a]\n", "rules[0] (z).keywords"),
    ("rules:\n  - signature: w\n    category: fs\n    keywords: [a]\n    patterns: [a]\n    colour: red\n",
     "rules[0]: unknown key(s) colour"),
    ("rules: [\n", "invalid YAML"),
    ("groups:\n  oom: soon\n", "groups.oom"),
])
def test_rules_file_errors_name_the_file_and_key(tmp_path: Path, body: str, where: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    with pytest.raises(RulesError) as e:
        load_rules([str(bad)])
    assert str(bad) in str(e.value) and where in str(e.value), str(e.value)


def test_missing_rules_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="missing.yaml: cannot read rules file"):
        load_rules([str(tmp_path / "missing.yaml")])


def test_shipped_rules_have_one_source() -> None:
    """conf/signatures/kernel.yaml is the packaged file itself, not a copy that could drift."""
    packaged = resources.files("logagent.signatures").joinpath("rules/kernel.yaml")
    conf = REPO / "conf" / "signatures" / "kernel.yaml"
    assert conf.exists()
    assert os.path.samefile(conf, str(packaged))


# -- incident bounds and timeout --------------------------------------------------------------------------------
def test_report_lines_are_bounded_and_headlines_kept() -> None:
    msgs = ["python3 invoked oom-killer: gfp_mask=0x100cca(GFP_HIGHUSER_MOVABLE), order=0, oom_score_adj=0"]
    msgs += [f"[ {1000 + i}]     0  {1000 + i}    66321     9812   540672        0             0 worker"
             for i in range(500)]
    msgs += ["Out of memory: Killed process 1400 (worker) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB"]
    asm = IncidentAssembler(default_rules(), max_lines=50, context_gap=1000)
    asm.feed(msgs, lambda i: (i, i))
    (inc,) = asm.flush()
    assert inc.records == 502 and len(inc.lines) == 51 and inc.lines_dropped == 451
    assert inc.lines[-1] == msgs[-1] and inc.signature == "oom_killed_process" and inc.last_pos == 501


def test_open_report_times_out_on_the_wall_clock() -> None:
    now = [1000.0]
    asm = IncidentAssembler(default_rules(), clock=lambda: now[0])
    assert asm.feed(["INFO: task kubelet:2210 blocked for more than 362 seconds."], lambda i: (7, 7)) == []
    assert asm.expire() == [] and asm.pending == 1
    now[0] += default_rules().window("hung_task", "hung_task")
    (inc,) = asm.expire()
    assert (inc.signature, inc.first_pos, asm.pending) == ("hung_task_blocked", 7, 0)


def test_second_oom_report_is_a_second_incident() -> None:
    one = ["a invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
           "Out of memory: Killed process 1 (a) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB"]
    two = ["b invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
           "Memory cgroup out of memory: Killed process 2 (b) total-vm:1kB, anon-rss:1kB, file-rss:0kB"]
    asm = IncidentAssembler(default_rules())
    got = asm.feed(one + two, lambda i: (i, i), lambda i: 100.0 + i) + asm.flush()
    assert [(i.signature, i.fields()["comm"], i.first_pos, i.last_pos) for i in got] == [
        ("oom_killed_process", "a", 0, 1), ("memcg_oom_killed", "b", 2, 3)]
