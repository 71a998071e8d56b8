"""Rotation, in one place: every way a followed file stops being the file under its name.

- **rename** (kubelet, logrotate `create`): the name holds another file or none; the old file is read to its end
  through its descriptor, then closed (`reading`), before its successor under the same name.
- **delete**: the same, through the descriptor (the bytes stay readable until it is closed).
- **truncation** (copytruncate; a file rewritten from the start): the bytes after our offset now live only in the
  copy, if there is one. The copy is looked for at once, in the file's directory: a regular file, another inode,
  starting with the same bytes (fingerprint); the newest if several. It takes over the old generation exactly
  where we were (offset, parser state, records not emitted yet, source id) and is read to its end like a renamed
  file. A copy shorter than our offset (logrotate copied before our last read) holds nothing unread; it is taken
  over all the same, its stored offset capped at its size, so a restart knows it. The truncated file goes on as a
  new generation from offset 0, with a source id of its own (`identity`). Without a copy, the unread bytes are
  gone: counted (`logagent_file_dropped_bytes_total{reason="truncated_unread"}`) and logged.
- **while the agent was down** (`restore`): a stored file is looked for by inode, then by fingerprint (a copy) in
  the directories it lived in, and finished from its stored offset; an inode that now holds another generation is
  read from 0 under a source id derived from the stored one, so replays give the same ids as the first run did.
  copytruncate copies made while the agent was down, newer than the stored generation's copy, are the
  generations that followed it: named in order as the live file named them (`_chain`); a copy of the generation
  being read (copied, not yet truncated) is left to the truncation (`_read_already`).

This module never reads records or emits anything.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from typing import Any

from logagent import metrics
from logagent.checkpoint import PositionTracker
from logagent.inputs.file.checkpoints import STARTED_KEY, StoredPosition, file_key, locate, position
from logagent.inputs.file.files import Tails
from logagent.inputs.file.fingerprint import matches, read_head
from logagent.inputs.file.identity import source_id
from logagent.inputs.file.opening import Opener
from logagent.inputs.file.tail import Tail

log = logging.getLogger("logagent.input.file")

DROPPED_BYTES = metrics.FILE_DROPPED_BYTES


class Rotation:
    def __init__(self, name: str, tails: Tails, opener: Opener, tracker: PositionTracker) -> None:
        self.name = name
        self.tails = tails
        self.opener = opener
        self.tracker = tracker
        self._retired = 0
        self._families: dict[str, tuple[int, int, str, str]] = {}  # restore: name -> copytruncate family

    # -- rename and delete ----------------------------------------------------------------------------------
    def renamed(self, tail: Tail) -> None:
        self.tails.orphan(tail, "rename")

    def deleted(self, tail: Tail) -> None:
        self.tails.orphan(tail, "delete")

    # -- truncation -----------------------------------------------------------------------------------------
    def check(self, tail: Tail, size: int, head: bool) -> bool:
        """Is the followed `tail` truncated (shorter than our offset or, with `head`, other first bytes)? If so,
        handle it now. Returns whether it was."""
        if tail.orphaned or not tail.readable or (tail.read_offset == 0 and not tail.fp.length):
            return False  # (at offset 0 the first bytes still tell: rewritten before we read a byte of it)
        if size >= tail.read_offset and not tail.rewritten and not (head and not matches(tail.fd, tail.fp)):
            return False
        self.truncated(tail, size)
        return True

    def truncated(self, tail: Tail, size: int) -> None:
        metrics.ROTATIONS.labels(input=self.name, kind="truncate").inc()
        copy = self._find_copy(tail)
        if copy is not None:
            self._hand_to_copy(tail, *copy)
        else:
            unread = max(0, tail.size - tail.read_offset)
            if unread:
                DROPPED_BYTES.labels(input=self.name, reason="truncated_unread").inc(unread)
            log.info("file truncated (copytruncate); no copy found, reading it again from the start",
                     extra={"path": tail.path, "offset": tail.read_offset, "size": size, "unread_bytes": unread})
            self._retire(tail)
        tail.restart_generation(self.opener.fresh_joiner(tail.path))
        tail.size = size
        self.tails.mark(tail.key)

    def _find_copy(self, tail: Tail) -> tuple[str, int, os.stat_result] | None:
        """The copy of `tail`'s generation in its directory: a regular file, another inode, starting with the same
        bytes; the newest if several. It may be shorter than our offset: we read, from the original, bytes written
        after logrotate's copy (then the copy holds nothing unread, and is taken over all the same, so a restart
        knows it for a generation already read instead of a file never seen)."""
        directory = os.path.dirname(tail.real)
        best: tuple[float, str, int, os.stat_result] | None = None
        try:
            entries = list(os.scandir(directory))
        except OSError:
            return None
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) == (tail.dev, tail.ino):
                continue
            if st.st_size < tail.fp.length or file_key(st.st_dev, st.st_ino) in self.tails.tails:
                continue
            try:  # the entry itself, never what a link swapped in after the lstat points at
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
            except OSError:
                continue
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # replaced between the lstat and the open
                continue
            if tail.fp.length and matches(fd, tail.fp) and (best is None or st.st_mtime > best[0]):
                if best is not None:
                    os.close(best[2])
                best = (st.st_mtime, entry.path, fd, opened)
            else:
                os.close(fd)
        return None if best is None else best[1:]

    def _hand_to_copy(self, tail: Tail, path: str, fd: int, st: os.stat_result) -> None:
        """The copy goes on with the old generation where `tail` was."""
        now = time.monotonic()
        key = file_key(st.st_dev, st.st_ino)
        old = Tail(key=key, path=tail.path, real=path, fd=fd, dev=st.st_dev, ino=st.st_ino, fp=tail.fp,
                   source_id=tail.source_id, splitter=tail.splitter, joiner=tail.joiner, read_offset=tail.read_offset,
                   meta=tail.meta, fingerprint_bytes=tail.fingerprint_bytes, orphaned=True, last_growth=now,
                   size=st.st_size, pending=tail.pending, pending_bytes=tail.pending_bytes, started=True,
                   carry=tail.carry, parent_sid=tail.parent_sid, opened_at=now, waits_for=tail.pos_key)
        if st.st_size < tail.read_offset:
            old.end = st.st_size  # a copy taken before our last read: nothing in it is unread
        if old.source_id is None:
            old.fix_source_id(final=False)
        # its stored position: the acknowledged one of the old generation (what is emitted and not yet
        # acknowledged may still have to be read again), under the copy's identity; a position stored for an
        # earlier generation of the inode says nothing about this one
        committed = self.tracker.committed.get(tail.pos_key)
        acked = 0
        if isinstance(committed, dict) and tail.source_id is not None and committed.get("sid") == tail.source_id:
            offset = committed.get("offset", 0)
            acked = offset if isinstance(offset, int) and 0 <= offset <= tail.read_offset else 0
        pos = position(tail.path, path, min(acked, st.st_size), st.st_dev, st.st_ino, tail.fp, False)
        if old.source_id is not None:
            pos["sid"] = old.source_id
        if old.parent_sid is not None:
            pos["parent"] = old.parent_sid
        self.tracker.set(key, pos)
        self.tails.add(old)
        metrics.ROTATIONS.labels(input=self.name, kind="copytruncate_copy").inc()
        log.info("copytruncate: finishing the old contents from the copy", extra={
            "path": tail.path, "copy": path, "offset": tail.read_offset, "copy_size": st.st_size})

    def _retire(self, tail: Tail) -> None:
        """No copy: what the old generation still holds (records read, a held line) leaves under its own id."""
        tail.flush_partial(0.0, 0.0, force=True)
        if not tail.has_pending:
            return
        self._retired += 1
        old = Tail(key=f"{tail.key}~{self._retired}", path=tail.path, real=tail.real, fd=-1, dev=tail.dev,
                   ino=tail.ino, fp=tail.fp, source_id=tail.source_id, splitter=tail.splitter, joiner=tail.joiner,
                   read_offset=tail.read_offset, meta=tail.meta, fingerprint_bytes=tail.fingerprint_bytes,
                   orphaned=True, pending=tail.pending, pending_bytes=tail.pending_bytes, started=True,
                   carry=tail.carry, parent_sid=tail.parent_sid, pos_key=tail.pos_key, readable=False,
                   last_growth=0.0, opened_at=time.monotonic())
        self.tails.add(old)

    # -- after a restart ------------------------------------------------------------------------------------
    def restore(self, updated: dict[str, float]) -> None:
        """Reopen every stored file where it is now, and go on from its acknowledged offset. Files still at their
        own inode first, so a copy found by fingerprint for another stored position is not opened twice. Then the
        files rotated *and* created while the agent was down (`_born_while_down`). `updated`: when each stored
        position was last written (wall clock)."""
        stored_all: list[tuple[StoredPosition, Any]] = []
        for key, value in list(self.tracker.committed.items()):
            if key == STARTED_KEY:
                continue
            stored = StoredPosition.parse(key, value)
            if stored is None:
                self.tracker.forget(key)
                continue
            stored_all.append((stored, value))
        stored_all.sort(key=lambda sv: not _at_own_inode(sv[0]))
        found: list[tuple[StoredPosition, str, str]] = []  # (stored, where it is now, that file's key)
        for stored, _ in stored_all:
            where = locate(stored)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("restore: stored position", extra={"key": stored.key, "stored_path": stored.real,
                          "offset": stored.offset, "fp": stored.fp.encode() if stored.fp else "", "sid": stored.sid,
                          "parent": stored.parent, "found": where})
            where_key = _key_of(where) if where is not None else None
            if where is None or where_key is None:
                self._gone(stored)
                continue
            if _inode_exists(stored) and stored.sid and not _at(where, stored):
                self.opener.parents.setdefault(stored.key, stored.sid)
                # copytruncate: the live inode's stored generation is in a copy; newer copies follow it (`_chain`)
                self._families.setdefault(stored.path, (stored.dev, stored.ino, stored.sid, where))
            found.append((stored, where, where_key))
        # One generation may be named by two positions: the original's (its batches read before the copytruncate)
        # and its copy's (those read from the copy since), each acknowledged in its own order. Reading resumes at
        # the lower of them: what lies past it and was not acknowledged under the other is read again (answered
        # 409), never skipped.
        lowest: dict[str, StoredPosition] = {}
        for stored, _, where_key in found:
            if where_key not in lowest or stored.offset < lowest[where_key].offset:
                lowest[where_key] = stored
        for stored, where, where_key in found:
            if lowest[where_key] is not stored:
                if stored.key != where_key:
                    self.tracker.forget(stored.key)  # the original's: its generation goes on under the copy's key
                continue
            # a file found under another name was rotated out of the glob while we were down: finish it under
            # its old name (which names the source for metadata)
            orphaned = not _same_file(where, stored.path)
            tail = self.opener.open(where, name=stored.path, stored=stored, orphaned=orphaned,
                                    known=self.tails.tails.get)
            if tail is None or tail.key in self.tails.tails:
                continue
            self.tails.add(tail)
            if orphaned:
                metrics.ROTATIONS.labels(input=self.name, kind="rotated_while_down").inc()
                log.info("finishing a file rotated while the agent was down",
                         extra={"path": stored.path, "now_at": where, "offset": stored.offset})
        self._born_while_down([s for s, _ in stored_all], updated)

    def _gone(self, stored: StoredPosition) -> None:
        """A stored file found nowhere: truncated while we were down (its inode holds a newer generation, which is
        named after it), or deleted (what was not read of it is counted)."""
        if _inode_exists(stored) and stored.sid:
            self.opener.parents.setdefault(stored.key, stored.sid)
            return
        value = self.tracker.committed.get(stored.key)
        size = value.get("size", 0) if isinstance(value, dict) else 0
        unread = size - stored.offset if isinstance(size, int) and size > stored.offset else 0
        if unread:
            DROPPED_BYTES.labels(input=self.name, reason="deleted_while_down").inc(unread)
            log.warning("a rotated file was deleted while the agent was down before it was read to its end",
                        extra={"path": stored.path, "was_at": stored.real, "unread_bytes_at_least": unread})
        else:
            log.info("checkpointed file is gone; forgetting it", extra={"path": stored.path})
        self.tracker.forget(stored.key)

    def _born_while_down(self, stored_all: list[StoredPosition], updated: dict[str, float]) -> None:
        """A file created under a glob name and rotated away while the agent was down has no position (nor has one
        opened just before a `kill -9`, before its position reached the disk): it is a rotated sibling
        (`0.log.<stamp>`, `x.log.1`; compressed ones are not read) of the file now under that name, that no stored
        position names and that was written after the oldest stored file of that name (older unknown siblings
        were there before the agent first started). It is read from its start under the name it was rotated from;
        if it had been read before, its records get the same ids again (replays, not duplicates)."""
        since: dict[str, float] = {}  # glob name -> the oldest moment its stored files are known from
        for st in stored_all:
            moment = updated.get(st.key, 0.0)
            for p in (st.real, st.path):
                try:
                    info = os.stat(p)
                except OSError:
                    continue
                if (info.st_dev, info.st_ino) == (st.dev, st.ino):
                    moment = min(moment, info.st_mtime)
                    break
            since[st.path] = min(since.get(st.path, moment), moment)
        # only what `restore` opened counts as known: a stored key whose file was not found may name a deleted file
        # whose inode number a newer file reuses (ext4 does): that file is unknown, whatever its number
        known = set(self.tails.tails)
        for name, moment in since.items():
            directory, base = os.path.split(os.path.realpath(name))
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            siblings: list[tuple[float, str, os.stat_result]] = []
            for entry in entries:
                if not entry.name.startswith(base + ".") or entry.name.endswith(_COMPRESSED):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    siblings.append((info.st_mtime, entry.path, info))
            siblings.sort()
            family = self._families.get(name)
            if family is not None:
                self._chain(name, family, siblings, known)
            for mtime, path, info in siblings:
                if file_key(info.st_dev, info.st_ino) in known or mtime <= moment or self._read_already(name, path):
                    continue
                self._open_unknown(name, path, known)

    def _chain(self, name: str, family: tuple[int, int, str, str], siblings: list[tuple[float, str, os.stat_result]],
               known: set[str]) -> None:
        """copytruncate while the agent was down: the stored generation of the live inode was found in a copy
        (`family`: the inode's dev, ino, that generation's source id, the copy). The copies newer than it hold
        the generations after it, oldest first: each is named as the live file named it when it was truncated
        (`identity`: the inode, its first line, the generation before), so what a killed run had shipped from it
        before its position reached the disk gets the same ids again (replays, not duplicates)."""
        dev, ino, sid, where = family
        try:
            after = os.stat(where).st_mtime
        except OSError:
            return
        live = _head(name, self.opener.settings.fingerprint_bytes)
        prev = sid
        for mtime, path, info in siblings:
            if mtime <= after or path == where:
                continue
            key = file_key(info.st_dev, info.st_ino)
            open_tail = self.tails.tails.get(key)
            if open_tail is not None:
                prev = open_tail.source_id or prev
                continue
            head = _head(path, self.opener.settings.fingerprint_bytes, follow=False)
            if head is None:
                continue
            if live and _same_start(head, live):
                break  # a copy of the generation the live file still holds (copied, not truncated yet): left to it
            gen = source_id(dev, ino, head, prev, len(head) >= self.opener.settings.fingerprint_bytes)
            if gen is None:
                continue  # not even one complete line: read as an unknown file
            stored = StoredPosition(key, name, path, 0, info.st_dev, info.st_ino, None, False, gen, prev)
            tail = self.opener.open(path, name=name, stored=stored, orphaned=True, known=self.tails.tails.get)
            if tail is None or tail.key in self.tails.tails:
                continue
            known.add(tail.key)
            self.tails.add(tail)
            prev = gen
            metrics.ROTATIONS.labels(input=self.name, kind="rotated_while_down").inc()
            log.info("finishing a copytruncate copy made while the agent was down",
                     extra={"path": name, "now_at": path})
        self.opener.parents[file_key(dev, ino)] = prev

    def _read_already(self, name: str, path: str) -> bool:
        """`path` starts with the bytes of a generation of `name` being read, or of the file now under `name` (a
        copy made but not yet truncated: the original is read, and its copy taken over if it is truncated)."""
        limit = self.opener.settings.fingerprint_bytes
        head = _head(path, limit, follow=False)
        if not head:
            return False
        heads = [_head(name, limit)] + [read_head(t.fd, t.fp.length) for t in self.tails.tails.values()
                                        if t.path == name and t.readable and t.fp.length and not t.closed]
        return any(h and _same_start(head, h) for h in heads)

    def _open_unknown(self, name: str, path: str, known: set[str]) -> None:
        tail = self.opener.open(path, name=name, orphaned=True, known=self.tails.tails.get)
        if tail is None or tail.key in self.tails.tails:
            return
        known.add(tail.key)
        self.tails.add(tail)
        metrics.ROTATIONS.labels(input=self.name, kind="rotated_while_down").inc()
        log.info("reading a rotated file no position names (created and rotated while the agent was down)",
                 extra={"path": name, "now_at": path})


_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


def _same_start(a: bytes, b: bytes) -> bool:
    """Two files' first bytes are those of one generation: equal as far as both go, and that far holds at least
    one whole line (a shared timestamp prefix of two different first lines is not enough)."""
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n] and b"\n" in a[:n]


def _head(path: str, limit: int, follow: bool = True) -> bytes | None:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        return read_head(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def _key_of(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return file_key(st.st_dev, st.st_ino)


def _at_own_inode(stored: StoredPosition) -> bool:
    for p in (stored.real, stored.path):
        try:
            st = os.stat(p)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (stored.dev, stored.ino):
            return True
    return False


def _inode_exists(stored: StoredPosition) -> bool:
    return _at_own_inode(stored)


def _at(where: str, stored: StoredPosition) -> bool:
    try:
        st = os.stat(where)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (stored.dev, stored.ino)


def _same_file(a: str, b: str) -> bool:
    """`a` and `b` (a glob name, maybe a symlink) are the same file now."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
