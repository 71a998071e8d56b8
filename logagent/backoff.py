"""Retry waits: exponential backoff with full jitter, the one implementation every reconnect and resend uses.

Full jitter (the n-th wait is uniform in [0, min(maximum, initial * 2^n)]) spreads the retries of many agents
that failed together (a backend restart seen by a whole DaemonSet) over the whole window, instead of bunching
them at its top as "equal jitter" ([cap/2, cap]) does.
"""

from __future__ import annotations

import random


def full_jitter(attempt: int, initial: float, maximum: float) -> float:
    """The wait before retry number `attempt` (0 for the first retry)."""
    cap = min(maximum, initial * (2 ** min(attempt, 30)))
    return random.uniform(0, cap)


class Backoff:
    """Counts the attempts of one retry loop: `next()` for each wait, `reset()` once a try succeeded."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next(self) -> float:
        delay = full_jitter(self.attempt, self.initial, self.maximum)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
