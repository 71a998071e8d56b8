"""`loki` output: records into Grafana Loki through the push API, one delivery lane per tenant.

Settings (besides the shared HTTP ones in `logagent.delivery`: url, batch, max_in_flight, retry, timeout, tls,
auth, headers, buffer_max_bytes):

    url: http://loki:3100                 # `/loki/api/v1/push` is appended unless the URL already ends with it
    encoding: protobuf                    # protobuf (snappy-compressed, the default) or json (gzip or none)
    labels:                               # label name -> field template; empty values are left out
      namespace: "{kubernetes.namespace}"
      pod: "{kubernetes.pod}"
      container: "{kubernetes.container}"
      app: "{kubernetes.labels.app}"
      node: "{kubernetes.node}"
      job: "{input}"
    structured_metadata:                  # high-cardinality fields: name -> template (never labels)
      pod_uid: "{kubernetes.pod_uid}"
      filename: "{path}"
    max_label_values: 500                 # per label name; beyond it new values go to structured metadata
    tenant: "{kubernetes.namespace}"      # X-Scope-OrgID; a template (default: no header, single tenant)
    line: message                         # message (the record's `message`) or json (the whole record)
    max_line_size: 256KiB                 # Loki's limits_config.max_line_size: longer lines are split
    max_label_value_length: 2048          # Loki's validation max_label_value_length (bytes): longer values cut

Templates use the `{dotted.field|fallback}` syntax of `logagent.delivery.FieldTemplate` (fallback is literal).

Wire format (grafana/loki pkg/push/push.proto, see `outputs/proto/logproto.proto`): a `PushRequest` of
`StreamAdapter{labels, entries}`, entries `EntryAdapter{timestamp, line, structuredMetadata}`, sorted by time
within each stream, built with the classes protoc generated from that schema (`outputs/proto/logproto_pb2.py`:
byte-identical to the former hand encoder and about 3x faster, `benchmarks/bench_protobuf.py`) and snappy
block-compressed. A line or metadata value holding undecodable bytes (surrogates) is sent with U+FFFD for them
(protobuf and JSON alike):
a protobuf string is UTF-8. JSON:
`{"streams": [{"stream": {...}, "values": [["<ns>", "<line>", {metadata}]]}]}`.

Answers: 2xx accepted. 429 and 5xx (and transport errors) retried with backoff, honouring Retry-After. 400 means
Loki refused some entries (too old, line too long, ...) and wrote all the others: `outputs/loki_answers.py` reads
which entries its answer names, each is dead-lettered with the message that refused it (one error log line per
distinct message), and nothing else is sent again — with Loki 3's stream sharding a resent entry can be stored
twice. An answer naming no entry we can find dead-letters the request with Loki's text. Other 4xx: 413 splits,
the rest (401/403/404...) is dead-lettered and logged as an error.

Limits enforced before sending (Loki's defaults, configurable): a line longer than `max_line_size` bytes is split
at UTF-8 boundaries into entries of at most that size, at consecutive nanoseconds, each with structured metadata
`split_id` (shared) and `split_part` (`1/3`, `2/3`...), counted as flagged `line_split`; a label value longer
than `max_label_value_length` bytes is cut, and U+FFFD or undecodable bytes are removed from label values
(Loki refuses the stream otherwise), counted as flagged `label_sanitised` and warned once per label name.
Record flags (`truncated`, `invalid_utf8`, ...) travel as structured metadata `flags` (comma-separated).

Tenants: each tenant is its own lane in the delivery engine (own requests in flight, own retries), so one
tenant's 429s or backlog never hold another tenant's records.

Cardinality guard: Loki indexes labels; a label that takes unbounded values (a request id, a pod name in a
CronJob-heavy cluster) creates unbounded streams. Once a label name has `max_label_values` distinct values, a
record with a new value keeps that value as structured metadata instead (counted as flagged
`label_cardinality`, warned once per label name).

Must never: send a label value it has not escaped, set `parsed` (field 4), log record contents or credentials.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from itertools import groupby, repeat
from operator import itemgetter
from typing import Any

import orjson
import xxhash

from logagent import metrics, speedups
from logagent.component import Context
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
    compress,
    parse_http_settings,
    retry_after_seconds,
)
from logagent.outputs.loki_answers import refused
from logagent.outputs.protowire import varint
from logagent.record import Batch, Rows, as_records
from logagent.redact import excerpt, mask
from logagent.timefmt import rfc3339_ns

PUSH_PATH = "/loki/api/v1/push"
DEFAULT_LABELS = {
    "namespace": "{kubernetes.namespace}",
    "pod": "{kubernetes.pod}",
    "container": "{kubernetes.container}",
    "app": "{kubernetes.labels.app}",
    "node": "{kubernetes.node}",
    "job": "{input}",
}
DEFAULT_METADATA = {"pod_uid": "{kubernetes.pod_uid}", "filename": "{path}"}
# Loki's default limits.max_label_names_per_series.
MAX_LABEL_NAMES = 15
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Loki's limits_config defaults: max_line_size 256KB (datasize: KB = 1024), max_label_value_length 2048.
MAX_LINE_SIZE = 256 * 1024
MAX_LABEL_VALUE_LENGTH = 2048
_UNSAFE_LABEL_CHARS = re.compile("[\ud800-\udfff\ufffd]")
# Reasons carry Loki's whole message (a long label value included), bounded.
MAX_REASON = 4096

# An item: (labels string, time ns, line, structured metadata as ((name, value), ...)).
Item = tuple[str, int, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class LokiSettings:
    http: HttpSettings
    encoding: str
    labels: tuple[tuple[str, str], ...]
    structured_metadata: tuple[tuple[str, str], ...]
    max_label_values: int
    tenant: str
    line: str
    max_line_size: int = MAX_LINE_SIZE
    max_label_value_length: int = MAX_LABEL_VALUE_LENGTH


def _utf8(text: str) -> str:
    """Undecodable bytes (kept as surrogates) as U+FFFD: what a protobuf string field can carry."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _utf8_doc(value: Any) -> Any:
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, dict):
        return {_utf8(str(k)): _utf8_doc(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utf8_doc(v) for v in value]
    return value


def push_body(streams: dict[str, list[Item]], native: bool = True) -> bytes:
    """The protobuf `PushRequest` of entries grouped by stream (each list already in time order). The entries of
    a stream are encoded by the accelerator (`logagent.speedups`) when it is there and takes them: the same bytes
    as the generated classes give."""
    fast = speedups.loki_entries if native else None
    if fast is not None:
        out: list[bytes] = []
        for labels, entries in streams.items():
            encoded = fast(entries)
            if encoded is None or not labels.isascii():  # (a label string is ASCII once sanitised)
                break
            lb = labels.encode()
            head = b"\x0a" + varint(len(lb)) + lb if lb else b""
            # the stream's pieces are joined once, with the others: the entries (most of the body) are copied
            # into the request and nowhere else
            out += (b"\x0a", varint(len(head) + len(encoded)), head, encoded)
        else:
            return b"".join(out)
    # the generated classes (protobuf's runtime, ~3 MB resident) are loaded only when the accelerator is missing
    # or declines a stream: an agent with its native encoder never carries them (idle RSS, issue 11)
    from logagent.outputs.proto.logproto_pb2 import PushRequest

    req = PushRequest()
    for labels, entries in streams.items():
        stream = req.streams.add(labels=labels)
        add = stream.entries.add
        for _, ts, line, md in entries:
            try:
                e = add(line=line, structuredMetadata=[{"name": n, "value": v} for n, v in md] if md else None)
            except UnicodeEncodeError:
                e = add(line=_utf8(line), structuredMetadata=[{"name": n, "value": _utf8(v)} for n, v in md])
            secs, nanos = divmod(ts, 1_000_000_000)
            stamp = e.timestamp
            stamp.seconds = secs
            stamp.nanos = nanos
    return req.SerializeToString()


def label_string(pairs: list[tuple[str, str]]) -> str:
    """Prometheus label syntax, names sorted, values escaped as Go's strconv.Quote does for \\, " and newline."""
    parts = []
    for name, value in sorted(pairs):
        v = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        parts.append(f'{name}="{v}"')
    return "{" + ", ".join(parts) + "}"


class LokiPush:
    """The codec: records -> items per tenant, items -> push body, response -> verdict."""

    def __init__(self, name: str, settings: LokiSettings, whole_batches: bool = True) -> None:
        self.name = name
        self.settings = settings
        self.whole_batches = whole_batches  # False: every batch record by record (the reference, for tests)
        http = settings.http
        self.url = http.url if http.url.endswith(PUSH_PATH) else http.url + PUSH_PATH
        self.labels = [(n, FieldTemplate(t)) for n, t in settings.labels]
        self.metadata = [(n, FieldTemplate(t)) for n, t in settings.structured_metadata]
        self.tenant = FieldTemplate(settings.tenant) if settings.tenant else None
        self._label_keys = set().union(*(t.top_keys() for _, t in self.labels)) if self.labels else set()
        self._meta_keys = set().union(*(t.top_keys() for _, t in self.metadata)) if self.metadata else set()
        self._tenant_keys = self.tenant.top_keys() if self.tenant else set()
        self._seen: dict[str, set[str]] = {n: set() for n, _ in settings.labels}
        self._warned: set[str] = set()
        self._capped = metrics.FLAGGED.labels(component=name, flag="label_cardinality")
        self._sanitised = metrics.FLAGGED.labels(component=name, flag="label_sanitised")
        self._split = metrics.FLAGGED.labels(component=name, flag="line_split")
        self._sanitised_warned: set[str] = set()
        self.log = logging.getLogger(f"logagent.output.{name}")
        self.labels_cache: dict[str, dict[str, str]] = {}
        if http.compression == "snappy":
            self.headers = {"Content-Type": "application/x-protobuf"}
        else:
            self.headers = {"Content-Type": "application/json"}
            if http.compression == "gzip":
                self.headers["Content-Encoding"] = "gzip"

    # -- records -> items -----------------------------------------------------------------------------------
    def _stream(self, rec: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
        """Labels string plus the label values the cardinality guard moved to structured metadata."""
        pairs = []
        moved = []
        limit = self.settings.max_label_values
        for name, tmpl in self.labels:
            value = tmpl.render(rec)
            if not value:
                continue
            if not value.isascii() or len(value) > self.settings.max_label_value_length // 4:
                value = self._sanitise(name, value)
                if not value:
                    continue
            seen = self._seen[name]
            if value not in seen:
                if len(seen) >= limit:
                    moved.append((name, value))
                    if name not in self._warned:
                        self._warned.add(name)
                        logging.getLogger(f"logagent.output.{self.name}").warning(
                            "label has too many values; new values go to structured metadata",
                            extra={"output": self.name, "label": name, "max_label_values": limit})
                    continue
                seen.add(value)
            pairs.append((name, value))
        labels = label_string(pairs) if pairs else '{job="logagent"}'
        if labels not in self.labels_cache:
            if len(self.labels_cache) > 100_000:
                self.labels_cache.clear()
            self.labels_cache[labels] = dict(pairs) if pairs else {"job": "logagent"}
        return labels, tuple(moved)

    def _sanitise(self, name: str, value: str) -> str:
        """A label value Loki would refuse made acceptable: U+FFFD and undecodable bytes removed, cut to
        `max_label_value_length` bytes at a character boundary. Counted; warned once per label name."""
        clean = _UNSAFE_LABEL_CHARS.sub("", value)
        raw = clean.encode("utf-8")
        limit = self.settings.max_label_value_length
        if len(raw) > limit:
            clean = raw[:limit].decode("utf-8", "ignore")
        if clean != value:
            self._sanitised.inc()
            if name not in self._sanitised_warned:
                self._sanitised_warned.add(name)
                self.log.warning("label value Loki would refuse was sanitised (U+FFFD/undecodable bytes removed, "
                                 "cut to max_label_value_length)",
                                 extra={"output": self.name, "label": name, "bytes": len(value.encode("utf-8",
                                        "surrogateescape")), "max_label_value_length": limit})
        return clean

    def _split_line(self, labels: str, ts: int, line: str, md: tuple[tuple[str, str], ...]) -> list[Item]:
        """A line over `max_line_size` bytes as several entries Loki accepts, linked by structured metadata."""
        raw = line.encode("utf-8", "surrogateescape")
        limit = self.settings.max_line_size
        if len(raw) <= limit:
            return [(labels, ts, line, md)]
        pieces = []
        start = 0
        while start < len(raw):
            end = min(start + limit, len(raw))
            while end < len(raw) and end > start + 1 and (raw[end] & 0xC0) == 0x80:  # not inside a character
                end -= 1
            pieces.append(raw[start:end].decode("utf-8", "surrogateescape"))
            start = end
        split_id = xxhash.xxh64_hexdigest(b"%d\x00%s\x00%s" % (ts, labels.encode(), raw[:4096]))
        n = len(pieces)
        self._split.inc()
        return [(labels, ts + i, p, md + (("split_id", split_id), ("split_part", f"{i + 1}/{n}")))
                for i, p in enumerate(pieces)]

    def _metadata(self, rec: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        out = []
        for name, tmpl in self.metadata:
            value = tmpl.render(rec)
            if value:
                out.append((name, value))
        return tuple(out)

    def parts(self, batch: Batch) -> list[tuple[str, list[Item], int]]:
        meta = batch.meta
        meta_keys = set(meta)
        # Labels, metadata and tenant usually come from batch-level fields (Kubernetes metadata, path): then
        # they are rendered once per batch, not once per line.
        labels_per_batch = self._label_keys <= meta_keys
        md_per_batch = self._meta_keys <= meta_keys
        tenant_per_batch = self._tenant_keys <= meta_keys
        stream = self._stream(meta) if labels_per_batch else None
        md = self._metadata(meta) if md_per_batch else None
        tenant = (self.tenant.render(meta) if self.tenant else "") if tenant_per_batch else None
        as_json = self.settings.line == "json"
        by_tenant: dict[str, list[Item]] = {}
        sizes: dict[str, int] = {}
        now = time.time_ns()
        long_line = self.settings.max_line_size // 4  # fewer characters than this cannot exceed the byte limit
        if self.whole_batches and not as_json and stream is not None and md is not None and tenant is not None:
            whole = _batch_items(batch.rows, stream, md, tenant, long_line)
            if whole is not None:
                return whole
        records = batch.shipped() if (as_json or stream is None or md is None or tenant is None) else batch.records
        capped = 0
        for rec in records:
            labels, moved = stream if stream is not None else self._stream(rec)
            rmd = md if md is not None else self._metadata(rec)
            if moved:
                rmd = rmd + moved
                capped += 1
            flags = rec.get("flags")
            if flags:
                rmd = rmd + (("flags", ",".join(map(str, flags))),)
            t = tenant if tenant is not None else (self.tenant.render(rec) if self.tenant else "")
            line = orjson.dumps(rec, default=str).decode() if as_json else rec.get("message", "")
            if not isinstance(line, str):
                line = orjson.dumps(line, default=str).decode()
            tns = rec.get("time_ns")  # the parser's nanoseconds: no second parse of the time string
            ts = tns if type(tns) is int else rfc3339_ns(rec.get("time"), now)
            items = by_tenant.get(t)
            if items is None:
                items = by_tenant[t] = []
                sizes[t] = 0
            if len(line) > long_line:
                pieces = self._split_line(labels, ts, line, rmd)
                items.extend(pieces)
                sizes[t] += len(line) + (len(labels) + 64) * len(pieces)
                continue
            items.append((labels, ts, line, rmd))
            sizes[t] += len(line) + len(labels) + 24
        if capped:
            self._capped.inc(capped)
        return [(t, items, sizes[t]) for t, items in by_tenant.items()]

    # -- codec ----------------------------------------------------------------------------------------------
    def encode(self, key: str, items: list[Item]) -> Encoded:
        streams: dict[str, list[Item]] = {}
        for labels, run in groupby(items, _LABELS):  # items come in runs of one stream (a batch's)
            s = streams.get(labels)
            if s is None:
                streams[labels] = list(run)
            else:
                s.extend(run)
        headers = dict(self.headers)
        if key:
            headers["X-Scope-OrgID"] = key
        if self.settings.http.compression == "snappy":
            for entries in streams.values():
                entries.sort(key=_by_time)
            return Encoded(compress("snappy", push_body(streams)), headers, self.url)
        doc = {"streams": [
            {"stream": self.labels_cache.get(labels) or {},
             "values": [[str(ts), line, dict(md)] if md else [str(ts), line]
                        for _, ts, line, md in sorted(entries, key=_by_time)]}
            for labels, entries in streams.items()]}
        try:
            payload = orjson.dumps(doc)
        except orjson.JSONEncodeError:  # undecodable bytes (surrogates): U+FFFD, as on the protobuf path
            payload = orjson.dumps(_utf8_doc(doc))
        if self.settings.http.compression == "gzip":
            payload = compress("gzip", payload)
        return Encoded(payload, headers, self.url)

    def interpret(self, key: str, items: list[Item], encoded: Encoded, r: Response) -> Verdict:
        if r.status < 300:
            return Verdict(OK)
        # reasons carry an excerpt with credential-shaped text masked (a proxy may echo the request's headers)
        text = excerpt(r.body, 500)
        if r.status == 429 or r.status >= 500:
            return Verdict(RETRY, reason=f"HTTP {r.status}: {text[:300]}",
                           retry_after=retry_after_seconds(r.headers.get("Retry-After")))
        if r.status == 413:
            return Verdict(SPLIT, reason=f"request_too_large: HTTP 413: {text[:300]}")
        if r.status == 400:
            full = r.body.decode("utf-8", "replace").strip()
            rejected, retry, causes = refused(items, full)
            if not causes or (not rejected and not retry):
                # Nothing in the answer names an entry we sent: what was written is unknown.
                return Verdict(REJECT, reason=f"loki_400: {excerpt(full, MAX_REASON)}")
            return Verdict(ITEMS, reason=f"loki_400: {len(rejected)} entries refused",
                           reject=[(i, f"loki_400: {mask(why)}"[:MAX_REASON]) for i, why in rejected], retry=retry)
        return Verdict(REJECT, reason=f"http_{r.status}: {text[:300]}")

    def dead_record(self, key: str, item: Item) -> dict[str, Any]:
        labels, ts, line, md = item
        rec: dict[str, Any] = {"labels": labels, "time_ns": ts, "line": line}
        if md:
            rec["structured_metadata"] = dict(md)
        if key:
            rec["tenant"] = key
        return rec


_LABELS = itemgetter(0)
_by_time = itemgetter(1)
_MESSAGE = itemgetter("message")
_TIME_NS = itemgetter("time_ns")


def _batch_items(records: Rows, stream: tuple[str, tuple[tuple[str, str], ...]],
                 md: tuple[tuple[str, str], ...], tenant: str,
                 long_line: int) -> list[tuple[str, list[Item], int]] | None:
    """`LokiCodec.parts` for the common batch, without a bytecode loop per record: labels, metadata and tenant
    from the batch, every record with a str message of fewer than `long_line` characters, the parser's int
    `time_ns` and no flags. None: the record-by-record path decides. A block gives its columns without making a
    record dict."""
    labels, moved = stream
    if moved or not records:
        return None
    try:
        if isinstance(records, list):
            lines = list(map(_MESSAGE, records))
            stamps = list(map(_TIME_NS, records))
        else:
            lines, stamps = records.column("message"), records.column("time_ns")
    except (KeyError, TypeError):
        return None
    if set(map(type, lines)) != {str} or set(map(type, stamps)) != {int} or max(map(len, lines)) > long_line:
        return None
    with_key = speedups.with_key
    if with_key(records, "flags", None) if with_key is not None else any("flags" in r for r in as_records(records)):
        return None
    items = list(zip(repeat(labels), stamps, lines, repeat(md)))
    return [(tenant, items, sum(map(len, lines)) + len(items) * (len(labels) + 24))]


def _template_map(section: Section, key: str, default: dict[str, str]) -> tuple[tuple[str, str], ...]:
    mapping = section.str_map(key, default)
    for name, text in mapping.items():
        if not _LABEL_NAME.match(name):
            raise section.error(f"{name!r} is not a valid Loki label name ([a-zA-Z_][a-zA-Z0-9_]*)", key)
        check_template(section, key, text, within=name)
    return tuple(mapping.items())


class LokiOutput(DeliveryOutput[LokiSettings, Item]):
    settings: LokiSettings

    @classmethod
    def parse_settings(cls, section: Section) -> LokiSettings:
        encoding = section.str("encoding", "protobuf", choices=("protobuf", "json"))
        http = parse_http_settings(section, compressions=("snappy",) if encoding == "protobuf" else ("none", "gzip"),
                                   default_compression="snappy" if encoding == "protobuf" else "gzip",
                                   default_max_records=5000, default_max_bytes=4 * 1024 * 1024)
        labels = _template_map(section, "labels", DEFAULT_LABELS)
        if len(labels) > MAX_LABEL_NAMES:
            raise section.error(f"at most {MAX_LABEL_NAMES} labels (Loki's per-series limit), got {len(labels)}",
                                "labels")
        settings = LokiSettings(
            http=http,
            encoding=encoding,
            labels=labels,
            structured_metadata=_template_map(section, "structured_metadata", DEFAULT_METADATA),
            max_label_values=section.int("max_label_values", 500, min=1),
            tenant=section.str("tenant", ""),
            line=section.str("line", "message", choices=("message", "json")),
            max_line_size=section.size("max_line_size", MAX_LINE_SIZE),
            max_label_value_length=section.int("max_label_value_length", MAX_LABEL_VALUE_LENGTH, min=16),
        )
        check_template(section, "tenant", settings.tenant)
        section.done()
        return settings

    def __init__(self, name: str, settings: LokiSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.codec = LokiPush(name, settings)
        self.delivery: Delivery[Item] = Delivery(name, settings.http, self.codec, ctx.dead_letter,
                                                 on_permanent=self._permanent)

    def _permanent(self, key: str, reason: str) -> None:
        """Called once per distinct reason of a response: one error line per cause, never silent."""
        message = ("Loki refused entries; those it named are dead-lettered" if reason.startswith("loki_400")
                   else "Loki refused a request for good; records dead-lettered")
        self.log.error(message, extra={"output": self.name, "tenant": key, "reason": reason[:MAX_REASON]})
