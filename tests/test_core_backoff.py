"""The one backoff: full jitter over [0, min(maximum, initial * 2^attempt)], the window doubling per attempt."""

from __future__ import annotations

from logagent.backoff import Backoff, full_jitter


def test_waits_stay_in_the_doubling_window_and_use_all_of_it() -> None:
    for attempt, cap in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (200, 30.0)]:
        waits = [full_jitter(attempt, 0.5, 30.0) for _ in range(2000)]
        assert all(0.0 <= w <= cap for w in waits)
        # full jitter: the bottom quarter of the window is used too (equal jitter never goes below cap/2)
        assert min(waits) < cap / 4 and max(waits) > cap * 3 / 4


def test_backoff_counts_attempts_and_resets() -> None:
    b = Backoff(1.0, 8.0)
    for attempt in range(3):
        assert b.attempt == attempt and 0.0 <= b.next() <= 2 ** attempt
    assert all(b.next() <= 8.0 for _ in range(10)) and b.attempt == 13
    b.reset()
    assert b.attempt == 0 and b.next() <= 1.0
