"""A busy node without rotation: 200 container files (kubelet layout) written at 5,000 lines/s in total; every line
must reach the Elasticsearch-faithful receiver within 2 s of being written. Latency is measured per line: each
line carries the wall-clock time it was written (by a writer process of its own, `tests.latency_writer`), the
receiver stamps the moment the request holding it had arrived (not when this process got round to decoding it)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from tests.helpers import async_wait_for
from tests.loss_support import AgentProcess, KubeletNode, TimedReceiver, es_agent_config, line_id


def _write(node: KubeletNode, rate: float, seconds: float, stop: threading.Event) -> None:
    """One process for all files (`tests.latency_writer`: round robin, one write(2) per line), paced to `rate`
    lines/s in total; `node.count` gets the lines written per file."""
    cmd = [sys.executable, "-m", "tests.latency_writer", str(rate), str(seconds),
           *(str(c.log) for c in node.containers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    try:
        while proc.poll() is None and not stop.is_set():
            try:
                proc.wait(0.1)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.terminate()
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.returncode
    for n, count in enumerate(json.loads(out)):
        node.count[n] = count


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
