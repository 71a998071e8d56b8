"""Hot reload of a running agent (`python -m logagent run`): SIGHUP and `logagent reload` re-read the config; a
changed output is drained and replaced while a writer keeps writing, with every line arriving exactly once; an
invalid config is rejected, logged and reported, and the old one keeps running."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import wait_for
from tests.ops_support import REPO, Agent, agent_base_url, read_jsonl, sample, scrape, wait_http_up, write_lines


def config_doc(tmp_path: Path, logs: Path, output_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "state_dir": str(tmp_path / "state"),
        "http": {"address": "127.0.0.1:0"},
        "inputs": [{"type": "file", "name": "app", "paths": [str(logs / "*.log")], "poll_interval": "200ms"}],
        "outputs": [{"type": "file", "name": "sink", "path": str(output_path)}],
        **extra,
    }


def reload_status(tmp_path: Path) -> dict[str, Any]:
    from logagent.reload import read_reload_status

    return read_reload_status(str(tmp_path / "state"))


def logagent_reload(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "logagent", "reload", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


class Writer(threading.Thread):
    """Appends lines with unique, increasing ids to a log file, a few at a time, until stopped."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.next_id = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            write_lines(self.path, [f"id={self.next_id + i:07d}" for i in range(7)])
            self.next_id += 7
            self.stop_event.wait(0.002)  # pacing only: the test waits on the output files, not on this

    def stop(self) -> int:
        self.stop_event.set()
        self.join(10)
        return self.next_id


def ids(path: Path) -> list[int]:
    return [int(r["message"].removeprefix("id=")) for r in read_jsonl(path)]


def test_sighup_with_a_changed_output_while_writing_delivers_every_line_exactly_once(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(config_doc(tmp_path, logs, before)))
    agent = Agent(config, tmp_path)
    writer = Writer(logs / "app.log")
    try:
        wait_http_up(agent_base_url(agent))
        writer.start()
        wait_for(lambda: len(read_jsonl(before)) >= 500, 30, 0.02, "lines flowing to the first output")

        config.write_text(yaml.safe_dump(config_doc(tmp_path, logs, after)))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: reload_status(tmp_path).get("generation") == 1, 30, 0.05, "the reload to finish")
        assert reload_status(tmp_path)["ok"] is True
        wait_for(lambda: len(read_jsonl(after)) >= 500, 30, 0.02, "lines flowing to the new output")
        total = writer.stop()
        wait_for(lambda: len(ids(before)) + len(ids(after)) >= total, 30, 0.05, f"all {total} lines shipped")
    finally:
        writer.stop()
        rc = agent.stop()
    assert rc == 0
    first, second = ids(before), ids(after)
    assert sorted(first + second) == list(range(total)), "every line exactly once across both outputs"
    # The router switched between two batches: the old output holds a prefix, the new one the rest, in order.
    assert first == list(range(len(first))) and second == list(range(len(first), total))
    entry = agent.logged("config reloaded")[0]
    assert entry["outputs_replaced"] == ["sink"] and entry["inputs_replaced"] == []


def test_sighup_with_a_changed_input_resumes_from_the_acknowledged_position_without_loss_or_duplicates(tmp_path):
    """A changed input is stopped, its acknowledgements awaited, and its replacement starts at the committed
    offset: the single output gets every line once, in order, while the writer never pauses."""
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(config_doc(tmp_path, logs, out)))
    agent = Agent(config, tmp_path)
    writer = Writer(logs / "app.log")
    try:
        wait_http_up(agent_base_url(agent))
        writer.start()
        wait_for(lambda: len(read_jsonl(out)) >= 500, 30, 0.02, "lines flowing")
        changed = config_doc(tmp_path, logs, out)
        changed["inputs"][0]["poll_interval"] = "300ms"
        config.write_text(yaml.safe_dump(changed))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: reload_status(tmp_path).get("generation") == 1, 30, 0.05, "the reload to finish")
        shipped_at_reload = len(read_jsonl(out))
        wait_for(lambda: len(read_jsonl(out)) >= shipped_at_reload + 500, 30, 0.02, "lines flowing after it")
        total = writer.stop()
        wait_for(lambda: len(read_jsonl(out)) >= total, 30, 0.05, f"all {total} lines shipped")
    finally:
        writer.stop()
        rc = agent.stop()
    assert rc == 0
    assert ids(out) == list(range(total))
    entry = agent.logged("config reloaded")[0]
    assert entry["inputs_replaced"] == ["app"] and entry["outputs_replaced"] == []


