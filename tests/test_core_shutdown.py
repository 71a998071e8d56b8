"""Shutdown ships what stages still hold: an open kernel report becomes its event before the outputs flush."""

from __future__ import annotations

from pathlib import Path

from tests.filetail import Agent, agent_config

OOM_REPORT = (
    "stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0\n"
    "CPU: 3 PID: 4242 Comm: stress Not tainted 5.15.0-91-generic #101-Ubuntu\n"
    "Out of memory: Killed process 4242 (stress) total-vm:1048576kB, anon-rss:1000000kB, file-rss:0kB, "
    "shmem-rss:0kB, UID:0 pgtables:2048kB oom_score_adj:0\n"
)


async def test_an_open_kernel_report_is_shipped_at_shutdown(tmp_path: Path) -> None:
    (tmp_path / "kern.log").write_text(OOM_REPORT)
    doc = agent_config(tmp_path, [str(tmp_path / "*.log")], tag="kernel")
    # a file is not the kernel: its records count as injected, reported here (never a node condition)
    doc["pipeline"] = [{"type": "signatures", "match": ["kernel"], "injected": "report"}]
    async with Agent(tmp_path, doc) as agent:
        await agent.wait_messages(3)
        # the OOM group stays open for more headlines (10 s by default): nothing is reported yet
        assert not [r for r in agent.records() if "signature" in r]
    events = [r for r in agent.records() if "signature" in r]
    assert [(e["category"], e["signature"]) for e in events] == [("oom", "oom_killed_process")]
    assert events[0]["first_line"].startswith("stress invoked oom-killer")
    assert events[0]["last_line"].startswith("Out of memory: Killed process 4242 (stress)")
