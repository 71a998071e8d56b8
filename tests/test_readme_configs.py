"""Every complete config in README.md passes `logagent check` as it is written.

The convention (stated in the README, section "Minimal configs for common jobs"): a ```yaml block whose top
level has both `inputs` and `outputs` as lists of components (mappings) is a complete config; every other block
(one output, one stage, the reference sketch with `[...]`) is a fragment and is not checked. Secrets and `${VAR}`
the blocks name are set to placeholders in the environment, as a user would export them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ENV_REF = re.compile(r"\{\s*env:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _is_complete(doc: Any) -> bool:
    return (isinstance(doc, dict) and all(
        isinstance(doc.get(k), list) and doc[k] and all(isinstance(c, dict) for c in doc[k])
        for k in ("inputs", "outputs")))


def complete_blocks() -> list[tuple[int, str]]:
    """(line number, text) of every complete config block."""
    text = README.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        try:
            doc = yaml.safe_load(m.group(1))
        except yaml.YAMLError:
            continue  # not YAML at all (a sketch): a fragment
        if _is_complete(doc):
            out.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return out


BLOCKS = complete_blocks()


def test_the_readme_has_a_complete_config_for_each_common_job() -> None:
    docs = [yaml.safe_load(text) for _, text in BLOCKS]
    outputs = {o["type"] for d in docs for o in d["outputs"]}
    assert {"stdout", "elasticsearch", "loki", "victorialogs", "sls"} <= outputs
    kube = [d for d in docs if any(s.get("type") == "kubernetes" for s in d.get("pipeline", []))]
    assert {o["type"] for d in kube for o in d["outputs"]} >= {"elasticsearch", "loki", "victorialogs", "sls"}
    assert any({i["type"] for i in d["inputs"]} >= {"journal", "kmsg"} for d in docs)


@pytest.mark.parametrize("line,text", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_complete_readme_config_passes_check(tmp_path: Path, line: int, text: str) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    env = {**os.environ, "LOGAGENT_STATE_DIR": str(tmp_path / "state")}
    for m in _ENV_REF.finditer(text):
        env.setdefault(m.group(1) or m.group(2), "placeholder")
    proc = subprocess.run([sys.executable, "-m", "logagent", "check", "-c", str(config)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 0, f"README.md line {line}: {proc.stderr}"
    resolved = yaml.safe_load(proc.stdout)
    written = yaml.safe_load(text)
    assert [i["type"] for i in resolved["inputs"]] == [i["type"] for i in written["inputs"]]
    assert [o["type"] for o in resolved["outputs"]] == [o["type"] for o in written["outputs"]]
