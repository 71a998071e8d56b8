"""RFC 3339 timestamps as container runtimes write them (Go's `RFC3339Nano`) -> UTC nanoseconds since the epoch.

The runtimes trim trailing zeros of the fraction and drop it when zero (`...:04.5Z`, `...:03Z`), and write `Z` or a
numeric offset (`+02:00`). Conversion is the hot part of CRI parsing, so the seconds part is converted once per
distinct second and cached (`Z_SECONDS` for the `Z` fast path used inside comprehensions, `_SECONDS` for the rest).

This module never re-formats a timestamp: records keep the runtime's string in `time` unchanged.

Range: `time_ns` is a signed 64-bit count of nanoseconds everywhere downstream (orjson, protobuf, Loki, SLS), which
covers 1677-09-21 to 2262-04-11. A timestamp outside it (a runtime with a clock at year 9999, or 1012) is clamped to
`NS_MIN`/`NS_MAX` here, at parse time, and the parsers flag the record `time_out_of_range` (`clamped(ns)` tells);
such a record is shipped like any other instead of poisoning every encoder downstream.
"""

from __future__ import annotations

import re
from datetime import date

_NS = 1_000_000_000
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_HEAD = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\Z")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(?:Z|([+-])(\d\d):(\d\d))\Z")
_CACHE_LIMIT = 8192  # distinct seconds kept; a busy node sees a few per file per second
NS_MIN = -(1 << 63)
NS_MAX = (1 << 63) - 1
_SEC_MIN = NS_MIN // _NS + 1  # whole seconds whose every nanosecond is in range
_SEC_MAX = NS_MAX // _NS - 1
TIME_OUT_OF_RANGE = "time_out_of_range"  # the flag the parsers set on a record whose time_ns was clamped


def _epoch_seconds(head: str) -> int:
    """'2024-05-14T09:12:03' (UTC) -> seconds since the epoch. Raises ValueError on anything else."""
    m = _HEAD.match(head)
    if m is None:
        raise ValueError(head)
    y, mo, d, h, mi, s = map(int, m.groups())
    if h > 23 or mi > 59 or s > 59:
        raise ValueError(head)
    return (date(y, mo, d).toordinal() - _EPOCH_DAY) * 86400 + h * 3600 + mi * 60 + s


class _ZSeconds(dict[str, int]):
    """Key: the first 20 characters of a `Z` timestamp, 'YYYY-MM-DDTHH:MM:SS' plus '.' or 'Z'; value: epoch ns of
    that second. A miss converts once; an invalid key raises KeyError, which sends the caller to its slow path."""

    def __missing__(self, key: str) -> int:
        if key[19:] not in (".", "Z"):
            raise KeyError(key)
        try:
            secs = _epoch_seconds(key[:19])
        except ValueError:
            raise KeyError(key) from None
        if not _SEC_MIN <= secs <= _SEC_MAX:
            raise KeyError(key)  # out of the 64-bit range: the slow path clamps it
        value = secs * _NS
        if len(self) >= _CACHE_LIMIT:
            self.clear()
        self[key] = value
        return value


Z_SECONDS = _ZSeconds()
_SECONDS: dict[str, int | None] = {}


def clamped(ns: int) -> bool:
    """Whether `time_ns` clamped this value (a real timestamp at exactly a 64-bit bound does not occur)."""
    return ns == NS_MAX or ns == NS_MIN


def time_ns(ts: str) -> int | None:
    """UTC nanoseconds of an RFC 3339 timestamp with up to 9 fraction digits and a zone; None if it is not one.
    A valid timestamp outside the signed 64-bit nanosecond range gives NS_MIN or NS_MAX (see `clamped`)."""
    m = _RFC3339.match(ts)
    if m is None:
        return None
    head, frac, sign, hh, mm = m.groups()
    base = _SECONDS.get(head)
    if base is None:
        try:
            base = _epoch_seconds(head) * _NS
        except ValueError:
            return None
        if len(_SECONDS) >= _CACHE_LIMIT:
            _SECONDS.clear()
        _SECONDS[head] = base
    ns = base + int(frac.ljust(9, "0")) if frac else base
    if sign is not None:
        offset = (int(hh) * 3600 + int(mm) * 60) * _NS
        ns = ns - offset if sign == "+" else ns + offset
    if ns > NS_MAX:
        return NS_MAX
    if ns < NS_MIN:
        return NS_MIN
    return ns
