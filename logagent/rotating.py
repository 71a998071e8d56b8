"""Secrets read from files that rotate (projected service-account tokens, STS tokens, API keys mounted from a
Kubernetes Secret): one reader for the outputs' `{file: PATH}` credentials and the Kubernetes clients' token.

A rotated file is read again when its inode, mtime or size changes, looked at no more than once a second (or at
once, `force`, after the backend refused the value). Content that is not a usable token (empty, several lines,
control characters) is ignored with a warning that never shows the value; the last good value stays.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("logagent.rotating")


def usable_token(token: Any) -> bool:
    """A single line of printable characters, not empty: what an HTTP header can carry."""
    return isinstance(token, str) and bool(token) and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in token)


class RotatingSecret:
    """One secret file and its last good value (see the module docstring)."""

    check_interval = 1.0  # seconds between two looks at the file

    def __init__(self, path: str, value: str) -> None:
        self.path = path
        self.value = value
        self._checked = time.monotonic()
        self._stamp = self._stat()

    @classmethod
    def open(cls, path: str) -> RotatingSecret:
        """Start from the file's content now; a file missing or unreadable now gives "" until it is readable."""
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cannot read the token file", extra={"path": path, "error": str(e)})
            secret = cls(path, "")
            secret._stamp = None  # read it as soon as it is there
            return secret
        return cls(path, value)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        # the inode too: kubelet rotates projected tokens by swapping a symlink to a new file
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self, force: bool = False) -> str:
        """The value now; `force` looks at the file at once (after the backend refused the value)."""
        now = time.monotonic()
        if not force and now - self._checked < self.check_interval:
            return self.value
        self._checked = now
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return self.value
        self._stamp = stamp
        try:
            text = open(self.path, encoding="utf-8").read().strip()
        except (OSError, UnicodeDecodeError) as e:
            log.warning("cannot read the rotated token file; keeping the previous token",
                        extra={"path": self.path, "error": str(e)})
            return self.value
        if not usable_token(text):
            log.warning("the rotated token file does not hold a single-line token; keeping the previous token",
                        extra={"path": self.path})
            return self.value
        if text != self.value:
            log.info("token file changed; using the new token", extra={"path": self.path})
            self.value = text
        return self.value
