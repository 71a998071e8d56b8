"""The dead-letter file: where records a backend rejected for good are written, with the reason.

A record lands here instead of being dropped; only then is it acknowledged. One JSON object per line:
`{"time": ..., "output": ..., "reason": ..., "record": {...}}`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from logagent import metrics


class DeadLetter:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fh: Any = None

    def write(self, output: str, reason: str, records: Iterable[dict[str, Any]]) -> int:
        now = time.time()
        lines = [
            orjson.dumps({"time": now, "output": output, "reason": reason, "record": r}, default=str)
            for r in records
        ]
        if not lines:
            return 0
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "ab")
            self._fh.write(b"\n".join(lines) + b"\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())
        metrics.DEAD_LETTERED.labels(output=output, reason=_reason_label(reason)).inc(len(lines))
        return len(lines)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _reason_label(reason: str) -> str:
    """Metric labels must stay low-cardinality: the reason's first word (e.g. 'mapper_parsing_exception')."""
    head = reason.split(":", 1)[0].strip().split(" ", 1)[0]
    return head[:64] or "unknown"
