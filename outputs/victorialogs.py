"""`victorialogs` output: the Elasticsearch output preset for VictoriaLogs' bulk endpoint.

VictoriaLogs takes Elasticsearch `_bulk` at `/insert/elasticsearch/_bulk`, but it needs to be told which field is
the message, which the time and which fields make the log stream (otherwise every row reads "missing _msg field"),
and it keeps tenants as two numbers. This preset sets all of that:

    url: http://victorialogs:9428          # requests go to <url>/insert/elasticsearch/_bulk
    account_id: 0                          # AccountID header (tenant), 0..4294967295
    project_id: 0                          # ProjectID header
    msg_field: message                     # _msg_field query arg
    time_field: "@timestamp"               # _time_field (the output writes @timestamp, RFC 3339)
    stream_fields: [input, kubernetes.namespace, kubernetes.pod, kubernetes.container]   # _stream_fields
    ignore_fields: []                      # ignore_fields (e.g. [offset])

plus the shared HTTP settings (batch, retry, timeout, tls, auth, headers, compression gzip|none).

Replays: VictoriaLogs ignores `_id` and does not deduplicate, so a batch sent again after a crash or a lost
answer is stored twice. The output therefore sends no `_id` (`document_ids` is off and cannot be turned on
here); what the agent guarantees is at-least-once, as with Loki without exact duplicates.

Answers: VictoriaLogs answers `{"errors":false,"items":[]}` (or one 201 per item in newer releases): both read
as success. A document it cannot parse stops its parsing and it answers 200 with an empty body: the Elasticsearch
output's bounded unreadable-answer handling applies (retried a few times, logged, then dead-lettered).
"""

from __future__ import annotations

import dataclasses

from logagent.config import Section
from logagent.delivery import parse_http_settings
from logagent.outputs.elasticsearch import ElasticsearchOutput, ElasticsearchSettings
from logagent.record import BOOKKEEPING, Shape

BULK_PATH = "/insert/elasticsearch/_bulk"
DEFAULT_STREAM_FIELDS = ["input", "kubernetes.namespace", "kubernetes.pod", "kubernetes.container"]
_UINT32 = 2**32 - 1


class VictoriaLogsOutput(ElasticsearchOutput):

    @classmethod
    def parse_settings(cls, section: Section) -> ElasticsearchSettings:
        http = parse_http_settings(section, compressions=("none", "gzip"), default_compression="gzip",
                                   default_max_records=5000, default_max_bytes=5 * 1024 * 1024)
        for key in ("index", "data_stream", "pipeline", "document_ids"):
            if section.has(key):
                raise section.error("not used by VictoriaLogs (it ignores _index and _id and does not deduplicate "
                                    "replays); remove it or use type: elasticsearch", key)
        tenant = (("AccountID", str(section.int("account_id", 0, min=0, max=_UINT32))),
                  ("ProjectID", str(section.int("project_id", 0, min=0, max=_UINT32))))
        stream_fields = section.str_list("stream_fields", DEFAULT_STREAM_FIELDS)
        query = [("_msg_field", section.str("msg_field", "message")),
                 ("_time_field", section.str("time_field", "@timestamp")),
                 ("_stream_fields", ",".join(stream_fields))]
        if not section.has("fields"):
            # the stream fields must be in the documents: a lean shape ships the bookkeeping ones named there
            # (`input` by default) besides its own
            kept = sorted({f.split(".", 1)[0] for f in stream_fields} & BOOKKEEPING)
            http = dataclasses.replace(http, fields=Shape(kept))
        ignore = section.str_list("ignore_fields", [])
        if ignore:
            query.append(("ignore_fields", ",".join(ignore)))
        section.done()
        http = dataclasses.replace(http, headers=(*http.headers, *tenant))
        return ElasticsearchSettings(http=http, index="victorialogs", data_stream=False, pipeline=None,
                                     document_ids=False, bulk_path=BULK_PATH, query=tuple(query))
