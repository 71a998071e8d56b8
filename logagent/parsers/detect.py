"""`format: auto`: which format a file is in, decided once per file from the first lines it gives.

The first batch with a non-blank line decides, by vote of its first `SAMPLE` non-blank lines: CRI or docker
json-file when at least half of them are in that format, raw (plain application logs on a volume) otherwise. So one
stray first line (a torn write, a blank line, a runtime's banner) does not turn a whole CRI file into raw text, and
one quoted CRI line does not turn a plain log into CRI. After the decision, lines of the file in neither format are
passed through by the chosen joiner flagged `unparsed`. It must never guess per line: one file, one format.
"""

from __future__ import annotations

from collections.abc import Callable

from logagent.parsers.base import LineJoiner, RawJoiner
from logagent.parsers.cri import looks_like_cri
from logagent.parsers.docker import looks_like_docker
from logagent.record import Record

SAMPLE = 16


def detect_format(line: str) -> str:
    if looks_like_cri(line):
        return "cri"
    if looks_like_docker(line):
        return "docker"
    return "raw"


def detect_lines(lines: list[str]) -> str | None:
    """The format of a file starting with these lines; None while they are all blank (nothing to decide on)."""
    sample = [line for line in lines[:SAMPLE * 4] if line and not line.isspace()][:SAMPLE]
    if not sample:
        return None
    votes = {"cri": 0, "docker": 0, "raw": 0}
    for line in sample:
        votes[detect_format(line)] += 1
    best = max(("cri", "docker"), key=votes.__getitem__)
    return best if votes[best] * 2 >= len(sample) else "raw"


class AutoJoiner:
    def __init__(self, make: Callable[[str], LineJoiner]) -> None:
        self._make = make
        self.inner: LineJoiner | None = None
        self.format: str | None = None

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        if self.inner is None:
            fmt = detect_lines(lines)
            if fmt is None:
                # only blank lines so far: nothing to decide on, and a blank line means the same in every format
                return RawJoiner().feed(lines, offsets, flags)
            self.format = fmt
            self.inner = self._make(fmt)
        return self.inner.feed(lines, offsets, flags)

    def flush(self, now: float, force: bool = False) -> list[Record]:
        return self.inner.flush(now, force) if self.inner is not None else []

    def held_from(self) -> int | None:
        return self.inner.held_from() if self.inner is not None else None
