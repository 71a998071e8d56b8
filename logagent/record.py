"""Batches of records and the acknowledgement tokens that travel with them.

A `Batch` is the unit that moves through the pipeline: a list of record dicts plus the fields they share
(`meta`: input name, file path, Kubernetes metadata, source identity). Records hold only what differs per line.
The shipped form of a record is `{**batch.meta, **record}`; `Batch.shipped()` builds it once per output call.

An `AckToken` is how an output tells the input that its records are safe. A token completes when every holder
has called `done()`; only then may the input checkpoint the position the token carries. This module must never
decide *when* a position is safe: that is the outputs' answer, collected here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]

# Batch meta keys that steer the agent (deterministic ids) and are not part of what is shipped.
_INTERNAL_META = frozenset(("source_id", "pos_key"))


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


@dataclass(slots=True)
class Batch:
    """Records from one source (one file, one kernel buffer read, one journal read).

    tag:   routing key; outputs select batches by glob on it (e.g. `kube.default.web.nginx`, `kernel`).
    meta:  fields shared by all records; `meta["source_id"]` names the source for deterministic ids and
           `meta["pos_key"]` names the record field holding the position ("offset", "seq", "cursor").
    """

    tag: str
    records: list[Record]
    meta: dict[str, Any] = field(default_factory=dict)
    ack: AckToken = field(default_factory=noop_token)
    nbytes: int = 0

    def shipped_meta(self) -> dict[str, Any]:
        """The shared fields that are shipped with every record (internal keys left out)."""
        meta = self.meta
        if _INTERNAL_META.intersection(meta):
            meta = {k: v for k, v in meta.items() if k not in _INTERNAL_META}
        return meta

    def shipped(self) -> Iterator[Record]:
        """Records as outputs ship them: shared fields merged under each record's own (internal keys left out)."""
        meta = self.shipped_meta()
        if not meta:
            yield from self.records
            return
        for rec in self.records:
            out = dict(meta)
            out.update(rec)
            yield out


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
        return hashlib.blake2b(f"sidecar|{pod}|{sidecar}|{record['sidecar_offset']}".encode(),
                               digest_size=16).hexdigest()
    source = meta.get("source_id") or record.get("source_id")
    key = meta.get("pos_key") or record.get("pos_key")
    if source is None or key is None:
        return None
    pos = record.get(key)
    if pos is None:
        return None
    return hashlib.blake2b(f"{source}|{pos}".encode(), digest_size=16).hexdigest()
