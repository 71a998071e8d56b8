"""`format: auto`: which format a file is in, decided once per file by its first non-empty line.

A first line that is CRI makes the file CRI, a docker json-file object makes it docker, anything else makes it
raw (plain application logs on a volume). After the decision, lines of the file in neither format are passed
through by the chosen joiner flagged `unparsed`. It must never guess per line: one file, one format.
"""

from __future__ import annotations

from collections.abc import Callable

from logagent.parsers.base import LineJoiner, RawJoiner
from logagent.parsers.cri import looks_like_cri
from logagent.parsers.docker import looks_like_docker
from logagent.record import Record


def detect_format(line: str) -> str:
    if looks_like_cri(line):
        return "cri"
    if looks_like_docker(line):
        return "docker"
    return "raw"


class AutoJoiner:
    def __init__(self, make: Callable[[str], LineJoiner]) -> None:
        self._make = make
        self.inner: LineJoiner | None = None
        self.format: str | None = None

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        if self.inner is None:
            first = next((line for line in lines if line), None)
            if first is None:
                # only empty lines so far: nothing to decide on, and an empty line means the same in every format
                return RawJoiner().feed(lines, offsets, flags)
            self.format = detect_format(first)
            self.inner = self._make(self.format)
        return self.inner.feed(lines, offsets, flags)

    def flush(self, now: float, force: bool = False) -> list[Record]:
        return self.inner.flush(now, force) if self.inner is not None else []

    def held_from(self) -> int | None:
        return self.inner.held_from() if self.inner is not None else None
