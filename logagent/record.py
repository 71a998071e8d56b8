"""Batches of records and the acknowledgement tokens that travel with them.

A `Batch` is the unit that moves through the pipeline: a list of record dicts plus the fields they share
(`meta`: input name, file path, Kubernetes metadata, source identity). Records hold only what differs per line.
The full form of a record is the batch's fields plus the record's own (internal keys left out); on a clash the
record's value wins, except for identity fields (input, path, kubernetes...: where the agent read the bytes,
`logagent.identity`), where the batch's does. `Batch.shipped()` builds it.
What an output actually ships is decided by its `Shape` (the `fields` setting): `lean` (the default of the backend
outputs) leaves out the fields the agent keeps for its own bookkeeping (`BOOKKEEPING`: positions, parser counts,
the input name and file path) and adds `host`; `all` ships everything; a list ships lean plus the fields named.

Document ids (`doc_id`, `position_ids`) are `<source id>:<position in hex>` for numeric positions (file offsets,
kmsg sequence numbers) and a 128-bit xxh3 of source and position otherwise (journal cursors): no hash per line
in the common case, and still unique per (source, position) as long as source ids are (one per file generation).

An `AckToken` is how an output tells the input that its records are safe. A token completes when every holder
has called `done()`; only then may the input checkpoint the position the token carries. This module must never
decide *when* a position is safe: that is the outputs' answer, collected here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Union

import xxhash

if TYPE_CHECKING:
    from logagent._speedups import CriBlock
    from logagent.config import Section

from logagent.identity import IDENTITY_KEYS

Record = dict[str, Any]
# What an input holds and a batch carries: a list of record dicts, or (the CRI fast path) the accelerator's
# `CriBlock`, which makes each record the first time it is asked for (`Batch.records`, `joined`).
Rows = Union[list[Record], "CriBlock"]


def as_records(rows: Rows) -> list[Record]:
    """The records of `rows` as a list (a block's are made)."""
    return rows if isinstance(rows, list) else rows.records()


def joined(rows: Rows, more: Rows) -> Rows:
    """`rows` followed by `more` (either may be a block; `rows` is extended in place when it can be)."""
    if not more:
        return rows
    if not rows:
        return more
    if isinstance(rows, list):
        rows.extend(as_records(more))
    else:
        rows.extend(more)
    return rows

# Batch meta keys that steer the agent (deterministic ids) and are not part of what is shipped.
_INTERNAL_META = frozenset(("source_id", "pos_key"))
# Fields the agent keeps for itself: where a record was read (offset, input, path) and how it was joined
# (fragments, lines), and `time_ns` beside `time`. A `lean` output ships them only when its `fields` names them.
BOOKKEEPING = frozenset(("offset", "time_ns", "fragments", "lines", "input", "path"))


class AckToken:
    """Completes once every share handed out has been acknowledged.

    The router calls `share(n)` when it fans a batch out to n outputs; an output that splits a batch into
    several requests may call `share(k)` again on its part (see `split`). `on_done` runs exactly once.
    """

    __slots__ = ("_pending", "_on_done", "_fired")

    def __init__(self, on_done: Callable[[], None] | None = None) -> None:
        self._pending = 1
        self._on_done = on_done
        self._fired = False

    def share(self, n: int) -> None:
        """Replace the one outstanding share with n shares (n == 0 completes the token)."""
        if self._fired:
            raise RuntimeError("share() on a completed AckToken")
        self._pending += n - 1
        if self._pending == 0:
            self._fire()

    def done(self) -> None:
        if self._fired:
            raise RuntimeError("AckToken acknowledged more often than shared")
        self._pending -= 1
        if self._pending == 0:
            self._fire()

    def split(self, n: int) -> list[AckToken]:
        """n child tokens; this token's share completes when all of them are done."""
        if n <= 0:
            self.done()
            return []
        state = [n]

        def child_done() -> None:
            state[0] -= 1
            if state[0] == 0:
                self.done()

        return [AckToken(child_done) for _ in range(n)]

    @property
    def completed(self) -> bool:
        return self._fired

    def _fire(self) -> None:
        self._fired = True
        if self._on_done is not None:
            self._on_done()


def noop_token() -> AckToken:
    """For derived batches (detector events) whose source position is carried by another batch."""
    return AckToken(None)


class Batch:
    """Records from one source (one file, one kernel buffer read, one journal read).

    tag:   routing key; outputs select batches by glob on it (e.g. `kube.default.web.nginx`, `kernel`).
    records: the record dicts. A batch built from a `CriBlock` (the file input's CRI fast path) makes them the
           first time `records` is read; until then `block` is that block, which the outputs' native encoders and
           `speedups.with_key` read in place, and `count()` is the number of records without making them.
    meta:  fields shared by all records; `meta["source_id"]` names the source for deterministic ids and
           `meta["pos_key"]` names the record field holding the position ("offset", "seq", "cursor").
    flagged: how many records the input flagged (`flags`), when it counted them (None: not counted). 0 lets the
           outputs skip looking for records they must not ship (`logagent.delivery.output`): no per-record pass.
    """

    __slots__ = ("tag", "_rows", "meta", "ack", "nbytes", "flagged")

    def __init__(self, tag: str, records: Rows, meta: dict[str, Any] | None = None, ack: AckToken | None = None,
                 nbytes: int = 0, flagged: int | None = None) -> None:
        self.tag = tag
        self._rows = records
        self.meta: dict[str, Any] = {} if meta is None else meta
        self.ack = noop_token() if ack is None else ack
        self.nbytes = nbytes
        self.flagged = flagged

    @property
    def records(self) -> list[Record]:
        rows = self._rows
        if rows.__class__ is list:  # (the exact class: one pointer compare on the hot path)
            return rows
        made = self._rows = rows.records()  # type: ignore[union-attr]
        return made

    @records.setter
    def records(self, value: list[Record]) -> None:
        self._rows = value

    @property
    def block(self) -> CriBlock | None:
        """The block the records are still kept in (None once they were made, or when there never was one)."""
        rows = self._rows
        return None if rows.__class__ is list else rows  # type: ignore[return-value]

    @property
    def rows(self) -> Rows:
        """The records as held: the block while there is one (for code that reads either), else the list."""
        return self._rows

    def count(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (f"Batch(tag={self.tag!r}, records={self.count()}, meta={self.meta!r}, nbytes={self.nbytes}, "
                f"flagged={self.flagged})")

    def shipped_meta(self) -> dict[str, Any]:
        """The shared fields that are shipped with every record (internal keys left out)."""
        meta = self.meta
        if _INTERNAL_META.intersection(meta):
            meta = {k: v for k, v in meta.items() if k not in _INTERNAL_META}
        return meta

    def shipped(self) -> Iterator[Record]:
        """Records as outputs ship them: the shared fields and each record's own, the record's winning a clash except
        on identity fields (internal keys left out). One length comparison per record tells whether there was one."""
        meta = self.shipped_meta()
        if not meta:
            yield from self.records
            return
        size = len(meta)
        own = identity_of(meta)
        for rec in self.records:
            out = dict(meta)
            out.update(rec)
            if own and len(out) != size + len(rec):
                # The record shares a key with the batch: for identity fields (input, path, kubernetes...) the
                # batch's value is what the agent knows from where it read the bytes, so it wins (`logagent.identity`)
                out.update(own)
            yield out


def host_name() -> str:
    """The node's name for the `host` field: $NODE_NAME (the downward API in a DaemonSet), else the hostname."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


class Shape:
    """Which fields an output ships: `lean`, `all`, or lean plus the named fields (the `fields` setting).

    `drop` is the set of keys left out of records and batch meta; `host` is added to the shared fields of a lean
    shape (an identity field: a record's own `host` never wins, `logagent.identity`)."""

    __slots__ = ("drop", "host", "lean")

    def __init__(self, spec: str | Sequence[str] = "lean", host: str | None = None) -> None:
        if spec == "all":
            self.lean = False
            self.drop = _INTERNAL_META
            self.host: str | None = None
            return
        if isinstance(spec, str):
            if spec != "lean":
                raise ValueError(f'expected "lean", "all" or a list of field names, got {spec!r}')
            spec = ()
        self.lean = True
        self.drop = (_INTERNAL_META | BOOKKEEPING) - frozenset(spec)
        self.host = host if host is not None else host_name()

    def meta(self, batch: Batch) -> dict[str, Any]:
        """The batch's shared fields as shipped (one dict per batch)."""
        meta = batch.meta
        drop = self.drop
        out = {k: v for k, v in meta.items() if k not in drop} if not drop.isdisjoint(meta) else dict(meta)
        if self.host is not None and "host" not in out:
            out["host"] = self.host
        return out

    def record(self, rec: Record) -> Record:
        """One record's own fields as shipped (the record itself when nothing is left out)."""
        drop = self.drop
        if drop.isdisjoint(rec):
            return rec
        return {k: v for k, v in rec.items() if k not in drop}

    def shipped(self, batch: Batch) -> Iterator[Record]:
        """Records merged with their shared fields (a record's own field wins, except on identity fields), as this
        shape ships them."""
        meta = self.meta(batch)
        own = identity_of(meta)
        size = len(meta)
        for rec in batch.records:
            out = dict(meta)
            mine = self.record(rec)
            out.update(mine)
            if own and len(out) != size + len(mine):
                out.update(own)  # record content never overrides identity (`logagent.identity`)
            yield out


def parse_shape(section: Section, default: str = "lean") -> Shape:
    """The `fields` setting of an output: `lean`, `all`, or a list of fields shipped beside the lean ones."""
    value = section.raw("fields", default)
    if isinstance(value, str):
        if value not in ("lean", "all"):
            raise section.error(f'expected "lean", "all" or a list of field names, got {value!r}', "fields")
        return Shape(value)
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return Shape(value)
    raise section.error('expected "lean", "all" or a list of field names', "fields")


def _source_text(source: Any) -> str:
    text = str(source)
    if len(text) > 64:  # Elasticsearch caps `_id` at 512 bytes; a long source id is hashed once
        return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))
    return text


def position_id(source: Any, pos: Any) -> str:
    """The id of the record at `pos` of `source` (see the module docstring)."""
    if isinstance(pos, int) and not isinstance(pos, bool) and pos >= 0:
        return f"{_source_text(source)}:{pos:x}"
    return xxhash.xxh3_128_hexdigest(f"{source}|{pos}".encode("utf-8", "surrogatepass"))


def identity_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The batch fields no record may override in what is shipped."""
    return {k: v for k, v in meta.items() if k in IDENTITY_KEYS}


def doc_id(meta: dict[str, Any], record: Record) -> str | None:
    """A stable id for a record, from its source identity and position.

    The same source line read again after a crash gets the same id, so an idempotent backend (Elasticsearch
    `create` with `_id`) stores it once. None when the source gives no position.
    """
    sidecar = record.get("sidecar_source")
    if sidecar is not None and record.get("sidecar_offset") is not None:
        # unwrapped from a sidecar's envelope: identified where the sidecar read it, within its pod
        kube = meta.get("kubernetes") or {}
        pod = kube.get("pod_uid") or meta.get("source_id")
        return xxhash.xxh3_128_hexdigest(f"sidecar|{pod}|{sidecar}|{record['sidecar_offset']}".encode())
    source = meta.get("source_id") or record.get("source_id")
    key = meta.get("pos_key") or record.get("pos_key")
    if source is None or key is None:
        return None
    pos = record.get(key)
    if pos is None:
        return None
    return position_id(source, pos)
