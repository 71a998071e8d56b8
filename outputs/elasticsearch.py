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

URL: `/_bulk` is appended to the path of `url` (kept when it already ends with it); query parameters of `url` are
kept (`?pipeline=...&refresh=false`), `pipeline` is added when set, and `filter_path=errors,items.*.status,
items.*.error` asks only for what is read (unless `url` gives its own `filter_path`).

Response handling: a 200 must be a bulk response (a JSON object with a boolean `errors` and, when it is true, one
item per document sent); anything else (an HTML page from a proxy, an empty body) is retried at most
`UNREADABLE_ATTEMPTS` times, each logged as an error with the start of the body, then dead-lettered as
`unreadable_response` — never retried for ever. `errors: false` means every item was written (VictoriaLogs
answers so with an empty `items`). HTTP 200 with `errors: true` is read item by item: 2xx ok, 409 on our
`create` ok, 429 and 5xx retried (only those items), any other status dead-lettered with `error.type:
error.reason`. A whole-request 429/5xx (or a transport error) retries the whole request; 413 splits it; other
4xx dead-letter it.

Must never: use `index` (it would overwrite on replay), log record contents or credentials.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from logagent import speedups
from logagent.component import Context
from logagent.compression import gzip_parts
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
    check_template,
    parse_http_settings,
    retry_after_seconds,
)
from logagent.record import Batch, _source_text, doc_id, identity_of
from logagent.redact import excerpt
from logagent.timefmt import rfc3339_ns

# The records of the CRI parser's common path: exactly these keys (offset, time_ns, fragments and lines are
# bookkeeping a lean shape drops), encoded by `_uniform_items`.
_UNIFORM_KEYS = ("message", "stream", "time", "offset", "time_ns", "fragments", "lines")
_UNIFORM_LEN = {7}
_UNIFORM_DROPPED = frozenset(("offset", "time_ns", "fragments", "lines"))
_UNIFORM_OWN = frozenset(("message", "stream", "@timestamp", "time"))
_uniform_columns = itemgetter(*_UNIFORM_KEYS)
_STR = {str}


@dataclass(frozen=True)
class ElasticsearchSettings:
    http: HttpSettings
    index: str
    data_stream: bool
    pipeline: str | None
    document_ids: bool
    # set by presets (victorialogs): the path appended to the url's and extra query parameters
    bulk_path: str = "/_bulk"
    query: tuple[tuple[str, str], ...] = ()


_BAD_INDEX_CHARS = re.compile(r'[\\/*?"<>|,#: ]')
# Only what `interpret` reads: ES leaves the rest (took, _index, _id, _version, result, shards...) out.
FILTER_PATH = "errors,items.*.status,items.*.error"
# A 200 that is not a bulk response is retried this many times (a proxy's glitch), then dead-lettered.
UNREADABLE_ATTEMPTS = 3
log = logging.getLogger("logagent.output.elasticsearch")


def bulk_url(base: str, path: str, pipeline: str | None, extra: tuple[tuple[str, str], ...] = ()) -> str:
    """`base` with `path` appended to its path (not to its query) and its query parameters kept; `pipeline`,
    `extra` and `filter_path` added unless the URL already sets them."""
    parts = urlsplit(base)
    root = parts.path.rstrip("/")
    if not root.endswith(path):
        root += path
    params = parse_qsl(parts.query, keep_blank_values=True)
    have = {k for k, _ in params}
    wanted = [*extra, *((("pipeline", pipeline),) if pipeline else ()), ("filter_path", FILTER_PATH)]
    params += [(k, v) for k, v in wanted if k not in have]
    return urlunsplit((parts.scheme, parts.netloc, root, urlencode(params, safe=",*@"), ""))


def index_name(text: str) -> str:
    name = _BAD_INDEX_CHARS.sub("_", text.lower()).lstrip("-_+")
    return name[:255] or "logagent"


