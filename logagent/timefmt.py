"""RFC 3339 times: the one formatter (inputs stamp records with it) and the one parser (outputs read a record's
`time` back to nanoseconds). Both are on the hot path: the parser caches the date-and-second prefix (consecutive
log lines share it, one cache for the whole process, bounded), the formatter works from integers.
"""

from __future__ import annotations

import calendar
import time
from typing import Any


def format_rfc3339_ns(epoch_ns: int) -> str:
    """`2024-05-01T12:00:00.123456789Z` from nanoseconds since the epoch (UTC)."""
    secs, frac = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


_EPOCH_CACHE: dict[str, int] = {}


def rfc3339_ns(value: Any, default: int | None = None) -> int:
    """Nanoseconds since the epoch from an RFC 3339 string (`2024-05-01T12:00:00.123456789Z`, offsets allowed)
    or a number of seconds. The date-and-second prefix is cached: consecutive log lines share it."""
    if isinstance(value, str) and len(value) >= 20:
        head = value[:19]
        secs = _EPOCH_CACHE.get(head)
        if secs is None:
            try:
                secs = calendar.timegm(time.strptime(head.replace(" ", "T"), "%Y-%m-%dT%H:%M:%S"))
            except ValueError:
                return default if default is not None else time.time_ns()
            if len(_EPOCH_CACHE) > 4096:
                _EPOCH_CACHE.clear()
            _EPOCH_CACHE[head] = secs
        rest = value[19:]
        frac = 0
        if rest[:1] == ".":
            i = 1
            while i < len(rest) and rest[i].isdigit():
                i += 1
            digits = rest[1:i][:9]
            frac = int(digits.ljust(9, "0")) if digits else 0
            rest = rest[i:]
        if rest and rest not in ("Z", "z"):
            try:
                sign = 1 if rest[0] == "+" else -1
                hh, mm = rest[1:3], rest[-2:]
                secs -= sign * (int(hh) * 3600 + int(mm) * 60)
            except (ValueError, IndexError):
                pass
        return secs * 1_000_000_000 + frac
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 1e17:  # already ns
            return int(value)
        return int(value * 1_000_000_000)
    return default if default is not None else time.time_ns()
