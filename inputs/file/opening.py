"""Opening a file into a `Tail`: where reading starts, which parser reads it, under which name and source id.

Reading starts at the stored offset when the open file is the stored one (same inode and first bytes); at its
start when it is new (or a new generation of a stored inode: truncated while the agent was down); at its end only
for `read_from: tail` on the very first start. A descriptor is taken as soon as a file is discovered, whatever the
outputs are doing: a file rotated or deleted before it is read is still read through it.

This module decides nothing about rotation (see `rotation`) and never reads past the head of a file.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

from logagent import metrics
from logagent.checkpoint import PositionTracker
from logagent.inputs.file.checkpoints import StoredPosition, file_key, verify
from logagent.inputs.file.confine import Confinement, Refused
from logagent.inputs.file.fingerprint import fingerprint_of, read_head
from logagent.inputs.file.reader import LineSplitter
from logagent.inputs.file.settings import FileSettings
from logagent.inputs.file.tail import Tail
from logagent.parsers.base import LineJoiner
from logagent.parsers.factory import make_joiner
from logagent.services import Services

log = logging.getLogger("logagent.input.file")


class Opener:
    def __init__(self, name: str, settings: FileSettings, tracker: PositionTracker, services: Services) -> None:
        self.name = name
        self.settings = settings
        self.tracker = tracker
        self.services = services
        self.first_start = False  # set by the input: `read_from: tail` applies
        self.parents: dict[str, str] = {}  # key -> source id of a stored generation this inode no longer holds
        self._reported: dict[str, str] = {}  # path -> problem already logged (EACCES, directory...)
        self.confine = Confinement(name, settings.paths, settings.symlink_targets)  # never out of the roots

    def open(self, path: str, name: str | None = None, stored: StoredPosition | None = None,
             orphaned: bool = False, known: Callable[[str], Tail | None] = lambda key: None) -> Tail | None:
        """Start following the file at `path`; `name` (default `path`) is the glob name that identifies the source.
        `known(key)` returns a Tail already open for that key (then nothing new is opened)."""
        name = name or path
        try:
            fd = self.confine.open(path)  # beneath the input's roots only (confine.py)
        except Refused:
            return None  # logged once and counted by confine
        except OSError as e:
            if e.errno != errno.ENOENT:
                metrics.ERRORS.labels(component=self.name, kind="open_failed").inc()
                self.report_once(path, f"open:{e.errno}", f"cannot open file: {e.strerror}")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                self.report_once(path, "not_regular", "not a regular file; skipping it")
                return None
            key = file_key(st.st_dev, st.st_ino)
            existing = known(key)
            if existing is not None:
                os.close(fd)
                return existing
            overrides = self.overrides(name)
            if overrides and overrides.get("exclude"):
                os.close(fd)
                return None
            tail = self._tail(fd, st, key, path, name, stored, overrides)
        except OSError as e:
            os.close(fd)
            metrics.ERRORS.labels(component=self.name, kind="open_failed").inc()
            self.report_once(path, f"open:{e.errno}", f"cannot read file: {e.strerror}")
            return None
        tail.orphaned = orphaned
        self._reported.pop(path, None)
        if self.tracker.outstanding(key) == 0:
            self.tracker.set(key, tail.position())
        log.debug("following file", extra={"path": path, "as": name, "offset": tail.read_offset})
        return tail

    def _tail(self, fd: int, st: os.stat_result, key: str, path: str, name: str, stored: StoredPosition | None,
              overrides: dict[str, Any] | None) -> Tail:
        offset, skip = 0, False
        source_id: str | None = None
        parent: str | None = None
        value = self.tracker.committed.get(key)
        committed = StoredPosition.parse(key, value)
        if stored is not None and verify(fd, stored):
            offset, skip = stored.offset, stored.skip
            source_id, parent = stored.sid, stored.parent
            if stored.key != key:
                # found as a copy (other inode, same bytes): its position moves to the copy's identity
                self.tracker.forget(stored.key)
                if offset > st.st_size:
                    # a copy taken before our last read of the original: nothing in it is unread (what we read
                    # past its end was written after logrotate's copy, and is in no file any more)
                    offset, skip = st.st_size, False
        elif committed is not None and verify(fd, committed):
            offset, skip = committed.offset, committed.skip
            source_id, parent = committed.sid, committed.parent
        else:
            if committed is not None and committed.sid:
                # the inode holds a new generation (truncated, rewritten): named after the stored one
                parent = committed.sid
            elif key in self.parents:
                parent = self.parents[key]
            if self.first_start and self.settings.read_from == "tail" and stored is None:
                offset = st.st_size
        if offset > st.st_size:
            metrics.ROTATIONS.labels(input=self.name, kind="truncate").inc()
            log.warning("file is shorter than its checkpoint: truncated while the agent was down; "
                        "reading it from the start", extra={"path": path, "offset": offset, "size": st.st_size})
            offset, skip = 0, False
            parent, source_id = source_id, None
        self.parents.pop(key, None)
        head = read_head(fd, self.settings.fingerprint_bytes)
        now = time.monotonic()
        tail = Tail(
            key=key, path=name, real=os.path.realpath(path), fd=fd, dev=st.st_dev, ino=st.st_ino,
            fp=fingerprint_of(head), source_id=source_id,
            splitter=LineSplitter(self.settings.max_line_bytes, offset, skip),
            joiner=self.joiner(name, overrides), read_offset=offset,
            meta={"input": self.name, "path": name, "pos_key": "offset"},
            fingerprint_bytes=self.settings.fingerprint_bytes, last_growth=now, size=st.st_size,
            parent_sid=parent, opened_at=now,
        )
        if source_id is not None:
            tail.meta["source_id"] = source_id
        else:
            tail.fix_source_id(final=False)
        return tail

    def overrides(self, path: str) -> dict[str, Any] | None:
        fn = self.services.file_overrides  # the kubernetes stage, once started
        if fn is None:
            return None
        try:
            return fn(path)
        except Exception:
            log.exception("file_overrides failed; reading with the input's own settings", extra={"path": path})
            return None

    def joiner(self, path: str, overrides: dict[str, Any] | None = None) -> LineJoiner:
        return make_joiner(self.settings.parser, path, overrides)

    def fresh_joiner(self, path: str) -> LineJoiner:
        return self.joiner(path, self.overrides(path))

    def report_once(self, path: str, problem: str, message: str) -> None:
        if self._reported.get(path) != problem:
            self._reported[path] = problem
            log.warning(message, extra={"path": path, "input": self.name})

