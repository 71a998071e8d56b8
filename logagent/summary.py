"""The start-up summary `logagent run` prints on stderr: which config, which state directory, what each input
found (files found, resumed from stored positions, new), where each output ships, and the http address.

A handful of plain lines, once, after the inputs have looked at their sources (bounded wait): a new user sees
at a glance why nothing prints (every file resumed at its end) or why much prints (a first start reading from the
head). It reads only public state (the resolved config, the checkpoint store, inputs' `ready`/`tails`); it never
changes what the agent does.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from logagent.config import AgentConfig, ComponentConfig

if TYPE_CHECKING:
    from logagent.pipeline import Pipeline

_STARTED_KEY = "_started"  # the file input's "this input has started before" row (inputs/file/checkpoints.py)
_SHOWN_KEYS = ("paths", "path", "directory", "url", "endpoint", "units")
READY_WAIT = 10.0  # seconds: a scan of a huge directory tree does not hold the summary back for longer


def stored_positions(cfg: AgentConfig, load: Callable[[str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each input's stored positions before it starts (`load` is `CheckpointStore.load`)."""
    return {comp.name: load(comp.name) for comp in cfg.inputs}


def config_line(cfg: AgentConfig) -> str:
    if cfg.file == "<embedded default>":
        return "config: <embedded default> (no -c FILE given; `logagent check` prints it resolved)"
    return f"config: {cfg.file}"


def state_line(cfg: AgentConfig, stored: dict[str, dict[str, Any]]) -> str:
    positions = sum(len([k for k in rows if k != _STARTED_KEY]) for rows in stored.values())
    if not any(stored.values()):
        return f"state: {cfg.state_dir} (first start: no positions stored yet)"
    return f"state: {cfg.state_dir} ({positions} positions stored by an earlier run)"


def _where(comp: ComponentConfig) -> str:
    for key in _SHOWN_KEYS:
        value = comp.section.resolved.get(key)
        if value:
            return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    return ""


def input_line(comp: ComponentConfig, inp: Any, stored: dict[str, Any]) -> str:
    where = _where(comp)
    head = f"input {comp.name} ({comp.type}{', ' + where if where else ''})"
    tails = getattr(inp, "tails", None)
    if not isinstance(tails, dict):
        return head
    found = len(tails)
    resumed = sum(1 for key in tails if key in stored)
    new = found - resumed
    parts = [f"{_files(found)} found"]
    if resumed:
        parts.append(f"{resumed} resumed from stored positions")
    if new:
        first = _STARTED_KEY not in stored
        read_from = getattr(getattr(inp, "settings", None), "read_from", "head")
        if first and read_from == "tail":
            parts.append(f"{new} read from their end (first start, read_from: tail)")
        else:
            parts.append(f"{new} read from the head")
    return f"{head}: {', '.join(parts)}"


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def output_line(comp: ComponentConfig) -> str:
    where = _where(comp)
    return f"output {comp.name} ({comp.type}{', ' + where if where else ''}): match {', '.join(comp.match)}"


def http_line(cfg: AgentConfig) -> str:
    http = cfg.http.resolved
    if http.get("enabled") is False:
        return "http: off (http.enabled: false)"
    if "port" in http:
        return f"http: {http.get('address')} port {http['port']} (/metrics, /healthz, /readyz)"
    return f"http: {http.get('address')} (/metrics, /healthz, /readyz)"


async def report_start(pipeline: Pipeline, stored: dict[str, dict[str, Any]], out: TextIO | None = None) -> None:
    """Wait until the pipeline started and its inputs are ready (at most READY_WAIT), then print the summary."""
    cfg = pipeline.config
    await pipeline.started.wait()
    events = [e for e in (getattr(ri.input, "ready", None) for ri in pipeline.inputs.values())
              if isinstance(e, asyncio.Event)]
    if events:
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), READY_WAIT)
        except asyncio.TimeoutError:
            pass
    lines = [config_line(cfg), state_line(cfg, stored)]
    for comp in cfg.inputs:
        ri = pipeline.inputs.get(comp.name)
        lines.append(input_line(comp, ri.input if ri is not None else None, stored.get(comp.name, {})))
    lines.extend(output_line(comp) for comp in cfg.outputs)
    lines.append(http_line(cfg))
    stream = out if out is not None else sys.stderr
    stream.write("".join(f"logagent: {line}\n" for line in lines))
    stream.flush()
