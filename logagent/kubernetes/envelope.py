"""Sidecar envelopes on the node side: which containers may send them, and what an envelope may say.

`logagent sidecar` writes each record it read from a shared volume as one envelope line on its stdout
(`logagent.outputs.sidecar`). The container runtime stores that stdout as the sidecar container's CRI log, where
the node agent reads it, and this module gives the record back its message, file name, offset and fields.

Trust: a line is unwrapped only when the container that wrote it is declared as a sidecar — by name on the node
agent (`sidecar_containers` of the `kubernetes` stage) or by its own pod (annotation `logagent.io/sidecar`, a
comma-separated list of container names, from the API server). From any other container an envelope-shaped line
is an ordinary line of that container, shipped as written and flagged `sidecar_envelope_untrusted` (counted;
logged once per container). Even from a sidecar, an envelope speaks only about the sidecar's own reading: its file
(`sidecar_file`), offset (`sidecar_offset`) and source (`sidecar_source`) within the same pod, plus non-identity
fields. Identity fields in `fields` (`logagent.identity`) are dropped and the record flagged `identity_field`;
the pod, namespace, container, input and path always stay those of the file the node agent read.

A line that starts like an envelope (from a sidecar) but is not a valid one stays as it was, flagged
`sidecar_envelope_invalid`. This module does no I/O and never looks at anything but the batch's records.
"""

from __future__ import annotations

import logging
from itertools import repeat
from operator import itemgetter
from typing import Any

import orjson

from logagent import metrics, speedups
from logagent.identity import IDENTITY_FLAG, IDENTITY_KEYS
from logagent.record import Batch, Record

log = logging.getLogger("logagent.kubernetes")

SIDECAR_ANNOTATION = "logagent.io/sidecar"
SIDECAR_MARK = '{"logagent.sidecar":'
SIDECAR_INVALID = "sidecar_envelope_invalid"
SIDECAR_UNTRUSTED = "sidecar_envelope_untrusted"
# Record keys an envelope's fields may not set: identity (where the node agent read it, and the restored sidecar
# position) and the message the envelope carries itself.
_PROTECTED = IDENTITY_KEYS | {"message"}
_MAX_FILE = 4096  # PATH_MAX: a longer "file" is not a path the sidecar read
_MAX_SOURCE = 256
_message = itemgetter("message")


def declared_sidecars(annotations: dict[str, str] | None) -> frozenset[str]:
    """Container names a pod declares as sidecars (`logagent.io/sidecar: "log-shipper, audit-shipper"`)."""
    value = (annotations or {}).get(SIDECAR_ANNOTATION, "")
    return frozenset(n.strip() for n in value.split(",") if n.strip())


class EnvelopeUnwrapper:
    """Unwraps the envelope lines of a batch in place; counts and flags what it refuses."""

    def __init__(self, component: str) -> None:
        self._invalid = metrics.FLAGGED.labels(component=component, flag=SIDECAR_INVALID)
        self._untrusted = metrics.FLAGGED.labels(component=component, flag=SIDECAR_UNTRUSTED)
        self._identity = metrics.FLAGGED.labels(component=component, flag=IDENTITY_FLAG)
        self._warned: set[tuple[Any, ...]] = set()

    def process(self, batch: Batch, trusted: bool) -> None:
        """`trusted`: the batch's file is the CRI log of a container declared as a sidecar."""
        hits = _envelope_lines(batch)
        if not hits:
            return
        if not trusted:
            for rec in hits:
                _flag(rec, SIDECAR_UNTRUSTED)
            self._untrusted.inc(len(hits))
            self._warn_once(batch)
            return
        bad = claimed = 0
        loads = orjson.loads
        for rec in hits:
            try:
                env = loads(rec["message"])
            except orjson.JSONDecodeError:
                env = None
            if not _valid(env):
                bad += 1
                _flag(rec, SIDECAR_INVALID)
                continue
            fields = env.get("fields")
            if isinstance(fields, dict):
                for key, value in fields.items():
                    if key in _PROTECTED:
                        if key in IDENTITY_KEYS:
                            claimed += 1
                            _flag(rec, IDENTITY_FLAG)
                        continue
                    if key == "flags":
                        if isinstance(value, list):
                            rec["flags"] = [*rec.get("flags", ()), *(str(f) for f in value)]
                    else:
                        rec[key] = value
            rec["message"] = env["message"]
            rec["sidecar_file"] = env["file"]
            if env.get("offset") is not None:
                rec["sidecar_offset"] = env["offset"]
                if isinstance(env.get("source"), str):
                    # the record's identity is where the sidecar read it: a sidecar restart that sends it again
                    # (at-least-once) gets the same document id (`logagent.record.doc_id`), within this pod
                    rec["sidecar_source"] = env["source"]
        if bad:
            self._invalid.inc(bad)
        if claimed:
            self._identity.inc(claimed)

    def _warn_once(self, batch: Batch) -> None:
        kube = batch.meta.get("kubernetes") or {}
        who = (kube.get("namespace"), kube.get("pod"), kube.get("container"), batch.meta.get("path"))
        if who in self._warned:
            return
        if len(self._warned) > 10000:
            self._warned.clear()
        self._warned.add(who)
        log.warning("envelope-shaped lines from a container not declared as a sidecar are shipped as ordinary lines "
                    f"(declare it with the {SIDECAR_ANNOTATION} annotation or sidecar_containers)",
                    extra={"namespace": who[0], "pod": who[1], "container": who[2], "path": who[3]})


def _envelope_lines(batch: Batch) -> list[Record]:
    mark = SIDECAR_MARK
    if speedups.with_key is not None:
        # one C loop, no object per record (in a block: only the envelopes become record dicts)
        return speedups.with_key(batch.rows, "message", mark)
    records = batch.records
    try:
        # one C-level pass over the batch (no per-record bytecode): most batches hold no envelope at all
        marked = list(map(str.startswith, map(_message, records), repeat(mark)))
        return [r for r, m in zip(records, marked) if m] if True in marked else []
    except (KeyError, AttributeError, TypeError):
        # a record without a text message (a structured body parsed upstream): the careful way
        return [r for r in records if isinstance(r.get("message"), str) and r["message"].startswith(mark)]


def _valid(env: Any) -> bool:
    if not isinstance(env, dict) or env.get("logagent.sidecar") != 1 or not isinstance(env.get("message"), str):
        return False
    file = env.get("file")
    if not isinstance(file, str) or len(file) > _MAX_FILE:
        return False
    offset = env.get("offset")
    if offset is not None and (type(offset) is not int or offset < 0):
        return False
    source = env.get("source")
    return source is None or (isinstance(source, str) and len(source) <= _MAX_SOURCE)


def _flag(rec: Record, flag: str) -> None:
    flags = rec.get("flags")
    if not isinstance(flags, list):
        rec["flags"] = [flag]
    elif flag not in flags:
        rec["flags"] = [*flags, flag]
