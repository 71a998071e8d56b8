"""Per-stream joining of partial lines, shared by the CRI (`P`/`F`) and docker json-file (16 KiB split) formats.

One `PartialLines` holds, per stream, the pieces of a line whose end has not arrived yet. It bounds what it holds:
when the next piece would take a joined line past `max_record_bytes`, the pieces held so far are emitted as a
record flagged `truncated` and the line goes on as a new record flagged `continued` — cut at piece boundaries,
so every record starts at its own physical line (its `offset` stays unique and a restart from `held_from()`
rebuilds exactly the held part). A single piece is never cut: the reader already bounds physical lines.

It must never drop a piece: a line whose end never comes is emitted on `flush` (timeout or force) flagged
`incomplete`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from logagent.record import Record


def text_bytes(text: str) -> int:
    """UTF-8 size of text; `isascii` is a C-level scan, so the common case costs no encoding."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def add_flags(into: list[str], more: list[str]) -> None:
    for f in more:
        if f not in into:
            into.append(f)


class _Pending:
    __slots__ = ("pieces", "offset", "time", "time_ns", "fragments", "nbytes", "flags", "updated", "attrs")

    def __init__(self, offset: int, ts: str, tns: int | None, flags: list[str] | None, now: float,
                 attrs: Any) -> None:
        self.pieces: list[str] = []
        self.offset = offset
        self.time = ts
        self.time_ns = tns
        self.fragments = 0
        self.nbytes = 0
        self.flags: list[str] = list(flags) if flags else []
        self.updated = now
        self.attrs = attrs


class PartialLines:
    """Pending partial lines by stream. `add` returns nothing or the records a piece completed (appended to out)."""

    __slots__ = ("max_bytes", "open", "clock")

    def __init__(self, max_record_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_record_bytes
        self.open: dict[str, _Pending] = {}
        self.clock = clock

    def add(self, out: list[Record], stream: str, text: str, offset: int, ts: str, tns: int | None, final: bool,
            flags: list[str] | None, attrs: Any = None) -> None:
        pend = self.open.get(stream)
        size = text_bytes(text)
        if pend is None:
            if final:
                out.append(_record(text, offset, ts, tns, stream, 1, flags, attrs))
                return
            pend = self.open[stream] = _Pending(offset, ts, tns, flags, self.clock(), attrs)
        else:
            if pend.nbytes + size > self.max_bytes and pend.pieces:
                add_flags(pend.flags, ["truncated"])
                out.append(self._finish(stream, pend))
                pend = self.open[stream] = _Pending(offset, ts, tns, ["continued"], self.clock(), attrs)
            else:
                pend.updated = self.clock()
            if flags:
                add_flags(pend.flags, flags)
        pend.pieces.append(text)
        pend.fragments += 1
        pend.nbytes += size
        if final:
            del self.open[stream]
            out.append(self._finish(stream, pend))

    def flush(self, now: float, max_age: float | None, force: bool) -> list[Record]:
        """Lines held longer than max_age since their last piece (all when force), flagged `incomplete`."""
        if not self.open:
            return []
        out: list[Record] = []
        for stream, pend in list(self.open.items()):
            if force or (max_age is not None and now - pend.updated >= max_age):
                del self.open[stream]
                add_flags(pend.flags, ["incomplete"])
                out.append(self._finish(stream, pend))
        return out

    def held_from(self) -> int | None:
        if not self.open:
            return None
        return min(p.offset for p in self.open.values())

    @staticmethod
    def _finish(stream: str, pend: _Pending) -> Record:
        text = pend.pieces[0] if len(pend.pieces) == 1 else "".join(pend.pieces)
        return _record(text, pend.offset, pend.time, pend.time_ns, stream, pend.fragments, pend.flags, pend.attrs)


def _record(text: str, offset: int, ts: str, tns: int | None, stream: str, fragments: int,
            flags: list[str] | None, attrs: Any) -> Record:
    rec: Record = {"message": text, "offset": offset, "time": ts}
    if tns is not None:
        rec["time_ns"] = tns
    rec["stream"] = stream
    rec["fragments"] = fragments
    rec["lines"] = 1
    if flags:
        rec["flags"] = list(flags)
    if attrs is not None:
        rec["attrs"] = attrs
    return rec


def unparsed(line: str, offset: int, flags: list[str] | None) -> Record:
    """A line in none of the expected formats: kept whole, flagged, never dropped."""
    fl = list(flags) if flags else []
    add_flags(fl, ["unparsed"])
    return {"message": line, "offset": offset, "fragments": 1, "lines": 1, "flags": fl}
