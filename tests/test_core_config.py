"""Config validation: every mistake names the file, the key path and what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import yaml

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
    assert proc.stdout.startswith(f"# {cfg}: OK.")
    assert f"path: {tmp_path}/out.jsonl" in proc.stdout


def _check(tmp_path, text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, "-m", "logagent", "check", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_check_prints_the_config_resolved_with_secrets_masked(tmp_path) -> None:
    proc = _check(tmp_path, f"""
        state_dir: ${{TEST_STATE:-{tmp_path}/state}}
        inputs:
          - type: file
            paths: ["${{TEST_LOGS}}/*.log"]
        outputs:
          - type: elasticsearch
            url: http://127.0.0.1:9200
            auth: {{user: elastic, password: hunter2}}
            headers: {{Authorization: Bearer abc123, X-Team: logs}}
          - type: loki
            url: http://127.0.0.1:3100
            auth: {{bearer_token: {{env: TEST_TOKEN}}}}
    """, env={"TEST_LOGS": "/srv/app", "TEST_TOKEN": "tok-secret-42"})
    assert proc.returncode == 0, proc.stderr
    doc = yaml.safe_load(proc.stdout)
    assert doc["state_dir"] == f"{tmp_path}/state"  # ${VAR:-default} expanded
    assert doc["dead_letter_path"] == f"{tmp_path}/state/dead-letter.jsonl"  # a default that was not written
    assert doc["grace_period"] == 10.0 and doc["limits"]["batch_max_records"] == 4096
    file_in = doc["inputs"][0]
    assert file_in["paths"] == ["/srv/app/*.log"] and file_in["name"] == "file" and file_in["read_from"] == "head"
    es, loki = doc["outputs"]
    assert es["auth"] == {"user": "elastic", "password": "***"}
    assert es["headers"] == {"Authorization": "***", "X-Team": "logs"}
    assert es["batch"]["max_records"] == 5000 and es["compression"] == "gzip"
    assert loki["auth"] == {"bearer_token": {"env": "TEST_TOKEN"}}  # the reference, never the value
    assert doc["http"]["address"] == "127.0.0.1:2020"
    for secret in ("hunter2", "abc123", "tok-secret-42"):
        assert secret not in proc.stdout


def test_check_masks_sls_keys_read_as_secrets(tmp_path) -> None:
    proc = _check(tmp_path, """
        inputs: [{type: file, paths: [/x.log]}]
        outputs:
          - {type: sls, endpoint: cn-hangzhou.log.aliyuncs.com, project: p, logstore: s, access_key_id: AKID1,
             access_key_secret: very-secret}
    """)
    assert proc.returncode == 0, proc.stderr
    sls = yaml.safe_load(proc.stdout)["outputs"][0]
    assert sls["access_key_id"] == "***" and sls["access_key_secret"] == "***"
    assert "very-secret" not in proc.stdout and "AKID1" not in proc.stdout


def test_a_misspelt_required_key_is_reported_as_the_unknown_key(tmp_path) -> None:
    proc = _check(tmp_path, """
        inputs:
          - type: file
            path: /var/log/app.log
        outputs: [{type: stdout}]
    """)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"logagent: config error: {tmp_path}/agent.yaml: inputs[0].path: unknown key "
                                   "(did you mean paths?)")


def test_a_required_key_that_is_simply_missing_is_still_required(tmp_path) -> None:
    proc = _check(tmp_path, "inputs: [{type: file, tag: x}]\noutputs: [{type: stdout}]\n")
    assert proc.returncode == 2
    assert f"{tmp_path}/agent.yaml: inputs[0].paths: is required" in proc.stderr


def test_unquoted_var_in_a_flow_list_gets_a_hint(tmp_path) -> None:
    proc = _check(tmp_path, "inputs: [{type: file, paths: [${LOG_DIR}/*.log]}]\noutputs: [{type: stdout}]\n")
    assert proc.returncode == 2
    assert "agent.yaml: line 1, column 32: invalid YAML: expected ',' or ']', but got '{'" in proc.stderr
    assert 'hint: inside [...] or {...} a ${VAR} must be quoted, e.g. ["${LOG_DIR}/*.log"]' in proc.stderr
    # quoted as the hint says, the same config is valid
    proc = _check(tmp_path, 'inputs: [{type: file, paths: ["${LOG_DIR}/*.log"]}]\noutputs: [{type: stdout}]\n',
                  env={"LOG_DIR": "/srv"})
    assert proc.returncode == 0, proc.stderr


def test_yaml_errors_without_a_var_get_no_hint(tmp_path) -> None:
    proc = _check(tmp_path, "inputs: [{type: file, paths: [/x.log]}\noutputs: [{type: stdout}]\n")
    assert proc.returncode == 2 and "invalid YAML" in proc.stderr and "hint" not in proc.stderr


def test_unreadable_config_file_is_a_clear_error(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "logagent", "check", "-c", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "missing.yaml: cannot read config: No such file or directory" in proc.stderr
