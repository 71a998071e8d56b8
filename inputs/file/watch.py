"""Change notification: inotify (watchdog) on directories, bridged into the event loop.

The watchdog observer runs in its own thread. Events are coalesced there (many writes to one file become one
"modified" entry) and handed to the loop with one `call_soon_threadsafe` per burst, so a busy file costs no more
than one wake-up per loop turn. Missing a notification must never lose data: the input's stat polling catches
whatever this module misses. This module never touches files itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("logagent.input.file.watch")


@dataclass
class Changes:
    modified: set[str] = field(default_factory=set)  # files written to (or closed after writing)
    # structural changes in event order: ("created"|"deleted"|"moved", src, dest or "", is_directory)
    structural: list[tuple[str, str, str, bool]] = field(default_factory=list)


class _Bridge(FileSystemEventHandler):
    def __init__(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[], None]) -> None:
        self.loop = loop
        self.deliver = deliver
        self.lock = threading.Lock()
        self.changes = Changes()
        self.scheduled = False

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = _text(event.src_path)
        with self.lock:
            if kind in ("modified", "closed"):
                if event.is_directory:
                    return
                self.changes.modified.add(src)
            elif kind in ("created", "deleted", "moved"):
                self.changes.structural.append((kind, src, _text(getattr(event, "dest_path", "") or ""),
                                                event.is_directory))
            else:
                return
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self.deliver)
        except RuntimeError:  # loop closed during shutdown
            pass

    def take(self) -> Changes:
        with self.lock:
            changes, self.changes = self.changes, Changes()
            self.scheduled = False
        return changes


def _text(path: Any) -> str:
    return path.decode() if isinstance(path, bytes) else str(path)


class DirectoryWatch:
    """Reference-counted inotify watches on directories; `on_changes` runs in the loop with coalesced changes."""

    def __init__(self, on_changes: Callable[[Changes], None]) -> None:
        self.on_changes = on_changes
        self._observer: Any = None
        self._bridge: _Bridge | None = None
        self._watches: dict[tuple[str, bool], list[Any]] = {}  # (dir, recursive) -> [ObservedWatch, refcount]

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._bridge = _Bridge(loop, self._deliver)
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()

    def _deliver(self) -> None:
        if self._bridge is not None:
            self.on_changes(self._bridge.take())

    def watching(self, directory: str, recursive: bool = False) -> bool:
        return (directory, recursive) in self._watches

    def watch(self, directory: str, recursive: bool = False) -> bool:
        """Add a reference to a watch; False if the directory cannot be watched now (polling still covers it)."""
        key = (directory, recursive)
        entry = self._watches.get(key)
        if entry is not None:
            entry[1] += 1
            return True
        if self._observer is None:
            return False
        try:
            handle = self._observer.schedule(self._bridge, directory, recursive=recursive)
        except OSError as e:
            log.debug("cannot watch directory; relying on polling",
                      extra={"directory": directory, "error": e.strerror})
            return False
        self._watches[key] = [handle, 1]
        return True

    def unwatch(self, directory: str, recursive: bool = False) -> None:
        key = (directory, recursive)
        entry = self._watches.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del self._watches[key]
        try:
            self._observer.unschedule(entry[0])
        except (KeyError, OSError):
            pass

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        self._watches.clear()
