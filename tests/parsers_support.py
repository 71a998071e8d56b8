"""Helpers for the parser tests: run bytes through the real LineSplitter and a joiner in chosen chunks, and
compare records with an `*.expected.jsonl` the way its README says (per stream, in order)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from logagent.config import Section
from logagent.inputs.file.reader import LineSplitter, settle_utf8
from logagent.parsers.base import LineJoiner
from logagent.parsers.factory import ParserSettings, make_joiner, parse_parser_settings

DATA = Path(__file__).parent / "data" / "containers"  # a copy of ../shared/testdata/containers
VARIANTS = Path(__file__).parent / "data" / "containers_variants"  # more of the same rules, expectations by hand
EXPECTED_KEYS = ("time", "stream", "message", "fragments", "lines")


def settings(**keys: Any) -> ParserSettings:
    return parse_parser_settings(Section(keys, "inputs[0]", "test.yaml"))


def case_names(*dirs: Path) -> list[str]:
    """Cases as `<dir>/<name>` below tests/data: every `*.expected.jsonl` with its `.log` (held-out files dropped
    into these directories are picked up as they are)."""
    return sorted(f"{d.name}/{p.name[: -len('.expected.jsonl')]}"
                  for d in (dirs or (DATA, VARIANTS)) for p in d.glob("*.expected.jsonl"))


def case_path(case: str, suffix: str = ".log") -> Path:
    return DATA.parent / f"{case}{suffix}"


def case_mode(case: str) -> str:
    """multiline_<mode>[_what].log is grouped with <mode>; every other file is not grouped."""
    name = case.rsplit("/", 1)[-1]
    return name.split("_")[1] if name.startswith("multiline_") else "none"


def case_format(case: str) -> str:
    return "docker" if case.rsplit("/", 1)[-1].startswith("docker") else "cri"


def expected(case: str) -> list[dict[str, Any]]:
    # split on "\n" only: str.splitlines() would also split at U+2028/U+2029/U+0085 inside a JSON string
    return [json.loads(line) for line in case_path(case, ".expected.jsonl").read_bytes().split(b"\n") if line]


def run_chunks(joiner: LineJoiner, data: bytes, cuts: Iterable[int] = (), max_line: int = 1 << 20) -> list[dict]:
    """Feed `data` cut at the given byte positions, then finish the file (partial line, forced flush)."""
    splitter = LineSplitter(max_line)
    records: list[dict] = []
    start = 0
    for end in [*sorted(set(c for c in cuts if 0 < c < len(data))), len(data)]:
        chunk = data[start:end]
        start = end
        lines, offsets, flags = splitter.feed(chunk, end, 0.0)
        if lines:
            records.extend(joiner.feed(lines, offsets, flags))
    lines, offsets, flags = splitter.take_partial()
    if lines:
        records.extend(joiner.feed(lines, offsets, flags))
    records.extend(joiner.flush(0.0, force=True))
    settle_utf8(records)  # as the tailer and `logagent cat` do with complete records
    return records


def run_file(case: str, fmt: str = "auto", cuts: Iterable[int] = ()) -> list[dict]:
    joiner = make_joiner(settings(format=fmt, multiline=case_mode(case)), str(case_path(case)))
    return run_chunks(joiner, case_path(case).read_bytes(), cuts)


def by_stream(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get("stream", "?"), []).append({k: r.get(k) for k in EXPECTED_KEYS})
    return out
