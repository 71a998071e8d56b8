"""The glibc allocator as the agent tunes it: `tune()` (the command line calls it before the event loop starts)
sets a high trim threshold and starts the `malloc-trim` thread; `trim()` gives the free heap back at once (the
pipeline calls it when start-up is over). Both are no-ops on other libcs, with any MALLOC_* setting in the
environment, and in processes that never called `tune()` (tests)."""

from __future__ import annotations

import os
from collections.abc import Callable

_malloc_trim: Callable[[int], int] | None = None


def tune() -> None:
    """Keep glibc from handing freed heap back to the kernel after every batch.

    Each batch allocates and frees a few MB (records, line lists, encoded output). With glibc's default dynamic
    trim threshold the heap top is returned with brk() after nearly every batch and faulted in again for the
    next one: measured on benchmarks/bench_tail.py, ~2 million page faults per 330 MB of log, 40% of the agent's
    CPU spent in the kernel. A fixed 64 MiB trim threshold keeps that much free heap for reuse (RSS stays below
    the peak it already reached). Explicit MALLOC_* environment settings win; other libcs are left alone.
    """
    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad = -1, -2  # <malloc.h>
    mallopt(m_trim_threshold, 64 << 20)
    mallopt(m_top_pad, 16 << 20)
    interval = float(os.environ.get("LOGAGENT_TRIM_INTERVAL", TRIM_INTERVAL))
    if interval > 0:
        global _malloc_trim
        _malloc_trim = ctypes.CDLL(None).malloc_trim
        _start_trimmer(interval)


TRIM_INTERVAL = 10.0


def _start_trimmer(interval: float) -> None:
    """Every `interval` seconds, give the free heap back to the kernel (`malloc_trim(0)`: the top, and the free
    pages inside the heap). The 64 MiB trim threshold above keeps a burst's freed memory for the next batches;
    without this the agent would hold its high-water mark for ever after one burst. Once per 10 s the
    refaults cost nothing measurable (a few thousand page faults against the ~2 million per 330 MB the default
    threshold cost). A thread, so that it works whatever the event loop is doing; glibc locks its arenas."""
    import ctypes
    import threading
    import time

    def run() -> None:
        try:
            ctypes.CDLL(None).prctl(15, b"malloc-trim", 0, 0, 0)  # PR_SET_NAME: shown by top -H, /proc/*/task
        except (OSError, AttributeError):
            pass
        while True:
            time.sleep(interval)
            trim()

    threading.Thread(target=run, name="malloc-trim", daemon=True).start()


def trim() -> None:
    """`malloc_trim(0)` now, when `tune()` turned trimming on (not with LOGAGENT_TRIM_INTERVAL=0). Start-up
    (compiling modules, reading the config, building the pipeline) frees a few MB of temporaries that the 64 MiB
    trim threshold would keep resident until the thread's first round: trimming when the pipeline is ready gives
    them back (idle RSS, issue 11: ~0.6 MB)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
