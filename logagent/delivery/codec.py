"""What a backend's wire format gives the engine: the `Codec` protocol, the `Encoded` request it builds, the
`Response` it reads and the `Verdict` it returns (with `retry_after_seconds` for the `Retry-After` header)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from logagent.record import Batch

Item = TypeVar("Item")  # what a codec makes of one record (ES: its bulk lines; Loki: a stream entry)


@dataclass
class Encoded:
    """One HTTP request body for a list of items. `context` is for the codec's `interpret` (e.g. the order in
    which Loki entries were written after sorting)."""

    body: bytes
    headers: dict[str, str]
    url: str
    context: object = None


class RequestTooLarge(Exception):
    """Raised by `encode` when the items exceed the backend's request limit: the engine splits them in two."""


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]  # case-insensitive (logagent.httpclient.Headers)
    body: bytes


OK, RETRY, REJECT, ITEMS, SPLIT = "ok", "retry", "reject", "items", "split"


@dataclass
class Verdict:
    """What one response means. `kind` ok/retry/reject apply to the whole request (`split`: send it in halves —
    when it is too large, or to isolate the items a backend refused without saying which, as Loki's 400 does; a
    single item that still gets `split` is dead-lettered with `reason`); `items` carries per-item
    outcomes: indices to retry and (index, reason) pairs rejected for good; all others succeeded."""

    kind: str
    reason: str = ""
    retry_after: float | None = None
    retry: list[int] = field(default_factory=list)
    reject: list[tuple[int, str]] = field(default_factory=list)


class Codec(Protocol, Generic[Item]):
    """A backend's wire format. `parts` splits a batch into keyed requests-to-be: [(key, items, nbytes)] (the key
    is what must not share a request: an index, a tenant, a logstore); the engine batches items per key, calls
    `encode` for each request and `interpret` on its answer; `dead_record` turns a refused item back into a record
    for the dead-letter file."""

    def parts(self, batch: Batch) -> list[tuple[str, list[Item], int]]: ...

    def encode(self, key: str, items: list[Item]) -> Encoded: ...

    def interpret(self, key: str, items: list[Item], encoded: Encoded, response: Response) -> Verdict: ...

    def dead_record(self, key: str, item: Item) -> dict[str, Any]: ...


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds, from either form the HTTP spec allows: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import email.utils  # the HTTP-date form only (rare): the email package is not loaded otherwise

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
