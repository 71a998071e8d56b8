"""Identity fields: who wrote a record and where the agent read it. They come from the agent, never from content.

A record's identity is what the agent knows from where it read the bytes: the input (`input`), the file (`path`),
the pod, container and node behind that file (`kubernetes`), the host (`host`), the source and its position
(`source_id`, `pos_key`, `offset`) and, for a record a declared sidecar sent, where that sidecar read it
(`sidecar_file`, `sidecar_offset`, `sidecar_source`). Routing (index names, Loki labels and tenants, SLS topics)
and document ids are computed from these fields, so nothing in a record's content — a JSON body merged into the
record, the `fields` of a sidecar envelope, a parser's captures — may set or override them.

The rule is enforced twice: where content becomes fields (`logagent.parsers.jsonbody`, the envelope unwrapping in
`logagent.kubernetes.stage`), a colliding key is kept under another name or dropped, and the record is flagged
`identity_field` (counted in `logagent_flagged_records_total`); and `logagent.record.Batch.shipped` lets the batch's
identity fields win over a record's of the same name. This module only names the fields; it never decides.
"""

from __future__ import annotations

# Keys content may never set. `kubernetes` covers every kubernetes.* field (namespace, pod, pod_uid, container,
# node, labels, annotations, owner...): the whole mapping is the agent's.
IDENTITY_KEYS = frozenset({
    "kubernetes", "input", "path", "host", "source_id", "pos_key", "offset",
    "sidecar_file", "sidecar_offset", "sidecar_source",
})

# The flag a record gets when its content named an identity field (kept as `json_<key>`, or dropped).
IDENTITY_FLAG = "identity_field"
