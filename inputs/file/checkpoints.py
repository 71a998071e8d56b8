"""What the tailer stores per file, and how a stored position finds its file again after a restart.

A position is `{"path", "offset", "dev", "ino", "fp"}` (read by `logagent status`) plus `real` (the file behind a
symlink when it was opened), `skip` (resume inside a truncated over-long line: skip to its newline), `sid` (the
generation's source id) and `parent` (the previous generation's, see `identity`). The
offset is always a safe resume point: every byte before it has been emitted and acknowledged.

After a restart, a checkpointed file may have been rotated away while the agent was down (the kubelet renames
`0.log` to `0.log.<timestamp>` in the same directory; logrotate renames `x.log` to `x.log.1`). `locate` looks for
it by (dev, inode) and then by fingerprint among the files in the directories it lived in, so its unread bytes are
finished instead of lost. This module never decides where reading starts for files without a stored position.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Any

from logagent.inputs.file.fingerprint import FileFingerprint, matches

log = logging.getLogger("logagent.input.file.checkpoints")

# Tracker key that marks "this input has started before": read_from: tail applies only to the very first start.
STARTED_KEY = "_started"


def file_key(dev: int, ino: int) -> str:
    return f"{dev}:{ino}"


@dataclass(frozen=True)
class StoredPosition:
    key: str
    path: str
    real: str
    offset: int
    dev: int
    ino: int
    fp: FileFingerprint | None
    skip: bool
    sid: str | None = None  # the generation's source id (`identity`), once known
    parent: str | None = None  # the source id of the generation before it

    @classmethod
    def parse(cls, key: str, value: Any) -> StoredPosition | None:
        if not isinstance(value, dict):
            return None
        try:
            fp = FileFingerprint.decode(value.get("fp", "")) if value.get("fp") else None
            return cls(key, str(value["path"]), str(value.get("real") or value["path"]), int(value["offset"]),
                       int(value["dev"]), int(value["ino"]), fp, bool(value.get("skip", False)),
                       _text(value.get("sid")), _text(value.get("parent")))
        except (KeyError, TypeError, ValueError):
            return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def position(path: str, real: str, offset: int, dev: int, ino: int, fp: FileFingerprint | None,
             skip: bool = False) -> dict[str, Any]:
    pos: dict[str, Any] = {"path": path, "offset": offset, "dev": dev, "ino": ino,
                           "fp": fp.encode() if fp is not None else "", "real": real}
    if skip:
        pos["skip"] = True
    return pos


def verify(fd: int, stored: StoredPosition) -> bool:
    """The open file is the stored one: same first bytes (inode reuse gives other bytes)."""
    return stored.fp is None or matches(fd, stored.fp)


def locate(stored: StoredPosition) -> str | None:
    """Where the stored file lives now, if it still exists: its path, or a file in the same directory (or the
    symlink target's directory) with the same (dev, inode) or, failing that, the same fingerprint."""
    dirs = []
    for p in (stored.path, stored.real):
        d = os.path.dirname(p)
        if d not in dirs:
            dirs.append(d)
    longer: list[str] = []
    shorter: list[str] = []  # a copy taken before our last read of the original: fully read, but known
    truncated = False  # the stored inode is there with other bytes: copytruncate (else a shorter file is another)
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if (st.st_dev, st.st_ino) == (stored.dev, stored.ino):
                if _fingerprint_ok(entry.path, stored):
                    return entry.path
                truncated = True
            elif stored.fp is not None and stored.fp.length > 0 and st.st_size >= stored.fp.length:
                (longer if st.st_size >= stored.offset else shorter).append(entry.path)
    # A copy (copytruncate's x.log.1) has other inode numbers but the same bytes.
    for path in longer + (shorter if truncated else []):
        if _fingerprint_ok(path, stored):
            return path
    return None


def _fingerprint_ok(path: str, stored: StoredPosition) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return verify(fd, stored)
    finally:
        os.close(fd)
