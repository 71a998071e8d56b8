"""The files one input holds open, and the names they go by: the state shared by discovery and reading.

`Tails` is the one registry: descriptors by "dev:ino" (`tails`), the glob name each followed file is known by
(`by_path`), the real path behind it (`by_real`), and symlinks matched by the glob with the file they point at
(`links`: kubelet `/var/log/containers/*.log` -> `/var/log/pods/.../0.log`), so an event on the target's
directory maps back to the link. The directory of every link target and of every open file is watched while it is
needed, and unwatched after.

Discovery (`follow`) adds files and marks them rotated; reading (`reading`) reads, emits and closes them. Both run
in one event loop, so a change is never seen half-done; `dirty` and `wake` tell the reader what to read.

The number of open descriptors is bounded (`max_open_files`): when a new file needs a slot, a rotated file already
read to its end is closed first (oldest first); only when none is left does the oldest unfinished rotated file
go, and that drop is counted (`logagent_file_dropped_bytes_total{reason="max_open_files"}`) and logged with its
unread bytes. A file under a glob name is never closed to make room: it waits for a slot (it loses nothing).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from logagent import metrics
from logagent.inputs.file.tail import Tail
from logagent.inputs.file.watch import DirectoryWatch

log = logging.getLogger("logagent.input.file")


class Tails:
    def __init__(self, name: str, watch: DirectoryWatch, max_open: int,
                 on_forced_close: Callable[[Tail], None]) -> None:
        self.name = name
        self.watch = watch
        self.max_open = max_open
        self.on_forced_close = on_forced_close
        self.tails: dict[str, Tail] = {}  # by "dev:ino" (or "dev:ino~n" for a retired generation)
        self.by_path: dict[str, str] = {}  # glob name of a followed (not rotated) file -> key
        self.by_real: dict[str, str] = {}  # real path -> key, for events on symlink targets and rotated files
        self.links: dict[str, str] = {}  # symlink matched by a glob -> the real path it points at
        self.linked: dict[str, set[str]] = {}  # real path -> the links pointing at it
        self.dirty: set[str] = set()  # keys with data to read
        self.wake = asyncio.Event()
        self._watched_for: dict[str, str] = {}  # key or "link:<path>" -> directory it keeps watched
        self._gauge = metrics.FILES_TRACKED.labels(input=name)

    # -- files ----------------------------------------------------------------------------------------------
    def add(self, tail: Tail) -> None:
        self.tails[tail.key] = tail
        if not tail.orphaned:
            self.by_path[tail.path] = tail.key
        if tail.readable:
            self.by_real[tail.real] = tail.key
            self._keep_watched(tail.key, os.path.dirname(tail.real))
        self.mark(tail.key)
        self._gauge.set(len(self.tails))

    def drop(self, tail: Tail) -> None:
        tail.close()
        self.tails.pop(tail.key, None)
        self.dirty.discard(tail.key)
        if self.by_path.get(tail.path) == tail.key:
            del self.by_path[tail.path]
        if self.by_real.get(tail.real) == tail.key:
            del self.by_real[tail.real]
        self._release_watch(tail.key)
        self._gauge.set(len(self.tails))

    def moved(self, tail: Tail, real: str) -> None:
        """The file behind `tail` is now at `real` (renamed)."""
        if self.by_real.get(tail.real) == tail.key:
            del self.by_real[tail.real]
        tail.real = real
        self.by_real[real] = tail.key
        self._keep_watched(tail.key, os.path.dirname(real))

    def orphan(self, tail: Tail, why: str) -> None:
        """`tail`'s name now holds another file, or none: read it to its end, then close it (`reading`)."""
        if tail.orphaned:
            return
        tail.orphaned = True
        tail.at_eof = False  # read it to its end before its successor under the same name
        if self.by_path.get(tail.path) == tail.key:
            del self.by_path[tail.path]
        metrics.ROTATIONS.labels(input=self.name, kind=why).inc()
        self.mark(tail.key)

    def mark(self, key: str) -> None:
        self.dirty.add(key)
        self.wake.set()

    def followed(self, path: str) -> Tail | None:
        key = self.by_path.get(path)
        return self.tails.get(key) if key is not None else None

    def by_event_path(self, path: str) -> Tail | None:
        key = self.by_real.get(path) or self.by_path.get(path)
        return self.tails.get(key) if key is not None else None

    def make_room(self) -> bool:
        """A slot for one more descriptor: True when there is one (after closing a rotated file if needed)."""
        open_now = sum(1 for t in self.tails.values() if not t.closed and t.fd >= 0)
        if open_now < self.max_open:
            return True
        rotated = sorted((t for t in self.tails.values() if t.orphaned and t.fd >= 0), key=lambda t: t.opened_at)
        finished = [t for t in rotated if t.at_eof and not t.has_pending and t.key not in self.dirty]
        victim = finished[0] if finished else (rotated[0] if rotated else None)
        if victim is None:
            return False
        if victim in finished:
            log.info("open files limit: closing a rotated file already read to its end",
                     extra={"path": victim.path, "now_at": victim.real, "max_open_files": self.max_open})
        self.on_forced_close(victim)
        return True

    # -- symlinks -------------------------------------------------------------------------------------------
    def set_link(self, link: str, target: str) -> None:
        """A glob name that is a symlink to `target` (which may not exist right now: mid-rotation)."""
        old = self.links.get(link)
        if old == target:
            return
        if old is not None:
            self.unset_link(link)
        self.links[link] = target
        self.linked.setdefault(target, set()).add(link)
        self._keep_watched("link:" + link, os.path.dirname(target))

    def unset_link(self, link: str) -> None:
        target = self.links.pop(link, None)
        if target is None:
            return
        names = self.linked.get(target)
        if names is not None:
            names.discard(link)
            if not names:
                del self.linked[target]
        self._release_watch("link:" + link)

    def names_for_real(self, real: str) -> set[str]:
        """The glob names through which the file at `real` is read (links pointing at it)."""
        return self.linked.get(real, set())

    # -- watches --------------------------------------------------------------------------------------------
    def _keep_watched(self, owner: str, directory: str) -> None:
        old = self._watched_for.get(owner)
        if old == directory:
            return
        self.watch.watch(directory)
        self._watched_for[owner] = directory
        if old is not None:
            self.watch.unwatch(old)

    def _release_watch(self, owner: str) -> None:
        directory = self._watched_for.pop(owner, None)
        if directory is not None:
            self.watch.unwatch(directory)

    def close_all(self) -> None:
        for tail in self.tails.values():
            tail.close()
        self._gauge.set(0)
