"""Loss scenarios at scale: the real agent (subprocess) ships real files, written and rotated as a node does, into
the Elasticsearch-faithful `_bulk` receiver (`create` with a known `_id` -> 409), and is `kill -9`ed; prints, per
scenario, how many lines were written, lost and stored twice (and per-line latency where it applies).

    python3 benchmarks/bench_loss.py [--lines 300000] [--kills 20] [--dir DIR]
        [--only burst,kills,copytruncate,copytruncate_fast,busy]

Scenarios (each with `--lines` lines in total):
- burst: kubelet layout, 4 containers, 256 KiB files rotated about every 0.8 s, 3 rotated files kept;
- kills: the same layout, files rotated about every 1.6 s, 5 kept, the agent `kill -9`ed every 1-3 s once it has
  caught up (restarted at once), `--kills` times;
- copytruncate: one file, logrotate copytruncate every 3 s (5 copies), `kill -9` as above; lines written between
  logrotate's copy and its truncation are in neither file (its own window) and are reported apart;
- copytruncate_fast: the same, rotated every 1.5 s and killed 0.3-1.2 s after each start (kills land in every
  step of a rotation: copied not truncated, truncated not noticed, finishing a copy, copies made while down);
- busy: 200 container files written at 5,000 lines/s in total, no rotation: per-line latency p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.loss_support import (  # noqa: E402
    AgentProcess,
    CopyTruncate,
    KubeletNode,
    Stored,
    TimedReceiver,
    es_agent_config,
    kill_loop,
    line_id,
)
from tests.test_loss_latency import _write  # noqa: E402


async def _settle(rec: TimedReceiver, want: set[str], agent: AgentProcess, timeout: float = 120) -> None:
    """Until every line of `want` is stored (distinct lines: lines stored twice, or lines of logrotate's window
    that happened to be read, must not stand in for missing ones), or nothing new came for 20 s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline and agent.alive():
        if len(rec.docs) >= len(want) and want <= {line_id(d["message"]) for d in list(rec.docs.values())}:
            return
        if len(rec.docs) != last:
            last, since = len(rec.docs), time.monotonic()
        elif time.monotonic() - since > 20:
            break  # nothing new for 20 s: what is missing is lost
        await asyncio.sleep(0.5)


async def kubelet(work: Path, lines: int, rate: float, keep: int, kills: int) -> dict[str, Any]:
    rec = await TimedReceiver().start()
    containers = 4
    node = KubeletNode(work / "node", containers=containers, lines=lines // containers, line_bytes=200, rate=rate,
                       rotate_bytes=256 * 1024, keep=keep)
    node.create()
    agent = AgentProcess(work, es_agent_config(work, rec.url, [node.glob])).start()
    t0 = time.monotonic()
    try:
        while not agent.started():
            await asyncio.sleep(0.05)
        node.start()
        if kills:
            def caught_up() -> bool:
                return len(rec.docs) >= len(node.expected) - 1500 * containers

            await asyncio.to_thread(kill_loop, agent, kills, node.writing, random.Random("bench"), 1.0, 3.0,
                                    caught_up)
        await asyncio.to_thread(node.join, 3600)
        await _settle(rec, set(node.expected), agent)
    finally:
        agent.stop()
        await rec.stop()
    stored = Stored.check(rec, node.expected)
    return {"lines": stored.total, "lost": len(stored.lost), "duplicated": len(stored.duplicated),
            "rotations": node.rotations, "kills": agent.kills, "replays_409": rec.conflicts,
            "seconds": round(time.monotonic() - t0, 1), "lost_ranges": stored.summary() if stored.lost else ""}


async def copytruncate(work: Path, lines: int, kills: int, every: float = 3.0, low: float = 1.0,
                       high: float = 3.0) -> dict[str, Any]:
    rec = await TimedReceiver().start()
    logs = work / "logs"
    logs.mkdir()
    writer = CopyTruncate(logs, lines=lines, rate=4000, every=every, keep=5)
    agent = AgentProcess(work, es_agent_config(work, rec.url, [str(logs / "*.log")], fmt="raw")).start()
    t0 = time.monotonic()
    try:
        while not agent.started():
            await asyncio.sleep(0.05)
        writer.start()

        def caught_up() -> bool:
            return len(rec.docs) >= writer.written - 4000 - len(writer.window)

        await asyncio.to_thread(kill_loop, agent, kills, lambda: not writer.done.is_set(), random.Random("ct"),
                                low, high, caught_up)
        await asyncio.to_thread(writer.join, 3600)
        await _settle(rec, set(writer.expected) - writer.window, agent)
    finally:
        agent.stop()
        await rec.stop()
    stored = Stored.check(rec, writer.expected)
    beyond = [i for i in stored.lost if i not in writer.window]
    return {"lines": stored.total, "lost": len(stored.lost), "lost_in_logrotate_window": len(stored.lost) - len(beyond),
            "lost_beyond_window": len(beyond), "duplicated": len(stored.duplicated), "rotations": writer.rotations,
            "kills": agent.kills, "replays_409": rec.conflicts, "seconds": round(time.monotonic() - t0, 1),
            "lost_ranges": Stored(beyond, [], stored.total).summary() if beyond else "",
            "duplicated_ranges": Stored(stored.duplicated, [], stored.total).summary() if stored.duplicated else ""}


async def busy(work: Path, lines: int) -> dict[str, Any]:
    rec = await TimedReceiver().start()
    node = KubeletNode(work / "node", containers=200, lines=0)
    node.create()
    doc = es_agent_config(work, rec.url, [node.glob])
    doc["outputs"][0]["batch"] = {"max_wait": "250ms"}
    agent = AgentProcess(work, doc).start()
    stop = threading.Event()
    try:
        while not agent.started():
            await asyncio.sleep(0.05)
        await asyncio.to_thread(_write, node, 5000.0, lines / 5000.0, stop)
        await _settle(rec, set(node.expected), agent)
    finally:
        agent.stop()
        await rec.stop()
    stored = Stored.check(rec, node.expected)
    lat = sorted(rec.arrived[i] - float(d["message"].split(" t=", 1)[1].split(" ", 1)[0])
                 for i, d in rec.docs.items())
    return {"lines": stored.total, "lost": len(stored.lost), "duplicated": len(stored.duplicated),
            "latency_p50_s": round(lat[len(lat) // 2], 3), "latency_p99_s": round(lat[int(len(lat) * 0.99)], 3),
            "latency_max_s": round(lat[-1], 3), "later_than_2s": sum(1 for x in lat if x > 2.0)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--only", default="burst,kills,copytruncate,copytruncate_fast,busy")
    ap.add_argument("--dir", help="work directory (kept); default: a temp dir, removed")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, Linux {platform.release()}; lines per scenario: {args.lines}")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-loss-"))
    try:
        for name in args.only.split(","):
            work = base / name
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            if name == "burst":
                result = await kubelet(work, args.lines, rate=1600, keep=3, kills=0)
            elif name == "kills":
                result = await kubelet(work, args.lines, rate=800, keep=5, kills=args.kills)
            elif name == "copytruncate":
                result = await copytruncate(work, args.lines, args.kills)
            elif name == "copytruncate_fast":
                result = await copytruncate(work, args.lines, args.kills, every=1.5, low=0.3, high=1.2)
            elif name == "busy":
                result = await busy(work, args.lines)
            else:
                raise SystemExit(f"unknown scenario {name!r}")
            print(f"{name:13s} " + "  ".join(f"{k}={v}" for k, v in result.items() if v != ""), flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
