"""The optional native accelerator (`logagent/_speedups.c`, built by `pip install`, see setup.py) or None.

The hot loops that use it keep their pure-Python code as the reference: the native functions accept a strict
subset of the inputs (the common CRI batch) and give byte-for-byte the same result, or answer None and leave the
batch to Python (tests/test_speedups.py proves both with hypothesis). `LOGAGENT_NO_SPEEDUPS=1` in the environment
turns it off (to measure or to rule it out).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from logagent._speedups import CriBlock

CriRecords = Callable[[list[str], list[int], tuple[str, str]], tuple[list[dict[str, Any]], list[int]] | None]
CriChunk = Callable[[bytes, int, int, int, tuple[str, str]], tuple[list[dict[str, Any]], list[int]] | None]
CriBlockOf = Callable[[bytes, int, int, int, tuple[str, str]], "tuple[CriBlock, list[int]] | None"]
WithKey = Callable[["list[dict[str, Any]] | CriBlock", str, str | None], list[dict[str, Any]]]
EsItems = Callable[["list[dict[str, Any]] | CriBlock", bytes | Callable[[str], bytes], bytes | None, bool],
                   list[bytes] | None]
LokiEntries = Callable[[list[tuple[str, int, str, tuple[tuple[str, str], ...]]]], bytes | None]
SlsLogs = Callable[["list[dict[str, Any]] | CriBlock", bytes, dict[str, bytes]], list[bytes] | None]
cri_records: CriRecords | None
cri_chunk: CriChunk | None
cri_block: CriBlockOf | None
with_key: WithKey | None
es_items: EsItems | None
loki_entries: LokiEntries | None
sls_logs: SlsLogs | None

cri_records = cri_chunk = cri_block = with_key = es_items = loki_entries = sls_logs = None
if not os.environ.get("LOGAGENT_NO_SPEEDUPS"):
    try:
        from logagent import _speedups
    except ImportError:  # no compiler where it was installed: the pure-Python paths
        pass
    else:
        cri_records = _speedups.cri_records
        cri_chunk = _speedups.cri_chunk
        cri_block = _speedups.cri_block
        with_key = _speedups.with_key
        es_items = _speedups.es_items
        loki_entries = _speedups.loki_entries
        sls_logs = _speedups.sls_logs
