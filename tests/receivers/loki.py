"""A Loki push receiver: `POST /loki/api/v1/push` with snappy + protobuf (decoded with classes protoc generated
from `outputs/proto/logproto.proto`, not with the output's encoder) or JSON (optionally gzip), per tenant
(`X-Scope-OrgID`).

It answers like Loki 3's distributor (grafana/loki `pkg/distributor/distributor.go` `Push`, messages from
`pkg/validation/validate.go`): labels are parsed and validated per stream (a value over `max_label_value_length`
bytes, or holding U+FFFD / invalid UTF-8, refuses the whole stream), then each entry on its own (older than
`reject_before_ns`, newer than `reject_after_ns`, longer than `max_line_bytes`). Valid entries are stored, exact
duplicates (same stream, timestamp and line) dropped silently as Loki does, and if anything was refused the answer
is HTTP 400 whose body is Go's `util.GroupedErrors`: the distinct messages in random order joined by "; ", each
prefixed "<n> errors like: " when repeated or when there are several, then a newline (`http.Error`).

`discover_service_name` adds `service_name` (from app, container, job...) like Loki 3 does, so the messages name
a label set the client did not send. `shard_streams=N` stands for Loki 3's stream sharding under load: each push
of a stream is cut into N contiguous shards labelled `__stream_shard__`, and the shard numbers rotate from push to
push (the distributor's shard tracker), so an entry sent again lands in another stream and is stored twice.
`ingester_behind_ns` makes the *ingester* refuse entries older than it (out of order / too far behind) with its
own answer: up to 10 entries listed by Go `Time.String()`, then "user '..', total ignored: N out of M for stream".

Run standalone for benchmarks: `python -m tests.receivers.loki --port 0 --ready-file F`.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import random
import re

import cramjam
from aiohttp import web

from logagent.outputs.proto.logproto_pb2 import PushRequest
from tests.receivers import Receiver, run_forever

_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_labels(text: str) -> dict[str, str]:
    """Prometheus label string -> dict; raises ValueError like Loki's parser on malformed input."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"labels must be enclosed in braces: {text!r}")
    inner = text[1:-1]
    out: dict[str, str] = {}
    pos = 0
    while pos < len(inner):
        m = _LABEL.match(inner, pos)
        if not m:
            raise ValueError(f"parse error at {inner[pos:pos + 20]!r}")
        out[m.group(1)] = json.loads('"' + m.group(2) + '"')
        pos = m.end()
    return out


MAX_RETURNED_STREAM_ERRORS = 10  # ingester.max-returned-stream-errors
_SERVICE_NAME_FROM = ("service_name", "service", "app", "application", "name", "app_kubernetes_io_name",
                      "container", "container_name", "component", "workload", "job")


def rfc3339(ns: int) -> str:
    """Go's `time.RFC3339` of a time: whole seconds, UTC as `Z`."""
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def go_time_string(ns: int) -> str:
    """Go's `Time.String()` of a UTC time: fraction with trailing zeros trimmed, then `+0000 UTC`."""
    base = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    frac = f"{ns % 1_000_000_000:09d}".rstrip("0")
    return f"{base}{'.' + frac if frac else ''} +0000 UTC"


def label_text(labels: dict[str, str]) -> str:
    """Prometheus `labels.String()`: sorted, `name="value"` (Go-quoted), joined by ", "."""
    return "{" + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items())) + "}"


def grouped_errors(errors: list[str]) -> str:
    counts: dict[str, int] = {}
    for e in errors:
        counts[e] = counts.get(e, 0) + 1
    keys = list(counts)
    random.shuffle(keys)  # Go map order
    return "; ".join((f"{counts[k]} errors like: " if len(keys) > 1 or counts[k] > 1 else "") + k for k in keys)


