"""Reading one file: its descriptor, identity, read position and the records held for it.

A `Tail` owns an open descriptor, so a file renamed or deleted while being read is drained through it to the
end. It knows three offsets: `read_offset` (next byte to read), the splitter's `consumed` (bytes returned as
lines) and the joiner's `held_from` (oldest line of a record not emitted yet). The checkpointable offset is the
smallest of them that is still pending, so a restart never skips a byte of an unemitted record. A rotated file
whose unfinished record its successor carries on (`carry`) also counts the oldest of its lines held there.

This module never decides which files to follow or when to close one: that is `FileInput`'s job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from logagent.inputs.file.checkpoints import position
from logagent.inputs.file.fingerprint import FileFingerprint, fingerprint_of, read_head
from logagent.inputs.file.identity import source_id
from logagent.inputs.file.reader import LineSplitter
from logagent.parsers.base import LineJoiner
from logagent.record import Rows, joined


@dataclass(eq=False)
class Tail:
    key: str  # "dev:ino"
    path: str  # the path as matched by the glob (kept after a rotation: it names the source)
    real: str  # the file behind a symlink when opened
    fd: int
    dev: int
    ino: int
    fp: FileFingerprint
    source_id: str | None  # None until the first line is complete (`identity`)
    splitter: LineSplitter
    joiner: LineJoiner
    read_offset: int
    meta: dict[str, Any]
    fingerprint_bytes: int
    orphaned: bool = False  # renamed away or deleted: drain to EOF, then close
    at_eof: bool = False
    last_growth: float = 0.0
    size: int = 0  # last size seen by fstat
    closed: bool = False
    rewritten: bool = False  # first bytes changed: truncated and written past our offset between two looks
    pending: Rows = field(default_factory=list)  # records read but not emitted yet (a list, or a CriBlock)
    pending_bytes: int = 0
    started: bool = False  # bytes read since opened (a successor not started yet may carry a record: `carry`)
    carry: Any = None  # carry.CarriedJoiner: this file reads on into its rotated predecessor's unfinished record
    carried_by: Any = None  # carry.CarriedJoiner: a successor holds this file's unfinished record
    parent_sid: str | None = None  # the source id of the generation before this one (truncated file)
    pos_key: str = ""  # checkpoint key ("dev:ino"); differs from `key` for a retired generation
    waits_for: str = ""  # another checkpoint key whose batches hold records of this file (a copy: the original's)
    readable: bool = True  # False: a retired generation whose bytes are gone; only its pending records remain
    end: int | None = None  # a copytruncate copy shorter than where we were: its stored offset never passes it
    opened_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.pos_key:
            self.pos_key = self.key

    # -- reading --------------------------------------------------------------------------------------------
    def read(self, limit: int, now: float, verify: bool = False) -> int:
        """Read up to `limit` bytes, split and join them into `pending`. Returns bytes read (0 at EOF).

        `verify` (a file under its name): the first bytes are checked *after* the read, so bytes of a file truncated
        and written again under us (copytruncate) are never taken for the old generation's, however long the
        process was descheduled before the read: then nothing is taken and `rewritten` is set (`Rotation.check`)."""
        data = os.pread(self.fd, limit, self.read_offset) if self.readable else b""
        if not data:
            self.at_eof = True
            return 0
        head: bytes | None = None
        if verify and self.fp.length:
            head = read_head(self.fd, self.fingerprint_bytes)
            if fingerprint_of(head[:self.fp.length]) != self.fp:
                self.rewritten = True
                return 0
        self.started = True
        if self.carry is not None:
            self._settle_carry()
        self.at_eof = len(data) < limit
        self.read_offset += len(data)
        if self.read_offset > self.size:
            self.size = self.read_offset
        self.last_growth = now
        if self.fp.length < self.fingerprint_bytes and self.read_offset > self.fp.length:
            self.fp = fingerprint_of(head if head is not None else read_head(self.fd, self.fingerprint_bytes))
        if self.source_id is None:
            self.fix_source_id(final=False)
        chunk = getattr(self.joiner, "feed_chunk", None)
        if chunk is not None:
            self._add(self.splitter.feed_records(data, self.read_offset, now, chunk, self.joiner.feed))
        else:
            lines, offsets, flags = self.splitter.feed(data, self.read_offset, now)
            if lines:
                self._add(self.joiner.feed(lines, offsets, flags))
        self.pending_bytes += len(data)
        return len(data)

    def flush_partial(self, now: float, max_age: float, force: bool = False) -> None:
        """A line without its newline for longer than `max_age` (or any, when forced) becomes a record; records
        the joiner held past its own timeouts come out too."""
        if self.carry is not None:
            self._settle_carry()
        sp = self.splitter
        if sp.pending and (force or now - sp.pending_since >= max_age):
            if self.source_id is None:
                self.fix_source_id(final=True)
            lines, offsets, flags = sp.take_partial()
            if lines:
                self._add(self.joiner.feed(lines, offsets, flags))
        self._add(self.joiner.flush(now, force))

    def _add(self, records: Rows) -> None:
        if records:
            self.pending = joined(self.pending, records)

    def _settle_carry(self) -> None:
        """The carried record is out and nothing else is held: back to the plain joiner (no offset shifting)."""
        carry: Any = self.carry
        if carry.settled():
            if self.joiner is carry:
                self.joiner = self.carry.plain()
            if carry.predecessor.carried_by is carry:
                carry.predecessor.carried_by = None
            self.carry = None

    @property
    def carrying(self) -> bool:
        """A successor still holds a record of this file."""
        return self.carried_by is not None and self.carried_by.predecessor_held() is not None

    @property
    def has_pending(self) -> bool:
        """Records to emit here or in the rotated file this one carries for (emitted first: `_emit_pending`)."""
        return bool(self.pending) or (self.carry is not None and self.carry.predecessor.has_pending)

    def take(self) -> tuple[Rows, int]:
        records, nbytes = self.pending, self.pending_bytes
        self.pending, self.pending_bytes = [], 0
        return records, nbytes

    def fix_source_id(self, final: bool) -> None:
        """Name this generation once its first line is complete (or, `final`, from the bytes it has: a partial
        first line flushed, a head without newline)."""
        if not self.readable:
            return
        head = read_head(self.fd, self.fingerprint_bytes)
        sid = source_id(self.dev, self.ino, head, self.parent_sid, final or len(head) >= self.fingerprint_bytes)
        if sid is not None:
            self.source_id = sid
            self.meta = {**self.meta, "source_id": sid}

    def restart_generation(self, joiner: LineJoiner) -> None:
        """The file was truncated (or rewritten) under us: a new generation from offset 0, with fresh parser
        state and a source id of its own (derived from the previous one, so ids never collide)."""
        self.parent_sid = self.source_id
        self.source_id = None
        self.meta = {k: v for k, v in self.meta.items() if k != "source_id"}
        self.read_offset = 0
        self.splitter = LineSplitter(self.splitter.max_line, 0)
        self.joiner = joiner
        self.pending, self.pending_bytes = [], 0
        self.carry = None
        self.fp = fingerprint_of(read_head(self.fd, self.fingerprint_bytes))
        self.at_eof = False
        self.rewritten = False
        self.fix_source_id(final=False)

    # -- positions ------------------------------------------------------------------------------------------
    def safe_offset(self) -> int:
        offset = self.splitter.consumed
        held = self.joiner.held_from()
        if held is not None and held < offset:
            offset = held
        if self.carried_by is not None:
            held = self.carried_by.predecessor_held()
            if held is not None and held < offset:
                offset = held
        return offset

    def position(self) -> dict[str, Any]:
        offset = self.safe_offset()
        skip = self.splitter.skipping and offset == self.splitter.consumed
        if self.end is not None and offset > self.end:
            # every byte of this (short) copy was read from the original before it was truncated; what we
            # read beyond it was written after logrotate's copy: it is in no file any more
            offset, skip = self.end, False
        pos = position(self.path, self.real, offset, self.dev, self.ino, self.fp, skip)
        if self.source_id is not None:
            pos["sid"] = self.source_id
        if self.parent_sid is not None:
            pos["parent"] = self.parent_sid
        if self.size > offset:
            pos["size"] = self.size  # last size seen: what is lost if the file is deleted before it is read
        return pos

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.fd >= 0:
                os.close(self.fd)
