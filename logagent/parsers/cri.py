"""CRI container log lines (containerd, CRI-O): `<RFC3339Nano> <stdout|stderr> <P|F>[:more tags] <message>`.

`CriJoiner` turns physical lines into logical lines: `P` pieces are joined per stream until the stream's `F`
(stdout and stderr interleave in one file). Each record keeps the first piece's timestamp string in `time`, its
UTC nanoseconds in `time_ns`, `stream`, `fragments` (physical lines used) and `lines` (1).

Speed: a batch is split with one `str.split(" ", 3)` per line (C level), and runs of `F` lines with no partial
pending become records in one comprehension. Lines needing thought (a `P`, a reader flag, a malformed line)
go through the per-line path. A line that is not CRI is passed through flagged `unparsed`; nothing is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import repeat
from operator import add as _add
from operator import itemgetter
from typing import TYPE_CHECKING, TypeVar, cast

from logagent import speedups
from logagent.parsers.partials import PartialLines, unparsed
from logagent.parsers.timestamps import NS_MAX, NS_MIN, TIME_OUT_OF_RANGE, Z_SECONDS, clamped, time_ns
from logagent.record import Record, Rows

if TYPE_CHECKING:
    from logagent._speedups import CriBlock

_Rows = TypeVar("_Rows", list[Record], "CriBlock")  # what `_join_pieces` is given, it answers

STREAMS = ("stdout", "stderr")
_FULL = frozenset({("stdout", "F"), ("stderr", "F")})
_STREAM_TAG = itemgetter(1, 2)
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_THIRD = itemgetter(2)
_F = {"F"}
_PF = {"P", "F"}
_STREAM_SET = set(STREAMS)
_STREAM_NAME = {s: s for s in STREAMS}
_ZS = Z_SECONDS
_HEAD = itemgetter(slice(0, 20))
_FRACTION = itemgetter(slice(20, -1))
_REPEAT_Z = repeat("Z")
_REPEAT_9 = repeat(9)
_REPEAT_0 = repeat("0")


def looks_like_cri(line: str) -> bool:
    p = line.split(" ", 3)
    return len(p) >= 3 and p[1] in STREAMS and p[2][:1] in ("P", "F") and time_ns(p[0]) is not None


_Z_MAX = len("2024-05-14T09:12:04.123456789Z")


def _times(stamps: list[str]) -> list[int | None]:
    """UTC ns for each timestamp; the `Z` form (what nodes in UTC write) by C-level maps over the batch, the rest
    through time_ns."""
    # the inline form trusts the fraction to have at most 9 digits; one C-level length scan per batch keeps a
    # longer one (not RFC3339Nano, so not a CRI line) away from it, where time_ns rejects it
    if max(map(len, stamps)) > _Z_MAX:
        return list(map(time_ns, stamps))
    try:
        if all(map(str.endswith, stamps, _REPEAT_Z)):
            # seconds from the per-second cache, plus the fraction padded to 9 digits
            fractions = map(int, map(str.ljust, map(_FRACTION, stamps), _REPEAT_9, _REPEAT_0))
            return list(map(_add, map(_ZS.__getitem__, map(_HEAD, stamps)), fractions))
        return [_ZS[t[:20]] + int(t[20:-1].ljust(9, "0")) if t[-1] == "Z" else time_ns(t) for t in stamps]
    except (KeyError, ValueError, IndexError):
        return list(map(time_ns, stamps))


def full_records(parts: list[list[str]], offsets: list[int]) -> list[Record] | None:
    """Records for a run of well-formed `F` lines (already split); None if a timestamp is not valid."""
    stamps = list(map(_FIRST, parts))
    nanos = _times(stamps)
    if None in nanos:
        return None
    known = cast(list[int], nanos)
    if max(known) >= NS_MAX or min(known) <= NS_MIN:
        return None  # a clamped time: the per-line path flags it
    # records share the two stream name constants instead of keeping each line's copy alive
    return [
        {"message": p[3], "offset": o, "time": t, "time_ns": n, "stream": _STREAM_NAME[p[1]], "fragments": 1,
         "lines": 1}
        for p, o, t, n in zip(parts, offsets, stamps, nanos)
    ]


class CriJoiner:
    """LineJoiner for CRI files. State: the partial line pending per stream."""

    def __init__(self, max_record_bytes: int = 1 << 20, partial_flush: float | None = 5.0,
                 clock: Callable[[], float] = time.monotonic, native: bool = True) -> None:
        self.partials = PartialLines(max_record_bytes, clock)
        self.partial_flush = partial_flush
        self._native = speedups.cri_records if native else None
        # the chunk path: a CriBlock (records made only when asked for)
        self._block = speedups.cri_block if native else None

    def feed_chunk(self, buf: bytes, stop: int, base: int, max_line: int) -> Rows | None:
        """The complete lines of buf[:stop] (starting at file offset `base`) straight from the bytes (the
        accelerator's `cri_block`); None: the lines path (`feed`) takes them (any line it is unsure of)."""
        if self._block is None:
            return None
        block = self._block(buf, stop, base, max_line, STREAMS)
        return None if block is None else self._join_pieces(*block)

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        if self._native is not None and not flags and lines:
            # the accelerator builds the records of a common batch (every line `<Z time> <stream> <P|F> ...`), the
            # same as the comprehensions below; None: the batch is left to them
            got = self._native(lines, offsets, STREAMS)
            if got is not None:
                return self._join_pieces(*got)
        parts = [line.split(" ", 3) for line in lines]
        n = len(parts)
        if not n:
            return []
        open_ = self.partials.open
        well_formed = min(map(len, parts)) == 4
        if well_formed and not flags and set(map(_SECOND, parts)) <= _STREAM_SET:
            tags = list(map(_THIRD, parts))
            kinds = set(tags)
            # the common batch: only F lines, nothing pending -> one comprehension, no per-line test
            if kinds == _F and not open_:
                records = full_records(parts, offsets)
                if records is not None:
                    return records
            # F lines with a few P pieces among them: all lines as F records in one comprehension, then the
            # pieces (and the F lines that end them) put right line by line
            elif kinds <= _PF:
                records = self._mixed(parts, offsets, tags)
                if records is not None:
                    return records
        if well_formed:
            good = list(map(_FULL.__contains__, map(_STREAM_TAG, parts)))
        else:
            good = [len(p) == 4 and (p[1], p[2]) in _FULL for p in parts]
        if flags:
            for i in flags:
                good[i] = False
        out: list[Record] = []
        i = 0
        while i < n:
            if not open_ and good[i]:
                try:
                    j = good.index(False, i)
                except ValueError:
                    j = n
                records = full_records(parts[i:j], offsets[i:j])
                if records is not None:
                    out.extend(records)
                    i = j
                    continue
                for k in range(i, j):
                    self._line(out, lines[k], parts[k], offsets[k], None)
                i = j
                continue
            self._line(out, lines[i], parts[i], offsets[i], flags.get(i) if flags else None)
            i += 1
        return out

    def _mixed(self, parts: list[list[str]], offsets: list[int], tags: list[str]) -> list[Record] | None:
        """A batch of well-formed `P`/`F` lines of known streams, no reader flags. None (nothing consumed) when a
        timestamp is not valid: the general path then takes the batch line by line."""
        records = full_records(parts, offsets)  # each line taken as `F`; the pieces are put right below
        if records is None:
            return None
        pieces = []
        i = 0
        try:
            while True:
                i = tags.index("P", i)  # C-level: only the pieces are visited
                pieces.append(i)
                i += 1
        except ValueError:
            pass
        return self._join_pieces(records, pieces)

    def _join_pieces(self, records: _Rows, pieces: list[int]) -> _Rows:
        """`records` holds one record per line, each taken as an `F` line; `pieces` the indices of the `P` lines.
        The pieces (and the `F` lines that end them) are put right line by line; the other records stay. In a
        block, only those lines become record dicts (read, then set in place; `settle` drops the joined)."""
        if not pieces and not self.partials.open:
            return records
        partials = self.partials
        open_ = partials.open
        piece = set(pieces)
        n = len(records)
        out: list[Record | None] = records  # type: ignore[assignment]  # (ours: put right in place)
        more: dict[int, list[Record]] = {}  # a line that completed more than one record (a cut joined line)
        i = 0
        k = 0  # the next entry of `pieces` to jump to
        while i < n:
            if not open_:
                while k < len(pieces) and pieces[k] < i:
                    k += 1
                if k == len(pieces):
                    break
                i = pieces[k]  # lines up to the next piece are records as they are
            rec = records[i]
            assert rec is not None  # (lines not yet put right are records)
            stream = rec["stream"]
            final = i not in piece
            if final and stream not in open_:
                i += 1  # a whole line on the other stream while a piece is pending: already its record
                continue
            done: list[Record] = []
            partials.add(done, stream, rec["message"], rec["offset"], rec["time"], rec["time_ns"], final, None)
            if len(done) == 1:
                out[i] = done[0]
            else:
                out[i] = None
                if done:
                    more[i] = done
            i += 1
        if not isinstance(records, list):
            return records.settle(more or None)
        if not more:
            return list(filter(None, out))  # (a record is a non-empty dict)
        joined: list[Record] = []
        for j, r in enumerate(out):
            if r is not None:
                joined.append(r)
            elif j in more:
                joined.extend(more[j])
        return joined

    def _line(self, out: list[Record], line: str, p: list[str], offset: int, flags: list[str] | None) -> None:
        if len(p) == 3:
            p = [*p, ""]  # "<ts> stdout F" without the space before an empty message: still a CRI line
        tns = time_ns(p[0]) if len(p) == 4 and p[1] in STREAMS and p[2][:1] in ("P", "F") else None
        if tns is None:
            out.append(unparsed(line, offset, flags))
            return
        if clamped(tns):
            flags = [*(flags or ()), TIME_OUT_OF_RANGE]
        # the tag field may one day carry more ":"-separated tags: its first character decides
        self.partials.add(out, p[1], p[3], offset, p[0], tns, p[2][0] == "F", flags)

    def flush(self, now: float, force: bool = False) -> list[Record]:
        return self.partials.flush(now, self.partial_flush, force)

    def held_from(self) -> int | None:
        return self.partials.held_from()
