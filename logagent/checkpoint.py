"""Positions that survive restarts, advanced only by acknowledgements.

`CheckpointStore` is a SQLite database in WAL mode under the state dir: crash-safe (a `kill -9` leaves either the
old or the new position, never a torn one) and readable by `logagent status` while the agent runs.

`PositionTracker` turns out-of-order acknowledgements into an in-order checkpoint: a source (one file, the kernel
buffer, the journal) hands out one `AckToken` per batch with the position reached after that batch; the stored
position advances to the last batch whose predecessors are all acknowledged. Nothing here ever stores a position
whose records an output has not confirmed.

Failures (issue 9):
- A write that fails (disk full, I/O error) keeps the positions it was writing: they are merged back under any newer
  ones and written by the next flush, so a retry after the disk recovers loses none (`PositionTracker.flush`).
- A state dir that cannot hold the database at start (missing permission, full disk) raises `StateDirError`, a
  one-line message naming the state dir, which `logagent run` prints before exiting 1.
- A `checkpoints.db` that is not a database (or a malformed one) is renamed `checkpoints.db.corrupt-<time>` (with
  its -wal/-shm files), kept for inspection, logged at error level and counted
  (`logagent_errors_total{component="checkpoints",kind="corrupt_moved_aside"}`); a fresh store is created, so every
  input starts as on its very first start (per `read_from`).
"""

from __future__ import annotations

import collections
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from logagent import metrics
from logagent.record import AckToken

log = logging.getLogger("logagent.checkpoints")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (
    input TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (input, key)
);
"""


class StateDirError(Exception):
    """The state dir cannot hold the checkpoint store; the message is one line and names the directory."""


class CheckpointStore:
    def __init__(self, state_dir: str | Path, readonly: bool = False) -> None:
        self.path = Path(state_dir) / "checkpoints.db"
        self.moved_aside: Path | None = None  # where a corrupt database was moved at open
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self._db = self._open(Path(state_dir))
        self._lock = threading.Lock()
        self._trackers: dict[str, PositionTracker] = {}
        # Called when a tracker has positions to write; the pipeline sets it to wake its checkpoint writer, so
        # an acknowledged position reaches the disk within `checkpoint_interval` instead of on a fixed clock.
        self.on_dirty: Callable[[], None] | None = None

    def _open(self, state_dir: Path) -> sqlite3.Connection:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateDirError(f"state dir {state_dir}: cannot create it: {e.strerror}") from None
        try:
            return self._connect()
        except sqlite3.OperationalError as e:  # cannot open / write: permissions, full disk, I/O error
            raise StateDirError(f"state dir {state_dir}: cannot open {self.path.name}: {e}") from None
        except sqlite3.DatabaseError as e:  # not a database, malformed: keep it for inspection, start afresh
            self.moved_aside = self._move_aside(state_dir, e)
        try:
            return self._connect()
        except sqlite3.Error as e:
            raise StateDirError(f"state dir {state_dir}: cannot create a new {self.path.name}: {e}") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power loss may lose the last commits (we then re-read: at-least-once), but
            # the database is never corrupt.
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check[0] if check else 'no answer'}")
            db.execute("SELECT input, key, value, updated FROM positions LIMIT 1").fetchall()
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, state_dir: Path, error: Exception) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    os.replace(src, f"{target}{suffix}")
        except OSError as e:
            raise StateDirError(f"state dir {state_dir}: {self.path.name} is corrupt ({error}) and cannot be moved "
                                f"aside: {e.strerror}") from None
        metrics.ERRORS.labels(component="checkpoints", kind="corrupt_moved_aside").inc()
        log.error("checkpoint database is corrupt; moved aside and starting with no positions: every input starts "
                  "as on its first start (read_from), files already shipped may be shipped again",
                  extra={"error": str(error), "moved_to": str(target), "state_dir": str(state_dir)})
        return target

    def load(self, input_name: str) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM positions WHERE input = ?", (input_name,)).fetchall()
        return {k: orjson.loads(v) for k, v in rows}

    def load_all(self) -> list[tuple[str, str, Any, float]]:
        with self._lock:
            rows = self._db.execute("SELECT input, key, value, updated FROM positions ORDER BY input, key").fetchall()
        return [(i, k, orjson.loads(v), u) for i, k, v, u in rows]

    def save(self, input_name: str, positions: dict[str, Any], deleted: set[str] | None = None) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO positions (input, key, value, updated) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (input, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                    [(input_name, k, orjson.dumps(v), now) for k, v in positions.items()],
                )
                if deleted:
                    self._db.executemany(
                        "DELETE FROM positions WHERE input = ? AND key = ?", [(input_name, k) for k in deleted]
                    )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have rolled back already
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    def tracker(self, input_name: str) -> PositionTracker:
        if input_name not in self._trackers:
            self._trackers[input_name] = PositionTracker(self, input_name)
        return self._trackers[input_name]

    def flush(self) -> None:
        """Write every tracker's changes; each is tried even when one fails, then the first error is raised."""
        error: BaseException | None = None
        for t in list(self._trackers.values()):
            try:
                t.flush()
            except Exception as e:
                error = error or e
        if error is not None:
            raise error

    def unwritten(self) -> int:
        return sum(t.unwritten() for t in self._trackers.values())

    def close(self) -> None:
        try:
            self.flush()
        except Exception as e:
            log.error("checkpoint write failed at shutdown; records since the last written positions will be read "
                      "again on restart", extra={"error": f"{type(e).__name__}: {e}", "path": str(self.path),
                                                  "unwritten": self.unwritten()})
        with self._lock:
            self._db.close()


