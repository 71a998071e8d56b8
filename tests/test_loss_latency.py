"""A busy node without rotation: 200 container files (kubelet layout) written at 5,000 lines/s in total; every line
must reach the Elasticsearch-faithful receiver within 2 s of being written. Latency is measured per line: each
line carries the wall-clock time it was written, the receiver stamps when it stored it."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

from tests.helpers import async_wait_for
from tests.loss_support import AgentProcess, KubeletNode, TimedReceiver, es_agent_config, line_id


def _write(node: KubeletNode, rate: float, seconds: float, stop: threading.Event) -> None:
    """One thread for all files (round robin, one write(2) per line), paced to `rate` lines/s in total."""
    files = [open(c.log, "ab", buffering=0) for c in node.containers]
    try:
        start = time.monotonic()
        i = 0
        total = int(rate * seconds)
        while i < total and not stop.is_set():
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
            n = i % len(files)
            seq = i // len(files)
            stamp = time.time()
            files[n].write(f"2024-05-14T09:12:05.000000000Z stdout F c{n}-{seq:07d} t={stamp:.6f} "
                           f"GET /api/v1/items?page={seq} 200\n".encode())
            node.count[n] = seq + 1
            i += 1
    finally:
        for f in files:
            f.close()


async def test_200_files_at_5000_lines_per_second_every_line_within_2_s(tmp_path: Path) -> None:
    rec = await TimedReceiver().start()
    node = KubeletNode(tmp_path / "node", containers=200, lines=0)
    node.create()
    doc = es_agent_config(tmp_path, rec.url, [node.glob])
    # the output sends a request at least every 250 ms (default 1 s: a latency budget of its own)
    doc["outputs"][0]["batch"] = {"max_wait": "250ms"}
    agent = AgentProcess(tmp_path, doc).start()
    stop = threading.Event()
    try:
        await async_wait_for(agent.started, timeout=30, what="agent started")
        writer = threading.Thread(target=_write, args=(node, 5000.0, 8.0, stop))
        writer.start()
        await asyncio.to_thread(writer.join, 60)
        expected = set(node.expected)
        await async_wait_for(lambda: len(rec.docs) >= len(expected) or not agent.alive(), timeout=30,
                             what="every line stored")
        assert agent.alive(), agent.log_tail()
    finally:
        stop.set()
        agent.stop()
        await rec.stop()
    latencies = []
    for _id, doc in rec.docs.items():
        message = doc["message"]
        written = float(message.split(" t=", 1)[1].split(" ", 1)[0])
        latencies.append((rec.arrived[_id] - written, line_id(message)))
    stored = {line_id(d["message"]) for d in rec.docs.values()}
    assert stored == expected
    latencies.sort()
    worst = latencies[-1]
    p50 = latencies[len(latencies) // 2][0]
    p99 = latencies[int(len(latencies) * 0.99)][0]
    print(f"200 files, 5000 lines/s: {len(latencies)} lines, latency p50 {p50:.3f}s p99 {p99:.3f}s "
          f"max {worst[0]:.3f}s ({worst[1]})")
    assert worst[0] <= 2.0, f"{sum(1 for x, _ in latencies if x > 2.0)} lines later than 2 s; worst {worst}"
    assert os.path.exists(tmp_path / "state" / "checkpoints.db")
