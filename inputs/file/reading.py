"""Reading: the task that reads the open files and emits their records. The only part that waits for outputs.

One read (up to `read_buffer`) per file with data per round, then what is complete is emitted, so one busy file
cannot starve the others. Rotated files are read first, and a name's new file waits until the old one was read
to its end, so records of one source keep their order across a rotation. Each batch carries an `AckToken` with
the offset that is safe once it is acknowledged; positions are stored only then.

A rotated file read to its end that has not grown for `rotate_wait` is finished: what it held is emitted, its
descriptor closed. Its position stays while the file exists (a restart finds nothing left to read) and goes once
the file is deleted and its batches are acknowledged.

It must never emit a record twice in one run, skip bytes without a flagged record or a counted drop, or store an
offset beyond an unacknowledged record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from logagent import metrics, speedups
from logagent.checkpoint import PositionTracker
from logagent.component import Emit
from logagent.config import Limits
from logagent.inputs.file.carry import hand_over
from logagent.inputs.file.checkpoints import file_key
from logagent.inputs.file.files import Tails
from logagent.inputs.file.opening import Opener
from logagent.inputs.file.reader import settle_utf8
from logagent.inputs.file.rotation import DROPPED_BYTES, Rotation
from logagent.inputs.file.settings import FileSettings
from logagent.inputs.file.tail import Tail
from logagent.record import Batch, Rows, as_records

log = logging.getLogger("logagent.input.file")

_LINGER = 0.1  # seconds between a wake-up from idle and the read round it triggers


class Reader:
    def __init__(self, name: str, tag: str, settings: FileSettings, limits: Limits, tails: Tails,
                 tracker: PositionTracker, opener: Opener, rotation: Rotation) -> None:
        self.name = name
        self.tag = tag
        self.settings = settings
        self.limits = limits
        self.tails = tails
        self.tracker = tracker
        self.opener = opener
        self.rotation = rotation
        self.stopping = False
        self._emit: Emit | None = None
        self._forget_later: set[str] = set()  # deleted files whose positions go once their batches are acked
        self._finished: dict[str, str] = {}  # rotated files read to the end and closed -> where they were last seen
        self._lag_paths: set[str] = set()
        self._next_held_check = 0.0
        self._next_housekeeping = 0.0

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        tails = self.tails
        while not self.stopping:
            now = time.monotonic()
            await self._read_round(now)
            await self._flush_held(now)
            await self._finish_orphans(now)
            if now >= self._next_housekeeping:
                self._next_housekeeping = now + self.settings.poll_interval
                self._update_lag()
                self._forget_removed()
            self._forget_acknowledged()
            if self.stopping:
                break
            if not tails.dirty:
                timeout = max(0.0, min(self._next_flush_due(now), self._next_housekeeping - time.monotonic()))
                try:
                    await asyncio.wait_for(tails.wake.wait(), timeout)
                    # woken from idle by a write: let the writes of the next moments gather, so a busy node's
                    # many files are read in rounds of several lines each, not one batch per line
                    await asyncio.sleep(_LINGER)
                except asyncio.TimeoutError:
                    pass
                tails.wake.clear()
            else:
                await asyncio.sleep(0)  # let the router, the outputs and discovery run between read rounds

    # -- reading --------------------------------------------------------------------------------------------
    async def _read_round(self, now: float) -> None:
        tails = self.tails.tails
        order = sorted(self.tails.dirty, key=lambda k: not (k in tails and tails[k].orphaned))
        unfinished: set[str] | None = None
        for key in order:
            if self.stopping:
                return
            tail = tails.get(key)
            if tail is None or tail.closed:
                self.tails.dirty.discard(key)
                continue
            if not tail.orphaned:
                if unfinished is None:
                    unfinished = {t.path for t in tails.values() if t.orphaned and not t.at_eof}
                if tail.path in unfinished:
                    continue
                if not tail.started:
                    self._carry_over(tail)
            try:
                live = tail.readable and not tail.orphaned
                if live:
                    self.rotation.check(tail, os.fstat(tail.fd).st_size, head=False)
                # one small pread per read, after it: a copytruncate whose new contents already reach past our
                # offset shows only in the file's first bytes
                got = tail.read(self.settings.read_buffer, now, verify=live)
                if tail.rewritten:
                    self.rotation.check(tail, os.fstat(tail.fd).st_size, head=False)
                    continue
            except OSError as e:
                metrics.ERRORS.labels(component=self.name, kind="read_failed").inc()
                log.warning("read failed; closing the file (it is found again by the next scan)",
                            extra={"path": tail.path, "error": e.strerror})
                self.tails.drop(tail)
                continue
            if got == 0 or tail.at_eof:
                self.tails.dirty.discard(key)
            if tail.has_pending and (tail.at_eof or len(tail.pending) >= self.limits.batch_max_records
                                     or tail.pending_bytes >= self.limits.batch_max_bytes):
                await self._emit_pending(tail)
            elif not tail.has_pending and tail.at_eof:
                self._advance_unheld(tail)

    def _carry_over(self, tail: Tail) -> None:
        """A file about to be read for the first time under a rotated file's name reads on into that file's
        unfinished record (see `carry`): a trace cut by the kubelet's rotation comes out whole."""
        for pred in list(self.tails.tails.values()):
            if pred.orphaned and pred.readable and pred.path == tail.path and pred is not tail and hand_over(
                    pred, tail, lambda: self.opener.fresh_joiner(tail.path)):
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
        if tail.source_id is None:
            tail.fix_source_id(final=True)
        flagged = self._finish_flagged(records)
        token = self.tracker.token(tail.pos_key, tail.position())
        assert self._emit is not None
        await self._emit(Batch(self.tag, records, tail.meta, token, nbytes, flagged))

    def _advance_unheld(self, tail: Tail) -> None:
        """Bytes that made no record (a skipped over-long line's rest, blank joins) still move the checkpoint,
        but only when nothing before them is waiting for an acknowledgement."""
        if tail.waits_for and self.tracker.outstanding(tail.waits_for):
            return  # records of this file read before a copytruncate are still unacknowledged under the original
        if tail.readable and self.tracker.outstanding(tail.pos_key) == 0:
            pos = tail.position()
            committed = self.tracker.committed.get(tail.pos_key)
            if not isinstance(committed, dict) or committed.get("offset") != pos["offset"] \
                    or committed.get("fp") != pos["fp"] or committed.get("sid") != pos.get("sid"):
                self.tracker.set(tail.pos_key, pos)

    def _finish_flagged(self, records: Rows) -> int:
        """The rare records with flags: text kept undecoded until complete is decoded (`settle_utf8`), and each
        flag is counted. Returns how many records carry flags (`Batch.flagged`)."""
        with_key = speedups.with_key
        if with_key is not None:
            flagged = with_key(records, "flags", None)
        else:
            flagged = [r for r in as_records(records) if "flags" in r]
        if not flagged:
            return 0
        settle_utf8(flagged)
        counts: dict[str, int] = {}
        for r in flagged:
            for f in r.get("flags", ()):
                counts[f] = counts.get(f, 0) + 1
        for f, n in counts.items():
            metrics.FLAGGED.labels(component=self.name, flag=f).inc(n)
        return len(flagged)

    async def _flush_held(self, now: float) -> None:
        if now < self._next_held_check:
            return
        self._next_held_check = now + 0.2
        for tail in list(self.tails.tails.values()):
            if tail.closed:
                continue
            tail.flush_partial(now, self.settings.partial_line_flush)
            if tail.has_pending and not (tail.key in self.tails.dirty and not tail.at_eof):
                await self._emit_pending(tail)

    def _next_flush_due(self, now: float) -> float:
        """Seconds until a held partial line or a rotated file's close is due (bounded by the poll interval)."""
        due = self.settings.poll_interval
        for tail in self.tails.tails.values():
            if tail.splitter.pending:
                due = min(due, max(0.0, tail.splitter.pending_since + self.settings.partial_line_flush - now))
            if tail.joiner.held_from() is not None:
                due = min(due, 0.25)
            if tail.orphaned:
                due = min(due, max(0.05, tail.last_growth + self.settings.rotate_wait - now))
        return due

    # -- finishing rotated files ----------------------------------------------------------------------------
    async def _finish_orphans(self, now: float) -> None:
        for tail in [t for t in self.tails.tails.values() if t.orphaned]:
            if not tail.readable:
                if not tail.has_pending:
                    self.tails.drop(tail)
                continue
            if tail.key in self.tails.dirty or now - tail.last_growth < self.settings.rotate_wait or tail.carrying:
                continue
            try:
                st = os.fstat(tail.fd)
            except OSError:
                st = None
            if st is not None and st.st_size > tail.read_offset:
                self.tails.mark(tail.key)
                continue
            await self.finish(tail, now)

    async def finish(self, tail: Tail, now: float) -> None:
        tail.flush_partial(now, 0.0, force=True)
        await self._emit_pending(tail)
        try:
            deleted = os.fstat(tail.fd).st_nlink == 0
        except OSError:
            deleted = True
        self.tails.drop(tail)
        if deleted:
            self._forget_later.add(tail.key)
        else:
            self._finished[tail.key] = tail.real
        log.debug("finished rotated file", extra={"path": tail.path, "deleted": deleted})

    def forced_close(self, tail: Tail) -> None:
        """The open files limit closes a rotated file (`Tails.make_room`): what was not read is dropped, counted."""
        try:
            unread = max(0, os.fstat(tail.fd).st_size - tail.read_offset)
        except OSError:
            unread = 0
        if unread or tail.has_pending:
            DROPPED_BYTES.labels(input=self.name, reason="max_open_files").inc(unread)
            log.warning("open files limit: closing a rotated file before it was read to its end",
                        extra={"path": tail.path, "now_at": tail.real, "unread_bytes": unread,
                               "max_open_files": self.tails.max_open})
        tail.flush_partial(0.0, 0.0, force=True)
        # its held records go out with the next round (a retired generation), its descriptor now
        self.tails.drop(tail)
        if tail.has_pending:
            tail.readable = False
            tail.fd = -1
            tail.closed = False
            self.tails.tails[tail.key] = tail
            self.tails.mark(tail.key)
        else:
            self._finished[tail.key] = tail.real

    # -- positions ------------------------------------------------------------------------------------------
    def _update_lag(self) -> None:
        lag = metrics.FILE_LAG
        seen = set()
        for key, tail in self.tails.tails.items():
            committed = self.tracker.committed.get(tail.pos_key)
            offset = committed.get("offset", 0) if isinstance(committed, dict) else 0
            lag.labels(input=self.name, path=tail.path).set(max(0, tail.size - offset))
            seen.add(tail.path)
        for path in self._lag_paths - seen:
            remove_gauge(lag, self.name, path)
        self._lag_paths = seen

    def clear_lag(self) -> None:
        for path in self._lag_paths:
            remove_gauge(metrics.FILE_LAG, self.name, path)

    def _forget_removed(self) -> None:
        """Positions of finished rotated files are kept while the files exist, under any name in their directory (a
        restart then finds nothing left to read in them; logrotate renames `x.log.1` to `x.log.2`); once rotation
        deletes them, their positions go, so the store does not grow with every rotation."""
        if not self._finished:
            return
        inodes: dict[str, set[str] | None] = {}  # directory -> keys of the files in it (None: unreadable)
        for key, path in list(self._finished.items()):
            directory = os.path.dirname(path)
            if directory not in inodes:
                try:
                    inodes[directory] = {file_key(st.st_dev, st.st_ino) for st in _stats(directory)}
                except OSError:
                    inodes[directory] = None
            present = inodes[directory]
            if (present is None or key not in present) and key not in self.tails.tails:
                del self._finished[key]
                self._forget_later.add(key)

    def _forget_acknowledged(self) -> None:
        if not self._forget_later:
            return
        for key in list(self._forget_later):
            if key in self.tails.tails:  # reopened (inode reuse is told apart by fingerprint on open)
                self._forget_later.discard(key)
            elif self.tracker.outstanding(key) == 0:
                self.tracker.forget(key)
                self._forget_later.discard(key)


def _stats(directory: str) -> list[os.stat_result]:
    out = []
    for entry in os.scandir(directory):
        try:
            out.append(entry.stat(follow_symlinks=False))
        except OSError:
            continue
    return out


def remove_gauge(gauge: Any, input_name: str, path: str) -> None:
    try:
        gauge.remove(input_name, path)
    except KeyError:
        pass
