"""The settings every HTTP output shares (url, batching, requests in flight, compression, retry, timeout, TLS, auth,
extra headers), parsed once from the output's `Section` by `parse_http_settings`; the output reads its own keys.

Secrets: auth values are kept out of reprs and logs; `HttpSettings.secret_values` is what the engine masks in
every reason it logs or dead-letters.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from logagent.config import Section
from logagent.record import Shape, parse_shape
from logagent.rotating import RotatingSecret, usable_token

if TYPE_CHECKING:  # imported where TLS is used: an agent whose config needs none never loads it (logagent.tls)
    import ssl


@dataclass(frozen=True)
class BatchSettings:
    max_records: int
    max_bytes: int
    max_wait: float


@dataclass(frozen=True)
class RetrySettings:
    initial_backoff: float
    max_backoff: float
    max_retry_after: float  # a server asking for longer than this is waited this long, then retried


@dataclass(frozen=True)
class TlsSettings:
    verify: bool
    ca_file: str | None
    cert_file: str | None
    key_file: str | None


@dataclass(frozen=True)
class AuthSettings:
    """`kind` is none, basic, bearer or api_key. Secret values are excluded from repr: never logged."""

    kind: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    # a token given as {file: PATH} is read again when the file changes (a projected, rotating token)
    token_file: RotatingSecret | None = field(default=None, repr=False, compare=False)

    def header(self) -> str | None:
        if self.kind == "basic":
            raw = f"{self.user}:{self.password or ''}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        token = self.token_file.current() if self.token_file is not None else self.token
        if self.kind == "bearer":
            return f"Bearer {token}"
        if self.kind == "api_key":
            return f"ApiKey {token}"
        return None

    def secret_values(self) -> list[str]:
        """What this auth sends that must never be shown: masked in error text (`logagent.redact`)."""
        token = self.token_file.current() if self.token_file is not None else self.token
        header = self.header()
        values = [v for v in (self.password, token, header) if v]
        if header and " " in header:
            values.append(header.split(" ", 1)[1])  # the encoded credential without its scheme
        return values


@dataclass(frozen=True)
class HttpSettings:
    url: str
    batch: BatchSettings
    max_in_flight: int  # requests in flight per partition key
    buffer_max_bytes: int  # items pending (not yet acknowledged) across keys before `send` waits
    compression: str
    retry: RetrySettings
    timeout: float
    tls: TlsSettings
    auth: AuthSettings
    headers: tuple[tuple[str, str], ...]
    fields: Shape = field(default_factory=Shape, compare=False)  # what of a record is shipped (`fields`)

    def secret_values(self) -> list[str]:
        """The credentials this output sends (auth, and extra `headers` whose names say they are credentials)."""
        return [*self.auth.secret_values(),
                *(value for name, value in self.headers if _SENSITIVE_HEADER.search(name))]


COMPRESSIONS = ("none", "gzip", "snappy", "lz4")
# extra `headers` whose values are credentials: masked in error text like the auth settings' values
_SENSITIVE_HEADER = re.compile(r"(?i)auth|token|key|secret|sign|cookie|pass")


def parse_http_settings(
    section: Section,
    *,
    default_url: str | None = None,
    compressions: Sequence[str] = COMPRESSIONS,
    default_compression: str = "gzip",
    default_max_records: int = 5000,
    default_max_bytes: int = 5 * 1024 * 1024,
    max_bytes_limit: int | None = None,
) -> HttpSettings:
    """Read the shared keys; the output reads its own keys and calls `section.done()` afterwards."""
    url = section.str("url", default_url) if default_url is not None else section.str("url")
    if not url.startswith(("http://", "https://")):
        raise section.error(f"expected an http:// or https:// URL, got {url!r}", "url")
    b = section.section("batch")
    max_bytes = b.size("max_bytes", default_max_bytes)
    if max_bytes_limit is not None and max_bytes > max_bytes_limit:
        raise b.error(f"must be at most {max_bytes_limit} bytes for this backend, got {max_bytes}", "max_bytes")
    batch = BatchSettings(
        max_records=b.int("max_records", default_max_records, min=1),
        max_bytes=max_bytes,
        max_wait=b.duration("max_wait", 1.0),
    )
    b.done()
    r = section.section("retry")
    retry = RetrySettings(
        initial_backoff=r.duration("initial_backoff", 0.5),
        max_backoff=r.duration("max_backoff", 60.0),
        max_retry_after=r.duration("max_retry_after", 300.0),
    )
    r.done()
    if retry.initial_backoff > retry.max_backoff:
        raise r.error("initial_backoff must not exceed max_backoff", "initial_backoff")
    t = section.section("tls")
    tls = TlsSettings(
        verify=t.bool("verify", True),
        ca_file=t.str("ca_file", None),
        cert_file=t.str("cert_file", None),
        key_file=t.str("key_file", None),
    )
    t.done()
    if tls.key_file and not tls.cert_file:
        raise t.error("key_file needs cert_file", "key_file")
    if tls.ca_file or tls.cert_file:
        _check_tls_files(t, tls)
    auth = _parse_auth(section.section("auth"))
    headers = tuple(section.str_map("headers", {}).items())
    max_in_flight = section.int("max_in_flight", 4, min=1)
    compression = section.str("compression", default_compression, choices=tuple(compressions))
    fields = parse_shape(section, "lean")
    return HttpSettings(
        url=url.rstrip("/"),
        batch=batch,
        max_in_flight=max_in_flight,
        buffer_max_bytes=section.size("buffer_max_bytes", max(64 * 1024 * 1024, 4 * max_bytes)),
        compression=compression,
        retry=retry,
        timeout=section.duration("timeout", 30.0),
        tls=tls,
        auth=auth,
        headers=headers,
        fields=fields,
    )


def _parse_auth(a: Section) -> AuthSettings:
    kinds = [k for k in ("user", "bearer_token", "api_key") if a.has(k)]
    if len(kinds) > 1:
        raise a.error("give one of user/password, bearer_token or api_key", here=True)
    if a.has("user"):
        user = a.str("user")
        if ":" in user:  # RFC 7617: the first colon ends the user-id, the server would read another user
            raise a.error("a user name for basic auth cannot contain ':'", "user")
        auth = AuthSettings("basic", user=user, password=a.secret("password", ""))
    elif a.has("bearer_token") or a.has("api_key"):
        key = "bearer_token" if a.has("bearer_token") else "api_key"
        token = _header_token(a, key)
        spec = a.data.get(key)
        rotating = RotatingSecret(str(spec["file"]), token) if isinstance(spec, dict) and "file" in spec else None
        auth = AuthSettings("bearer" if key == "bearer_token" else "api_key", token=token, token_file=rotating)
    else:
        auth = AuthSettings("none")
    a.done()
    return auth


def _header_token(a: Section, key: str) -> str:
    """A token goes into the Authorization header as written. A line break in it (a secret file holding two lines)
    makes the HTTP client refuse every request before sending, so it is refused here, naming the key, never the
    value."""
    token = a.secret(key)
    if not usable_token(token):
        raise a.error("must be a single line of printable characters, and not empty", key)
    return str(token)


def _check_tls_files(t: Section, tls: TlsSettings) -> None:
    """Load the CA and the client certificate once at load time, so that a wrong path, a file that is not PEM, a key
    that does not match its certificate or a passphrase-protected key is a config error naming the key (and
    `logagent check` sees it) — not an OSError without a file name when the output starts, nor a passphrase
    prompt on a terminal a daemon does not have."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                raise t.error(f"cannot read {path}: {e.strerror}", key) from None
    import ssl

    if tls.ca_file:
        try:
            ssl.create_default_context(cafile=tls.ca_file)
        except ssl.SSLError as e:
            raise t.error(f"no usable CA certificate in {tls.ca_file} ({e.reason or e})", "ca_file") from None

    def no_passphrase() -> bytes:
        raise ValueError("passphrase-protected")

    if tls.cert_file:
        try:
            ssl.create_default_context().load_cert_chain(tls.cert_file, tls.key_file, password=no_passphrase)
        except ValueError:
            raise t.error("the client key is passphrase-protected; give an unencrypted key (mounted as a secret)",
                          "key_file" if tls.key_file else "cert_file") from None
        except ssl.SSLError as e:
            raise t.error(f"cannot use {tls.cert_file} with the key in {tls.key_file or tls.cert_file} "
                          f"({e.reason or e})", "cert_file") from None


def ssl_context(tls: TlsSettings) -> ssl.SSLContext:
    import ssl

    ctx = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
