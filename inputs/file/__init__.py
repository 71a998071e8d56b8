"""The `file` input: follows the files matching globs, through rotations, and emits their records in batches.

How it learns about files (`discovery`, `watch`): inotify events on the glob roots and on the directories of the
files it reads, plus a stat poll every `poll_interval` that catches whatever events missed. A file created and
renamed away between two polls is still read: its "created" / "moved" events are handled in order, and a file
that matched the glob under its first name is followed under its new one.

How it reads (`tail`, `reader`): big `pread`s, lines split per chunk, joined into records by the file's joiner
(`logagent.parsers`). Each emitted batch carries an `AckToken` from the `PositionTracker` with the offset that is
safe once the batch is acknowledged; positions are stored only then (`checkpoints`).

Rotation: rename-and-create (the old descriptor is drained to EOF while the new file is followed),
copytruncate (size below our offset: start again at 0, counted), deletion while reading (drained through the
open descriptor), symlinks (the file behind the link is read; the link's path names the source). After a
restart, a stored file that was rotated out of the glob is found again by (dev, inode) or fingerprint and
finished.

It must never emit a record twice in one run, skip bytes without a flagged record, or store an offset beyond an
unacknowledged record.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from typing import Any

from logagent import metrics
from logagent.component import Context, Emit, Input
from logagent.config import Section
from logagent.inputs.file.carry import hand_over
from logagent.inputs.file.checkpoints import STARTED_KEY, StoredPosition, file_key, locate, verify
from logagent.inputs.file.discovery import FileGlobs
from logagent.inputs.file.fingerprint import fingerprint_of, matches, read_head
from logagent.inputs.file.reader import LineSplitter, settle_utf8
from logagent.inputs.file.settings import FileSettings, parse_file_settings
from logagent.inputs.file.tail import Tail, make_source_id
from logagent.inputs.file.watch import Changes, DirectoryWatch
from logagent.parsers.base import LineJoiner
from logagent.parsers.factory import make_joiner
from logagent.record import Batch

log = logging.getLogger("logagent.input.file")


class FileInput(Input):
    settings: FileSettings

    @classmethod
    def parse_settings(cls, section: Section) -> FileSettings:
        return parse_file_settings(section)

    def __init__(self, name: str, settings: FileSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.globs = FileGlobs(settings.paths, settings.exclude)
        self.tag = settings.tag or name
        self.tracker = ctx.checkpoints.tracker(name)
        self.tails: dict[str, Tail] = {}  # by "dev:ino"
        self.by_path: dict[str, str] = {}  # glob path of a followed (not orphaned) file -> key
        self.by_real: dict[str, str] = {}  # real path -> key, for inotify events on symlink targets
        self._dirty: set[str] = set()  # keys with data to read
        self._wake = asyncio.Event()
        self.ready = asyncio.Event()  # set once existing files are followed and the directory watches are on
        self._stopping = False
        self._changes: list[Changes] = []
        self._watch = DirectoryWatch(self._on_changes)
        self._reported: dict[str, str] = {}  # path -> problem already logged (EACCES, directory...)
        self._forget_later: set[str] = set()  # deleted files whose positions go once their batches are acked
        self._finished: dict[str, str] = {}  # rotated files read to the end and closed -> where they were last seen
        self._first_start = STARTED_KEY not in self.tracker.committed
        self._files_tracked = metrics.FILES_TRACKED.labels(input=name)
        self._lag_paths: set[str] = set()
        self._next_held_check = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        self._emit = emit
        loop = asyncio.get_running_loop()
        self._restore()
        self._scan()
        self._first_start = False  # `read_from: tail` was for the files already there; later ones start at 0
        self.tracker.set(STARTED_KEY, True)
        self._watch.start(loop)
        for directory, recursive in self.globs.watch_roots():
            self._watch.watch(directory, recursive)
        self.ready.set()
        next_poll = time.monotonic() + self.settings.poll_interval
        try:
            while not self._stopping:
                now = time.monotonic()
                if self._changes:
                    self._apply_changes()
                if now >= next_poll:
                    self._poll()
                    next_poll = now + self.settings.poll_interval
                await self._read_round(now)
                await self._flush_held(now)
                await self._finish_orphans(now)
                self._forget_acknowledged()
                if self._stopping:
                    break
                if not self._dirty and not self._changes:
                    timeout = max(0.0, min(next_poll - time.monotonic(), self._next_flush_due(now)))
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout)
                    except asyncio.TimeoutError:
                        pass
                    self._wake.clear()
                else:
                    await asyncio.sleep(0)  # let the router and outputs run between read rounds
        finally:
            self._watch.stop()
            for tail in self.tails.values():
                tail.close()
            for path in self._lag_paths:
                _remove_gauge(metrics.FILE_LAG, self.name, path)
            self._files_tracked.set(0)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # -- discovery ------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        """Reopen every stored file where it is now, and go on from its acknowledged offset."""
        for key, value in list(self.tracker.committed.items()):
            if key == STARTED_KEY:
                continue
            stored = StoredPosition.parse(key, value)
            if stored is None:
                self.tracker.forget(key)
                continue
            where = locate(stored)
            if where is None:
                log.info("checkpointed file is gone; forgetting it", extra={"path": stored.path})
                self.tracker.forget(key)
                continue
            # a file found under another name was rotated out of the glob while we were down: finish it under
            # its old name (which names the source for metadata)
            orphaned = where != stored.path
            tail = self._open(where, name=stored.path, stored=stored, value=value, orphaned=orphaned)
            if tail is not None and orphaned:
                metrics.ROTATIONS.labels(input=self.name, kind="rotated_while_down").inc()
                log.info("finishing a file rotated while the agent was down",
                         extra={"path": stored.path, "now_at": where, "offset": stored.offset})

    def _scan(self) -> None:
        result = self.globs.scan()
        for path in result.directories:
            self._report_once(path, "directory", "a directory matches the glob; skipping it")
        for path, found in result.files.items():
            key = file_key(found.dev, found.ino)
            current = self.by_path.get(path)
            if current == key or (key in self.tails and not self.tails[key].orphaned):
                continue
            if current is not None:
                self._orphan(self.tails[current], "rename")
            if key in self.tails:  # an orphan that came back under a glob name
                continue
            self._open(path)
        self._files_tracked.set(len(self.tails))

    def _open(self, path: str, name: str | None = None, stored: StoredPosition | None = None, value: Any = None,
              orphaned: bool = False) -> Tail | None:
        """Start following the file at `path`; `name` (default `path`) is the glob name that identifies the source.
        Reading starts at the stored offset when the file is the stored one, else at 0 (or at the end for
        `read_from: tail` on the very first start)."""
        name = name or path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENOENT:
                metrics.ERRORS.labels(component=self.name, kind="open_failed").inc()
                self._report_once(path, f"open:{e.errno}", f"cannot open file: {e.strerror}")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                self._report_once(path, "not_regular", "not a regular file; skipping it")
                return None
            key = file_key(st.st_dev, st.st_ino)
            if key in self.tails:
                os.close(fd)
                return self.tails[key]
            real = os.path.realpath(path)
            overrides = self._overrides(name)
            if overrides and overrides.get("exclude"):
                os.close(fd)
                return None
            offset, skip = 0, False
            source_id: str | None = None
            committed = StoredPosition.parse(key, self.tracker.committed.get(key))
            if stored is not None and verify(fd, stored):
                offset, skip = stored.offset, stored.skip
                source_id = value.get("sid") if isinstance(value, dict) else None
                if stored.key != key:
                    # found as a copy (other inode, same bytes): its position moves to the copy's identity
                    self.tracker.forget(stored.key)
            elif committed is not None and verify(fd, committed):
                offset, skip = committed.offset, committed.skip
                source_id = self.tracker.committed[key].get("sid")
            elif self._first_start and self.settings.read_from == "tail" and stored is None:
                offset = st.st_size
            if offset > st.st_size:
                metrics.ROTATIONS.labels(input=self.name, kind="truncate").inc()
                log.warning("file is shorter than its checkpoint: truncated while the agent was down; "
                            "reading it from the start", extra={"path": path, "offset": offset, "size": st.st_size})
                offset, skip = 0, False
            head = read_head(fd, self.settings.fingerprint_bytes)
            if source_id is None:
                source_id = make_source_id(st.st_dev, st.st_ino, head)
            tail = Tail(
                key=key, path=name, real=real, fd=fd, dev=st.st_dev, ino=st.st_ino, fp=fingerprint_of(head),
                source_id=source_id, splitter=LineSplitter(self.settings.max_line_bytes, offset, skip),
                joiner=self._joiner(name, overrides), read_offset=offset,
                meta={"input": self.name, "path": name, "source_id": source_id, "pos_key": "offset"},
                fingerprint_bytes=self.settings.fingerprint_bytes, last_growth=time.monotonic(), size=st.st_size,
            )
        except OSError as e:
            os.close(fd)
            metrics.ERRORS.labels(component=self.name, kind="open_failed").inc()
            self._report_once(path, f"open:{e.errno}", f"cannot read file: {e.strerror}")
            return None
        self._reported.pop(path, None)
        self.tails[key] = tail
        if orphaned:
            tail.orphaned = True
        else:
            self.by_path[name] = key
        self.by_real[real] = key
        directory = os.path.dirname(real)
        if not self._watch.watching(directory):
            self._watch.watch(directory)
        if key not in self.tracker.committed:
            self.tracker.set(key, tail.position())
        self._dirty.add(key)
        log.debug("following file", extra={"path": path, "offset": offset})
        return tail

    def _overrides(self, path: str) -> dict[str, Any] | None:
        fn = self.ctx.services.get("file_overrides")
        if fn is None:
            return None
        try:
            result: dict[str, Any] | None = fn(path)
            return result
        except Exception:
            log.exception("file_overrides failed; reading with the input's own settings", extra={"path": path})
            return None

    def _joiner(self, path: str, overrides: dict[str, Any] | None) -> LineJoiner:
        return make_joiner(self.settings.parser, path, overrides)

    def _report_once(self, path: str, problem: str, message: str) -> None:
        if self._reported.get(path) != problem:
            self._reported[path] = problem
            log.warning(message, extra={"path": path, "input": self.name})

    # -- change notification --------------------------------------------------------------------------------
    def _on_changes(self, changes: Changes) -> None:
        self._changes.append(changes)
        self._wake.set()

    def _apply_changes(self) -> None:
        batches, self._changes = self._changes, []
        rescan = False
        for changes in batches:
            for path in changes.modified:
                key = self.by_real.get(path) or self.by_path.get(path)
                if key is not None:
                    self._dirty.add(key)
            for kind, src, dest, is_dir in changes.structural:
                if is_dir:
                    rescan = True  # a new pod directory: its files may already be there
                    continue
                if kind == "created":
                    if self.globs.matches(src):
                        self._created(src)
                elif kind == "moved":
                    self._moved(src, dest)
                elif kind == "deleted":
                    key = self.by_path.get(src) or self.by_real.get(src)
                    if key is not None:
                        self._dirty.add(key)
                        rescan = True
        if rescan:
            self._scan()

    def _created(self, path: str) -> None:
        """A new file under a glob name: follow it now (it may be renamed away before the next scan)."""
        try:
            st = os.stat(path)
        except OSError:
            return  # gone already: its "moved" event follows, or it was deleted
        key = file_key(st.st_dev, st.st_ino)
        if key in self.tails:
            return
        old = self.by_path.get(path)
        if old is not None:
            self._orphan(self.tails[old], "rename")
        self._open(path)

    def _moved(self, src: str, dest: str) -> None:
        """Events name paths, and by the time one is handled the path may hold another file: the file that moved
        is the one now at `dest` (found by inode), whatever `src` holds meanwhile."""
        try:
            st = os.stat(dest)
        except OSError:
            st = None
        key = file_key(st.st_dev, st.st_ino) if st is not None else None
        tail = self.tails.get(key) if key is not None else None
        if tail is not None:
            if self.by_real.get(tail.real) == tail.key:
                del self.by_real[tail.real]
            tail.real = dest
            self.by_real[dest] = tail.key
            if tail.path == src and not tail.orphaned and not self.globs.matches(dest):
                self._orphan(tail, "rename")
            self._dirty.add(tail.key)
        elif st is not None and self.globs.matches(src) and not self.globs.matches(dest):
            # created and renamed before we followed it under its glob name: follow it where it went
            tail = self._open(dest, name=src, orphaned=True)
            if tail is not None:
                log.info("following a file rotated before it was seen", extra={"path": src, "now_at": dest})
        if st is not None and self.globs.matches(dest) and dest not in self.by_path:
            self._open(dest)

    def _orphan(self, tail: Tail, why: str) -> None:
        if tail.orphaned:
            return
        tail.orphaned = True
        tail.at_eof = False  # read it to its end before its successor under the same name
        if self.by_path.get(tail.path) == tail.key:
            del self.by_path[tail.path]
        metrics.ROTATIONS.labels(input=self.name, kind=why).inc()
        self._dirty.add(tail.key)

    def _poll(self) -> None:
        """The fallback that catches every missed event: sizes of open files, names that now hold another file,
        files gone, new files."""
        for key, tail in list(self.tails.items()):
            try:
                st = os.fstat(tail.fd)
            except OSError:
                continue
            if st.st_size != tail.read_offset:
                self._dirty.add(key)
            tail.size = st.st_size
            if tail.orphaned:
                continue
            if tail.read_offset and not matches(tail.fd, tail.fp):
                # copytruncate followed by writes past our offset before we looked: the size never shrank
                tail.rewritten = True
                self._dirty.add(key)
            try:
                now_st = os.stat(tail.path)
                if (now_st.st_dev, now_st.st_ino) != (tail.dev, tail.ino):
                    self._orphan(tail, "rename")
            except OSError:
                self._orphan(tail, "delete")
        self._scan()
        self._update_lag()
        self._forget_removed()

    def _update_lag(self) -> None:
        lag = metrics.FILE_LAG
        seen = set()
        for key, tail in self.tails.items():
            committed = self.tracker.committed.get(key)
            offset = committed.get("offset", 0) if isinstance(committed, dict) else 0
            lag.labels(input=self.name, path=tail.path).set(max(0, tail.size - offset))
            seen.add(tail.path)
        for path in self._lag_paths - seen:
            _remove_gauge(lag, self.name, path)
        self._lag_paths = seen

    # -- reading --------------------------------------------------------------------------------------------
    async def _read_round(self, now: float) -> None:
        """One read (up to `read_buffer`) per file with data, then emit what is complete. Files with more data
        stay dirty for the next round, so one busy file cannot starve the others."""
        limits = self.ctx.config.limits
        # Rotated files first: a name's new file waits until the old one was read to its end, so records of
        # one source keep their order across a rotation.
        order = sorted(self._dirty, key=lambda k: not (k in self.tails and self.tails[k].orphaned))
        unfinished: set[str] | None = None
        for key in order:
            if self._stopping:
                return
            tail = self.tails.get(key)
            if tail is None or tail.closed:
                self._dirty.discard(key)
                continue
            if not tail.orphaned:
                if unfinished is None:
                    unfinished = {t.path for t in self.tails.values() if t.orphaned and not t.at_eof}
                if tail.path in unfinished:
                    continue
                if not tail.started:
                    self._carry_over(tail)
            try:
                size = os.fstat(tail.fd).st_size
                # one small pread per read: a copytruncate whose new contents already reach past our offset
                # shows only in the file's first bytes
                if size < tail.read_offset or tail.rewritten or (tail.read_offset and not matches(tail.fd, tail.fp)):
                    metrics.ROTATIONS.labels(input=self.name, kind="truncate").inc()
                    log.info("file truncated (copytruncate); reading it again from the start",
                             extra={"path": tail.path, "offset": tail.read_offset, "size": size})
                    await self._emit_pending(tail)
                    tail.truncated()
                got = tail.read(self.settings.read_buffer, now)
            except OSError as e:
                metrics.ERRORS.labels(component=self.name, kind="read_failed").inc()
                log.warning("read failed; closing the file (it is found again by the next scan)",
                            extra={"path": tail.path, "error": e.strerror})
                self._drop(tail)
                continue
            if got == 0 or tail.at_eof:
                self._dirty.discard(key)
            if tail.has_pending and (tail.at_eof or len(tail.pending) >= limits.batch_max_records
                                     or tail.pending_bytes >= limits.batch_max_bytes):
                await self._emit_pending(tail)
            elif not tail.has_pending and tail.at_eof:
                self._advance_unheld(tail)

    def _carry_over(self, tail: Tail) -> None:
        """A file about to be read for the first time under a rotated file's name reads on into that file's
        unfinished record (see `carry`): a trace cut by the kubelet's rotation comes out whole."""
        for pred in list(self.tails.values()):
            if pred.orphaned and pred.path == tail.path and pred is not tail and hand_over(
                    pred, tail, lambda: self._joiner(tail.path, self._overrides(tail.path))):
                log.debug("carrying a record across a rotation", extra={"path": tail.path, "from": pred.real})
                return

    async def _emit_pending(self, tail: Tail) -> None:
        if tail.carry is not None and tail.carry.predecessor.has_pending:
            # the rotated file's records first: they began before anything of this file
            await self._emit_pending(tail.carry.predecessor)
        records, nbytes = tail.take()
        if not records:
            self._advance_unheld(tail)
            return
        self._finish_flagged(records)
        token = self.tracker.token(tail.key, tail.position())
        await self._emit(Batch(self.tag, records, tail.meta, token, nbytes))

    def _advance_unheld(self, tail: Tail) -> None:
        """Bytes that made no record (a skipped over-long line's rest, blank joins) still move the checkpoint,
        but only when nothing before them is waiting for an acknowledgement."""
        if self.tracker.outstanding(tail.key) == 0:
            pos = tail.position()
            committed = self.tracker.committed.get(tail.key)
            if not isinstance(committed, dict) or committed.get("offset") != pos["offset"] \
                    or committed.get("fp") != pos["fp"]:
                self.tracker.set(tail.key, pos)

    def _finish_flagged(self, records: list[dict[str, Any]]) -> None:
        """The rare records with flags: text kept undecoded until complete is decoded (`settle_utf8`), and each
        flag is counted."""
        flagged = [r for r in records if "flags" in r]
        if not flagged:
            return
        settle_utf8(flagged)
        flagged = [r["flags"] for r in flagged if "flags" in r]
        counts: dict[str, int] = {}
        for flags in flagged:
            for f in flags:
                counts[f] = counts.get(f, 0) + 1
        for f, n in counts.items():
            metrics.FLAGGED.labels(component=self.name, flag=f).inc(n)

    async def _flush_held(self, now: float) -> None:
        if now < self._next_held_check:
            return
        self._next_held_check = now + 0.2
        for tail in list(self.tails.values()):
            if tail.closed:
                continue
            tail.flush_partial(now, self.settings.partial_line_flush)
            if tail.has_pending and not (tail.key in self._dirty and not tail.at_eof):
                await self._emit_pending(tail)

    def _next_flush_due(self, now: float) -> float:
        """Seconds until a held partial line or an orphan's close is due (bounded by the poll interval)."""
        due = self.settings.poll_interval
        for tail in self.tails.values():
            if tail.splitter.pending:
                due = min(due, max(0.0, tail.splitter.pending_since + self.settings.partial_line_flush - now))
            if tail.joiner.held_from() is not None:
                due = min(due, 0.25)
            if tail.orphaned:
                due = min(due, max(0.05, tail.last_growth + self.settings.rotate_wait - now))
        return due

    async def _finish_orphans(self, now: float) -> None:
        """An orphan read to its end that has not grown for `rotate_wait` is finished: what it held is emitted,
        its descriptor closed. Its position stays while the file exists (found again after a restart, it has
        nothing left to read) and goes when the file is deleted and its batches are acknowledged."""
        for tail in [t for t in self.tails.values() if t.orphaned]:
            if tail.key in self._dirty or now - tail.last_growth < self.settings.rotate_wait or tail.carrying:
                continue
            try:
                st = os.fstat(tail.fd)
            except OSError:
                st = None
            if st is not None and st.st_size > tail.read_offset:
                self._dirty.add(tail.key)
                continue
            tail.flush_partial(now, 0.0, force=True)
            await self._emit_pending(tail)
            deleted = st is None or st.st_nlink == 0
            self._drop(tail)
            if deleted:
                self._forget_later.add(tail.key)
            else:
                self._finished[tail.key] = tail.real
            log.debug("finished rotated file", extra={"path": tail.path, "deleted": deleted})

    def _drop(self, tail: Tail) -> None:
        tail.close()
        self.tails.pop(tail.key, None)
        self._dirty.discard(tail.key)
        if self.by_path.get(tail.path) == tail.key:
            del self.by_path[tail.path]
        if self.by_real.get(tail.real) == tail.key:
            del self.by_real[tail.real]
        self._files_tracked.set(len(self.tails))

    def _forget_removed(self) -> None:
        """Positions of finished rotated files are kept while the files exist (a restart then finds nothing left to
        read in them); once rotation deletes them, their positions go, so the store does not grow with every
        rotation."""
        for key, path in list(self._finished.items()):
            try:
                st = os.stat(path)
                gone = file_key(st.st_dev, st.st_ino) != key
            except OSError:
                gone = True
            if gone and key not in self.tails:
                del self._finished[key]
                self._forget_later.add(key)

    def _forget_acknowledged(self) -> None:
        if not self._forget_later:
            return
        for key in list(self._forget_later):
            if key in self.tails:  # reopened (inode reuse is told apart by fingerprint on open)
                self._forget_later.discard(key)
            elif self.tracker.outstanding(key) == 0:
                self.tracker.forget(key)
                self._forget_later.discard(key)


def _remove_gauge(gauge: Any, input_name: str, path: str) -> None:
    try:
        gauge.remove(input_name, path)
    except KeyError:
        pass


__all__ = ("FileInput",)
