"""Multiline grouping (stack traces, panic dumps) of logical lines, per stream, after CRI/docker joining.

`MultilineJoiner` wraps the format joiner: what that one emits (already joined `P`/`F` or 16 KiB pieces) is
grouped here by a mode from `modes` into records whose message is the group's lines joined with `\n`, `offset`
and `time` of the first line, `fragments` and `lines` summed, flags merged. stdout and stderr are grouped apart;
lines the format joiner flagged `unparsed` belong to no stream and are passed on alone.

Bounds: a group that would pass `max_lines` lines or `max_bytes` bytes is emitted flagged `truncated`, and the
trace goes on as a new group flagged `continued` (cut between lines: nothing is lost). A group gets no new line
for `flush_after` seconds -> emitted on `flush`, so a quiet container's last trace is not held forever.

A mode may come with a `prefilter(records) -> indices`: the records it can act on when their stream has no group
open (for `auto`, the lines with a keyword). The others, in streams with no group open, are passed on in runs,
with no per-line call: the same records as stepping each one, at the cost of one batch-level scan.

It must never hold a line without telling `held_from()`, and never reorder the records of one stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from logagent.parsers.base import LineJoiner
from logagent.parsers.modes import CONT, END, HOLD, START, Step
from logagent.parsers.partials import add_flags, text_bytes
from logagent.record import Record

Prefilter = Callable[[list[Record]], list[int]]


def _shape(records: list[Record]) -> None:
    """Raw lines (volume files) get the `fragments`/`lines` of grouped output, so every record has one shape."""
    if records and "lines" not in records[0]:
        for rec in records:
            if "lines" not in rec:
                rec["fragments"] = 1
                rec["lines"] = 1


class _Group:
    __slots__ = ("continued", "nbytes", "nlines", "records")

    def __init__(self, first: Record, continued: bool = False) -> None:
        self.records = [first]
        self.nbytes = text_bytes(first["message"])
        self.nlines = first.get("lines", 1)
        self.continued = continued


class _Stream:
    __slots__ = ("group", "held", "hit", "mode", "updated")

    def __init__(self) -> None:
        self.group: _Group | None = None
        self.mode = ""  # the mode's own phase
        self.hit = True  # the prefilter's verdict on the line being stepped (True without a prefilter)
        self.held: list[Record] = []  # HOLD lines waiting for a continuation
        self.updated = 0.0


def merge(records: list[Record], continued: bool = False, truncated: bool = False) -> Record:
    first = records[0]
    if len(records) == 1 and not continued and not truncated:
        return first
    rec: Record = dict(first)
    rec["message"] = "\n".join([r["message"] for r in records])
    rec["fragments"] = sum([r.get("fragments", 1) for r in records])
    rec["lines"] = sum([r.get("lines", 1) for r in records])
    flags: list[str] = list(first.get("flags", ()))
    for r in records[1:]:
        more = r.get("flags")
        if more:
            add_flags(flags, more)
    if continued:
        add_flags(flags, ["continued"])
    if truncated:
        add_flags(flags, ["truncated"])
    if flags:
        rec["flags"] = flags
    return rec


class MultilineJoiner:
    def __init__(self, inner: LineJoiner, step: Step, flush_after: float = 2.0, max_lines: int = 1000,
                 max_bytes: int = 1 << 20, clock: Callable[[], float] = time.monotonic,
                 prefilter: Prefilter | None = None) -> None:
        self.inner = inner
        self.step = step
        self.prefilter = prefilter
        self.flush_after = flush_after
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.clock = clock
        self.streams: dict[Any, _Stream] = {}

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        records = self.inner.feed(lines, offsets, flags)
        return self._group(records) if records else records

    def _group(self, records: list[Record]) -> list[Record]:
        if self.prefilter is None:
            return self._step_all(records, self.clock())
        return self._group_filtered(records, self.prefilter(records))

    def _group_filtered(self, records: list[Record], hits: list[int]) -> list[Record]:
        """Runs of records that are no hit, while no stream has a group open, pass as they are (slices)."""
        streams = self.streams
        n = len(records)
        if not hits and all(st.group is None for st in streams.values()):
            _shape(records)
            return records
        now = self.clock()
        out: list[Record] = []
        hit_set = set(hits)
        hits.append(n)
        h = 0  # hits[h] is the next hit at or after i
        i = 0
        step_all = self._step_all
        any_open = not all(st.group is None for st in streams.values())
        while i < n:
            if not any_open:
                while hits[h] < i:
                    h += 1
                j = hits[h]
                if j > i:
                    run = records[i:j]
                    _shape(run)
                    out.extend(run)
                    i = j
                    if i >= n:
                        break
            rec = records[i]
            hit = i in hit_set
            st = streams.get(rec.get("stream"))
            was_open = st is not None and st.group is not None
            if hit or was_open:
                step_all([rec], now, out, hit)
                st = streams.get(rec.get("stream"))
                if st is None or (st.group is not None) != was_open:  # only this record's stream changed
                    any_open = not all(st.group is None for st in streams.values())
            else:
                _shape([rec])
                out.append(rec)
            i += 1
        return out

    def _step_all(self, records: list[Record], now: float, out: list[Record] | None = None,
                  hit: bool = True) -> list[Record]:
        """Every record through the mode's step; `hit` (the prefilter's verdict on these records) is left in the
        stream state for the step to read."""
        if out is None:
            out = []
        emit = out.append
        step = self.step
        streams = self.streams
        for rec in records:
            if "flags" in rec and "unparsed" in rec["flags"]:
                emit(rec)
                continue
            if "lines" not in rec:  # raw lines (volume files): give grouped output one shape
                rec["fragments"] = 1
                rec["lines"] = 1
            key = rec.get("stream")
            st = streams.get(key)
            if st is None:
                st = streams[key] = _Stream()
            st.hit = hit
            action = step(rec["message"], st)
            if action == CONT or action == END:
                group = st.group
                assert group is not None
                for r in st.held:
                    self._append(st, group, r, out)
                    group = st.group
                    assert group is not None
                st.held.clear()
                self._append(st, group, rec, out)
                if action == END:  # the line ends its group: emitted now, not at the next line or the timeout
                    self._close(st, out)
            elif action == START:
                if st.group is not None:
                    self._close(st, out)
                st.group = _Group(rec)
            elif action == HOLD:
                st.held.append(rec)
            else:  # SOLO
                if st.group is not None:
                    self._close(st, out)
                emit(rec)
            st.updated = now
        return out

    def _append(self, st: _Stream, group: _Group, rec: Record, out: list[Record]) -> None:
        size = text_bytes(rec["message"]) + 1
        nlines = rec.get("lines", 1)
        if group.nlines + nlines > self.max_lines or group.nbytes + size > self.max_bytes:
            out.append(merge(group.records, group.continued, truncated=True))
            st.group = _Group(rec, continued=True)
            return
        group.records.append(rec)
        group.nbytes += size
        group.nlines += nlines

    def _close(self, st: _Stream, out: list[Record]) -> None:
        group = st.group
        assert group is not None
        out.append(merge(group.records, group.continued))
        st.group = None  # st.mode is the mode's: it may have just set it for the line that closes this group
        if st.held:
            out.extend(st.held)
            st.held = []

    def flush(self, now: float, force: bool = False) -> list[Record]:
        out = self._group(self.inner.flush(now, force))
        due = [st for st in self.streams.values()
               if st.group is not None and (force or now - st.updated >= self.flush_after)]
        due.sort(key=lambda st: st.group.records[0]["offset"] if st.group is not None else 0)  # file order
        for st in due:
            self._close(st, out)
        return out

    def held_from(self) -> int | None:
        held = self.inner.held_from()
        for st in self.streams.values():
            if st.group is not None:
                off = st.group.records[0]["offset"]
                if held is None or off < held:
                    held = off
        return held
