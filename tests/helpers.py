"""Shared test helpers: polling for a condition with a deadline (never a bare sleep standing in for it)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `condition` until it returns a truthy value; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


async def async_wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
                         what: str = "") -> Any:
    """The asyncio form of `wait_for`, for tests that drive a Pipeline in-process."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        await asyncio.sleep(interval)


def kmsg_writable() -> bool:
    """Root, and /dev/kmsg can be opened for reading and writing: the real-device tests run, else they skip."""
    if os.geteuid() != 0 or not os.path.exists("/dev/kmsg"):
        return False
    try:
        os.close(os.open("/dev/kmsg", os.O_RDWR))
    except OSError:
        return False
    return True
