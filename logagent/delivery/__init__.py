"""Shared delivery machinery for the HTTP outputs (Elasticsearch, Loki, SLS): written once, used by all three.

Every HTTP output has the same shape: its settings (`settings.HttpSettings` plus its own keys), a codec that
encodes batches into requests and reads each answer into a `Verdict` (`codec.Codec`), an optional healthcheck, and
the `DeliveryOutput` wiring (`output`) around the engine. The modules:

- `settings`: `HttpSettings` and `parse_http_settings` (url, batching, requests in flight, compression, retry,
  timeout, TLS, auth, extra headers), parsed once from the output's `Section`; `ssl_context`.
- `codec`: the `Codec` protocol a backend implements (`parts`, `encode`, `interpret`, `dead_record`), the
  `Encoded` request, the `Response`, the `Verdict` kinds, `retry_after_seconds`.
- `engine`: `Delivery`, which batches items per key, sends with retries (full jitter, at least `Retry-After`),
  dead-letters what the backend refused for good, and acknowledges.
- `templates`: `FieldTemplate`, the `{dotted.field|fallback}` templates of ES index names and Loki labels, and
  `check_template`, which validates one as a setting.
- `output`: `DeliveryOutput`, the `Output` that joins a codec and the engine.
(Compression lives in `logagent.compression`; `compress` is re-exported here for the outputs.)

What it must never do: drop an item without dead-lettering it, acknowledge before the backend confirmed,
retry what the backend said is permanent, grow without bound (`send` awaits once `buffer_max_bytes` of items
are pending: that is the backpressure that holds the inputs), or log a secret (auth values are kept out of
reprs and logs).
"""

from logagent.compression import compress
from logagent.delivery.codec import (
    ITEMS,
    OK,
    REJECT,
    RETRY,
    SPLIT,
    Codec,
    Encoded,
    Item,
    RequestTooLarge,
    Response,
    Verdict,
    retry_after_seconds,
)
from logagent.delivery.engine import Delivery, backoff_delay
from logagent.delivery.output import DeliveryOutput
from logagent.delivery.settings import (
    COMPRESSIONS,
    AuthSettings,
    BatchSettings,
    HttpSettings,
    RetrySettings,
    TlsSettings,
    parse_http_settings,
    ssl_context,
)
from logagent.delivery.templates import FieldTemplate, check_template

__all__ = [
    "COMPRESSIONS", "ITEMS", "OK", "REJECT", "RETRY", "SPLIT", "AuthSettings", "BatchSettings", "Codec",
    "Delivery", "DeliveryOutput", "Encoded", "FieldTemplate", "HttpSettings", "Item", "RequestTooLarge", "Response",
    "RetrySettings", "TlsSettings", "Verdict", "backoff_delay", "compress", "parse_http_settings",
    "check_template", "retry_after_seconds", "ssl_context",
]
