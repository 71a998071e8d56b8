"""An SLS PutLogs receiver: `POST /logstores/<logstore>/shards/lb` for one project, checked like the service does.

Written from the public SLS API documentation (PutLogs, data encoding, request signatures), independently of the
output: it checks the Host header (`<project>.<endpoint>`), the required headers, Content-MD5 (uppercase hex of
the body as sent), LZ4-decompresses the body with `x-log-bodyrawsize` and checks the size, parses the LogGroup
with classes protoc generated from `outputs/proto/sls_logs.proto`, verifies the V1 signature with its own
implementation of the documented signing string, checks the STS token, and refuses a Date more than 15 minutes
off its clock (`clock_offset` shifts that clock). Errors are JSON `{"errorCode", "errorMessage"}` with
`x-log-requestid`, as SLS sends them.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import itertools
import time
from typing import Any

import lz4.block
import orjson
from aiohttp import web

from logagent.outputs.proto.sls_logs_pb2 import LogGroup
from tests.receivers import Receiver

_ids = itertools.count(1)


def expected_signature(secret: str, request: web.Request, body: bytes) -> str:
    """The documented V1 string to sign: VERB, Content-MD5, Content-Type, Date (each followed by a newline), then
    CanonicalizedLOGHeaders (every x-log-/x-acs- header, lowercase name, sorted, `name:value` + newline), then
    CanonicalizedResource (path, plus `?` and the sorted `k=v` pairs joined by `&` when there is a query)."""
    h = request.headers
    log_headers = sorted((k.lower(), v) for k, v in h.items() if k.lower().startswith(("x-log-", "x-acs-")))
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in log_headers)
    resource = request.path
    if request.query:
        resource += "?" + "&".join(f"{k}={v}" for k, v in sorted(request.query.items()))
    message = "\n".join([request.method, h.get("Content-MD5", ""), h.get("Content-Type", ""), h.get("Date", "")])
    message += "\n" + canonical_headers + resource
    digest = hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class SlsReceiver(Receiver):
    def __init__(self, project: str, endpoint: str, keys: dict[str, str], security_token: str | None = None,
                 logstore: str = "k8s-logs") -> None:
        super().__init__()
        self.project = project
        self.endpoint = endpoint
        self.keys = keys  # AccessKeyId -> secret
        self.security_token = security_token
        self.logstore = logstore
        self.clock_offset = 0.0
        self.logs: list[dict[str, Any]] = []  # stored: {"time", "time_ns", "contents", "topic", "source", "tags"}
        self.groups = 0
        self.raw_sizes: list[int] = []
        self.errors: list[str] = []  # errorCodes answered
        self.app.router.add_post("/logstores/{logstore}/shards/lb", self.put_logs)

    def _error(self, status: int, code: str, message: str) -> web.Response:
        self.errors.append(code)
        return web.Response(status=status, body=orjson.dumps({"errorCode": code, "errorMessage": message}),
                            headers={"Content-Type": "application/json", "x-log-requestid": f"req-{next(_ids)}",
                                     "Date": email.utils.formatdate(time.time() + self.clock_offset, usegmt=True)})

    async def put_logs(self, request: web.Request) -> web.StreamResponse:
        replaced, reset_after = await self.fault(request)
        if replaced is not None:
            return replaced
        body = await request.read()
        h = request.headers
        if h.get("Host") != f"{self.project}.{self.endpoint}":
            return self._error(404, "ProjectNotExist", f"The Project does not exist : {h.get('Host')}")
        if request.match_info["logstore"] != self.logstore:
            return self._error(404, "LogStoreNotExist", f"logstore {request.match_info['logstore']} does not exist")
        for name in ("Date", "Content-MD5", "Content-Type", "x-log-apiversion", "x-log-signaturemethod",
                     "x-log-bodyrawsize", "Authorization"):
            if name not in h:
                return self._error(400, "MissingParameter", f"header {name} is missing")
        if h["x-log-apiversion"] != "0.6.0" or h["x-log-signaturemethod"] != "hmac-sha1":
            return self._error(400, "InvalidParameter", "unsupported api version or signature method")
        if h["Content-Type"] != "application/x-protobuf":
            return self._error(400, "InvalidContentType", h["Content-Type"])
        md5 = hashlib.md5(body).hexdigest().upper()
        if h["Content-MD5"] != md5:
            return self._error(400, "InvalidContentMD5", "content md5 does not match the body")
        auth = h["Authorization"]
        if not auth.startswith("LOG ") or ":" not in auth:
            return self._error(401, "Unauthorized", "malformed Authorization")
        key_id, _, signature = auth[4:].partition(":")
        if key_id not in self.keys:
            return self._error(401, "InvalidAccessKeyId", f"AccessKeyId {key_id} is not found")
        if self.security_token is not None and h.get("x-acs-security-token") != self.security_token:
            # SLS's answer to an STS token past its expiry (HTTP 401, the message as the SDKs report it)
            return self._error(401, "SecurityTokenExpired", "The security token you provided has expired")
        if not hmac.compare_digest(signature, expected_signature(self.keys[key_id], request, body)):
            return self._error(401, "SignatureNotMatch", "signature does not match")
        try:
            sent = email.utils.parsedate_to_datetime(h["Date"]).timestamp()
        except (TypeError, ValueError):
            return self._error(400, "InvalidDateFormat", h["Date"])
        if abs(sent - (time.time() + self.clock_offset)) > 15 * 60:
            return self._error(400, "RequestTimeExpired", "Request time is expired")
        raw_size = int(h["x-log-bodyrawsize"])
        if h.get("x-log-compresstype") == "lz4":
            raw = lz4.block.decompress(body, uncompressed_size=raw_size)
        elif "x-log-compresstype" not in h:
            raw = body
        else:
            return self._error(400, "InvalidCompressType", h["x-log-compresstype"])
        if len(raw) != raw_size:
            return self._error(400, "InvalidBodyRawSize", f"raw size {len(raw)} != {raw_size}")
        if raw_size > 10 * 1024 * 1024:
            return self._error(413, "PostBodyTooLarge", "body size exceeds 10MB")
        group = LogGroup()
        try:
            group.ParseFromString(raw)
        except Exception as e:
            return self._error(400, "PostBodyInvalid", f"invalid LogGroup: {e}")
        if len(group.Logs) > 4096:
            return self._error(400, "InvalidLogSize", "too many logs")
        self.groups += 1
        self.raw_sizes.append(raw_size)
        tags = {t.Key: t.Value for t in group.LogTags}
        for log in group.Logs:
            self.logs.append({"time": log.Time, "time_ns": log.Time_ns if log.HasField("Time_ns") else None,
                              "contents": {c.Key: c.Value for c in log.Contents}, "topic": group.Topic,
                              "source": group.Source, "tags": tags})
        if reset_after:
            self.reset(request)
        return web.Response(status=200, headers={"x-log-requestid": f"req-{next(_ids)}"})
