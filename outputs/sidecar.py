"""`sidecar` output: every record as one envelope JSON line on standard output, for `logagent sidecar`.

A sidecar container tails files on a volume it shares with the application and writes them to its stdout; the
container runtime stores that stdout as a CRI log on the node, where the node agent reads it. The envelope lets the
node agent's `kubernetes` stage give each record back its own file name, offset and fields instead of treating the
envelope as text (see `logagent.kubernetes.envelope`: only containers declared as sidecars are unwrapped):

    {"logagent.sidecar":1,"file":"/var/log/app/app.log","offset":1234,"message":"...","fields":{...}}

`logagent.sidecar` is always the first key (the node side recognises a line by that prefix, without parsing every
line); `fields` holds the record's other fields (parser fields, flags) and is left out when there are none.

A batch is acknowledged only after its bytes were written and flushed to stdout, so the sidecar's checkpoint never
passes a line the runtime has not received. If stdout is gone (the runtime closed the pipe) nothing more is
acknowledged and the agent is asked to stop: the positions stay at what was written, and the restarted container
resumes there. This output must never write anything but envelope lines to stdout.
"""

from __future__ import annotations

from typing import Any

import orjson

from logagent.config import Section
from logagent.outputs.stdout import StreamOutput
from logagent.record import Batch

ENVELOPE_KEY = "logagent.sidecar"
ENVELOPE_VERSION = 1
# Batch meta keys that describe the sidecar's own reading, not the record: not carried in the envelope.
_OWN_META = frozenset({"input", "path", "source_id", "pos_key"})
_NOT_FIELDS = frozenset({"message", "offset"})


def encode_envelopes(batch: Batch) -> bytes:
    """One envelope line per record of the batch (a file's read: one path for all of them)."""
    meta = batch.meta
    path = str(meta.get("path", ""))
    # the file's identity in the sidecar (stable across its restarts: stored with its checkpoint): with the offset
    # it gives the record the same document id however often the sidecar sends it
    source = meta.get("source_id")
    shared = {k: v for k, v in meta.items() if k not in _OWN_META}
    dumps = orjson.dumps
    opts = orjson.OPT_APPEND_NEWLINE
    lines = []
    for rec in batch.records:
        message = rec.get("message", "")
        env: dict[str, Any] = {ENVELOPE_KEY: ENVELOPE_VERSION, "file": path, "offset": rec.get("offset"),
                               "message": message if isinstance(message, str) else _as_text(message)}
        if source is not None:
            env["source"] = source
        fields = {k: v for k, v in rec.items() if k not in _NOT_FIELDS}
        if shared:
            fields = {**shared, **fields}
        if fields:
            env["fields"] = fields
        lines.append(dumps(env, default=str, option=opts))
    return b"".join(lines)


def _as_text(value: Any) -> str:
    """A parser may have turned a message into a structure; the envelope's message is text, so keep it as JSON."""
    return orjson.dumps(value, default=str).decode()


class SidecarOutput(StreamOutput[None]):

    @classmethod
    def parse_settings(cls, section: Section) -> None:
        section.done()
        return None

    def encode(self, batch: Batch) -> bytes:
        return encode_envelopes(batch)
