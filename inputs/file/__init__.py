"""The `file` input: follows the files matching globs, through rotations, and emits their records in batches.

One module per question:
- `discovery`: which paths match the globs (names only);
- `watch`: change notification, one inotify instance for the whole input, degraded to polling without it;
- `follow`: the discovery *task*: events and polls -> files opened, renamed, deleted (never waits for outputs);
- `opening`: where reading of a newly found file starts, under which name and source id;
- `rotation`: rename, delete, copytruncate, rotation while the agent was down: every kind, in one place;
- `identity`: source ids per generation (document ids never collide);
- `reading`: the reading *task*: reads, emits (waits for the outputs: backpressure), finishes rotated files;
- `files`: the open files and their names, shared by the two tasks; `tail`, `reader`, `carry`: one file's bytes
  to records; `checkpoints`: what a position is and how a stored one is found again.

It must never emit a record twice in one run, skip bytes without a flagged record or a counted drop, or store an
offset beyond an unacknowledged record.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

from logagent import metrics
from logagent.component import Context, Emit, Input
from logagent.config import Section
from logagent.inputs.file.checkpoints import STARTED_KEY
from logagent.inputs.file.discovery import FileGlobs
from logagent.inputs.file.files import Tails
from logagent.inputs.file.follow import Follower
from logagent.inputs.file.opening import Opener
from logagent.inputs.file.reading import Reader
from logagent.inputs.file.rotation import Rotation
from logagent.inputs.file.settings import FileSettings, parse_file_settings
from logagent.inputs.file.tail import Tail
from logagent.inputs.file.watch import DirectoryWatch

log = logging.getLogger("logagent.input.file")


class FileInput(Input[FileSettings]):
    settings: FileSettings

    @classmethod
    def parse_settings(cls, section: Section) -> FileSettings:
        return parse_file_settings(section)

    def __init__(self, name: str, settings: FileSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.tracker = ctx.checkpoints.tracker(name)
        self.ready = asyncio.Event()  # set once existing files are followed and the directory watches are on
        self.degraded: str | None = None  # why the input runs degraded (inotify unavailable), once it does
        self._build()
        self._stopping = False

    def _build(self) -> None:
        """The parts of one run (a supervisor restarting the input after a failure gets fresh ones)."""
        settings, name = self.settings, self.name
        self.watch = DirectoryWatch(self._on_changes, self._on_degraded)
        self.files = Tails(name, self.watch, _max_open(settings.max_open_files), self._forced_close)
        self.opener = Opener(name, settings, self.tracker, self.ctx.services)
        self.rotation = Rotation(name, self.files, self.opener, self.tracker)
        self.follower = Follower(FileGlobs(settings.paths, settings.exclude), self.files, self.opener,
                                 self.rotation, self.watch, settings.poll_interval)
        self.reader = Reader(name, settings.tag or name, settings, self.ctx.config.limits, self.files, self.tracker,
                             self.opener, self.rotation)

    # what tests and `logagent status`-like callers look at
    @property
    def tails(self) -> dict[str, Tail]:
        return self.files.tails

    @property
    def by_path(self) -> dict[str, str]:
        return self.files.by_path

    def health(self) -> tuple[str, str]:
        """("ok" | "degraded", why): degraded while inotify is unavailable (records still flow, found later)."""
        return ("degraded", self.degraded) if self.degraded else ("ok", "ok")

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        if self.follower.polls or self.files.tails or self.ready.is_set():
            self._build()  # run again after a failure: start from the stored positions, as after a restart
        self.watch.start(loop)
        follower: asyncio.Task[None] | None = None
        try:
            self.opener.first_start = STARTED_KEY not in self.tracker.committed
            # watches first: a file renamed from now on is an event; one renamed before is found by `restore`
            self.follower.start()
            self.follower.scan(follow=False)
            updated = {k: u for i, k, _, u in self.ctx.checkpoints.load_all() if i == self.name}
            self.rotation.restore(updated)
            self.follower.scan()
            # `read_from: tail` was for the files already there; later ones start at 0
            self.opener.first_start = False
            self.tracker.set(STARTED_KEY, True)
            self.ready.set()
            follower = asyncio.create_task(self.follower.run(), name=f"input:{self.name}:discovery")
            reader = asyncio.ensure_future(self.reader.run(emit))
            done, _ = await asyncio.wait({follower, reader}, return_when=asyncio.FIRST_COMPLETED)
            if follower in done and not self._stopping:
                follower.result()  # discovery ended on an error: the input fails (and is restarted)
            await reader
        finally:
            self.follower.stop()
            if follower is not None and not follower.done():
                follower.cancel()
                try:
                    await follower
                except (asyncio.CancelledError, Exception):
                    pass
            self.watch.stop()
            self.files.close_all()
            self.reader.clear_lag()
            if self.degraded:
                metrics.INPUT_DEGRADED.labels(input=self.name, reason="inotify").set(0)

    async def stop(self) -> None:
        self._stopping = True
        self.reader.stopping = True
        self.follower.stop()
        self.files.wake.set()

    # -- wiring ---------------------------------------------------------------------------------------------
    def _on_changes(self, changes: Any) -> None:
        self.follower.on_changes(changes)

    def _on_degraded(self, reason: str) -> None:
        self.degraded = f"inotify unavailable, polling every {self.follower_interval():g}s: {reason}"
        metrics.INPUT_DEGRADED.labels(input=self.name, reason="inotify").set(1)
        self.report_degraded(self.degraded)

    def follower_interval(self) -> float:
        return self.settings.poll_interval / 4

    def _forced_close(self, tail: Tail) -> None:
        self.reader.forced_close(tail)


def _max_open(configured: int) -> int:
    """The configured limit, within what the process may open (leaving room for sockets, the database...)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = configured + 256
    if soft != resource.RLIM_INFINITY and soft < want and (hard == resource.RLIM_INFINITY or soft < hard):
        try:  # the soft limit is often 1024 while the hard one allows far more
            soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        except (ValueError, OSError):
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(16, min(configured, soft - 64))


__all__ = ("FileInput",)