class PositionTracker:
    """In-order commit of acknowledged positions for one input, keyed by source (e.g. a file's identity)."""

    def __init__(self, store: CheckpointStore, input_name: str) -> None:
        self.store = store
        self.input_name = input_name
        self.committed: dict[str, Any] = store.load(input_name)
        self._outstanding: dict[str, collections.deque[list[Any]]] = {}
        self._dirty: dict[str, Any] = {}
        self._deleted: set[str] = set()
        self.listeners: list[Callable[[str, Any], None]] = []

    def token(self, key: str, position: Any) -> AckToken:
        """A token for a batch; when it and all earlier tokens of `key` are done, `position` is committed."""
        entry = [position, False]
        queue = self._outstanding.setdefault(key, collections.deque())
        queue.append(entry)

        def on_done() -> None:
            entry[1] = True
            self._advance(key)

        return AckToken(on_done)

    def outstanding(self, key: str) -> int:
        return len(self._outstanding.get(key, ()))

    def pending(self) -> int:
        """Tokens handed out and not yet committed, over all keys (hot reload waits for 0)."""
        return sum(len(q) for q in self._outstanding.values())

    def _advance(self, key: str) -> None:
        queue = self._outstanding.get(key)
        latest = None
        moved = False
        while queue and queue[0][1]:
            latest = queue.popleft()[0]
            moved = True
        if moved:
            self.committed[key] = latest
            self._dirty[key] = latest
            self._deleted.discard(key)
            self._notify()
            for listener in self.listeners:
                listener(key, latest)
        if queue is not None and not queue:
            del self._outstanding[key]

    def set(self, key: str, position: Any) -> None:
        """Record a position that needs no acknowledgement (e.g. a new file's starting point)."""
        self.committed[key] = position
        self._dirty[key] = position
        self._deleted.discard(key)
        self._notify()

    def forget(self, key: str) -> None:
        """The source is finished and gone (a rotated file read to its end and deleted)."""
        self.committed.pop(key, None)
        self._dirty.pop(key, None)
        self._deleted.add(key)
        self._notify()

    def _notify(self) -> None:
        if self.store.on_dirty is not None:
            self.store.on_dirty()

    def flush(self) -> None:
        """Write what changed. On failure the positions are kept (newer ones set meanwhile win) and it raises:
        the next flush writes them."""
        if not self._dirty and not self._deleted:
            return
        dirty, deleted = self._dirty, self._deleted
        self._dirty, self._deleted = {}, set()
        try:
            self.store.save(self.input_name, dirty, deleted)
        except BaseException:
            for key, pos in dirty.items():
                if key not in self._dirty and key not in self._deleted:
                    self._dirty[key] = pos
            self._deleted |= {k for k in deleted if k not in self._dirty}
            raise

    def unwritten(self) -> int:
        """Positions changed and not yet written (a failing disk keeps them here)."""
        return len(self._dirty) + len(self._deleted)


async def write_positions(store: CheckpointStore, interval: Callable[[], float], health: Any = None) -> None:
    """Write acknowledged positions soon after they advance (at most once per `interval()`): the shorter the gap,
    the fewer records a `kill -9` makes the next run send again.

    A failed write keeps its positions (see `PositionTracker.flush`) and is retried with backoff (up to 5 s)
    until it succeeds; meanwhile the checkpoint writer is reported degraded (/readyz) and the error is logged when
    the failures start, every 60 s while they last, and when writes work again."""
    import asyncio

    dirty = asyncio.Event()
    store.on_dirty = dirty.set
    dirty.set()  # positions set before the writer started (a new file's starting point)
    delay: float | None = None  # the retry delay while writes fail
    failing_since: float | None = None
    last_log = 0.0
    while True:
        await dirty.wait()
        dirty.clear()
        await asyncio.sleep(interval() if delay is None else delay)
        try:
            store.flush()
        except Exception as e:
            dirty.set()  # retry: the positions are kept
            now = time.monotonic()
            delay = min(5.0, max(interval(), 0.05) * 2 if delay is None else delay * 2)
            metrics.ERRORS.labels(component="checkpoints", kind="write_failed").inc()
            error = f"{type(e).__name__}: {e}"
            if failing_since is None or now - last_log >= 60.0:
                log.error("checkpoint write failed; positions are kept and the write is retried",
                          extra={"error": error, "path": str(store.path), "unwritten": store.unwritten(),
                                 "retry_s": delay})
                last_log = now
            if failing_since is None:
                failing_since = now
            if health is not None:
                health.degraded("pipeline", "checkpoints", f"writes failing: {error}"[:300])
            continue
        if failing_since is not None:
            log.warning("checkpoint writes work again; the kept positions are written",
                        extra={"path": str(store.path), "failed_for_s": round(time.monotonic() - failing_since, 1)})
            failing_since = None
            delay = None
            if health is not None:
                health.recovered("pipeline", "checkpoints")
