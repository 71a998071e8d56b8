"""Turning the bytes of one file into lines: the data path of the tailer.

`LineSplitter` takes chunks as they are read (large reads, ~1 MiB) and returns the complete lines in them with
the file offset where each starts. Everything per chunk is a C-level call: one `rfind`, one `decode`, one
`split`, `accumulate` over the lengths. Per-line Python work happens only on the rare paths: invalid UTF-8 and
over-long lines. `feed_records` lets a format that can (CRI, with the native accelerator) make its records straight
from the chunk's bytes; it hands the chunk back to the lines path whenever it is unsure.

It holds at most one incomplete line (bounded by `max_line_bytes`): a longer line is cut, the first
`max_line_bytes` are returned flagged `truncated`, and the rest is skipped up to its newline, across reads,
without buffering it. It never drops a byte silently: every skipped byte belongs to a line that was returned
flagged.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from typing import Any

from logagent.record import Rows, joined

Lines = tuple[list[str], list[int], dict[int, list[str]] | None]
Record = dict[str, Any]
# (buffer, index of the last newline, file offset of the buffer, max_line) -> records, or None: not this chunk
ChunkParser = Callable[[bytes, int, int, int], Rows | None]
_Cut = tuple[str, int, list[str]]  # an over-long line's first max_line bytes: (text, offset, flags)
_EMPTY: Lines = ([], [], None)
_PLUS_ONE = (1).__add__


def _decode_cut(raw: bytes, limit: int) -> tuple[str, bool]:
    """The first `limit` bytes of a line as text, cut on a character boundary. Returns (text, valid_utf8)."""
    cut = min(limit, len(raw))
    # step back over UTF-8 continuation bytes so a character is not split by the cut
    back = 0
    while 0 < cut < len(raw) and back < 3 and (raw[cut] & 0xC0) == 0x80:
        cut -= 1
        back += 1
    part = raw[:cut]
    try:
        return part.decode("utf-8"), True
    except UnicodeDecodeError:
        return part.decode("utf-8", errors="replace"), False


def _append_cut(lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None,
                cut: _Cut) -> dict[int, list[str]]:
    text, offset, cut_flags = cut
    if flags is None:
        flags = {}
    flags[len(lines)] = cut_flags
    lines.append(text)
    offsets.append(offset)
    return flags


class LineSplitter:
    __slots__ = ("max_line", "pending", "pending_start", "pending_since", "skipping")

    def __init__(self, max_line_bytes: int, offset: int = 0, skipping: bool = False) -> None:
        self.max_line = max_line_bytes
        self.pending = b""  # an incomplete last line
        self.pending_start = offset  # file offset where `pending` (the next line) starts
        self.pending_since = 0.0  # when `pending` started being held
        self.skipping = skipping  # discarding the rest of a truncated line up to its newline

    def reset(self, offset: int) -> None:
        self.pending = b""
        self.pending_start = offset
        self.skipping = False

    @property
    def consumed(self) -> int:
        """Offset up to which every byte has been returned in a line (or skipped as part of a truncated one)."""
        return self.pending_start

    def feed(self, data: bytes, end: int, now: float) -> Lines:
        """`data` was read from the file and ends at offset `end`."""
        framed = self._frame(data, end, now)
        if framed is None:
            return _EMPTY
        buf, last, base, cut = framed
        lines, offsets, flags = self._split(buf[:last], base) if last >= 0 else ([], [], None)
        if cut is not None:
            flags = _append_cut(lines, offsets, flags, cut)
        return lines, offsets, flags

    def feed_records(self, data: bytes, end: int, now: float, chunk: ChunkParser,
                     join: Callable[[list[str], list[int], dict[int, list[str]] | None], list[Record]]) -> Rows:
        """`feed`, then `join` the lines into records; the complete lines of a chunk go to `chunk` first, which
        makes the records straight from the bytes (no list of lines in between), or answers None for `join`."""
        framed = self._frame(data, end, now)
        if framed is None:
            return []
        buf, last, base, cut = framed
        records: Rows = []
        if last >= 0:
            got = chunk(buf, last, base, self.max_line)
            records = got if got is not None else join(*self._split(buf[:last], base))
        if cut is not None:
            lines: list[str] = []
            offsets: list[int] = []
            records = joined(records, join(lines, offsets, _append_cut(lines, offsets, None, cut)))
        return records

    def _frame(self, data: bytes, end: int, now: float) -> tuple[bytes, int, int, _Cut | None] | None:
        """The buffer of complete lines: (buffer, index of its last newline or -1, its file offset, the held line
        cut at `max_line` if it grew too long); None when the chunk only continued a skipped line."""
        start = end - len(data)
        if self.skipping:
            nl = data.find(b"\n")
            if nl < 0:
                self.pending_start = end
                return None
            data = data[nl + 1:]
            start += nl + 1
            self.skipping = False
            self.pending_start = start
        had_pending = bool(self.pending)
        if had_pending:
            buf = self.pending + data
            base = self.pending_start
        else:
            buf = data
            base = start
        last = buf.rfind(b"\n")
        if last < 0:
            tail = buf
            tail_start = base
        else:
            tail = buf[last + 1:]
            tail_start = base + last + 1
        cut: _Cut | None = None
        if len(tail) > self.max_line:
            text, valid = _decode_cut(tail, self.max_line)
            cut = (text, tail_start, ["truncated"] if valid else ["truncated", "invalid_utf8"])
            self.pending = b""
            self.skipping = True
            self.pending_start = end
        else:
            if tail and (not had_pending or last >= 0):
                self.pending_since = now
            self.pending = tail
            self.pending_start = tail_start
        return buf, last, base, cut

    def take_partial(self) -> Lines:
        """The held incomplete line, returned as a line (its flush timeout passed, or the file is finished)."""
        if not self.pending:
            return _EMPTY
        raw, off = self.pending, self.pending_start
        self.pending = b""
        self.pending_start = off + len(raw)
        try:
            return [raw.decode("utf-8")], [off], None
        except UnicodeDecodeError:
            return [raw.decode("utf-8", errors="surrogateescape")], [off], {0: ["invalid_utf8"]}

    def _split(self, complete: bytes, base: int) -> Lines:
        """Complete lines (the chunk up to, not including, its last newline)."""
        flags: dict[int, list[str]] | None = None
        raw_lines: list[bytes] | None = None
        try:
            text = complete.decode("utf-8")
        except UnicodeDecodeError:
            raw_lines = complete.split(b"\n")
            lines: list[str] = []
            flags = {}
            append = lines.append
            for i, raw in enumerate(raw_lines):
                try:
                    append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    # kept as surrogates until the record is complete: a CRI line cut inside a character by the
                    # runtime is whole again once its pieces are joined (`settle_utf8`)
                    append(raw.decode("utf-8", errors="surrogateescape"))
                    flags[i] = ["invalid_utf8"]
        else:
            lines = text.split("\n")
            if len(text) != len(complete):  # not pure ASCII: offsets need byte lengths
                raw_lines = complete.split(b"\n")
        lens = list(map(len, lines if raw_lines is None else raw_lines))
        offsets = list(accumulate(map(_PLUS_ONE, lens), initial=base))
        offsets.pop()
        if len(complete) > self.max_line and max(lens) > self.max_line:
            if raw_lines is None:
                raw_lines = complete.split(b"\n")
            if flags is None:
                flags = {}
            for i, n in enumerate(lens):
                if n > self.max_line:
                    text_i, valid = _decode_cut(raw_lines[i], self.max_line)
                    lines[i] = text_i
                    flags[i] = ["truncated"] if valid else ["truncated", "invalid_utf8"]
        return lines, offsets, flags


def settle_utf8(records: list[dict[str, Any]]) -> None:
    """Records flagged `invalid_utf8` carry the undecodable bytes as surrogates (see `_split`). Now that they are
    complete, decode their text again: valid after all (a character cut between two CRI pieces and joined again)
    loses the flag; otherwise the bad bytes become U+FFFD and the flag stays. Only flagged records are touched."""
    for rec in records:
        flags = rec.get("flags")
        if not flags or "invalid_utf8" not in flags:
            continue
        msg = rec.get("message")
        if not isinstance(msg, str):
            continue
        raw = msg.encode("utf-8", errors="surrogateescape")
        try:
            rec["message"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            rec["message"] = raw.decode("utf-8", errors="replace")
            continue
        rest = [f for f in flags if f != "invalid_utf8"]
        if rest:
            rec["flags"] = rest
        else:
            del rec["flags"]
