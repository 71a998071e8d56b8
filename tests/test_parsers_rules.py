"""`multiline: custom` state machine (`multiline_rules`) and `multiline_end`, their load-time validation (errors
name the file and the key), and the new language variants of the `java` and `node` modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from logagent.config import ConfigError
from tests.parsers_support import settings
from tests.test_parsers_multiline import crilines, groups

RULES = [
    {"state": "start_state", "regex": r"^\d{4}-\d\d-\d\d ", "next_state": "exception"},
    {"state": "exception", "regex": r"^[\w.]+(Exception|Error)", "next_state": "frames"},
    {"state": "frames", "regex": r"^\s+at ", "next_state": "frames"},
    {"state": "frames", "regex": r"^Caused by: ", "next_state": "frames"},
]


def test_state_machine_takes_lines_only_in_their_state() -> None:
    text = ("2024-05-14 09:00:00 ERROR failed\njava.lang.IllegalStateException: x\n\tat A.b(A.java:1)\n"
            "Caused by: java.io.IOException: y\n\tat C.d(C.java:2)\n"
            "2024-05-14 09:00:01 INFO ok\n\tat not-taken: the group is in state exception\n"
            "stray line\n2024-05-14 09:00:02 WARN w")
    lines = text.split("\n")
    assert groups("custom", crilines(text), multiline_rules=RULES) == [
        lines[0:5], lines[5:6], lines[6:7], lines[7:8], lines[8:9]]


def test_state_machine_a_second_start_closes_the_group() -> None:
    rules = [{"state": "start_state", "regex": "^BEGIN", "next_state": "body"},
             {"state": "body", "regex": "^ ", "next_state": "body"}]
    assert groups("custom", crilines("BEGIN a\n x\nBEGIN b\n y\nz"), multiline_rules=rules) == [
        ["BEGIN a", " x"], ["BEGIN b", " y"], ["z"]]


def test_multiline_end_closes_the_group_at_once() -> None:
    text = "BEGIN tx 1\n  step\nEND tx 1\n  after end: its own record\nBEGIN tx 2\n  step"
    lines = text.split("\n")
    assert groups("custom", crilines(text), multiline_start="^BEGIN", multiline_continue=r"^\s",
                  multiline_end="^END") == [lines[0:3], lines[3:4], lines[4:6]]


@pytest.mark.parametrize("keys,where,what", [
    ({"multiline_rules": []}, "inputs[0].multiline_rules", "non-empty list"),
    ({"multiline_rules": [{"state": "cont", "regex": "x", "next_state": "cont"}]}, "inputs[0].multiline_rules",
     "no rule has state 'start_state'"),
    ({"multiline_rules": [{"state": "start_state", "regex": "x", "next_state": "cnt"}]},
     "inputs[0].multiline_rules[0].next_state", "state 'cnt' has no rules"),
    ({"multiline_rules": [{"state": "start_state", "regex": "(", "next_state": "start_state"}]},
     "inputs[0].multiline_rules[0].regex", "invalid regular expression"),
    ({"multiline_rules": [{"state": "start_state", "regex": "x"}]}, "inputs[0].multiline_rules[0].next_state",
     "is required"),
    ({"multiline_rules": [{"state": "start_state", "regex": "x", "next_state": "start_state", "nxt": 1}]},
     "inputs[0].multiline_rules[0].nxt", "unknown key"),
    ({"multiline_rules": [{"state": "start_state", "regex": "x", "next_state": "start_state"}],
      "multiline_start": "^x"}, "inputs[0].multiline_start", "cannot be combined"),
    ({"multiline_end": "^END"}, "inputs[0].multiline", "needs multiline_start"),
    ({"multiline_end": "(", "multiline_start": "x"}, "inputs[0].multiline_end", "invalid regular expression"),
])
def test_custom_config_errors_name_file_and_key(keys: dict, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings(format="cri", multiline="custom", **keys)
    assert str(e.value).startswith(f"test.yaml: {where}: ") and what in str(e.value)


@pytest.mark.parametrize("key", ["multiline_end", "multiline_rules"])
def test_custom_keys_are_refused_with_other_modes(key: str) -> None:
    value = "^x" if key == "multiline_end" else [{"state": "start_state", "regex": "x", "next_state": "start_state"}]
    with pytest.raises(ConfigError, match=f"test.yaml: inputs\\[0\\].{key}: is only used with multiline: custom"):
        settings(format="cri", multiline="auto", **{key: value})


JUL = """\
May 14, 2024 9:31:02 AM com.example.legacy.App main
SEVERE: Request failed
java.lang.IllegalStateException: stock exhausted
\tat com.example.legacy.App.handle(App.java:27)
May 14, 2024 9:31:03 AM com.example.legacy.App main
INFO: retry scheduled"""


def test_java_jul_two_line_layout() -> None:
    lines = JUL.split("\n")
    assert groups("java", crilines(JUL, "stderr")) == [lines[0:4], lines[4:6]]


SYSLOG = """\
May 14 09:35:01 node-7 orders[4211]: 2024-05-14 09:35:01.002 ERROR c.e.orders.Sync - sync failed
May 14 09:35:01 node-7 orders[4211]: java.net.SocketTimeoutException: Read timed out
May 14 09:35:01 node-7 orders[4211]: \tat com.example.orders.Sync.pull(Sync.java:40)
May 14 09:35:01 node-7 orders[4211]: Caused by: java.io.IOException: x
May 14 09:35:02 node-7 orders[4211]: sync retried
May 14 09:35:02 node-7 orders[4211]: \tat orphan.Frame(F.java:1)"""


def test_java_syslog_prefixed_trace() -> None:
    lines = SYSLOG.split("\n")
    assert groups("java", crilines(SYSLOG)) == [lines[0:4], lines[4:6]]


NODE_TOP_LEVEL = """\
/app/index.js:3
throw new TypeError('config.port must be a number');
^

