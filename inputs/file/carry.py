"""A record carried across a rotation: the file that takes a rotated file's name reads on into the joiner that holds
the rotated file's unfinished record.

The kubelet rotates a container log between lines, not between records: a Java trace's header and first frames stay
in `0.log.<timestamp>`, its other frames are written to the new `0.log`. With one joiner per file, the head would
be flushed as one record when the rotated file is finished and the frames would come out as others. The tailer
reads a rotated file to its end before its successor under the same glob name, so when the rotated file ended
holding a record (and nothing more can be written to it), its joiner is handed to the successor (`hand_over`) and
the trace comes out whole.

Offsets: both files count from 0. While carrying, the successor's line offsets are fed to the joiner shifted by
`base` (the rotated file's size, beyond every one of its offsets), so each record says in which file its first
line is. Records below `base` belong to the rotated file: they go to its `pending` and leave in a batch of its
own (its source id, its offset, its checkpoint); the others get their own offsets back. The rotated file's
checkpoint stays at its oldest carried line until that record is out; the successor's stays at its start while a
carried record holds its first lines, so a restart reads both again and carries again. Once the joiner holds
nothing, the successor gets the plain joiner back (no shifting any more).

This module never opens, reads or emits anything; it must never let a record out under the other file's source
or offset, nor let either file's checkpoint pass a line that is still held.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from logagent.parsers.base import LineJoiner
from logagent.record import Record

if TYPE_CHECKING:
    from logagent.inputs.file.tail import Tail


class CarriedJoiner:
    """The successor's joiner while it carries its predecessor's record(s)."""

    def __init__(self, inner: LineJoiner, base: int, start: int, predecessor: Tail) -> None:
        self.inner = inner
        self.base = base  # every offset of the predecessor is below it
        self.start = start  # where the successor began reading
        self.predecessor = predecessor

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        base = self.base
        return self._split(self.inner.feed(lines, [o + base for o in offsets], flags))

    def flush(self, now: float, force: bool = False) -> list[Record]:
        return self._split(self.inner.flush(now, force))

    def _split(self, records: list[Record]) -> list[Record]:
        if not records:
            return records
        base = self.base
        mine: list[Record] = []
        theirs: list[Record] = []
        for rec in records:
            if rec["offset"] >= base:
                rec["offset"] -= base
                mine.append(rec)
            else:
                theirs.append(rec)
        if theirs:
            pred = self.predecessor
            pred._add(theirs)
            pred.pending_bytes += sum([len(r["message"]) for r in theirs if isinstance(r["message"], str)])
        return mine

    def held_from(self) -> int | None:
        """In the successor's offsets; its start while a carried record (which may hold its first lines) is held."""
        held = self.inner.held_from()
        if held is None:
            return None
        return held - self.base if held >= self.base else self.start

    def predecessor_held(self) -> int | None:
        """The predecessor's oldest line still held here, in its own offsets."""
        held = self.inner.held_from()
        return held if held is not None and held < self.base else None

    def settled(self) -> bool:
        return self.inner.held_from() is None

    def plain(self) -> LineJoiner:
        """The joiner under every carrying layer (a file rotated twice mid-record carries twice)."""
        joiner = self.inner
        while isinstance(joiner, CarriedJoiner):
            joiner = joiner.inner
        return joiner


def hand_over(predecessor: Tail, successor: Tail, fresh_joiner: Callable[[], LineJoiner]) -> bool:
    """Give `successor` (not read yet, starting at 0) the joiner of `predecessor` (rotated, read to its end) when
    that one holds an unfinished record. The predecessor gets a fresh joiner for bytes written to it late."""
    if successor.started or successor.read_offset != 0 or predecessor.carried_by is not None or predecessor.closed:
        return False
    if not predecessor.at_eof or predecessor.splitter.pending or predecessor.joiner.held_from() is None:
        return False  # a file ending in the middle of a line was not rotated by the kubelet: finish it alone
    try:
        if os.fstat(predecessor.fd).st_size != predecessor.read_offset:
            return False  # still growing: the runtime had not reopened its log yet
    except OSError:
        return False
    carry = CarriedJoiner(predecessor.joiner, predecessor.read_offset, successor.read_offset, predecessor)
    successor.joiner = carry
    successor.carry = carry
    predecessor.joiner = fresh_joiner()
    predecessor.carried_by = carry
    return True
