"""CRI lines per second through parse + Kubernetes tagging, with no output cost.

Workload, shaped like what the file tailer hands over: N CRI lines (~165 B each) spread over F container log
files laid out as on a node (/var/log/pods/... with /var/log/containers/... symlinks, in a temp dir used as the
stage's `root`), fed file by file in reads of `--batch` lines (the tailer's batch size). Each read goes through the
file's CRI joiner (`logagent.parsers.factory.make_joiner`, format cri) and the `kubernetes` stage's `process()`,
with every pod known to its cache (full enrichment: labels, owner, image), as on a node with a synced watch.
About 2% of the lines are `P` pieces, stdout and stderr interleave.

    python3 benchmarks/bench_parse_tag.py [--lines 1000000] [--files 50] [--batch 8192]

Prints lines/s and µs/line for parse only, parse + tag and tag only (best of --repeat runs). Building the
workload is not timed.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from logagent.component import Context  # noqa: E402
from logagent.config import Section  # noqa: E402
from logagent.kubernetes.stage import KubernetesMetadata  # noqa: E402
from logagent.record import Batch  # noqa: E402

WORDS = ("GET", "POST", "/api/v1/orders", "/healthz", "user_id=", "status=200", "status=503", "latency_ms=",
         "cache", "miss", "hit", "request", "completed", "failed", "retrying", "db", "timeout", "trace_id=")


def make_joiner_factory() -> tuple[Any, str]:
    try:
        from logagent.parsers import factory  # type: ignore[attr-defined]
    except ImportError:
        from logagent.parsers.cri import CriJoiner

        return (lambda path: CriJoiner()), "logagent.parsers.cri.CriJoiner (factory not installed)"
    settings = factory.parse_parser_settings(Section({"format": "cri"}, "inputs[0]", "<bench>"))
    return (lambda path: factory.make_joiner(settings, path, None)), "logagent.parsers.factory.make_joiner"


def build_files(root: Path, files: int) -> list[tuple[str, dict[str, Any]]]:
    """(log path as the tailer names it, pod object for the cache) per container."""
    out = []
    for i in range(files):
        ns, pod, container = f"ns{i % 7}", f"app{i}-6b9f7d8c4-x{i:04d}", f"c{i % 3}"
        uid = f"{i:08x}-0000-4000-8000-{i:012x}"
        cid = f"{i:064x}"
        pod_dir = root / "var/log/pods" / f"{ns}_{pod}_{uid}" / container
        pod_dir.mkdir(parents=True)
        (pod_dir / "0.log").touch()
        links = root / "var/log/containers"
        links.mkdir(parents=True, exist_ok=True)
        link = links / f"{pod}_{ns}_{container}-{cid}.log"
        link.symlink_to(pod_dir / "0.log")
        obj = {
            "metadata": {"name": pod, "namespace": ns, "uid": uid,
                         "labels": {"app": f"app{i}", "pod-template-hash": "6b9f7d8c4", "tier": "backend"},
                         "annotations": {"team": "payments"},
                         "ownerReferences": [{"kind": "ReplicaSet", "name": f"app{i}-6b9f7d8c4", "controller": True}]},
            "spec": {"nodeName": "node-a", "containers": [{"name": container, "image": f"registry/app{i}:1.2.3"}]},
            "status": {"containerStatuses": [{"name": container, "containerID": f"containerd://{cid}",
                                              "restartCount": 0, "image": f"registry/app{i}:1.2.3"}]},
        }
        out.append((str(link), obj))
    return out


def build_lines(n: int, rng: random.Random) -> list[str]:
    """n CRI lines averaging ~165 bytes; ~2% are P pieces followed by their F."""
    lines = []
    base = 1714557600
    for i in range(n):
        sec = base + i // 1000
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rng.randrange(10**9):09d}Z"
        stream = "stderr" if rng.random() < 0.1 else "stdout"
        msg = " ".join(rng.choice(WORDS) for _ in range(rng.randint(9, 17)))
        msg = (msg + " " + "x" * 130)[: rng.randint(94, 154)]
        tag = "P" if rng.random() < 0.02 else "F"
        lines.append(f"{ts} {stream} {tag} {msg}")
    # a P must be followed (eventually) by an F of the same stream: the last line is always F
    lines[-1] = lines[-1].replace(" P ", " F ", 1)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--batch", type=int, default=8192, help="lines per tailer read")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    make_joiner, joiner_name = make_joiner_factory()

    with tempfile.TemporaryDirectory(prefix="bench-parse-tag-") as tmp:
        root = Path(tmp)
        containers = build_files(root, args.files)
        per_file = args.lines // args.files
        template = build_lines(per_file, rng)
        # every file gets the same line shapes (content does not change the cost), its own offsets
        offsets = []
        pos = 0
        for line in template:
            offsets.append(pos)
            pos += len(line.encode()) + 1
        avg = pos / len(template)
        reads = [(template[i:i + args.batch], offsets[i:i + args.batch]) for i in range(0, per_file, args.batch)]
        total = per_file * args.files

        settings = KubernetesMetadata.parse_settings(
            Section({"api": False, "root": str(root), "tag_rewrite": True}, "pipeline[0]", "<bench>"))
        stage = KubernetesMetadata("kubernetes", settings,
                                   Context(config=None, checkpoints=None, dead_letter=None))  # type: ignore[arg-type]
        for _, pod in containers:
            stage.cache.upsert(pod)

        def parse_only() -> int:
            records = 0
            for path, _ in containers:
                joiner = make_joiner(path)
                for lines, offs in reads:
                    records += len(joiner.feed(lines, offs))
            return records

        def parse_and_tag() -> int:
            records = 0
            for path, _ in containers:
                joiner = make_joiner(path)
                meta = {"input": "containers", "path": path, "source_id": "fp", "pos_key": "offset"}
                for lines, offs in reads:
                    for out in stage.process(Batch("kube", joiner.feed(lines, offs), meta)):
                        records += len(out.records)
            return records

        parsed: list[list[tuple[list[dict[str, Any]], dict[str, Any]]]] = []

        def tag_only() -> int:
            records = 0
            for per in parsed:
                for recs, meta in per:
                    for out in stage.process(Batch("kube", recs, meta)):
                        records += len(out.records)
            return records

        print(f"workload: {total} CRI lines, {args.files} container files, avg {avg:.0f} B/line, "
              f"reads of {args.batch} lines; joiner: {joiner_name}; python {sys.version.split()[0]}, "
              f"{os.cpu_count()} cpus")
        for name, fn in (("parse only", parse_only), ("parse + tag", parse_and_tag), ("tag only", tag_only)):
            if fn is tag_only:
                # the stage over records already parsed; parsing them is not timed, and is done last so that a
                # million live records do not slow the other runs' allocations (the GC scans them)
                for path, _ in containers:
                    joiner = make_joiner(path)
                    meta = {"input": "containers", "path": path, "source_id": "fp", "pos_key": "offset"}
                    parsed.append([(joiner.feed(lines, offs), meta) for lines, offs in reads])
            times = []
            for _ in range(args.repeat):
                gc.collect()
                t0 = time.perf_counter()
                records = fn()
                times.append(time.perf_counter() - t0)
            dt = min(times)  # the machine is shared: the best run is the one least disturbed
            print(f"{name:12s}: {total / dt:12,.0f} lines/s  {dt / total * 1e6:6.3f} µs/line  "
                  f"({records} records; best of {args.repeat}: {dt:.2f} s, worst {max(times):.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
