"""Discovery: which files exist under the globs, and where each followed file is now. Runs as its own task.

It never waits for the outputs: backpressure pauses *reading* (`reading`), never finding, opening or tracking
rotations. A file is opened as soon as it is seen, so a file created and renamed or deleted before anything is
read from it is still read, through its descriptor.

What it listens to: inotify events (`watch`) on the glob roots (and their subdirectories down to the globs'
depth), on the directory of every open file and on the directory every matched symlink points into. The kubelet's
`/var/log/containers/*.log` are symlinks to `/var/log/pods/<ns>_<pod>_<uid>/<container>/0.log`: a new `0.log`
behind an unchanged link shows only as an event in the pod directory, which is mapped back to the link
(`Tails.linked`). A stat poll every `poll_interval` (a quarter of it while inotify is unavailable) rescans the
globs and checks every open file: it catches whatever the events missed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from logagent.inputs.file.checkpoints import file_key
from logagent.inputs.file.discovery import FileGlobs
from logagent.inputs.file.files import Tails
from logagent.inputs.file.opening import Opener
from logagent.inputs.file.rotation import Rotation
from logagent.inputs.file.tail import Tail
from logagent.inputs.file.watch import Changes, DirectoryWatch

log = logging.getLogger("logagent.input.file")


class Follower:
    def __init__(self, globs: FileGlobs, tails: Tails, opener: Opener, rotation: Rotation, watch: DirectoryWatch,
                 poll_interval: float) -> None:
        self.globs = globs
        self.tails = tails
        self.opener = opener
        self.rotation = rotation
        self.watch = watch
        self.poll_interval = poll_interval
        self._changes: list[Changes] = []
        self._event = asyncio.Event()
        self._stopping = False
        self._roots = globs.watch_roots()
        self._tree: set[str] = set()  # directories under the glob roots that are watched
        self.polls = 0

    def on_changes(self, changes: Changes) -> None:
        self._changes.append(changes)
        self._event.set()

    def start(self) -> None:
        for directory, depth in self._roots:
            self._watch_tree(directory, depth)

    async def run(self) -> None:
        next_poll = time.monotonic() + self._interval()
        while not self._stopping:
            if self._changes:
                self.apply()
            now = time.monotonic()
            if now >= next_poll:
                self.poll()
                next_poll = now + self._interval()
            if self._changes:
                await asyncio.sleep(0)
                continue
            try:
                await asyncio.wait_for(self._event.wait(), max(0.0, next_poll - time.monotonic()))
            except asyncio.TimeoutError:
                pass
            self._event.clear()

    def stop(self) -> None:
        self._stopping = True
        self._event.set()

    def _interval(self) -> float:
        return self.poll_interval / 4 if self.watch.degraded else self.poll_interval

    # -- the tree under the glob roots ----------------------------------------------------------------------
    def _watch_tree(self, directory: str, depth: int) -> None:
        if directory in self._tree or not os.path.isdir(directory):
            return
        if self.watch.watch(directory):
            self._tree.add(directory)
        else:
            self.watch.unwatch(directory)
        if depth == 0:
            return
        try:
            entries = [e.path for e in os.scandir(directory) if e.is_dir(follow_symlinks=False)]
        except OSError:
            return
        for sub in entries:
            self._watch_tree(sub, depth - 1)

    def _depth_left(self, directory: str) -> int | None:
        """How many more levels below `directory` the tree watch goes, None if it is not under a root."""
        for root, depth in self._roots:
            if directory == root:
                return depth
            if directory.startswith(root.rstrip("/") + "/"):
                below = directory[len(root.rstrip("/")) + 1:].count("/") + 1
                if depth < 0:
                    return -1
                if below <= depth:
                    return depth - below
        return None

    def _tree_changed(self, kind: str, path: str) -> None:
        if kind == "created":
            left = self._depth_left(path)
            if left is not None:
                self._watch_tree(path, left)
        elif path in self._tree:
            self._tree.discard(path)
            self.watch.unwatch(path)

    # -- events ---------------------------------------------------------------------------------------------
    def apply(self) -> None:
        batches, self._changes = self._changes, []
        rescan = False
        for changes in batches:
            rescan = rescan or changes.overflow
            for path in changes.modified:
                tail = self.tails.by_event_path(path)
                if tail is not None:
                    self.tails.mark(tail.key)
                    self._check_size(tail)
                elif self._names(path):
                    self._created(path)  # written before we saw it created (or the event was lost)
            for kind, src, dest, is_dir in changes.structural:
                if is_dir:
                    self._tree_changed(kind, src)
                    if kind == "moved" and dest:
                        self._tree_changed("created", dest)
                    rescan = True  # a new pod directory: its files may already be there
                elif kind == "created":
                    self._created(src)
                elif kind == "moved":
                    self._moved(src, dest)
                elif kind == "deleted":
                    self._deleted(src)
        if rescan:
            for key in list(self.tails.tails):
                self.tails.mark(key)
            self.scan()

    def _names(self, path: str) -> list[str]:
        """The glob names under which the file at `path` is read: itself, and the symlinks pointing at it."""
        names = sorted(self.tails.names_for_real(path))
        if self.globs.matches(path):
            names.append(path)
        return names

    def _created(self, path: str) -> None:
        """A new file under a glob name (or behind a matched symlink): follow it now, it may be renamed away
        before the next scan."""
        for name in self._names(path):
            self._follow(name)

    def _follow(self, name: str) -> Tail | None:
        try:
            st = os.stat(name)
        except OSError:
            return None  # gone already: its "moved" event follows, or it was deleted
        key = file_key(st.st_dev, st.st_ino)
        current = self.tails.followed(name)
        if current is not None and current.key == key:
            return current
        known = self.tails.tails.get(key)
        if known is not None and not known.orphaned:
            return known
        if current is not None:
            self.rotation.renamed(current)
        if known is not None:  # a rotated file that came back under a glob name
            return known
        return self._open(name)

    def _open(self, path: str, name: str | None = None, orphaned: bool = False) -> Tail | None:
        if not self.tails.make_room():
            self.opener.report_once(path, "max_open_files", "open files limit reached; the file waits for a slot "
                                    "(rotated files are closed once read)")
            return None
        tail = self.opener.open(path, name=name, orphaned=orphaned, known=self.tails.tails.get)
        if tail is not None and tail.key not in self.tails.tails:
            self.tails.add(tail)
        return tail

    def _moved(self, src: str, dest: str) -> None:
        """Events name paths, and by the time one is handled the path may hold another file: the file that moved
        is the one now at `dest` (found by inode), whatever `src` holds meanwhile."""
        st = None
        if dest:
            try:
                st = os.stat(dest)
            except OSError:
                st = None
        src_names = self._names(src)
        dest_names = self._names(dest) if dest else []
        tail = self.tails.tails.get(file_key(st.st_dev, st.st_ino)) if st is not None else None
        if tail is not None:
            self.tails.moved(tail, dest)
            if not tail.orphaned and tail.path not in dest_names:
                self.rotation.renamed(tail)
            self.tails.mark(tail.key)
        elif st is not None and src_names and not dest_names:
            # created and renamed before we followed it under its glob name: follow it where it went
            tail = self._open(dest, name=src_names[0], orphaned=True)
            if tail is not None:
                log.info("following a file rotated before it was seen", extra={"path": src_names[0], "now_at": dest})
        elif st is None:
            self._deleted(src)
        for name in dest_names:
            self._follow(name)

    def _deleted(self, path: str) -> None:
        tail = self.tails.by_event_path(path)
        if tail is not None:
            self.tails.mark(tail.key)
            if not tail.orphaned:
                try:
                    gone = os.fstat(tail.fd).st_nlink == 0
                except OSError:
                    gone = True
                if gone:
                    self.rotation.deleted(tail)
        if path in self.tails.links:  # a matched symlink went away (the container was removed)
            self.tails.unset_link(path)
            followed = self.tails.followed(path)
            if followed is not None:
                self.rotation.deleted(followed)

    def _check_size(self, tail: Tail) -> None:
        if tail.orphaned or not tail.readable:
            return
        try:
            size = os.fstat(tail.fd).st_size
        except OSError:
            return
        if size < tail.read_offset:
            self.rotation.check(tail, size, head=False)
        else:
            tail.size = size

    # -- polling --------------------------------------------------------------------------------------------
    def poll(self) -> None:
        """The fallback that catches every missed event: sizes of open files, names that now hold another file,
        files gone, new files."""
        self.polls += 1
        for tail in list(self.tails.tails.values()):
            if not tail.readable or tail.closed:
                continue
            try:
                st = os.fstat(tail.fd)
            except OSError:
                continue
            if st.st_size != tail.read_offset:
                self.tails.mark(tail.key)
            if tail.orphaned:
                tail.size = st.st_size
                continue
            if self.rotation.check(tail, st.st_size, head=True):
                continue
            tail.size = st.st_size
            try:
                now_st = os.stat(tail.path)
                if (now_st.st_dev, now_st.st_ino) != (tail.dev, tail.ino):
                    self.rotation.renamed(tail)
            except OSError:
                self.rotation.deleted(tail)
        self.scan()

    def scan(self, follow: bool = True) -> None:
        """Rescan the globs: symlinks and the directories they point into are watched first, then (`follow`) every
        matched file is followed."""
        result = self.globs.scan()
        for path in result.directories:
            self.opener.report_once(path, "directory", "a directory matches the glob; skipping it")
        for link, target in result.links.items():
            self.tails.set_link(link, target)
        for link in [p for p in self.tails.links if p not in result.links]:
            self.tails.unset_link(link)
        if not follow:
            return
        for path in result.files:
            self._follow(path)
        if not self.watch.degraded:
            for directory, depth in self._roots:
                if directory not in self._tree:
                    self._watch_tree(directory, depth)  # a root that appeared late
