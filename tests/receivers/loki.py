"""A Loki push receiver: `POST /loki/api/v1/push` with snappy + protobuf (decoded with classes protoc generated
from `outputs/proto/logproto.proto`, not with the output's encoder) or JSON (optionally gzip), per tenant
(`X-Scope-OrgID`).

It answers like Loki's distributor/ingester: each entry is validated on its own; valid entries are stored, exact
duplicates (same stream, timestamp and line) are dropped silently as Loki does, and if some entries were refused
the answer is HTTP 400 whose body names each refused entry and ends with `total ignored: N out of M`.
Refusals: older than `reject_before_ns` ("entry too far behind"), longer than `max_line_bytes`
("Max entry size ... exceeded"). Whole-request faults come from `Receiver.plan`.

Run standalone for benchmarks: `python -m tests.receivers.loki --port 0 --ready-file F`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re

import cramjam
from aiohttp import web

from tests.receivers import Receiver, run_forever
from tests.receivers.logproto_pb2 import PushRequest

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


class LokiReceiver(Receiver):
    def __init__(self, reject_before_ns: int | None = None, max_line_bytes: int = 256 * 1024,
                 require_tenant: bool = False, keep: bool = True) -> None:
        super().__init__()
        # (tenant, frozenset(labels)) -> {(ts_ns, line): structured metadata}
        self.streams: dict[tuple[str, frozenset[tuple[str, str]]], dict[tuple[int, str], dict[str, str]]] = {}
        self.reject_before_ns = reject_before_ns
        self.max_line_bytes = max_line_bytes
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
        self.app.router.add_post("/loki/api/v1/push", self.push)

    def stored(self, tenant: str = "") -> list[tuple[dict[str, str], int, str, dict[str, str]]]:
        out = []
        for (t, labels), entries in self.streams.items():
            if t == tenant:
                for (ts, line), md in entries.items():
                    out.append((dict(labels), ts, line, md))
        return out

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
        errors = []
        total = 0
        for labels_text, entries in streams:
            try:
                labels = frozenset(parse_labels(labels_text).items())
            except ValueError as e:
                return web.Response(status=400, text=f"error parsing labels {labels_text!r}: {e}\n")
            times = [ts for ts, _, _ in entries]
            if times != sorted(times):
                self.unsorted_streams += 1
            store = self.streams.setdefault((tenant, labels), {})
            for ts, line, md in entries:
                total += 1
                self.entries_seen += 1
                if len(line.encode()) > self.max_line_bytes:
                    errors.append(f"Max entry size '{self.max_line_bytes}' bytes exceeded for stream "
                                  f"'{labels_text}' while adding an entry with length '{len(line.encode())}' bytes")
                    continue
                if self.reject_before_ns is not None and ts < self.reject_before_ns:
                    errors.append(f"entry with timestamp {ts} ignored, reason: 'entry too far behind, oldest "
                                  f"acceptable timestamp is: {self.reject_before_ns}' for stream: {labels_text}")
                    continue
                if not self.keep:  # benchmark mode: count, keep nothing
                    self.entries_stored += 1
                    continue
                if (ts, line) in store:
                    self.duplicates += 1
                    continue
                store[(ts, line)] = md if self.keep else {}
                self.entries_stored += 1
        if reset_after:
            self.reset(request)
        if errors:
            return web.Response(status=400, text="\n".join(errors) + f"\ntotal ignored: {len(errors)} out of "
                                                                       f"{total}\n")
        return web.Response(status=204)

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
