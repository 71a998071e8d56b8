"""CPU of `multiline: auto` against the `cri` parse alone, on the standard CRI benchmark workloads.

Workloads (built, not timed):
  parse_tag  the lines of bench_parse_tag.py (`build_lines`: ~165 B CRI lines, 10% stderr, ~2% `P` pieces)
  tail       the file of bench_tail.py (`generate`: access logs, JSON, Java/klog lines with ERROR/WARN levels,
             RFC3339Nano stamps with trimmed zeros, ~2% `P` pieces); `--traces` makes bench_tail's multiline
             variant instead (5% of lines followed by a 9-line Java trace)
Each is fed in reads of `--batch` lines through `make_joiner` with `format: cri` (parse alone) and with
`format: cri, multiline: auto`, `--files` fresh joiners; CPU time (process_time), best of `--repeat`, the two
alternating run by run.

    python3 benchmarks/bench_multiline_auto.py [--lines 400000] [--batch 8192] [--repeat 5] [--workload both]

Prints µs/line for each and the ratio auto / cri (the issue's bound: at most 1.5).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_parse_tag  # noqa: E402
import bench_tail  # noqa: E402

from logagent.config import Section  # noqa: E402
from logagent.inputs.file.reader import LineSplitter  # noqa: E402
from logagent.parsers.factory import make_joiner, parse_parser_settings  # noqa: E402


def parse_tag_lines(n: int, seed: int) -> list[str]:
    return bench_parse_tag.build_lines(n, random.Random(seed))


def tail_lines(n: int, seed: int, traces: bool) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="bench-ml-auto-") as tmp:
        path = Path(tmp) / "0.log"
        bench_tail.generate(path, n, "java" if traces else None, seed)
        data = path.read_bytes()
    lines, _, _ = LineSplitter(1 << 20).feed(data, len(data), 0.0)
    return lines


def joiner_runner(lines: list[str], batch: int, files: int, keys: dict[str, str]) -> Callable[[], int]:
    settings = parse_parser_settings(Section({"format": "cri", **keys}, "inputs[0]", "<bench>"))
    offsets = []
    pos = 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    reads = [(lines[i:i + batch], offsets[i:i + batch]) for i in range(0, len(lines), batch)]

    def run() -> int:
        records = 0
        for f in range(files):
            joiner = make_joiner(settings, f"/var/log/containers/app{f}.log")
            for chunk, offs in reads:
                records += len(joiner.feed(chunk, offs))
            records += len(joiner.flush(0.0, force=True))
        return records

    return run


def measure(lines: list[str], batch: int, files: int, repeat: int) -> tuple[float, float, int, int]:
    """(cri µs/line, cri+auto µs/line, records of each): runs alternate, so both see the same machine load."""
    runs = {"cri": joiner_runner(lines, batch, files, {}),
            "auto": joiner_runner(lines, batch, files, {"multiline": "auto"})}
    best = {"cri": float("inf"), "auto": float("inf")}
    records = {"cri": 0, "auto": 0}
    for _ in range(repeat):
        for name, run in runs.items():
            gc.collect()
            t0 = time.process_time()
            records[name] = run()
            best[name] = min(best[name], time.process_time() - t0)
    per = len(lines) * files / 1e6
    return best["cri"] / per, best["auto"] / per, records["cri"], records["auto"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=400_000)
    ap.add_argument("--files", type=int, default=1, help="joiners fed the same lines, one after the other")
    ap.add_argument("--batch", type=int, default=8192, help="lines per tailer read")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workload", choices=("parse_tag", "tail", "both"), default="both")
    ap.add_argument("--traces", action="store_true", help="tail workload: bench_tail's Java-trace variant")
    args = ap.parse_args()
    workloads: list[tuple[str, Callable[[], list[str]]]] = []
    if args.workload in ("parse_tag", "both"):
        workloads.append(("parse_tag", lambda: parse_tag_lines(args.lines, args.seed)))
    if args.workload in ("tail", "both"):
        name = "tail+traces" if args.traces else "tail"
        workloads.append((name, lambda: tail_lines(args.lines, args.seed, args.traces)))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus; {args.lines} lines x {args.files} file(s), "
          f"reads of {args.batch} lines, CPU time best of {args.repeat}")
    for name, build in workloads:
        lines = build()
        cri_us, auto_us, cri_n, auto_n = measure(lines, args.batch, args.files, args.repeat)
        print(f"{name:12s} cri {cri_us:6.3f} µs/line ({cri_n} records)   cri+auto {auto_us:6.3f} µs/line "
              f"({auto_n} records)   ratio {auto_us / cri_us:4.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
