"""`rfc3339_ns`, how the outputs read a record's `time` back, goes through the one RFC 3339 parser
(`logagent.parsers.timestamps.time_ns`): the same nanoseconds for what both read, the same clamping to the signed
64-bit range, and the lenient forms it always accepted still accepted. Expected values come from `datetime`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logagent.parsers.timestamps import NS_MAX, NS_MIN, time_ns
from logagent.timefmt import format_rfc3339_ns, rfc3339_ns

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def ns_of(dt: datetime, frac_ns: int = 0) -> int:
    return (dt - EPOCH) // timedelta(seconds=1) * 1_000_000_000 + frac_ns


MAY_1 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01T12:00:00.123456789Z", ns_of(MAY_1, 123456789)),
    ("2024-05-01T12:00:00Z", ns_of(MAY_1)),
    ("2024-05-01T12:00:00.5+02:00", ns_of(MAY_1 - timedelta(hours=2), 500_000_000)),
    ("2024-05-01T12:00:00.5-07:30", ns_of(MAY_1 + timedelta(hours=7, minutes=30), 500_000_000)),
    # lenient forms, read as they always were
    ("2024-05-01 12:00:00.123Z", ns_of(MAY_1, 123_000_000)),
    ("2024-05-01T12:00:00.123z", ns_of(MAY_1, 123_000_000)),
    ("2024-05-01T12:00:00.1234567891234Z", ns_of(MAY_1, 123456789)),  # beyond 9 digits: cut
    ("2024-05-01T12:00:00+0200", ns_of(MAY_1 - timedelta(hours=2))),
])
def test_rfc3339_strings(text: str, expected: int) -> None:
    assert rfc3339_ns(text, default=-1) == expected


@pytest.mark.parametrize("value", ["not a time at all!!", "2024-13-01T12:00:00Z", "2024-05-01T12:00:00", None, True,
                                   "short"])
def test_what_is_not_a_time_gives_the_default(value: object) -> None:
    assert rfc3339_ns(value, default=42) == 42


def test_numbers_are_seconds_or_already_nanoseconds() -> None:
    assert rfc3339_ns(1714564800) == ns_of(MAY_1)
    assert rfc3339_ns(1714564800.5) == ns_of(MAY_1, 500_000_000)
    assert rfc3339_ns(ns_of(MAY_1, 7)) == ns_of(MAY_1, 7)


def test_times_beyond_the_64_bit_range_are_clamped_like_the_parsers_do() -> None:
    assert rfc3339_ns("9999-12-31T23:59:59.999999999Z") == NS_MAX == time_ns("9999-12-31T23:59:59.999999999Z")
    assert rfc3339_ns("1012-01-01T00:00:00Z") == NS_MIN
    assert rfc3339_ns("9999-12-31 23:59:59.5Z") == NS_MAX  # the lenient path clamps too


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_the_formatter_and_the_parser_round_trip(ns: int) -> None:
    assert rfc3339_ns(format_rfc3339_ns(ns)) == ns
