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
from operator import itemgetter
from typing import cast

from logagent.parsers.partials import PartialLines, unparsed
from logagent.parsers.timestamps import NS_MAX, NS_MIN, TIME_OUT_OF_RANGE, Z_SECONDS, clamped, time_ns
from logagent.record import Record

STREAMS = ("stdout", "stderr")
_FULL = frozenset({("stdout", "F"), ("stderr", "F")})
_STREAM_TAG = itemgetter(1, 2)
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_THIRD = itemgetter(2)
_F = {"F"}
_STREAM_SET = set(STREAMS)
_STREAM_NAME = {s: s for s in STREAMS}
_ZS = Z_SECONDS


def looks_like_cri(line: str) -> bool:
    p = line.split(" ", 3)
    return len(p) >= 3 and p[1] in STREAMS and p[2][:1] in ("P", "F") and time_ns(p[0]) is not None


_Z_MAX = len("2024-05-14T09:12:04.123456789Z")


def _times(stamps: list[str]) -> list[int | None]:
    """UTC ns for each timestamp; the `Z` form (what nodes in UTC write) inline, the rest through time_ns."""
    # the inline form trusts the fraction to have at most 9 digits; one C-level length scan per batch keeps a
    # longer one (not RFC3339Nano, so not a CRI line) away from it, where time_ns rejects it
    if max(map(len, stamps)) > _Z_MAX:
        return list(map(time_ns, stamps))
    try:
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
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.partials = PartialLines(max_record_bytes, clock)
        self.partial_flush = partial_flush

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        parts = [line.split(" ", 3) for line in lines]
        n = len(parts)
        if not n:
            return []
        open_ = self.partials.open
        well_formed = min(map(len, parts)) == 4
        # the common batch: only F lines of known streams, nothing pending -> one comprehension, no per-line test
        if (well_formed and not open_ and not flags and set(map(_THIRD, parts)) == _F
                and set(map(_SECOND, parts)) <= _STREAM_SET):
            records = full_records(parts, offsets)
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