class BulkCodec:
    """Items are the two NDJSON lines of one document (action + source) as bytes."""

    def __init__(self, settings: ElasticsearchSettings, native: bool = True) -> None:
        self.settings = settings
        http = settings.http
        self.url = bulk_url(http.url, settings.bulk_path, settings.pipeline, settings.query)
        self.name = "elasticsearch"
        self._unreadable: dict[int, tuple[list[bytes], int]] = {}  # id(items) -> (items, unreadable answers)
        self.headers = {"Content-Type": "application/x-ndjson"}
        if http.compression == "gzip":
            self.headers["Content-Encoding"] = "gzip"
        self.template = FieldTemplate(settings.index, dates=True)
        self.shape = http.fields
        self._index_cache: dict[Any, bytes] = {}
        self._native = speedups.es_items if native else None

    # -- batch -> items -------------------------------------------------------------------------------------
    def parts(self, batch: Batch) -> list[tuple[str, list[bytes], int]]:
        items, nbytes = self.items(batch)
        return [("", items, nbytes)]

    def items(self, batch: Batch) -> tuple[list[bytes], int]:
        if not batch.count():
            return [], 0
        fast = self._uniform_items(batch)
        out = fast if fast is not None else self._record_items(batch)
        return out, sum(map(len, out))

    def _index(self, tkey: str | None, meta_key: tuple[str, ...], merged: Callable[[], dict[str, Any]],
               ts: str) -> bytes:
        """The `_index` value (JSON bytes), cached per (meta fields, hour) when the template reads only meta."""
        tmpl = self.template
        cache = self._index_cache
        if tmpl.constant:
            idx = cache.get(None)
            if idx is None:
                idx = cache[None] = orjson.dumps(index_name(tmpl.text))
            return idx
        # keyed by exactly what the rendering depends on: the placeholders' values and the UTC time to the
        # template's date granularity (the text's hour only for UTC times and hourly templates)
        if tkey is not None and tmpl.has_date and (tmpl.date_granularity != 3600 or ts[-1:] not in ("Z", "z")):
            tkey = str(rfc3339_ns(ts) // (tmpl.date_granularity * 1_000_000_000))
        ck = (meta_key, tkey) if tkey is not None else None
        idx = cache.get(ck) if ck is not None else None
        if idx is None:
            if len(cache) > 10000:
                cache.clear()
            idx = orjson.dumps(index_name(tmpl.render(merged(), rfc3339_ns(ts))))
            if ck is not None:
                cache[ck] = idx
        return idx

    def _meta_key(self, meta: dict[str, Any]) -> tuple[str, ...] | None:
        """The template's values from the batch's identity fields (no record can override those, `logagent.identity`),
        or None when the template reads fields a record may set: then each record's own values key the memo."""
        tmpl = self.template
        if not tmpl.fields:
            return ()
        own = identity_of(meta)
        if not tmpl.top_keys() <= own.keys():
            return None
        return tmpl.values(own)

    def _uniform_items(self, batch: Batch) -> list[bytes] | None:
        """The common batch, encoded with one `dumps` of a 3-key dict per record: lean shape, every record with
        exactly the CRI parser's keys and a string `time`, Kubernetes metadata and host pre-encoded once per
        batch, ids from the offset. None when the batch is anything else (then
        `_record_items` encodes it; both give the same bytes)."""
        shape = self.shape
        if not shape.lean or not _UNIFORM_DROPPED <= shape.drop:
            return None
        if self._native is not None:
            items = self._native_items(batch)
            if items is not None:
                return items
        records = batch.records
        if set(map(len, records)) != _UNIFORM_LEN:
            return None
        try:
            cols = list(map(_uniform_columns, records))  # a KeyError: some record lacks a CRI key
        except KeyError:
            return None
        meta = batch.meta
        shipped = shape.meta(batch)
        if not _UNIFORM_OWN.isdisjoint(shipped):
            return None
        times = [c[2] for c in cols]
        if set(map(type, times)) != _STR:
            return None
        if self.template.has_date and (self.template.date_granularity != 3600 or {t[-1:] for t in times} != {"Z"}):
            return None  # one index per hour of text holds only for UTC times and hourly templates
        meta_key = self._meta_key(meta)
        if meta_key is None:
            return None
        # `{"kubernetes":{...},"host":"...",` once per batch; each record adds `"message":..}` (its own encoding
        # without the opening brace): the same bytes as encoding the merged dict
        head = (orjson.dumps(shipped, default=str)[:-1] + b",") if shipped else b"{"
        head = head.replace(b"%", b"%%")
        source = meta.get("source_id")
        with_ids = self.settings.document_ids and source is not None and meta.get("pos_key") == "offset"
        src = orjson.dumps(_source_text(source))[1:-1].replace(b"%", b"%%") if with_ids else b""
        dumps = orjson.dumps
        has_date = self.template.has_date
        by_hour: dict[str, bytes] = {}
        for tkey in set(t[:13] for t in times) if has_date else ("",):
            sample = next(t for t in times if t[:13] == tkey) if has_date else times[0]
            idx = self._index(tkey, meta_key, lambda: dict(meta), sample).replace(b"%", b"%%")
            if with_ids:
                by_hour[tkey] = b'{"create":{"_index":' + idx + b',"_id":"' + src + b':%x"}}\n' + head + b"%b\n"
            else:
                by_hour[tkey] = b'{"create":{"_index":' + idx + b"}}\n" + head + b"%b\n"
        if len(by_hour) == 1:
            (fmt,) = by_hour.values()
            if with_ids:
                return [fmt % (o, dumps({"message": m, "stream": st, "@timestamp": t})[1:])
                        for m, st, t, o, _n, _f, _l in cols]
            return [fmt % dumps({"message": m, "stream": st, "@timestamp": t})[1:]
                    for m, st, t, _o, _n, _f, _l in cols]
        out = []
        for m, st, t, o, _n, _f, _l in cols:
            fmt = by_hour[t[:13] if has_date else ""]
            doc = dumps({"message": m, "stream": st, "@timestamp": t})[1:]
            out.append(fmt % (o, doc) if with_ids else fmt % doc)
        return out

    def _native_items(self, batch: Batch) -> list[bytes] | None:
        """`_uniform_items` by the accelerator (`logagent.speedups`): the batch-level parts here, the records in
        C; the same bytes. None when it declines (a record that is not a plain CRI record, ...)."""
        assert self._native is not None
        records = batch.rows  # a block is encoded from its bytes: no record dict is made
        meta = batch.meta
        shipped = self.shape.meta(batch)
        tmpl = self.template
        if not _UNIFORM_OWN.isdisjoint(shipped) or (tmpl.has_date and tmpl.date_granularity != 3600):
            return None
        meta_key = self._meta_key(meta)
        if meta_key is None:
            return None
        head = (orjson.dumps(shipped, default=str)[:-1] + b",") if shipped else b"{"
        source = meta.get("source_id")
        if self.settings.document_ids and source is not None and meta.get("pos_key") == "offset":
            after: bytes = b',"_id":"' + orjson.dumps(_source_text(source))[1:-1] + b":"
            middle: bytes | None = b'"}}\n' + head
        else:
            after, middle = b"}}\n" + head, None
        if not tmpl.has_date:
            lead = records[0]
            ts = lead.get("time") if lead is not None else None
            if not isinstance(ts, str):
                return None
            return self._native(records, b'{"create":{"_index":' + self._index("", meta_key, lambda: dict(meta), ts)
                                + after, middle, False)
        by_hour: dict[str, bytes] = {}

        def first(t: str) -> bytes:  # the action's start for the hour of `t` (first seen in this batch)
            hour = t[:13]
            got = by_hour.get(hour)
            if got is None:
                got = by_hour[hour] = (b'{"create":{"_index":' + self._index(hour, meta_key, lambda: dict(meta), t)
                                       + after)
            return got

        return self._native(records, first, middle, True)

    def _record_items(self, batch: Batch) -> list[bytes]:
        """Any batch: each record shaped (its own fields win over the batch's), `@timestamp` from `time`."""
        meta = batch.meta
        shape = self.shape
        dumps = orjson.dumps
        ids = self.settings.document_ids
        meta_key = self._meta_key(meta)
        shipped_meta = shape.meta(batch)
        own = identity_of(meta)
        own_shipped = identity_of(shipped_meta)
        out: list[bytes] = []
        for rec in batch.records:
            doc = dict(shipped_meta)
            doc.update(shape.record(rec))
            if own_shipped and len(doc) != len(shipped_meta) + len(rec):
                doc.update(own_shipped)  # a record never overrides identity (`logagent.identity`)
            t = rec.get("time", meta.get("time"))
            if isinstance(t, str):
                ts: Any = t
            elif isinstance(t, (int, float)) and not isinstance(t, bool):
                ts = dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat().replace("+00:00", "Z")
            else:
                ts = dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")
            if shape.lean:
                doc.pop("time", None)  # lean: `@timestamp` is the time
            doc["@timestamp"] = ts
            if meta_key is not None:
                idx = self._index(ts[:13], meta_key, lambda: {**meta, **rec, **own, "@timestamp": ts}, ts)
            else:
                merged = {**meta, **rec, **own, "@timestamp": ts}
                idx = self._index(ts[:13], self.template.values(merged), lambda: merged, ts)
            did = doc_id(meta, rec) if ids else None
            if did is not None:
                action = b'{"create":{"_index":' + idx + b',"_id":' + dumps(did) + b"}}\n"
            else:
                action = b'{"create":{"_index":' + idx + b"}}\n"
            out.append(action + dumps(doc, default=str, option=orjson.OPT_APPEND_NEWLINE))
        return out

    # -- codec ----------------------------------------------------------------------------------------------
    def encode(self, key: str, items: list[bytes]) -> Encoded:
        if self.settings.http.compression == "gzip":
            # streamed: the uncompressed body (as large as the items) is never held beside them
            return Encoded(gzip_parts(items), self.headers, self.url)
        return Encoded(b"".join(items), self.headers, self.url)

    def interpret(self, key: str, items: list[bytes], encoded: Encoded, r: Response) -> Verdict:
        if r.status == 429 or r.status >= 500:
            return Verdict(RETRY, reason=f"HTTP {r.status}: {_error_text(r.body)}",
                           retry_after=retry_after_seconds(r.headers.get("Retry-After")))
        if r.status == 413:
            return Verdict(SPLIT, reason="request_too_large: HTTP 413")
        if r.status >= 300:
            return Verdict(REJECT, reason=f"http_{r.status}: {_error_text(r.body)}")
        try:
            doc = orjson.loads(r.body)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("errors"), bool):
            return self._unreadable_answer(items, r)
        if not doc["errors"]:
            self._unreadable.pop(id(items), None)
            return Verdict(OK)
        answers = doc.get("items") or []
        if not isinstance(answers, list) or len(answers) != len(items) or not all(
                isinstance(a, dict) and len(a) == 1 and isinstance(next(iter(a.values())), dict) for a in answers):
            # `errors: true` with items that do not line up with what we sent cannot be read item by item.
            return self._unreadable_answer(items, r, f"errors: true with {len(answers)} items for {len(items)} sent")
        self._unreadable.pop(id(items), None)
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

    def _unreadable_answer(self, items: list[bytes], r: Response, why: str = "") -> Verdict:
        """A 2xx that is not a bulk response: which documents were written is unknown. Retried a few times (it may
        be a proxy's glitch), each logged as an error, then dead-lettered: bounded, visible, the lane moves on."""
        _, seen = self._unreadable.get(id(items), (items, 0))
        seen += 1
        text = excerpt(r.body, 200)  # a proxy's page may echo the request's headers: credentials masked
        reason = (f"unreadable_response: HTTP {r.status} with a body that is not a bulk response "
                  f"({why or f'{len(r.body)} bytes: {text!r}'})")
        log.error("the bulk endpoint answered with something that is not a bulk response", extra={
            "output": self.name, "status": r.status, "attempt": seen, "of": UNREADABLE_ATTEMPTS, "reason": reason,
            "url": self.url})
        if seen >= UNREADABLE_ATTEMPTS:
            self._unreadable.pop(id(items), None)
            return Verdict(REJECT, reason=reason)
        if len(self._unreadable) > 1024:
            self._unreadable.clear()
        self._unreadable[id(items)] = (items, seen)
        return Verdict(RETRY, reason=reason)

    def dead_record(self, key: str, item: bytes) -> dict[str, Any]:
        nl = item.index(b"\n")
        rec: dict[str, Any] = orjson.loads(item[nl + 1:])
        action = orjson.loads(item[:nl])
        rec.setdefault("_es", next(iter(action.values())))
        return rec