def test_invalid_reload_is_rejected_logged_and_reported_and_the_old_config_keeps_running(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "agent.yaml"
    good = yaml.safe_dump(config_doc(tmp_path, logs, out))
    config.write_text(good)
    agent = Agent(config, tmp_path)
    try:
        base = agent_base_url(agent)
        wait_http_up(base)
        write_lines(logs / "app.log", ["before"])
        wait_for(lambda: len(read_jsonl(out)) == 1, 20, 0.05, "the first line shipped")

        # A typo in an output's settings: the agent itself rejects it (no -c: nothing validated beforehand).
        bad = config_doc(tmp_path, logs, tmp_path / "elsewhere.jsonl")
        bad["outputs"][0]["fsyncc"] = True
        config.write_text(yaml.safe_dump(bad))
        done = logagent_reload("--state-dir", str(tmp_path / "state"))
        assert done.returncode == 1, done.stderr
        assert "rejected the new config and keeps the old one" in done.stderr
        assert "outputs[0].fsyncc: unknown key" in done.stderr
        assert reload_status(tmp_path)["ok"] is False
        rejected = agent.logged("config reload rejected; the running config stays in effect")
        assert len(rejected) == 1 and "outputs[0].fsyncc" in rejected[0]["error"]

        # The old config still runs: a new line goes to the old output, nothing to the rejected one's.
        write_lines(logs / "app.log", ["after rejected reload"])
        wait_for(lambda: len(read_jsonl(out)) == 2, 20, 0.05, "the old output still shipping")
        assert [r["message"] for r in read_jsonl(out)] == ["before", "after rejected reload"]
        assert not (tmp_path / "elsewhere.jsonl").exists()
        s = scrape(base)
        assert sample(s, "logagent_config_reloads_total", result="rejected") == 1
        assert sample(s, "logagent_config_reloads_total", result="applied") == 0
        assert sample(s, "logagent_config_last_reload_successful") == 0

        # Broken YAML with -c: reported before any signal is sent; the agent's reload generation does not move.
        config.write_text("inputs: [\n")
        checked = logagent_reload("-c", str(config), "--state-dir", str(tmp_path / "state"))
        assert checked.returncode == 2
        assert "config error, not reloading" in checked.stderr and "invalid YAML" in checked.stderr
        assert reload_status(tmp_path)["generation"] == 1

        # Fixed again: `logagent reload -c` validates, signals and reports success.
        config.write_text(good)
        fixed = logagent_reload("-c", str(config))
        assert fixed.returncode == 0, fixed.stderr
        assert "applied the new config" in fixed.stdout
        s = scrape(base)
        assert sample(s, "logagent_config_reloads_total", result="applied") == 1
        assert sample(s, "logagent_config_last_reload_successful") == 1
    finally:
        assert agent.stop() == 0


def test_reload_refuses_to_signal_a_process_that_is_not_logagent(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        (state / "logagent.pid").write_text(f"{sleeper.pid}\n")
        done = logagent_reload("--state-dir", str(state))
        assert done.returncode == 1
        assert "is not a running logagent (stale pidfile?)" in done.stderr
        assert sleeper.poll() is None, "the other process was not signalled"
    finally:
        sleeper.kill()
        sleeper.wait()
    missing = logagent_reload("--state-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no running agent found" in missing.stderr


def test_an_unchanged_reload_keeps_every_component_running(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "out.jsonl"
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(config_doc(tmp_path, logs, out)))
    agent = Agent(config, tmp_path)
    try:
        wait_http_up(agent_base_url(agent))
        write_lines(logs / "app.log", ["one"])
        wait_for(lambda: len(read_jsonl(out)) == 1, 20, 0.05, "the first line shipped")
        agent.signal(signal.SIGHUP)
        wait_for(lambda: reload_status(tmp_path).get("generation") == 1, 20, 0.05, "the reload to finish")
        entry = agent.logged("config reloaded")[0]
        assert (entry["outputs_replaced"], entry["outputs_started"], entry["inputs_replaced"],
                entry["inputs_started"]) == ([], [], [], [])
        write_lines(logs / "app.log", ["two"])
        wait_for(lambda: len(read_jsonl(out)) == 2, 20, 0.05, "the second line shipped")
        assert [r["message"] for r in read_jsonl(out)] == ["one", "two"]
    finally:
        assert agent.stop() == 0