TypeError: config.port must be a number
    at Object.<anonymous> (/app/index.js:3:7)

Node.js v20.11.1
node:internal/process/promises:289
            triggerUncaughtException(err, true /* fromPromise */);
            ^

[UnhandledPromiseRejection: This error originated either by throwing inside of an async function wit"quota".] {
  code: 'ERR_UNHANDLED_REJECTION'
}

Node.js v20.11.1
(node:1) UnhandledPromiseRejectionWarning: Error: socket hang up
    at connResetException (internal/errors.js:607:14)
(node:1) UnhandledPromiseRejectionWarning: Unhandled promise rejection. (rejection id: 1)
(node:1) [DEP0018] DeprecationWarning: Unhandled promise rejections are deprecated."""


def test_node_top_level_throw_and_unhandled_rejections_are_one_record_each() -> None:
    lines = NODE_TOP_LEVEL.split("\n")
    assert groups("node", crilines(NODE_TOP_LEVEL, "stderr")) == [lines[0:8], lines[8:17], lines[17:21]]


def _cat(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "logagent", "cat", *args], capture_output=True, timeout=60,
                          check=False)


def test_logagent_cat_with_a_rules_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    log = tmp_path / "0.log"
    text = "2024-05-14 09:00:00 ERROR failed\njava.lang.IllegalStateException: x\n\tat A.b(A.java:1)\nplain"
    log.write_bytes(crilines(text))
    proc = _cat("--multiline", "custom", "--multiline-rules", str(rules), str(log))
    assert proc.returncode == 0, proc.stderr.decode()
    got = [json.loads(line)["message"] for line in proc.stdout.split(b"\n") if line]
    assert got == ["\n".join(text.split("\n")[:3]), "plain"]


def test_logagent_cat_names_the_rules_file_and_key_of_a_bad_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    bad = {"state": "frames", "regex": "[", "next_state": "x"}
    rules.write_text(yaml.safe_dump({"multiline_rules": [*RULES, bad]}))
    log = tmp_path / "0.log"
    log.write_bytes(crilines("a"))
    proc = _cat("--multiline", "custom", "--multiline-rules", str(rules), str(log))
    assert proc.returncode == 2 and proc.stdout == b""
    assert f"{rules}: multiline_rules[4].regex: invalid regular expression" in proc.stderr.decode()
    proc = _cat("--multiline", "custom", "--multiline-rules", str(tmp_path / "missing.yaml"), str(log))
    assert proc.returncode == 2 and "missing.yaml: cannot read" in proc.stderr.decode()


def test_logagent_cat_multiline_end(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_bytes(crilines("BEGIN\n x\nEND\n y"))
    proc = _cat("--multiline", "custom", "--multiline-start", "^BEGIN", "--multiline-continue", "^ ",
                "--multiline-end", "^END", str(log))
    assert [json.loads(line)["message"] for line in proc.stdout.split(b"\n") if line] == ["BEGIN\n x\nEND", " y"]
