"""Incident assembly, sharper: lead-in lines before a headline, trailing advice after it, headlines of one report
merged (NETDEV WATCHDOG + the NIC driver's lines for the same interface; RCU stall + soft lockup of the same CPU),
the `cause` (first headline), more wordings, and headlines glued to the end of another console line.

Lines are fed as a kernel source would give them: positions are sequence numbers, times one second apart unless
a test says otherwise, through the shipped rules.
"""

from __future__ import annotations

from typing import Any

import pytest

from logagent.signatures.incidents import Incident, IncidentAssembler
from logagent.signatures.rules import default_rules


def assemble(*batches: list[str], seq0: int = 100, step: float = 0.01) -> list[Incident]:
    asm = IncidentAssembler(default_rules())
    out: list[Incident] = []
    seq = seq0
    for lines in batches:
        first = seq

        def pos(i: int, first: int = first) -> tuple[Any, Any]:
            return first + i, first + i

        def when(i: int, first: int = first) -> float:
            return 1000.0 + (first + i) * step

        out.extend(asm.feed(lines, pos, when, None, "kmsg"))
        seq += len(lines)
    return out + asm.flush()


NVRM = ["NVRM: GPU at PCI:0000:3b:00: GPU-509665ad-b600-ac93-3616-d754b23d636d",
        "NVRM: GPU Board Serial Number: 1320221034567",
        "NVRM: Xid (PCI:0000:3b:00): 79, pid=1911, name=python3, GPU has fallen off the bus."]


def test_the_gpu_identification_before_an_xid_opens_its_incident() -> None:
    (inc,) = assemble(["systemd[1]: Started session 4.", *NVRM, "eth0: link up"])
    assert inc.signature == "gpu_fallen_off_bus"
    assert inc.lines == NVRM
    assert (inc.first_pos, inc.last_pos) == (101, 103)
    assert inc.first_line == NVRM[2]  # the headline names it; the lead-in only belongs to it
    assert inc.headline_positions == [103]


def test_lead_in_lines_at_the_end_of_the_previous_batch_still_join() -> None:
    (inc,) = assemble(["random: crng init done", *NVRM[:2]], [NVRM[2]])
    assert inc.lines == NVRM and inc.first_pos == 101


def test_lead_in_lines_alone_are_never_reported_and_never_taken_twice() -> None:
    assert assemble(["NVRM: GPU at PCI:0000:3b:00: GPU-5096", "eth0: link up"]) == []
    # an Xid report already holds the identification lines as its context: the next Xid does not take them again
    first, = assemble([NVRM[2].replace("79", "13"), NVRM[0], NVRM[1], NVRM[2]])
    assert first.lines == [NVRM[2].replace("79", "13"), NVRM[0], NVRM[1], NVRM[2]]


