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

DATA = Path(__file__).parent / "data" / "containers"
EXPECTED_KEYS = ("time", "stream", "message", "fragments", "lines")


def settings(**keys: Any) -> ParserSettings:
    return parse_parser_settings(Section(keys, "inputs[0]", "test.yaml"))


def case_names() -> list[str]:
    return sorted(p.name[: -len(".expected.jsonl")] for p in DATA.glob("*.expected.jsonl"))


def case_mode(name: str) -> str:
    """multiline_<mode>[_what].log is grouped with <mode>; every other file is not grouped."""
    return name.split("_")[1] if name.startswith("multiline_") else "none"


def expected(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / f"{name}.expected.jsonl").read_text().splitlines() if line]


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


def run_file(name: str, fmt: str = "auto", cuts: Iterable[int] = ()) -> list[dict]:
    joiner = make_joiner(settings(format=fmt, multiline=case_mode(name)), str(DATA / f"{name}.log"))
    return run_chunks(joiner, (DATA / f"{name}.log").read_bytes(), cuts)


def by_stream(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get("stream", "?"), []).append({k: r.get(k) for k in EXPECTED_KEYS})
    return out
