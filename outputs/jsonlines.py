"""JSON-lines encoding shared by the stdout and file outputs: one batch -> one bytes blob, one write."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from logagent.config import Section
from logagent.record import Batch


@dataclass(frozen=True)
class JsonLinesSettings:
    path: str | None
    fsync: bool


def encode_batch(batch: Batch) -> bytes:
    """All records of a batch as JSON lines. `default=str` keeps odd values (bytes, sets) from failing a batch."""
    dumps = orjson.dumps
    opts = orjson.OPT_APPEND_NEWLINE
    return b"".join([dumps(r, default=str, option=opts) for r in batch.shipped()])


def parse_common(section: Section, need_path: bool) -> JsonLinesSettings:
    path = section.str("path") if need_path else None
    fsync = section.bool("fsync", need_path)
    section.done()
    return JsonLinesSettings(path=path, fsync=fsync)
