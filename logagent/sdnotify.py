"""sd_notify(3): tell systemd (Type=notify) that the agent is ready, alive, reloading or stopping.

Uses systemd-python's `systemd.daemon.notify` when it is importable and falls back to the protocol itself: one
AF_UNIX datagram per message to `$NOTIFY_SOCKET` (a path, or an abstract socket written with a leading `@`).
With no `NOTIFY_SOCKET` (not started by systemd, or in a container) every call is a cheap no-op, and systemd-python
is not even imported.

The watchdog is only fed while the agent is healthy (`health()` true): a wedged event loop or a dead router must
let systemd's WatchdogSec expire and restart us, so this module must never send WATCHDOG=1 unconditionally or
from a thread that would keep ticking while the loop is stuck.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("logagent.sdnotify")


def _socket_address(value: str) -> str | bytes:
    if value.startswith("@"):
        return b"\0" + value[1:].encode()  # abstract namespace: no file, leading NUL
    return value


def send_datagram(message: str, notify_socket: str | None = None) -> bool:
    """The sd_notify protocol without libsystemd: newline-separated KEY=VALUE pairs in one datagram."""
    target = notify_socket if notify_socket is not None else os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode(), _socket_address(target))
    return True


def _systemd_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon
    except ImportError:
        return None
    return daemon.notify  # type: ignore[no-any-return]


class Notifier:
    """Sends the lifecycle messages; `use_systemd=False` forces the built-in datagram path."""

    def __init__(self, use_systemd: bool = True) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        # systemd-python only when there is someone to notify: it maps libsystemd, libgcrypt, libgpg-error and
        # libzstd (~0.7 MB of the idle agent's RSS, issue 11) into an agent that would never call it.
        self._systemd = _systemd_notify() if use_systemd and self.enabled else None
        self._warned = False

    @property
    def backend(self) -> str:
        return "systemd-python" if self._systemd is not None else "datagram"

    def notify(self, message: str) -> bool:
        if not self.enabled:
            return False
        try:
            if self._systemd is not None:
                return bool(self._systemd(message))
            return send_datagram(message)
        except OSError as e:
            # systemd gone or the socket vanished: worth one warning, never worth stopping the agent for.
            if not self._warned:
                log.warning("sd_notify failed", extra={"error": str(e)})
                self._warned = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (>= 253, Type=notify-reload) tell this reload from an earlier one.
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (from WATCHDOG_USEC), or None when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog belongs to a parent (e.g. a wrapper script), not to us
    return int(usec) / 1e6 / 2


async def feed_watchdog(notifier: Notifier, interval: float, health: Callable[[], tuple[bool, str]]) -> None:
    """WATCHDOG=1 every `interval` seconds while `health()` says ok; silence otherwise, so systemd restarts us."""
    was_ok = True
    while True:
        ok, reason = health()
        if ok:
            notifier.watchdog()
        elif was_ok:
            log.error("unhealthy: not feeding the systemd watchdog", extra={"reason": reason})
        was_ok = ok
        await asyncio.sleep(interval)
