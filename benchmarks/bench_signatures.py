"""Kernel lines per second through the problem rules and the incident assembly, in process.

Two workloads, fed in batches of `--batch` records as the kmsg input hands them over:
  * quiet: ordinary kernel lines (link changes, audit, cgroup and USB chatter), no keyword of any rule;
  * sample: the shared corpus boot (`kmsg_sample.txt`, 238 records with an OOM report, a panic, a remount,
    Xid bursts...) repeated: about one record in three is a headline or context of an incident.
Each batch goes through `IncidentAssembler.feed` with the shipped rules (keyword prefilter, patterns at hits, lead-in
and context folding); incidents are counted, not shipped.

    python3 benchmarks/bench_signatures.py [--lines 500000] [--batch 4096] [--repeat 3]

Prints lines/s and µs/line per workload (best of --repeat runs; the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logagent.signatures.incidents import IncidentAssembler  # noqa: E402
from logagent.signatures.rules import default_rules  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "tests/data/kernel/kmsg_sample.txt"


def quiet_lines(n: int) -> list[str]:
    shapes = ("eth{0}: renamed from veth{0:05x}", "audit: type=1400 audit({0}.123:{0}): apparmor=\"STATUS\"",
              "usb 1-{1}: new high-speed USB device number {0} using xhci_hcd",
              "IPv6: ADDRCONF(NETDEV_CHANGE): cali{0:08x}: link becomes ready",
              "cgroup: fork rejected by pids controller in /kubepods/pod{0:x}")
    return [shapes[i % len(shapes)].format(i, i % 9) for i in range(n)]


def sample_lines(n: int) -> list[str]:
    one = [line.split(";", 1)[1].rstrip("\n") for line in SAMPLE.read_text().splitlines()
           if ";" in line and not line.startswith(" ")]
    return (one * (n // len(one) + 1))[:n]


def run(lines: list[str], batch: int) -> tuple[float, int]:
    asm = IncidentAssembler(default_rules())
    incidents = 0
    started = time.perf_counter()
    for base in range(0, len(lines), batch):
        chunk = lines[base:base + batch]

        def pos(i: int, base: int = base) -> tuple[Any, Any]:
            return base + i, base + i

        def when(i: int, base: int = base) -> float:
            return 1000.0 + (base + i) * 0.001

        incidents += len(asm.feed(chunk, pos, when, None, "kmsg"))
    incidents += len(asm.flush())
    return time.perf_counter() - started, incidents


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=500_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus; "
          f"{a.lines} lines in batches of {a.batch}")
    for name, lines in (("quiet", quiet_lines(a.lines)), ("sample", sample_lines(a.lines))):
        times = [run(lines, a.batch) for _ in range(a.repeat)]
        dt, incidents = min(times)
        print(f"{name:7s} {len(lines) / dt:>12,.0f} lines/s  {dt / len(lines) * 1e6:6.2f} µs/line  "
              f"{incidents} incidents")


if __name__ == "__main__":
    main()
