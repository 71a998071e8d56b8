"""`kill -9` in the middle of a stream: the restarted agent loses no line, and re-sends only what was delivered
but not yet checkpointed when it died (at-least-once), which the test counts."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from pathlib import Path

from tests.filetail import agent_config, read_output, start_subprocess_agent
from tests.helpers import wait_for


def test_restart_after_kill_9_resumes_with_no_lost_line(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    total = 40_000
    batch = 200
    doc = agent_config(tmp_path, [str(logs / "*.log")], limits={"batch_max_records": batch},
                       top={"checkpoint_interval": "0s"})
    doc["inputs"][0]["read_buffer"] = "16KiB"  # many small batches: the kill lands between two of them
    out = tmp_path / "out.jsonl"
    stop_writing = threading.Event()
    written = [0]

    def writer() -> None:
        # two files, one rotated half-way, written while the agent runs, dies and restarts
        with open(logs / "b.log", "ab") as b:
            f = open(logs / "a.log", "ab")
            for i in range(total):
                if i == total // 2:
                    f.close()
                    os.rename(logs / "a.log", logs / "a.log.1")
                    f = open(logs / "a.log", "ab")
                target = f if i % 3 else b
                target.write(f"id={i:06d} payload {'x' * (i % 50)}\n".encode())
                if i % 500 == 0:
                    f.flush()
                    b.flush()
                    written[0] = i
                    time.sleep(0.002)  # a steady stream, not one burst
                if stop_writing.is_set():
                    break
            f.close()
            written[0] = total

    agent = start_subprocess_agent(tmp_path, doc)
    thread = threading.Thread(target=writer)
    try:
        wait_for(lambda: (tmp_path / "state" / "checkpoints.db").exists(), timeout=30, what="agent started")
        thread.start()
        wait_for(lambda: len(read_output(out)) >= total // 4, timeout=60, what="a quarter delivered")
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        delivered_before = len(read_output(out))
        assert delivered_before < total, "the kill must land mid-stream"
        agent = start_subprocess_agent(tmp_path, doc, log_name="agent2.log")
        thread.join(timeout=120)
        wait_for(lambda: len({r["message"] for r in read_output(out)}) >= total, timeout=90,
                 what="every line delivered after the restart")
    finally:
        stop_writing.set()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=30) == 0
    records = read_output(out)
    counts = collections.Counter(r["message"].split()[0] for r in records)
    assert sorted(counts) == [f"id={i:06d}" for i in range(total)]  # nothing lost, nothing invented
    duplicated = sorted(k for k, n in counts.items() if n > 1)
    assert all(counts[k] == 2 for k in duplicated)
    # Only what was delivered and not yet checkpointed when the agent died comes again: at most the batches in
    # flight at that moment, per file.
    assert len(duplicated) <= 2 * 2 * batch, f"{len(duplicated)} duplicates"
    # and they are records delivered just before the kill, never later ones
    first_run = {r["message"].split()[0] for r in records[:delivered_before]}
    assert set(duplicated) <= first_run
    print(f"kill -9 restart: {len(duplicated)} duplicated of {total}, {delivered_before} delivered before the kill")
