"""The first run as a new user meets it: the embedded default config (its globs pointed at temporary
directories) reads container logs from the head and host logs from their end on the very first start, and
`logagent run` prints a start-up summary on stderr that says what it found and what it resumed."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from logagent.config import load_yaml, parse_config
from logagent.summary import config_line
from tests.helpers import wait_for
from tests.ops_support import Agent, read_jsonl, write_lines

CONTAINER = "web-1_shop_app-" + "0123456789abcdef" * 4 + ".log"


def _default_config(tmp_path: Path) -> Path:
    """The embedded default with its globs moved under tmp_path, the kernel input left out (it needs root)
    and a file output in place of stdout (the test reads what was shipped)."""
    doc = yaml.safe_load(resources.files("logagent").joinpath("default.yaml").read_text())
    by_name = {i["name"]: i for i in doc["inputs"]}
    assert by_name["containers"].get("read_from", "head") == "head" and by_name["host"]["read_from"] == "tail"
    by_name["containers"]["paths"] = [str(tmp_path / "containers" / "*.log")]
    by_name["host"]["paths"] = [str(tmp_path / "host" / "*.log")]
    doc["inputs"] = [by_name["containers"], by_name["host"]]
    doc["pipeline"] = [s for s in doc["pipeline"] if s["type"] != "signatures"]
    doc["state_dir"] = str(tmp_path / "state")
    doc["http"] = {"address": "127.0.0.1:0"}
    doc["outputs"] = [{"type": "file", "name": "out", "path": str(tmp_path / "out.jsonl"), "match": ["*"]}]
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def _summary(agent: Agent) -> list[str]:
    """The start-up summary's lines, once it is complete (it ends with the http line)."""
    def lines() -> list[str] | None:
        got = [line for line in agent.stderr_path.read_text().splitlines() if line.startswith("logagent: ")]
        return got if got and got[-1].startswith("logagent: http: ") else None
    return wait_for(lines, 30, 0.05, "the start-up summary")


def test_first_start_reads_container_logs_from_the_head_and_host_logs_from_their_end(tmp_path: Path) -> None:
    (tmp_path / "containers").mkdir()
    (tmp_path / "host").mkdir()
    container_log = tmp_path / "containers" / CONTAINER
    host_log = tmp_path / "host" / "dpkg.log"
    write_lines(container_log, ["2024-05-14T10:00:00.000000001Z stdout F old container line"])
    write_lines(host_log, [f"old host line {i}" for i in range(500)])
    config = _default_config(tmp_path)
    out = tmp_path / "out.jsonl"

    agent = Agent(config, tmp_path)
    try:
        assert _summary(agent) == [
            f"logagent: config: {config}",
            f"logagent: state: {tmp_path}/state (first start: no positions stored yet)",
            f"logagent: input containers (file, {tmp_path}/containers/*.log): 1 file found, 1 read from the head",
            f"logagent: input host (file, {tmp_path}/host/*.log): 1 file found, 1 read from their end "
            "(first start, read_from: tail)",
            "logagent: output out (file, " + str(out) + "): match *",
            "logagent: http: 127.0.0.1:0 (/metrics, /healthz, /readyz)",
        ]
        write_lines(host_log, ["new host line"])
        wait_for(lambda: len(read_jsonl(out)) >= 2, 30, 0.05, "two records shipped")
    finally:
        assert agent.stop() == 0
    assert sorted(r["message"] for r in read_jsonl(out)) == ["new host line", "old container line"]

    # second start: both files resume from their stored positions; a new host file is read from the head
    write_lines(host_log, ["while the agent was down"])
    write_lines(tmp_path / "host" / "new.log", ["a file that appeared later"])
    (tmp_path / "run2").mkdir()
    agent = Agent(config, tmp_path / "run2")
    try:
        summary = _summary(agent)
        assert summary[1] == f"logagent: state: {tmp_path}/state (2 positions stored by an earlier run)"
        assert summary[2] == (f"logagent: input containers (file, {tmp_path}/containers/*.log): 1 file found, "
                              "1 resumed from stored positions")
        assert summary[3] == (f"logagent: input host (file, {tmp_path}/host/*.log): 2 files found, "
                              "1 resumed from stored positions, 1 read from the head")
        wait_for(lambda: len(read_jsonl(out)) >= 4, 30, 0.05, "the two new records shipped")
    finally:
        assert agent.stop() == 0
    assert [r["message"] for r in read_jsonl(out)][2:] in (
        ["while the agent was down", "a file that appeared later"],
        ["a file that appeared later", "while the agent was down"])


def test_summary_names_the_embedded_default_and_how_to_see_it() -> None:
    text = resources.files("logagent").joinpath("default.yaml").read_text()
    cfg = parse_config(load_yaml(text, "<embedded default>"), "<embedded default>")
    assert config_line(cfg) == "config: <embedded default> (no -c FILE given; `logagent check` prints it resolved)"
