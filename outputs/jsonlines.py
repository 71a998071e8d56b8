"""JSON-lines encoding shared by the stdout and file outputs: one batch -> one bytes blob, one write.

Each line is `{**batch.shipped_meta(), **record}` as JSON. The shared fields are encoded once per batch and spliced
in front of each record's own encoding at the byte level: no merged dict per record, one C-level `map` over the
records. Whenever the splice could differ from encoding the merged dict (a record key shadows a shared one, an
empty record, a value orjson needs `default=str` for) the batch is encoded the plain way, so the output never
depends on which path ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

import orjson

from logagent.config import Section
from logagent.record import Batch


@dataclass(frozen=True)
class JsonLinesSettings:
    path: str | None
    fsync: bool


_dumps = orjson.dumps
_after_brace = itemgetter(slice(1, None))
_DICT = {dict}


def encode_batch(batch: Batch) -> bytes:
    """All records of a batch as JSON lines. `default=str` keeps odd values (bytes, sets) from failing a batch."""
    records = batch.records
    if not records:
        return b""
    meta = batch.shipped_meta()
    try:
        # The first and last pieces get the blob's start and final newline so that the one `join` is the only
        # copy of the whole batch (a `head + blob + b"\n"` would copy megabytes twice more).
        if not meta:
            pieces = list(map(_dumps, records))
            pieces[-1] += b"\n"
            return b"\n".join(pieces)
        # `{"input":..,"path":..,` + `"message":..}` for each record: its encoding without its opening brace
        if (all(records) and set(map(type, records)) == _DICT
                and meta.keys().isdisjoint(set().union(*records))):
            head = _dumps(meta)[:-1] + b","
            pieces = list(map(_after_brace, map(_dumps, records)))
            pieces[0] = head + pieces[0]
            pieces[-1] += b"\n"
            return (b"\n" + head).join(pieces)
    except orjson.JSONEncodeError:
        pass  # a value that only `default=str` encodes: the plain way below
    return _encode_merged(batch)


def _encode_merged(batch: Batch) -> bytes:
    dumps = orjson.dumps
    opts = orjson.OPT_APPEND_NEWLINE
    return b"".join([dumps(r, default=str, option=opts) for r in batch.shipped()])


def parse_common(section: Section, need_path: bool) -> JsonLinesSettings:
    path = section.str("path") if need_path else None
    fsync = section.bool("fsync", need_path)
    section.done()
    return JsonLinesSettings(path=path, fsync=fsync)
