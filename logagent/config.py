"""Configuration: the agent's document (inputs, pipeline, outputs, limits, http) and YAML loading.

Every component reads its settings through a `Section` (logagent.section), which knows the file and the key path
it came from, so that any mistake is reported as `FILE: outputs[1].batch.max_bytes: expected a size like "5MiB",
got "lots"`. Settings are validated once, at load time, into frozen dataclasses; nothing in the hot path walks dicts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logagent.section import ConfigError as ConfigError
from logagent.section import Section as Section
from logagent.section import parse_duration as parse_duration
from logagent.section import parse_size as parse_size

if TYPE_CHECKING:
    import yaml


@dataclass(frozen=True)
class ComponentConfig:
    """One `inputs[i]`, `pipeline[i]` or `outputs[i]` entry: its type, name and its own settings section."""

    kind: str  # "input" | "stage" | "output"
    type: str
    name: str
    section: Section
    match: tuple[str, ...]  # outputs and stages: tag globs they take

    def __hash__(self) -> int:
        return hash((self.kind, self.name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ComponentConfig) and self.fingerprint() == other.fingerprint()

    def fingerprint(self) -> str:
        """Identity for hot reload: same fingerprint means the component can keep running."""
        import yaml

        return yaml.safe_dump(
            {"kind": self.kind, "type": self.type, "name": self.name, "match": list(self.match),
             "settings": self.section.data},
            sort_keys=True,
        )


@dataclass(frozen=True)
class Limits:
    """Memory bounds (see logagent.flow): each window is bounded in bytes (read, plus `record_overhead` per record:
    what the records hold in memory) and, as a safety net, in batches."""

    queue_bytes: int  # bytes of batches waiting between inputs and the router
    queue_batches: int  # ...and at most this many batches
    output_queue_batches: int  # batches waiting in front of each output (within its unacked window)
    output_max_unacked_bytes: int  # bytes an output may hold unacknowledged (its queue included)
    output_max_unacked_batches: int  # ...and at most this many batches
    batch_max_records: int  # an input cuts a batch at this many records...
    batch_max_bytes: int  # ...or this many bytes
    record_overhead: int = 400  # bytes a record costs in the windows beyond its bytes read (logagent.flow)


@dataclass(frozen=True)
class AgentConfig:
    file: str
    state_dir: str
    dead_letter_path: str
    grace_period: float
    checkpoint_interval: float
    limits: Limits
    inputs: tuple[ComponentConfig, ...]
    stages: tuple[ComponentConfig, ...]
    outputs: tuple[ComponentConfig, ...]
    http: Section  # metrics/health server settings, read by logagent.http
    log_level: str
    raw: dict[str, Any]
    top: Section  # the document: after validation its `resolved` values are what `logagent check` prints


def _components(top: Section, key: str, kind: str, registry: dict[str, str]) -> tuple[ComponentConfig, ...]:
    out = []
    names: set[str] = set()
    for i, sec in enumerate(top.sections(key)):
        type_ = sec.str("type")
        if type_ not in registry:
            raise sec.error(f"unknown {kind} type {type_!r} (known: {', '.join(sorted(registry))})", "type")
        name = sec.str("name", f"{type_}" if type_ not in names else f"{type_}_{i}")
        if name in names:
            raise sec.error(f"duplicate name {name!r}", "name")
        names.add(name)
        match: tuple[str, ...] = ()
        if kind != "input":
            match = tuple(sec.str_list("match", ["*"]))
        out.append(ComponentConfig(kind, type_, name, sec, match))
    return tuple(out)


def parse_config(data: Any, file: str) -> AgentConfig:
    """Validate a whole config document. Component settings are validated when components are built
    (`logagent.registry.build_*`), which `load_config` does once so that every error surfaces at load."""
    from logagent import registry

    top = Section(data, "", file)
    state_dir = top.str("state_dir", "/var/lib/logagent")
    limits_sec = top.section("limits")
    limits = Limits(
        queue_bytes=limits_sec.size("queue_bytes", 2 * 1024 * 1024),
        queue_batches=limits_sec.int("queue_batches", 1024, min=1),
        output_queue_batches=limits_sec.int("output_queue_batches", 1024, min=1),
        output_max_unacked_bytes=limits_sec.size("output_max_unacked_bytes", 8 * 1024 * 1024),
        output_max_unacked_batches=limits_sec.int("output_max_unacked_batches", 4096, min=1),
        batch_max_records=limits_sec.int("batch_max_records", 4096, min=1),
        batch_max_bytes=limits_sec.size("batch_max_bytes", 1024 * 1024),
        record_overhead=limits_sec.size("record_overhead", 400),
    )
    limits_sec.done()
    cfg = AgentConfig(
        file=file,
        state_dir=state_dir,
        dead_letter_path=top.str("dead_letter_path", os.path.join(state_dir, "dead-letter.jsonl")),
        grace_period=top.duration("grace_period", 10.0),
        checkpoint_interval=top.duration("checkpoint_interval", 0.2),
        limits=limits,
        inputs=_components(top, "inputs", "input", registry.INPUTS),
        stages=_components(top, "pipeline", "stage", registry.STAGES),
        outputs=_components(top, "outputs", "output", registry.OUTPUTS),
        http=top.section("http"),
        log_level=top.str("log_level", "info", choices=("debug", "info", "warning", "error")),
        raw=top.data,
        top=top,
    )
    if not cfg.inputs:
        raise top.error("at least one input is required", "inputs")
    if not cfg.outputs:
        raise top.error("at least one output is required", "outputs")
    top.done()
    return cfg


def load_yaml(text: str, file: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{file}: {where}invalid YAML: {problem}{_flow_hint(text, e)}") from None


def load_yaml_aside(text: str, file: str) -> Any:
    """`load_yaml` in a forked child that sends the document back (marshal): the calling process never imports
    PyYAML, ~1 MB resident in an agent once imported, and not given back if unloaded (idle RSS, issue 11). Only
    for a process with no other thread yet (`logagent run` before it starts any); with threads, or when the
    document holds what marshal cannot carry (a YAML timestamp becomes a date) or the child fails, the document is
    parsed here."""
    import marshal
    import threading

    if threading.active_count() > 1 or not hasattr(os, "fork"):
        return load_yaml(text, file)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: parse, send, and leave without running any exit handler of the parent's
        status = 1
        try:
            os.close(r)
            try:
                answer: tuple[str, Any] = ("ok", load_yaml(text, file))
            except ConfigError as e:
                answer = ("error", str(e))
            with os.fdopen(w, "wb") as out:
                out.write(marshal.dumps(answer))
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        payload = pipe.read()
    _, status = os.waitpid(pid, 0)
    try:
        kind, value = marshal.loads(payload) if status == 0 else ("", None)
    except (EOFError, ValueError, TypeError):
        kind, value = "", None
    if kind == "ok":
        return value
    if kind == "error":
        raise ConfigError(value)
    return load_yaml(text, file)


def _flow_hint(text: str, e: yaml.YAMLError) -> str:
    """`paths: [${DIR}/*.log]` is a YAML error (the `{` opens a nested flow mapping): say how to write it."""
    lines = text.splitlines()
    marks = [getattr(e, "problem_mark", None), getattr(e, "context_mark", None)]
    for mark in marks:
        if mark is not None and mark.line < len(lines) and "${" in lines[mark.line]:
            return ('; hint: inside [...] or {...} a ${VAR} must be quoted, e.g. ["${LOG_DIR}/*.log"], '
                    'or use the block style (one "- item" or "key: value" per line)')
    return ""


def _writable_dir(path: str) -> bool:
    """The directory exists and is writable, or could be created."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.access(path, os.W_OK | os.X_OK)


def load_config(path: str | None) -> AgentConfig:
    """Load and fully validate a config file (or the embedded default when path is None)."""
    cfg = read_config(path)
    from logagent import registry

    registry.validate(cfg)
    return cfg


def read_config(path: str | None, aside: bool = False) -> AgentConfig:
    """Load a config file (or the embedded default) and check its document; the components' own settings are
    checked by `registry.validate` (`load_config` does both). This part imports no component (nor asyncio):
    `logagent run` decides in between whether the process needs TLS (logagent.tls). `aside`: the YAML is parsed
    in a child process (`load_yaml_aside`)."""
    if path is None:
        from importlib import resources  # (and its tempfile, zipfile...) only for the embedded default

        text = resources.files("logagent").joinpath("default.yaml").read_text()
        file = "<embedded default>"
        if "LOGAGENT_STATE_DIR" not in os.environ and not _writable_dir("/var/lib/logagent"):
            # a user without root trying the agent out: keep state in their home instead of failing
            fallback = os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"),
                                    "logagent")
            text = text.replace("${LOGAGENT_STATE_DIR:-/var/lib/logagent}", fallback)
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
        file = path
    return parse_config((load_yaml_aside if aside else load_yaml)(text, file), file)
