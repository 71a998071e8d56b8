"""Flow control in bytes: the windows that bound the pipeline's memory.

The pipeline holds batches in three places: the queue between the inputs and the router, the queue in front of
each output, and the batches an output holds unacknowledged (handed to it, not yet confirmed by its backend).
Each is bounded by the bytes its batches were read as (`Batch.nbytes`) and, as a safety net for inputs whose
batches carry no byte count, by a number of batches.

Why bytes (issue 9, item 1b): a window counted in batches throttles many small batches. 200 files at 25 lines/s
each make ~200 batches of a few hundred bytes every second; with a window of 16 batches per output, the router
waited for the output's request to be cut (`batch.max_wait`) and confirmed before it could take the next 16, so
lines were shipped ~18 s late. Counted in bytes, the same window holds all of them (a few hundred KiB) and one
request per `max_wait` carries everything.

What a batch costs (`batch_cost`): the bytes it was read as plus `limits.record_overhead` (default 400) per
record. The records are Python dicts, several times their raw size: measured with tracemalloc on the CRI lines of
benchmarks/bench_agent.py (171 B read per record), 579 B per record as the parser makes them, i.e. the raw bytes
plus ~408 B of dict, key slots, `time`/`time_ns`/offset objects and string headers. Counted this way the windows
bound memory whatever the line length: short lines cost ~3.4x their bytes, 4 KiB lines ~1.1x.

`ByteWindow` admits waiters in order (first come, first served, so a large batch is not starved by small ones);
a single batch larger than the whole window is admitted alone, when the window is empty.

A window that makes a caller wait calls its `on_block` first. The pipeline uses it on each output's window to make
the output ship what it holds now (`Output.cut`): an HTTP output fills a request until `batch.max_records`,
`batch.max_bytes` or `batch.max_wait`, and a window smaller than a request would otherwise wait for `max_wait`
with every byte of it in a request nobody sends. Cut on demand, a window of a few MiB costs no throughput, and the
records held unacknowledged (as encoded items) are what bounds the agent's peak memory.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

RECORD_OVERHEAD = 400  # bytes a record costs in memory beyond the bytes it was read as (see above)


def batch_cost(batch: Any, record_overhead: int = RECORD_OVERHEAD) -> int:
    """What a batch holds in memory, as the windows count it: its bytes read plus an overhead per record."""
    return int(batch.nbytes) + record_overhead * int(batch.count())


class ByteWindow:
    """At most `max_bytes` and `max_items` held; `acquire` waits (FIFO) for room, `release` gives it back."""

    def __init__(self, max_bytes: int, max_items: int, on_block: Callable[[], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_items = max_items
        self.bytes = 0
        self.items = 0
        self.on_block = on_block  # called when an `acquire` has to wait (before it waits)
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, n: int) -> bool:
        if self.items == 0:
            return True  # anything fits an empty window, even a batch larger than it
        return self.items < self.max_items and self.bytes + n <= self.max_bytes

    async def acquire(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self.bytes += n
            self.items += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        if self.on_block is not None:
            self.on_block()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(n)  # admitted just as we were cancelled: give the room back
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
                self._wake()
            raise

    def release(self, n: int) -> None:
        self.bytes -= n
        self.items -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(n):
                return
            self._waiters.popleft()
            self.bytes += n
            self.items += 1
            fut.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)


class ByteQueue(Generic[T]):
    """A FIFO queue bounded by a `ByteWindow`: `put` waits for room, `get` frees the item's bytes."""

    def __init__(self, max_bytes: int, max_items: int) -> None:
        self.window = ByteWindow(max_bytes, max_items)
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self._ready = asyncio.Event()

    async def put(self, item: T, nbytes: int) -> None:
        await self.window.acquire(nbytes)
        self.put_unbounded(item, nbytes, counted=True)

    def put_unbounded(self, item: T, nbytes: int = 0, counted: bool = False) -> None:
        """Enqueue without waiting (the stop marker at shutdown must not wait behind a full queue)."""
        if not counted:
            nbytes = -1  # not in the window: nothing to release
        self._items.append((item, nbytes))
        self._ready.set()

    async def get(self) -> T:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item, nbytes = self._items.popleft()
        if nbytes >= 0:
            self.window.release(nbytes)
        return item

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        """Something is waiting for room (the reload uses this to name the outputs that block the router)."""
        return self.window.waiting > 0

    @property
    def nbytes(self) -> int:
        return self.window.bytes
