"""Lossless collection under kubelet rotation: the real agent (subprocess) tails `/var/log/containers/*.log`
symlinks into `/var/log/pods/.../0.log` while writers fill 256 KiB files that the kubelet rotates, keeping a few
rotated files; every line must reach the Elasticsearch-faithful receiver exactly once, also when the agent is
`kill -9`ed again and again mid-rotation (replays answer 409 on their deterministic ids)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from tests.helpers import async_wait_for
from tests.loss_support import (
    AgentProcess,
    KubeletNode,
    Stored,
    TimedReceiver,
    es_agent_config,
    kill_loop,
    line_id,
)


async def _run(tmp_path: Path, node: KubeletNode, kills: int = 0,
               seed: str = "") -> tuple[Stored, AgentProcess, TimedReceiver]:
    rec = await TimedReceiver().start()
    node.create()
    agent = AgentProcess(tmp_path, es_agent_config(tmp_path, rec.url, [node.glob])).start()
    try:
        await async_wait_for(lambda: (tmp_path / "state" / "checkpoints.db").exists(), timeout=30,
                             what="agent started")
        node.start()
        if kills:
            # kills at random moments, each followed by a restart at once; the writers go on until the last one
            def caught_up() -> bool:  # within about one rotated file of the writers
                return len(rec.docs) >= len(node.expected) - 1500 * len(node.containers)

            await asyncio.to_thread(kill_loop, agent, kills, lambda: True, random.Random(seed), 0.2, 1.5, caught_up)
            node.stop()
        await asyncio.to_thread(node.join, 120)
        expected = set(node.expected)

        def all_stored() -> bool:  # distinct lines: a line stored twice must not stand in for one never stored
            return len(rec.docs) >= len(expected) and expected <= {line_id(d["message"]) for d in rec.docs.values()}

        try:
            await async_wait_for(lambda: all_stored() or not agent.alive(), timeout=60, interval=0.2,
                                 what="every line stored")
        except AssertionError:
            pass  # what is missing is reported below, line by line
        assert agent.alive(), agent.log_tail()
    finally:
        node.stop()
        code = agent.stop()
        await rec.stop()
    assert code == 0, agent.log_tail()
    return Stored.check(rec, node.expected), agent, rec


async def test_rotation_burst_256k_files_every_0_8s_loses_nothing(tmp_path: Path) -> None:
    # 2 containers x 200 B lines at 1,600 lines/s each: a 256 KiB file fills in ~0.8 s; 3 rotated files kept
    node = KubeletNode(tmp_path / "node", containers=2, lines=12_000, line_bytes=200, rate=1600,
                       rotate_bytes=256 * 1024, keep=3)
    stored, agent, rec = await _run(tmp_path, node)
    assert node.rotations >= 2 * 7, f"only {node.rotations} rotations"
    assert stored.lost == [], stored.summary()
    assert stored.duplicated == []
    assert rec.auto_docs == []
    print(f"rotation burst: {stored.total} lines, {node.rotations} rotations, 0 lost, 0 duplicated")


async def test_kill_9_again_and_again_during_rotation_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    # A 256 KiB file every ~1.6 s, 5 rotated files kept (the kubelet's default count): what a killed agent had not
    # read is still on disk when it is back (a restart takes up to ~2 s on this loaded machine).
    node = KubeletNode(tmp_path / "node", containers=2, lines=10**9, line_bytes=200, rate=800,
                       rotate_bytes=256 * 1024, keep=5)
    stored, agent, rec = await _run(tmp_path, node, kills=10, seed="kill-during-rotation")
    assert agent.kills == 10
    assert node.rotations >= 10, f"only {node.rotations} rotations"
    assert stored.lost == [], (stored.summary() + f"\nkills at {[round(t % 1000, 2) for t in agent.kill_times]}"
                               + f"\nrotations {[(round(t % 1000, 2), c, i) for t, c, i, _ in node.history]}")
    assert stored.duplicated == [], f"{len(stored.duplicated)} stored twice"
    assert rec.conflicts > 0  # replays happened, and landed on the documents already stored
    print(f"kill -9 x{agent.kills} during rotation: {stored.total} lines, {node.rotations} rotations, "
          f"{rec.conflicts} replays answered 409, 0 lost, 0 duplicated")