def _error_text(body: bytes) -> str:
    """ES's `error.type: error.reason`, or the body itself: a short excerpt, credential-shaped text masked (a proxy
    in front of ES may echo the request's headers)."""
    try:
        doc = orjson.loads(body)
        err = doc.get("error")
        if isinstance(err, dict):
            return excerpt(f"{err.get('type')}: {err.get('reason')}")
        if err is not None:
            return excerpt(str(err))
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return excerpt(body)


class ElasticsearchOutput(DeliveryOutput[ElasticsearchSettings, bytes]):
    settings: ElasticsearchSettings

    @classmethod
    def parse_settings(cls, section: Section) -> ElasticsearchSettings:
        http = parse_http_settings(section, compressions=("none", "gzip"), default_compression="gzip",
                                   default_max_records=5000, default_max_bytes=5 * 1024 * 1024)
        if section.has("data_stream") and section.has("index"):
            raise section.error("give either index or data_stream, not both", "data_stream")
        data_stream = section.has("data_stream")
        index = section.str("data_stream") if data_stream else section.str("index", "logagent-%Y.%m.%d")
        check_template(section, "data_stream" if data_stream else "index", index, dates=True)
        settings = ElasticsearchSettings(
            http=http,
            index=index,
            data_stream=data_stream,
            pipeline=section.str("pipeline", None),
            document_ids=section.bool("document_ids", True),
        )
        section.done()
        return settings

    def __init__(self, name: str, settings: ElasticsearchSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.codec = BulkCodec(settings)
        self.codec.name = name
        self.delivery: Delivery[bytes] = Delivery(name, settings.http, self.codec, ctx.dead_letter)
