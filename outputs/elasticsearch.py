"""`elasticsearch` output: records into Elasticsearch or OpenSearch through `_bulk`, idempotently.

Settings (besides the shared HTTP ones in `logagent.delivery`: url, batch, max_in_flight, compression (gzip by
default), retry, timeout, tls, auth, headers):

    index: "logs-{kubernetes.namespace|system}-%Y.%m.%d"   # index name template (default "logagent-%Y.%m.%d")
    data_stream: "logs-k8s-default"                       # instead of `index`: a data stream name (template too)
    pipeline: my-ingest-pipeline                          # optional ingest pipeline
    document_ids: true                                    # deterministic `_id` from source identity + position

Index template syntax: `{dotted.field}` is replaced by that field of the shipped record (`{kubernetes.namespace}`,
`{kubernetes.labels.app}`), `{field|fallback}` uses `fallback` when the field is missing or empty, and strftime
codes `%Y %m %d %H` (and the others strftime knows) come from the record's `time` in UTC (now, when the record
has none). The result is made a valid index name: lowercased, characters ES forbids (`\\ / * ? " < > | , # :`
and spaces) replaced by `_`, leading `-_+` removed.

Encoding: every record becomes a `create` action with `_index` and, when the record carries its source position,
`_id = doc_id(meta, record)` (file fingerprint + offset, kmsg boot id + seq, journal cursor). A replay after a
crash therefore answers 409 for documents already written, which counts as success: nothing is duplicated and
nothing overwritten. `@timestamp` is the record's `time` when it is an RFC 3339 string (kept as written; ES
parses up to 9 fraction digits) or a number of epoch seconds (rendered as RFC 3339); otherwise the send time.

Response handling: HTTP 200 with `errors: true` is read item by item: 2xx ok, 409 on our `create` ok, 429 and
5xx retried (only those items), any other status dead-lettered with `error.type: error.reason`. A whole-request
429/5xx (or a transport error) retries the whole request; 413 splits it; other 4xx dead-letter it.

Must never: use `index` (it would overwrite on replay), log record contents or credentials.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import orjson

from logagent.config import Section
from logagent.delivery import (
    ITEMS,
    OK,
    REJECT,
    RETRY,
    SPLIT,
    Delivery,
    DeliveryOutput,
    Encoded,
    FieldTemplate,
    HttpSettings,
    Response,
    Verdict,
    compress,
    lookup,
    parse_http_settings,
    retry_after_seconds,
    rfc3339_ns,
)
from logagent.record import Batch, doc_id


@dataclass(frozen=True)
class ElasticsearchSettings:
    http: HttpSettings
    index: str
    data_stream: bool
    pipeline: str | None
    document_ids: bool


_BAD_INDEX_CHARS = re.compile(r'[\\/*?"<>|,#: ]')


def index_name(text: str) -> str:
    name = _BAD_INDEX_CHARS.sub("_", text.lower()).lstrip("-_+")
    return name[:255] or "logagent"


class BulkCodec:
    """Items are the two NDJSON lines of one document (action + source) as bytes."""

    def __init__(self, settings: ElasticsearchSettings) -> None:
        self.settings = settings
        http = settings.http
        path = "/_bulk"
        if settings.pipeline:
            path += f"?pipeline={settings.pipeline}"
        self.url = http.url + path
        self.headers = {"Content-Type": "application/x-ndjson"}
        if http.compression == "gzip":
            self.headers["Content-Encoding"] = "gzip"
        self.template = FieldTemplate(settings.index, dates=True)
        self._index_cache: dict[Any, bytes] = {}

    # -- batch -> items -------------------------------------------------------------------------------------
    def parts(self, batch: Batch) -> list[tuple[str, list[bytes], int]]:
        items, nbytes = self.items(batch)
        return [("", items, nbytes)]

    def items(self, batch: Batch) -> tuple[list[bytes], int]:
        meta = batch.meta
        tmpl = self.template
        dumps = orjson.dumps
        ids = self.settings.document_ids
        cache = self._index_cache
        if len(cache) > 10000:
            cache.clear()
        meta_only = tmpl.top_keys() <= set(meta) if tmpl.fields else True
        meta_key = tuple(str(lookup(meta, f)) for f in tmpl.fields) if meta_only else ()
        out: list[bytes] = []
        total = 0
        for rec, shipped in zip(batch.records, batch.shipped()):
            t = shipped.get("time")
            if isinstance(t, str):
                ts: Any = t
                tkey = t[:13]
            elif isinstance(t, (int, float)) and not isinstance(t, bool):
                ts = dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")
                tkey = ts[:13]
            else:
                ts = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
                tkey = ts[:13]
            shipped["@timestamp"] = ts
            if tmpl.constant:
                idx = cache.get(None)
                if idx is None:
                    idx = cache[None] = dumps(index_name(tmpl.text))
            else:
                ck = (meta_key, tkey) if meta_only else None
                idx = cache.get(ck) if ck is not None else None
                if idx is None:
                    idx = dumps(index_name(tmpl.render(shipped, rfc3339_ns(ts))))
                    if ck is not None:
                        cache[ck] = idx
            did = doc_id(meta, rec) if ids else None
            if did is not None:
                action = b'{"create":{"_index":' + idx + b',"_id":"' + did.encode() + b'"}}\n'
            else:
                action = b'{"create":{"_index":' + idx + b"}}\n"
            item = action + dumps(shipped, default=str, option=orjson.OPT_APPEND_NEWLINE)
            total += len(item)
            out.append(item)
        return out, total

    # -- codec ----------------------------------------------------------------------------------------------
    def encode(self, key: str, items: list[bytes]) -> Encoded:
        body = b"".join(items)
        if self.settings.http.compression == "gzip":
            body = compress("gzip", body)
        return Encoded(body, self.headers, self.url)

    def interpret(self, key: str, items: list[bytes], encoded: Encoded, r: Response) -> Verdict:
        if r.status == 429 or r.status >= 500:
            return Verdict(RETRY, reason=f"HTTP {r.status}: {_error_text(r.body)}",
                           retry_after=retry_after_seconds(r.headers.get("Retry-After")))
        if r.status == 413:
            return Verdict(SPLIT, reason="request_too_large: HTTP 413")
        if r.status >= 300:
            return Verdict(REJECT, reason=f"http_{r.status}: {_error_text(r.body)}")
        doc = orjson.loads(r.body)
        if not doc.get("errors"):
            return Verdict(OK)
        answers = doc.get("items") or []
        if len(answers) != len(items):
            # An answer that does not line up with what we sent cannot be trusted item by item.
            return Verdict(RETRY, reason=f"bulk response has {len(answers)} items for {len(items)} sent")
        retry: list[int] = []
        reject: list[tuple[int, str]] = []
        for i, ans in enumerate(answers):
            op, res = next(iter(ans.items()))
            status = int(res.get("status", 500))
            if status < 300 or (status == 409 and op == "create"):
                continue
            if status == 429 or status >= 500:
                retry.append(i)
                continue
            err = res.get("error") or {}
            if isinstance(err, dict):
                reason = f"{err.get('type', 'error')}: {err.get('reason', '')}"
                cause = err.get("caused_by")
                if isinstance(cause, dict) and cause.get("reason"):
                    reason += f" (caused by {cause.get('type')}: {cause.get('reason')})"
            else:
                reason = f"http_{status}: {err}"
            reject.append((i, reason))
        return Verdict(ITEMS, retry=retry, reject=reject, reason=f"{len(retry)} items retryable")

    def dead_record(self, key: str, item: bytes) -> dict[str, Any]:
        nl = item.index(b"\n")
        rec: dict[str, Any] = orjson.loads(item[nl + 1:])
        action = orjson.loads(item[:nl])
        rec.setdefault("_es", next(iter(action.values())))
        return rec


def _error_text(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
        err = doc.get("error")
        if isinstance(err, dict):
            return f"{err.get('type')}: {err.get('reason')}"
        if err is not None:
            return str(err)[:300]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return body[:300].decode("utf-8", "replace")


class ElasticsearchOutput(DeliveryOutput):
    type_name = "elasticsearch"
    settings: ElasticsearchSettings

    @classmethod
    def parse_settings(cls, section: Section) -> ElasticsearchSettings:
        http = parse_http_settings(section, compressions=("none", "gzip"), default_compression="gzip",
                                   default_max_records=5000, default_max_bytes=5 * 1024 * 1024)
        if section.has("data_stream") and section.has("index"):
            raise section.error("give either index or data_stream, not both", "data_stream")
        data_stream = section.has("data_stream")
        index = section.str("data_stream") if data_stream else section.str("index", "logagent-%Y.%m.%d")
        try:
            FieldTemplate(index, dates=True)
        except ValueError as e:
            raise section.error(str(e), "data_stream" if data_stream else "index") from None
        settings = ElasticsearchSettings(
            http=http,
            index=index,
            data_stream=data_stream,
            pipeline=section.str("pipeline", None),
            document_ids=section.bool("document_ids", True),
        )
        section.done()
        return settings

    def __init__(self, name: str, settings: ElasticsearchSettings, ctx: Any) -> None:
        super().__init__(name, settings, ctx)
        self.codec = BulkCodec(settings)
        self.delivery: Delivery[bytes] = Delivery(name, settings.http, self.codec, ctx.dead_letter)
