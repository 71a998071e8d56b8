"""The dead-letter file: where records a backend rejected for good are written, with the reason.

A record lands here instead of being dropped; only then is it acknowledged. One JSON object per line:
`{"time": ..., "output": ..., "reason": ..., "record": {...}}`.

`write` never raises: it is the last resort of every error path, and an exception here would end the task that
called it (issue 9: a record whose integer is beyond 64 bits made the dead-letter write raise too and ended the
output). A record orjson cannot serialize is written with its unserializable values as strings (the stdlib
encoder as a second resort, then `repr`). A write that fails (disk full, file removed, read-only filesystem) is
counted in `logagent_dropped_records_total{reason="dead_letter_failed"}` and logged (once per 10 s at most); the
file is opened again on the next write.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from logagent import metrics

log = logging.getLogger("logagent.deadletter")

_LOG_EVERY = 10.0  # seconds between two error logs while writes keep failing


class DeadLetter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fh: Any = None
        self._last_error_log = 0.0
        self.failed = 0  # records that could not be written (also counted in the metric)

    def write(self, output: str, reason: str, records: Iterable[dict[str, Any]]) -> int:
        """Append the records with the reason; returns how many were written. Never raises."""
        try:
            now = time.time()
            lines = [_line(now, output, reason, r) for r in records]
        except Exception as e:  # the iterable itself failed (a generator over a broken batch)
            self._failed(output, 1, f"cannot list the records: {type(e).__name__}: {e}")
            return 0
        if not lines:
            return 0
        try:
            with self._lock:
                try:
                    if self._fh is None:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        self._fh = open(self.path, "ab")
                    self._fh.write(b"\n".join(lines) + b"\n")
                    self._fh.flush()
                    os.fsync(self._fh.fileno())
                except BaseException:
                    self._reset()
                    raise
        except Exception as e:
            self._failed(output, len(lines), f"{type(e).__name__}: {e}")
            return 0
        metrics.DEAD_LETTERED.labels(output=output, reason=_reason_label(reason)).inc(len(lines))
        return len(lines)

    def _reset(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass  # the bytes it held are the ones whose write failed: already counted

    def _failed(self, output: str, n: int, error: str) -> None:
        self.failed += n
        metrics.DROPPED.labels(component=output, reason="dead_letter_failed").inc(n)
        metrics.ERRORS.labels(component="dead_letter", kind="write_failed").inc()
        now = time.monotonic()
        if now - self._last_error_log >= _LOG_EVERY:
            self._last_error_log = now
            log.error("dead-letter write failed; these records are lost (counted in "
                      "logagent_dropped_records_total{reason=\"dead_letter_failed\"})",
                      extra={"path": str(self.path), "output": output, "records": n, "error": error,
                             "failed_total": self.failed})

    def close(self) -> None:
        with self._lock:
            self._reset()


def _line(now: float, output: str, reason: str, record: Any) -> bytes:
    entry = {"time": now, "output": output, "reason": reason, "record": record}
    try:
        return orjson.dumps(entry, default=str)
    except (TypeError, ValueError):
        pass
    try:  # integers beyond 64 bits, non-string keys: the stdlib encoder takes them
        return json.dumps(entry, default=str, ensure_ascii=False, skipkeys=False).encode("utf-8", "surrogateescape")
    except (TypeError, ValueError, RecursionError):
        entry["record"] = {"unserializable": repr(record)[:1 << 20]}
        return orjson.dumps(entry, default=str)


def _reason_label(reason: str) -> str:
    """Metric labels must stay low-cardinality: the reason's first word (e.g. 'mapper_parsing_exception')."""
    head = reason.split(":", 1)[0].strip().split(" ", 1)[0]
    return head[:64] or "unknown"
