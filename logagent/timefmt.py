"""RFC 3339 times: the one formatter (inputs stamp records with it) and what outputs read a record's `time` back
to nanoseconds with (`rfc3339_ns`: numbers too, and a default). Parsing is `logagent.parsers.timestamps.time_ns`,
the one RFC 3339 parser with the one cache (per distinct second, bounded); the formatter works from integers.
"""

from __future__ import annotations

import time
from typing import Any

from logagent.parsers.timestamps import NS_MAX, NS_MIN, time_ns


def format_rfc3339_ns(epoch_ns: int) -> str:
    """`2024-05-01T12:00:00.123456789Z` from nanoseconds since the epoch (UTC)."""
    secs, frac = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def rfc3339_ns(value: Any, default: int | None = None) -> int:
    """Nanoseconds since the epoch from an RFC 3339 string (`2024-05-01T12:00:00.123456789Z`, offsets allowed)
    or a number of seconds; `default` (or now) for anything else. RFC 3339 strings go through the one parser,
    `logagent.parsers.timestamps.time_ns` (its per-second cache, its clamping to the 64-bit range); only what it
    refuses is tried leniently (a space for the `T`, a lowercase `z`, more than 9 fraction digits, `+0200`)."""
    if isinstance(value, str) and len(value) >= 20:
        ns = time_ns(value)
        if ns is not None:
            return ns
        return _lenient_ns(value, default)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 1e17:  # already ns
            return int(value)
        return int(value * 1_000_000_000)
    return default if default is not None else time.time_ns()


def _lenient_ns(value: str, default: int | None) -> int:
    """What `time_ns` refuses, read as before it was the one parser; its date and second go through `time_ns` too
    (the same cache). Anything after the second that is neither a fraction nor a zone is ignored, as it was."""
    base = time_ns(value[:19].replace(" ", "T") + "Z")
    if base is None:
        return default if default is not None else time.time_ns()
    rest = value[19:]
    frac = 0
    if rest[:1] == ".":
        i = 1
        while i < len(rest) and rest[i].isdigit():
            i += 1
        digits = rest[1:i][:9]
        frac = int(digits.ljust(9, "0")) if digits else 0
        rest = rest[i:]
    offset = 0
    if rest and rest not in ("Z", "z"):
        try:
            sign = 1 if rest[0] == "+" else -1
            hh, mm = rest[1:3], rest[-2:]
            offset = sign * (int(hh) * 3600 + int(mm) * 60) * 1_000_000_000
        except (ValueError, IndexError):
            pass
    return min(max(base + frac - offset, NS_MIN), NS_MAX)
