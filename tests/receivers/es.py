"""An Elasticsearch `_bulk` receiver: parses the NDJSON body (gzip or plain), stores documents by `_id` with ES's
`create` semantics (a second create of an id answers 409 `version_conflict_engine_exception`), and answers item by
item with ES's response shape. `item_fault(action, doc, attempt)` may return (status, error_type, reason) to fail
an item like ES does (per-item 429 `es_rejected_execution_exception`, 400 `mapper_parsing_exception`).
`filter_path` (query parameter) filters the answer as ES's response filtering does (`items.*.status` keeps only
the status of each item), so a client that asks for it must be able to read the filtered answer.

Run standalone (benchmarks, subprocess tests): `python -m tests.receivers.es --port 0 --ready-file F
[--dump FILE]` (the dump writes the stored documents' ids/messages as JSON lines on SIGTERM).
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.receivers import Receiver, run_forever

ItemFault = Callable[[dict[str, Any], dict[str, Any], int], "tuple[int, str, str] | None"]


class BulkReceiver(Receiver):
    def __init__(self, item_fault: ItemFault | None = None, keep_docs: bool = True) -> None:
        super().__init__()
        self.docs: dict[str, dict[str, Any]] = {}  # _id -> source
        self.auto_docs: list[dict[str, Any]] = []  # documents created without _id
        self.index_of: dict[str, str] = {}
        self.item_fault = item_fault
        self.keep_docs = keep_docs
        self.attempts: dict[str, int] = {}  # per _id: how many times it was offered
        self.items_seen = 0
        self.bytes_seen = 0
        self.conflicts = 0
        self.content_types: set[str] = set()
        self.auth_headers: set[str] = set()
        self.queries: list[dict[str, str]] = []  # query parameters of each request
        self.paths: list[str] = []
        self.app.router.add_post("/_bulk", self.bulk)
        self.app.router.add_post("/{target}/_bulk", self.bulk)

    async def bulk(self, request: web.Request) -> web.StreamResponse:
        replaced, reset_after = await self.fault(request)
        if replaced is not None:
            return replaced
        raw = await request.read()
        self.queries.append(dict(request.query))
        self.paths.append(request.path)
        self.bytes_seen += len(raw)
        self.content_types.add(request.headers.get("Content-Type", ""))
        if "Authorization" in request.headers:
            self.auth_headers.add(request.headers["Authorization"])
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        if not raw.endswith(b"\n"):
            return web.json_response({"error": {"type": "illegal_argument_exception",
                                                "reason": "The bulk request must be terminated by a newline"}},
                                     status=400)
        lines = raw.split(b"\n")[:-1]
        if len(lines) % 2:
            return web.json_response({"error": {"type": "illegal_argument_exception",
                                                "reason": "odd number of lines"}}, status=400)
        items = []
        errors = False
        for i in range(0, len(lines), 2):
            action = json.loads(lines[i])
            (op, meta), = action.items()
            doc = json.loads(lines[i + 1])
            self.items_seen += 1
            if op != "create":
                items.append({op: {"status": 400, "error": {"type": "test_receiver", "reason": f"unexpected {op}"}}})
                errors = True
                continue
            _id = meta.get("_id")
            key = _id or f"auto-{self.items_seen}"
            self.attempts[key] = self.attempts.get(key, 0) + 1
            fault = self.item_fault(meta, doc, self.attempts[key]) if self.item_fault else None
            if fault is not None:
                status, etype, reason = fault
                items.append({"create": {"_index": meta.get("_index"), "_id": _id, "status": status,
                                         "error": {"type": etype, "reason": reason}}})
                errors = True
                continue
            if _id is not None and _id in self.docs:
                self.conflicts += 1
                errors = True
                items.append({"create": {"_index": meta.get("_index"), "_id": _id, "status": 409, "error": {
                    "type": "version_conflict_engine_exception",
                    "reason": f"[{_id}]: version conflict, document already exists (current version [1])"}}})
                continue
            if _id is None:
                self.auto_docs.append(doc)
            else:
                self.docs[_id] = doc if self.keep_docs else {"message": doc.get("message")}
                self.index_of[_id] = meta.get("_index")
            items.append({"create": {"_index": meta.get("_index"), "_id": _id, "_version": 1, "result": "created",
                                     "status": 201}})
        if reset_after:
            self.reset(request)
        answer: dict[str, Any] = {"took": 1, "errors": errors, "items": items}
        if "filter_path" in request.query:
            answer = filter_response(answer, request.query["filter_path"].split(","))
        return web.json_response(answer)


def filter_response(doc: Any, paths: list[str]) -> Any:
    """ES response filtering: keep only the dotted paths given (`*` matches any key; arrays are walked)."""

    def keep(node: Any, parts: list[list[str]]) -> Any:
        if isinstance(node, list):
            kept = [keep(x, parts) for x in node]
            return [x for x in kept if x is not None]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            rest = [p[1:] for p in parts if p and (p[0] == key or p[0] == "*")]
            if not rest:
                continue
            if any(not r for r in rest):
                out[key] = value
                continue
            sub = keep(value, rest)
            if sub not in (None, {}, []):
                out[key] = sub
        return out or None

    return keep(doc, [p.split(".") for p in paths]) or {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file")
    ap.add_argument("--dump", help="on SIGTERM write stored docs as JSON lines {_id, message} here")
    args = ap.parse_args()
    rec = BulkReceiver(keep_docs=False)

    def on_term(*_: Any) -> None:
        if args.dump:
            with open(args.dump, "w") as fh:
                for _id, doc in rec.docs.items():
                    fh.write(json.dumps({"_id": _id, "message": doc.get("message")}) + "\n")
                fh.write(json.dumps({"_stats": {"items_seen": rec.items_seen, "conflicts": rec.conflicts,
                                                "bytes_seen": rec.bytes_seen,
                                                "auto_docs": len(rec.auto_docs)}}) + "\n")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    run_forever(rec, args.port, args.ready_file)


if __name__ == "__main__":
    main()
