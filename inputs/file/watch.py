"""Change notification: one inotify instance for the whole input, read in the event loop.

One instance holds every watch, however many directories are followed (inotify instances are a small per-user
budget, `fs.inotify.max_user_instances`, 128 by default, shared by every process of the user; watches are cheap).
The instance's descriptor is read by the loop (`add_reader`): events are decoded in bulk, paired (a rename is a
`MOVED_FROM` and a `MOVED_TO` with one cookie) and handed over in event order, once per readable wake-up.

When inotify cannot be had (`EMFILE`/`ENFILE` creating the instance, `ENOSPC` adding a watch: the user's limits are
used up) the watch is *degraded*: it says so once (log, `logagent_input_degraded`), and the input relies on its stat
poll, which finds everything, only later. A queue overflow (`IN_Q_OVERFLOW`) asks for a full rescan. Missing a
notification must never lose data: the poll catches whatever this module misses. This module never opens a
watched file.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from inotify_simple import INotify, flags

log = logging.getLogger("logagent.input.file.watch")

_MASK = (flags.CREATE | flags.MOVED_FROM | flags.MOVED_TO | flags.DELETE | flags.MODIFY | flags.DELETE_SELF
         | flags.MOVE_SELF | flags.ONLYDIR | flags.EXCL_UNLINK)
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.ENOMEM, errno.ENOSYS)


@dataclass
class Changes:
    modified: set[str] = field(default_factory=set)  # files written to
    # structural changes in event order: ("created"|"deleted"|"moved", src, dest or "", is_directory)
    structural: list[tuple[str, str, str, bool]] = field(default_factory=list)
    overflow: bool = False  # events were lost: rescan everything


class DirectoryWatch:
    """Reference-counted directory watches on one inotify instance; `on_changes(Changes)` runs in the loop."""

    def __init__(self, on_changes: Callable[[Changes], None], on_degraded: Callable[[str], None]) -> None:
        self.on_changes = on_changes
        self.on_degraded = on_degraded
        self.degraded: str | None = None  # why inotify is not (fully) available, once it is not
        self._inotify: INotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refs: dict[str, int] = {}  # directory -> references
        self._wd: dict[str, int] = {}  # directory -> watch descriptor
        self._dir: dict[int, str] = {}  # watch descriptor -> directory

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, create: Callable[[], INotify] | None = None) -> bool:
        """Create the instance; False (degraded) when the user's inotify budget is used up."""
        self._loop = loop
        try:
            self._inotify = (create or _new_instance)()
        except OSError as e:
            self._degrade(f"inotify_init: {errno.errorcode.get(e.errno or 0, e.errno)} ({e.strerror})")
            return False
        loop.add_reader(self._inotify.fileno(), self._readable)
        return True

    def stop(self) -> None:
        if self._inotify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        self._refs.clear()
        self._wd.clear()
        self._dir.clear()

    @property
    def instances(self) -> int:
        return 0 if self._inotify is None else 1

    @property
    def watched(self) -> list[str]:
        return sorted(self._wd)

    def _degrade(self, reason: str) -> None:
        if self.degraded is None:
            self.degraded = reason
            log.warning("inotify unavailable; falling back to stat polling (new files and rotations are seen at "
                        "the next poll)", extra={"reason": reason})
            self.on_degraded(reason)

    # -- watches --------------------------------------------------------------------------------------------
    def watching(self, directory: str) -> bool:
        return directory in self._refs

    def watch(self, directory: str) -> bool:
        """Add a reference to the watch on `directory`; False if inotify does not watch it now (the poll still
        covers it; the next `watch` of it tries again)."""
        self._refs[directory] = self._refs.get(directory, 0) + 1
        if directory in self._wd:
            return True
        if self._inotify is None:
            return False
        try:
            wd = self._inotify.add_watch(directory, _MASK)
        except OSError as e:
            if e.errno in _EXHAUSTED:
                self._degrade(f"inotify_add_watch: {errno.errorcode.get(e.errno or 0, e.errno)} ({e.strerror})")
            return False
        old = self._dir.get(wd)
        if old is not None and old != directory:  # the same directory under another name (a bind, a rename)
            self._wd.pop(old, None)
        self._wd[directory] = wd
        self._dir[wd] = directory
        return True

    def unwatch(self, directory: str) -> None:
        refs = self._refs.get(directory)
        if refs is None:
            return
        if refs > 1:
            self._refs[directory] = refs - 1
            return
        del self._refs[directory]
        wd = self._wd.pop(directory, None)
        if wd is None:
            return
        self._dir.pop(wd, None)
        if self._inotify is not None and wd not in self._dir:
            try:
                self._inotify.rm_watch(wd)
            except OSError:
                pass  # the directory is gone: the kernel removed the watch already

    # -- events ---------------------------------------------------------------------------------------------
    def _readable(self) -> None:
        if self._inotify is None:
            return
        try:
            events = self._inotify.read(timeout=0)
        except OSError as e:
            log.warning("reading inotify events failed; rescanning", extra={"error": e.strerror})
            self.on_changes(Changes(overflow=True))
            return
        changes = Changes()
        moved_from: dict[int, tuple[int, str, bool]] = {}  # cookie -> (index in structural, src, is_dir)
        for wd, mask, cookie, name in events:
            if mask & flags.Q_OVERFLOW:
                changes.overflow = True
                continue
            directory = self._dir.get(wd)
            if mask & flags.IGNORED:
                if directory is not None:  # the directory went away: its watch is gone
                    self._dir.pop(wd, None)
                    if self._wd.get(directory) == wd:
                        del self._wd[directory]
                continue
            if directory is None:
                continue
            path = os.path.join(directory, name) if name else directory
            is_dir = bool(mask & flags.ISDIR)
            if mask & flags.MODIFY:
                if not is_dir:
                    changes.modified.add(path)
            elif mask & flags.CREATE:
                changes.structural.append(("created", path, "", is_dir))
            elif mask & flags.DELETE:
                changes.structural.append(("deleted", path, "", is_dir))
            elif mask & flags.MOVED_FROM:
                moved_from[cookie] = (len(changes.structural), path, is_dir)
                changes.structural.append(("moved", path, "", is_dir))
            elif mask & flags.MOVED_TO:
                src = moved_from.pop(cookie, None)
                if src is not None:
                    changes.structural[src[0]] = ("moved", src[1], path, is_dir)
                else:  # moved in from a directory we do not watch
                    changes.structural.append(("created", path, "", is_dir))
            elif mask & (flags.DELETE_SELF | flags.MOVE_SELF):
                changes.structural.append(("deleted", directory, "", True))
        if changes.modified or changes.structural or changes.overflow:
            self.on_changes(changes)


def _new_instance() -> INotify:
    return INotify(nonblocking=True)