class LokiReceiver(Receiver):
    def __init__(self, reject_before_ns: int | None = None, max_line_bytes: int = 256 * 1024,
                 require_tenant: bool = False, keep: bool = True, *, reject_after_ns: int | None = None,
                 max_label_value_length: int = 2048, discover_service_name: bool = False, shard_streams: int = 0,
                 ingester_behind_ns: int | None = None) -> None:
        super().__init__()
        # (tenant, frozenset(labels)) -> {(ts_ns, line): structured metadata}
        self.streams: dict[tuple[str, frozenset[tuple[str, str]]], dict[tuple[int, str], dict[str, str]]] = {}
        self.reject_before_ns = reject_before_ns
        self.reject_after_ns = reject_after_ns
        self.max_line_bytes = max_line_bytes
        self.max_label_value_length = max_label_value_length
        self.discover_service_name = discover_service_name
        self.shard_streams = shard_streams
        self.ingester_behind_ns = ingester_behind_ns
        self._last_shard: dict[tuple[str, frozenset[tuple[str, str]]], int] = {}
        self.require_tenant = require_tenant
        self.keep = keep
        self.entries_seen = 0
        self.entries_stored = 0
        self.duplicates = 0
        self.unsorted_streams = 0  # streams in a request whose entries were not in time order
        self.bytes_seen = 0
        self.tenants_seen: list[str] = []
        self.content_types: set[str] = set()
        self.blocked_tenants: set[str] = set()  # answered 429 (rate limited) until removed
        self.answers: list[tuple[int, str]] = []  # (status, body) of every 400
        self.app.router.add_post("/loki/api/v1/push", self.push)

    def stored(self, tenant: str = "") -> list[tuple[dict[str, str], int, str, dict[str, str]]]:
        out = []
        for (t, labels), entries in self.streams.items():
            if t == tenant:
                for (ts, line), md in entries.items():
                    out.append((dict(labels), ts, line, md))
        return out

    def _labels(self, labels_text: str) -> tuple[dict[str, str] | None, str | None]:
        """(labels as Loki keeps them, or None) and the error refusing the stream."""
        try:
            labels = parse_labels(labels_text)
        except ValueError as e:
            return None, f"Error parsing labels '{labels_text}' with error: {e}"
        for name, value in labels.items():
            if "\ufffd" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
                return None, f"Error parsing labels '{labels_text}' with error: invalid UTF-8 in label value"
        if self.discover_service_name and "service_name" not in labels:
            for name in _SERVICE_NAME_FROM:
                if labels.get(name):
                    labels["service_name"] = labels[name]
                    break
            else:
                labels["service_name"] = "unknown_service"
        for name, value in labels.items():
            if len(value.encode()) > self.max_label_value_length:
                return None, f"stream '{label_text(labels)}' has label value too long: '{value}'"
        return labels, None

    async def push(self, request: web.Request) -> web.StreamResponse:
        tenant = request.headers.get("X-Scope-OrgID", "")
        if tenant in self.blocked_tenants:
            self.requests += 1
            await request.read()
            return web.Response(status=429, headers={"Retry-After": "0"},
                                text=f"Ingestion rate limit exceeded for user {tenant}\n")
        replaced, reset_after = await self.fault(request)
        if replaced is not None:
            return replaced
        self.tenants_seen.append(tenant)
        if self.require_tenant and not tenant:
            return web.Response(status=401, text="no org id\n")
        raw = await request.read()
        self.bytes_seen += len(raw)
        ctype = request.headers.get("Content-Type", "")
        self.content_types.add(ctype)
        try:
            streams = self._decode(ctype, request.headers.get("Content-Encoding", ""), raw)
        except Exception as e:  # Loki answers a body it cannot read with 400
            return web.Response(status=400, text=f"error parsing push request: {e}\n")
        errors: list[str] = []
        valid: list[tuple[dict[str, str], list[tuple[int, str, dict[str, str]]]]] = []
        for labels_text, entries in streams:
            self.entries_seen += len(entries)
            labels, error = self._labels(labels_text)
            if labels is None:
                assert error is not None
                errors.append(error)
                continue
            times = [ts for ts, _, _ in entries]
            if times != sorted(times):
                self.unsorted_streams += 1
            shown = label_text(labels)
            ok = []
            for ts, line, md in entries:
                size = len(line.encode("utf-8", "surrogateescape"))
                if self.reject_before_ns is not None and ts < self.reject_before_ns:
                    errors.append(f"entry for stream '{shown}' has timestamp too old: {rfc3339(ts)}, oldest "
                                  f"acceptable timestamp is: {rfc3339(self.reject_before_ns)}")
                elif self.reject_after_ns is not None and ts > self.reject_after_ns:
                    errors.append(f"entry for stream '{shown}' has timestamp too new: {rfc3339(ts)}")
                elif size > self.max_line_bytes:
                    errors.append(f"Max entry size '{self.max_line_bytes}' bytes exceeded for stream '{shown}' "
                                  f"while adding an entry with length '{size}' bytes")
                else:
                    ok.append((ts, line, md))
            if ok:
                valid.append((labels, ok))
        ingester_error = None
        for labels, entries in valid:
            for shard_labels, part in self._shard(tenant, labels, entries):
                store = self.streams.setdefault((tenant, frozenset(shard_labels.items())), {})
                ignored = []
                for ts, line, md in part:
                    if self.ingester_behind_ns is not None and ts < self.ingester_behind_ns:
                        ignored.append(ts)
                        continue
                    if not self.keep:  # benchmark mode: count, keep nothing
                        self.entries_stored += 1
                        continue
                    if (ts, line) in store:
                        self.duplicates += 1
                        continue
                    store[(ts, line)] = md
                    self.entries_stored += 1
                if ignored:
                    listed = "".join(
                        f"entry with timestamp {go_time_string(ts)} ignored, reason: 'entry too far behind, oldest "
                        f"acceptable timestamp is: {rfc3339(self.ingester_behind_ns or 0)}',\n"
                        for ts in ignored[:MAX_RETURNED_STREAM_ERRORS])
                    ingester_error = (f"{listed}user '{tenant or 'fake'}', total ignored: {len(ignored)} out of "
                                      f"{len(part)} for stream: {label_text(shard_labels)}")
        if reset_after:
            self.reset(request)
        if ingester_error is not None:  # the distributor answers with the ingester's error alone
            self.answers.append((400, ingester_error))
            return web.Response(status=400, text=ingester_error + "\n")
        if errors:
            body = grouped_errors(errors)
            self.answers.append((400, body))
            return web.Response(status=400, text=body + "\n")
        return web.Response(status=204)

    def _shard(self, tenant: str, labels: dict[str, str], entries: list[tuple[int, str, dict[str, str]]]
               ) -> list[tuple[dict[str, str], list[tuple[int, str, dict[str, str]]]]]:
        if self.shard_streams <= 1:
            return [(labels, entries)]
        key = (tenant, frozenset(labels.items()))
        start = self._last_shard.get(key, -1) + 1
        n = self.shard_streams
        size = -(-len(entries) // n)
        out = []
        for i in range(n):
            part = entries[i * size:(i + 1) * size]
            if part:
                out.append(({**labels, "__stream_shard__": str((start + i) % n)}, part))
        self._last_shard[key] = start + n - 1
        return out

    @staticmethod
    def _decode(ctype: str, encoding: str, raw: bytes) -> list[tuple[str, list[tuple[int, str, dict[str, str]]]]]:
        if ctype == "application/x-protobuf":
            req = PushRequest()
            req.ParseFromString(bytes(cramjam.snappy.decompress_raw(raw)))
            out = []
            for s in req.streams:
                if s.hash:
                    raise ValueError("clients must not set hash")
                entries = []
                for e in s.entries:
                    if len(e.parsed):
                        raise ValueError("clients must not set parsed")
                    ts = e.timestamp.seconds * 1_000_000_000 + e.timestamp.nanos
                    entries.append((ts, e.line, {p.name: p.value for p in e.structuredMetadata}))
                out.append((s.labels, entries))
            return out
        if ctype.startswith("application/json"):
            if encoding == "gzip":
                raw = gzip.decompress(raw)
            doc = json.loads(raw)
            out = []
            for s in doc["streams"]:
                labels = "{" + ", ".join(f'{k}={json.dumps(v)}' for k, v in sorted(s["stream"].items())) + "}"
                entries = [(int(v[0]), v[1], dict(v[2]) if len(v) > 2 else {}) for v in s["values"]]
                out.append((labels, entries))
            return out
        raise ValueError(f"unsupported Content-Type {ctype!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file")
    args = ap.parse_args()
    run_forever(LokiReceiver(keep=False), args.port, args.ready_file)


if __name__ == "__main__":
    main()
