"""A VictoriaLogs receiver for its Elasticsearch bulk endpoint, `POST /insert/elasticsearch/_bulk`, written from
VictoriaLogs' documentation (data ingestion, HTTP parameters, key concepts) and its `app/vlinsert/elasticsearch`
handler:

- the field mapping comes from query args or, when absent, headers: `_msg_field`/`VL-Msg-Field` (default `_msg`),
  `_time_field`/`VL-Time-Field` (default `_time`), `_stream_fields`/`VL-Stream-Fields`, `ignore_fields`/
  `VL-Ignore-Fields`; the tenant from the `AccountID` and `ProjectID` headers (unsigned 32-bit numbers, default 0;
  anything else is refused with 400);
- the action line must contain "create" or "index"; its `_index` and `_id` are ignored: nothing is deduplicated,
  a document sent twice is stored twice;
- nested objects are flattened with dots; a row without the message field gets VictoriaLogs' placeholder
  `missing _msg field; see https://docs.victoriametrics.com/victorialogs/keyconcepts/#message-field`;
- the answer is `{"took":N,"errors":false,"items":[]}` (`items_mode="empty"`, the long-standing answer) or one
  `{"create":{"status":201}}` per document (`items_mode="per_item"`, newer releases). A document line that is not
  JSON stops the parsing: the rows before it are stored, a warning is logged at the server, and the client gets a
  200 with an empty body (the handler returns without writing).
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from aiohttp import web

from tests.receivers import Receiver

MISSING_MSG = "missing _msg field; see https://docs.victoriametrics.com/victorialogs/keyconcepts/#message-field"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, str):
        out[prefix] = value
    elif value is not None:
        out[prefix] = json.dumps(value, separators=(",", ":"))


class VictoriaLogsReceiver(Receiver):
    def __init__(self, items_mode: str = "empty") -> None:
        super().__init__()
        self.items_mode = items_mode
        self.rows: list[dict[str, str]] = []  # stored rows, with "_tenant" = "AccountID:ProjectID"
        self.actions: list[dict[str, Any]] = []
        self.app.router.add_post("/insert/elasticsearch/_bulk", self.bulk)

    @staticmethod
    def _param(request: web.Request, arg: str, header: str, default: str) -> str:
        return request.query.get(arg) or request.headers.get(header) or default

    async def bulk(self, request: web.Request) -> web.StreamResponse:
        replaced, reset_after = await self.fault(request)
        if replaced is not None:
            return replaced
        raw = await request.read()
        tenant = []
        for name in ("AccountID", "ProjectID"):
            value = request.headers.get(name, "0")
            try:
                n = int(value)
                if not 0 <= n < 2**32:
                    raise ValueError("out of range")
            except ValueError as e:
                return web.Response(status=400, text=f"cannot parse {name} header {value!r}: {e}\n")
            tenant.append(str(n))
        msg_field = self._param(request, "_msg_field", "VL-Msg-Field", "_msg")
        time_field = self._param(request, "_time_field", "VL-Time-Field", "_time")
        stream_fields = [f for f in self._param(request, "_stream_fields", "VL-Stream-Fields", "").split(",") if f]
        ignore = set(f for f in self._param(request, "ignore_fields", "VL-Ignore-Fields", "").split(",") if f)
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        lines = [line for line in raw.split(b"\n") if line.strip()]
        n = 0
        for i in range(0, len(lines) - 1, 2):
            action = lines[i].decode()
            if '"create"' not in action and '"index"' not in action:
                return web.Response(status=200, body=b"")
            try:
                doc = json.loads(lines[i + 1])
            except ValueError:
                return web.Response(status=200, body=b"")  # VictoriaLogs logs a warning and writes nothing
            self.actions.append(json.loads(action))
            row: dict[str, str] = {}
            _flatten("", doc, row)
            for f in ignore:
                row.pop(f, None)
            row["_time"] = row.pop(time_field, "") or "now"
            msg = row.pop(msg_field, "")
            row["_msg"] = msg or MISSING_MSG
            row["_stream"] = "{" + ",".join(f'{f}="{row[f]}"' for f in stream_fields if row.get(f)) + "}"
            row["_tenant"] = ":".join(tenant)
            self.rows.append(row)
            n += 1
        if reset_after:
            self.reset(request)
        items = [{"create": {"status": 201}} for _ in range(n)] if self.items_mode == "per_item" else []
        return web.json_response({"took": 1, "errors": False, "items": items})
