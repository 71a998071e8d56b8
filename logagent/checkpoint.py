"""Positions that survive restarts, advanced only by acknowledgements.

`CheckpointStore` is a SQLite database in WAL mode under the state dir: crash-safe (a `kill -9` leaves either the
old or the new position, never a torn one) and readable by `logagent status` while the agent runs.

`PositionTracker` turns out-of-order acknowledgements into an in-order checkpoint: a source (one file, the kernel
buffer, the journal) hands out one `AckToken` per batch with the position reached after that batch; the stored
position advances to the last batch whose predecessors are all acknowledged. Nothing here ever stores a position
whose records an output has not confirmed.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from logagent.record import AckToken

_SCHEMA = """
CREATE TABLE IF NOT EXISTS positions (
    input TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (input, key)
);
"""


class CheckpointStore:
    def __init__(self, state_dir: str | Path, readonly: bool = False) -> None:
        self.path = Path(state_dir) / "checkpoints.db"
        if readonly:
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power loss may lose the last commits (we then re-read: at-least-once), but
            # the database is never corrupt.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._trackers: dict[str, PositionTracker] = {}
        # Called when a tracker has positions to write; the pipeline sets it to wake its checkpoint writer, so
        # an acknowledged position reaches the disk within `checkpoint_interval` instead of on a fixed clock.
        self.on_dirty: Callable[[], None] | None = None

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
                self._db.execute("ROLLBACK")
                raise

    def tracker(self, input_name: str) -> PositionTracker:
        if input_name not in self._trackers:
            self._trackers[input_name] = PositionTracker(self, input_name)
        return self._trackers[input_name]

    def flush(self) -> None:
        for t in list(self._trackers.values()):
            t.flush()

    def close(self) -> None:
        self.flush()
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
        if not self._dirty and not self._deleted:
            return
        dirty, deleted = self._dirty, self._deleted
        self._dirty, self._deleted = {}, set()
        self.store.save(self.input_name, dirty, deleted)
