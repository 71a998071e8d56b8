"""The joiner interface between a tailer and the parsers, and the `raw` joiner (one line, one record).

A joiner is per source file and stateful: CRI `P` fragments, docker 16 KiB splits and multiline traces are held
until complete. `held_from()` tells the tailer the offset of the oldest line still held, so the tailer never
checkpoints past a record that has not been emitted yet: a restart re-reads from there and rebuilds it.
"""

from __future__ import annotations

from typing import Protocol

from logagent.record import Record


class LineJoiner(Protocol):
    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        """lines: decoded lines without their newline; offsets[i]: file offset where lines[i] starts;
        flags: sparse per-line flags from the reader (e.g. {3: ["truncated"]}). Returns complete records
        (`message`, `offset` of the first line, and format fields such as `time`, `stream`, `fragments`)."""
        ...

    def flush(self, now: float, force: bool = False) -> list[Record]:
        """Records held longer than their flush timeout (all of them when force), e.g. a quiet container's
        last stack trace, or a CRI partial whose F never came before the file was finished."""
        ...

    def held_from(self) -> int | None:
        """Offset of the oldest line held in an unfinished record, or None."""
        ...


class RawJoiner:
    """One line, one record."""

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        records = [{"message": line, "offset": off} for line, off in zip(lines, offsets)]
        if flags:
            for i, f in flags.items():
                records[i]["flags"] = f
        return records

    def flush(self, now: float, force: bool = False) -> list[Record]:
        return []

    def held_from(self) -> int | None:
        return None