def test_a_cut_here_marker_opens_the_warning_report() -> None:
    lines = ["------------[ cut here ]------------", "kernel BUG at mm/slub.c:4123!",
             "invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "RIP: 0010:kfree+0x8f/0xa0"]
    (inc,) = assemble(lines)
    assert inc.lines == lines and inc.first_pos == 100 and inc.cause == "kernel_bug"


def test_xfs_advice_after_the_shutdown_belongs_to_it() -> None:
    lines = ["XFS (sdb1): metadata I/O error in \"xfs_imap_to_bp+0x5c/0xa0 [xfs]\" at daddr 0x5a0 len 32 error 5",
             "XFS (sdb1): xfs_do_force_shutdown(0x1) called from line 1210 of file fs/xfs/xfs_trans_buf.c.",
             "XFS (sdb1): Log I/O Error Detected. Shutting down filesystem",
             "XFS (sdb1): Please unmount the filesystem and rectify the problem(s)"]
    (inc,) = assemble(lines)
    assert inc.signature == "xfs_shutdown" and inc.lines == lines and inc.last_line == lines[-1]


def test_netdev_watchdog_and_the_drivers_own_lines_for_the_same_interface_are_one_report() -> None:
    lines = ["NETDEV WATCHDOG: eth3 (ixgbe): transmit queue 7 timed out",
             "ixgbe 0000:3b:00.1 eth3: Detected Tx Unit Hang",
             "ixgbe 0000:3b:00.1 eth3: tx hang 1 detected on queue 7, resetting adapter",
             "ixgbe 0000:3b:00.1 eth3: initiating reset due to tx timeout",
             "ixgbe 0000:3b:00.1 eth3: Reset adapter"]
    (inc,) = assemble(lines)
    assert set(inc.signatures) >= {"netdev_tx_timeout", "nic_tx_hang", "nic_reset"}
    assert inc.cause == "netdev_tx_timeout" and inc.fields()["interface"] == "eth3"
    # another interface's driver lines are another report
    other = ["NETDEV WATCHDOG: eth3 (ixgbe): transmit queue 7 timed out",
             "ixgbe 0000:5e:00.0 eth5: Detected Tx Unit Hang"]
    a, b = assemble(other)
    assert (a.signature, b.signature) == ("netdev_tx_timeout", "nic_tx_hang")


def test_an_rcu_stall_then_the_soft_lockup_of_that_cpu_is_one_incident_named_by_the_lockup() -> None:
    lines = ["INFO: rcu_sched self-detected stall on CPU { 3}  (t=21002 jiffies g=6651 c=6650 q=218)",
             "NMI backtrace for cpu 3",
             "watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [kworker/3:1:1234]",
             "Modules linked in: xt_conntrack nf_nat"]
    (inc,) = assemble(lines)
    assert (inc.signature, inc.cause) == ("soft_lockup", "rcu_stall")
    assert inc.lines == lines
    # a soft lockup of another CPU is its own report
    a, b = assemble([lines[0], "watchdog: BUG: soft lockup - CPU#9 stuck for 23s! [java:77]"])
    assert (a.signature, b.signature) == ("rcu_stall", "soft_lockup")


def test_the_cause_of_a_panic_is_the_oops_before_it() -> None:
    lines = ["general protection fault, probably for non-canonical address 0xdffffc0000000001: 0000 [#1] PREEMPT SMP",
             "CPU: 0 PID: 5021 Comm: syz-executor.3 Not tainted 6.1.0 #1",
             "RIP: 0010:__list_del_entry_valid+0x2a/0x110",
             "Kernel panic - not syncing: Fatal exception"]
    (inc,) = assemble(lines)
    assert (inc.signature, inc.cause) == ("kernel_panic", "general_protection_fault")
    assert inc.summary()["cause"] == "general_protection_fault"


@pytest.mark.parametrize(("line", "signature"), [
    ("INFO: task jbd2/sda1-8:312 blocked in I/O wait for more than 122 seconds.", "hung_task_blocked"),
    ("general protection fault for non-canonical address 0xdead000000000100: 0000 [#1] SMP PTI",
     "general_protection_fault"),
    ("segment-related general protection fault: 0000 [#1] PREEMPT SMP KASAN", "general_protection_fault"),
    ("Oops: general protection fault, probably for non-canonical address 0xdffffc0000000002: 0000 [#1] SMP",
     "general_protection_fault"),
    ("divide_error: 0000 [#1] SMP", "divide_error"),
    ("BUG: TASK stack guard page was hit at ffffc90000d0ff58 (stack is ffffc90000d10000..ffffc90000d17fff)",
     "kernel_bug"),
    ("BUG: stack guard page was hit at 00000000b3f1f4b5 (stack is 00000000e2c0c0f1..00000000d1b0c5a4)",
     "kernel_bug"),
    ("PANIC: double fault, error_code: 0x0", "kernel_oops"),
    ("kernel stack overflow (double-fault): 0000 [#1] PREEMPT SMP KASAN", "kernel_oops"),
    ("Oops: Kernel access of bad area, sig: 11 [#1]", "kernel_oops"),
    ("Oops: Exception in kernel mode, sig: 5 [#1]", "kernel_oops"),
    ("Oops [#1]", "kernel_oops"),
])
def test_more_wordings(line: str, signature: str) -> None:
    m = default_rules().classify(line)
    assert m is not None and m.rule.signature == signature, line


@pytest.mark.parametrize(("line", "signature"), [
    ("usb 1-1: new high-speed USB device number 2 using ehci-pciBUG: kernel NULL pointer dereference, address: "
     "0000000000000010", "null_pointer_deref"),
    ("audit: type=1400 audit(1.2:3): apparmor=\"DENIED\" res=1Kernel panic - not syncing: Fatal exception",
     "kernel_panic"),
    ("[ T4321]general protection fault, probably for non-canonical address 0xdffffc0000000000: 0000 [#1] SMP",
     "general_protection_fault"),
    ("random: crng init done.divide error: 0000 [#1] PREEMPT SMP KASAN", "divide_error"),
])
def test_a_headline_glued_to_the_end_of_another_console_line_is_found(line: str, signature: str) -> None:
    m = default_rules().classify(line)
    assert m is not None and m.rule.signature == signature, line


@pytest.mark.parametrize("line", [
    "systemd[1]: Starting test of Kernel panic - not syncing: handling...",
    "bash[812]: echo 'Kernel panic - not syncing: Fatal exception' > /tmp/x",
    "app: see divide error: 0000 [#1] in the runbook",
    "sshd[1]: user typed Oops [#1]",
    "NVRM: GPU at PCI:0000:3b:00: GPU-509665ad-b600-ac93-3616-d754b23d636d",
    "XFS (sdb1): Please unmount the filesystem and rectify the problem(s)",
])
def test_ordinary_text_with_a_headline_inside_is_not_a_match(line: str) -> None:
    assert default_rules().classify(line) is None, line
