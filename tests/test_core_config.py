"""Config validation: every mistake names the file, the key path and what is wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from logagent.config import ConfigError, Section, load_yaml, parse_config, parse_duration, parse_size


def _parse(text: str, file: str = "agent.yaml"):
    return parse_config(load_yaml(textwrap.dedent(text), file), file)


def test_sizes_and_durations_parse_like_users_write_them() -> None:
    assert parse_size("5MiB") == 5 * 1024 * 1024
    assert parse_size("10MB") == 10_000_000
    assert parse_size("256KiB") == 262144
    assert parse_size("512") == 512
    assert parse_size(4096) == 4096
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration(5) == 5.0
    for bad in ("lots", "5 parsecs", "", "-1"):
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ("soon", "5", "1x", ""):
        if bad == "5":
            continue
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_bad_size_names_file_and_key_path() -> None:
    sec = Section({"outputs": [{"batch": {"max_bytes": "lots"}}]}, "", "agent.yaml")
    batch = sec.sections("outputs")[0].section("batch")
    with pytest.raises(ConfigError) as e:
        batch.size("max_bytes")
    assert str(e.value) == 'agent.yaml: outputs[0].batch.max_bytes: expected a size like "5MiB", got \'lots\''


def test_unknown_key_is_rejected_with_its_path() -> None:
    with pytest.raises(ConfigError) as e:
        _parse("""
            inputs: [{type: file, paths: [/tmp/x.log]}]
            outputs: [{type: stdout}]
            limits: {queue_batchez: 3}
        """)
    assert str(e.value).startswith("agent.yaml: limits.queue_batchez: unknown key")


def test_unknown_component_type_lists_known_types() -> None:
    with pytest.raises(ConfigError) as e:
        _parse("""
            inputs: [{type: file, paths: [/tmp/x.log]}]
            outputs: [{type: stdout}, {type: kafka}]
        """)
    msg = str(e.value)
    assert msg.startswith("agent.yaml: outputs[1].type: unknown output type 'kafka'")
    assert "elasticsearch" in msg and "loki" in msg


def test_missing_sections_and_wrong_types() -> None:
    with pytest.raises(ConfigError, match=r"^agent.yaml: inputs: at least one input is required$"):
        _parse("outputs: [{type: stdout}]")
    with pytest.raises(ConfigError, match=r"^agent.yaml: limits.queue_batches: must be at least 1, got 0$"):
        _parse("""
            inputs: [{type: file, paths: [/x]}]
            outputs: [{type: stdout}]
            limits: {queue_batches: 0}
        """)
    with pytest.raises(ConfigError, match=r"^agent.yaml: grace_period: expected a duration"):
        _parse("""
            inputs: [{type: file, paths: [/x]}]
            outputs: [{type: stdout}]
            grace_period: forever
        """)


def test_invalid_yaml_names_line_and_column() -> None:
    with pytest.raises(ConfigError) as e:
        load_yaml("inputs:\n  - type: file\n   paths: [", "broken.yaml")
    assert str(e.value).startswith("broken.yaml: line 3, column 4: invalid YAML")


def test_environment_variables_expand_and_missing_ones_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LA_TEST_DIR", "/tmp/la-state")
    monkeypatch.delenv("LA_TEST_UNSET", raising=False)
    cfg = _parse("""
        state_dir: ${LA_TEST_DIR}
        inputs: [{type: file, paths: [/x]}]
        outputs: [{type: stdout}]
    """)
    assert cfg.state_dir == "/tmp/la-state"
    assert cfg.dead_letter_path == "/tmp/la-state/dead-letter.jsonl"
    with pytest.raises(ConfigError, match=r"^agent.yaml: state_dir: environment variable LA_TEST_UNSET is not set$"):
        _parse("""
            state_dir: ${LA_TEST_UNSET}
            inputs: [{type: file, paths: [/x]}]
            outputs: [{type: stdout}]
        """)


def test_duplicate_component_names_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^agent.yaml: outputs\[1\].name: duplicate name 'out'$"):
        _parse("""
            inputs: [{type: file, paths: [/x]}]
            outputs: [{type: stdout, name: out}, {type: stdout, name: out}]
        """)


def test_check_command_exits_2_and_names_the_key(tmp_path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("inputs: [{type: file, paths: [/x]}]\noutputs: [{type: file}]\n")
    proc = subprocess.run([sys.executable, "-m", "logagent", "check", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{cfg}: outputs[0].path: is required" in proc.stderr


def test_check_command_prints_resolved_config(tmp_path) -> None:
    cfg = tmp_path / "good.yaml"
    cfg.write_text(f"state_dir: {tmp_path}/state\ninputs: [{{type: file, paths: [/x.log]}}]\n"
                   f"outputs: [{{type: file, path: {tmp_path}/out.jsonl}}]\n")
    proc = subprocess.run([sys.executable, "-m", "logagent", "check", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# {cfg}: OK\n")
    assert f"path: {tmp_path}/out.jsonl" in proc.stdout


def test_unreadable_config_file_is_a_clear_error(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "logagent", "check", "-c", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "missing.yaml: cannot read config: No such file or directory" in proc.stderr
