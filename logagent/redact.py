"""Error text from the outside world, made safe to log: a short excerpt with anything like a credential masked.

A backend's (or a proxy's) error body is the agent's best clue to what went wrong, so it is logged and written with
dead-lettered records. But some servers echo the request back — its headers included — and then the bearer token,
the basic-auth pair or a signed header would land in the agent's own log, which is shipped, kept and read by more
people than the secret is meant for. `excerpt` is what every output and the Kubernetes client call on such a body:

- at most `limit` characters (300 by default), control characters and line breaks made spaces, so one body is one
  short line and cannot fake further log lines;
- the values the agent itself sends as secrets (`secrets`: tokens, passwords, the encoded Authorization header)
  masked wherever they appear, however the body quotes them;
- besides them, anything shaped like a credential: `Authorization:`/`Cookie:`/`X-Api-Key:`-style header echoes,
  `Bearer`/`Basic`/`ApiKey`/`LOG` credentials, `password`/`token`/`secret`/`api_key`/`signature`-style keys in
  JSON or query strings, JWTs, and the password of `scheme://user:password@host`.

Masking happens before cutting, so a secret at the cut is never half shown. This module must never log, and never
return more than `limit` characters plus the note of how much was cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_SCAN = 8192  # characters of a body looked at: an error's useful part is at its start

_HEADER_ECHO = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|apikey|x-auth-token|x-access-token|cookie|set-cookie|"
    r"x-log-signature|x-acs-security-token|x-amz-security-token)(\"?'?\s*[:=]\s*\"?'?)([^\"'\r\n,;}\]]+)")
_SCHEME = re.compile(r"\b((?i:bearer|basic|apikey|negotiate)|LOG)(\s+)([A-Za-z0-9._~+/=:-]{8,})")
_SECRET_KEY = re.compile(
    r"(?i)([\"']?)\b((?:[a-z0-9]+[_-])*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key(?:[_-]?id)?|"
    r"private[_-]?key|signature|sig|credentials?))\1(\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;}\"'\]]+)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/@\s:\"']+):([^/@\s\"']+)@")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with the known `secrets` and anything shaped like a credential replaced by `***`."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _HEADER_ECHO.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _SECRET_KEY.sub(_mask_value, text)
    text = _JWT.sub(MASK, text)
    return _USERINFO.sub(lambda m: f"{m.group(1)}:{MASK}@", text)


def _mask_value(m: re.Match[str]) -> str:
    value = m.group(4)
    if value[:1] in ("'", '"'):
        value = value[0] + MASK + value[0]
    elif value == MASK:
        return m.group(0)
    else:
        value = MASK
    return f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{value}"


def excerpt(body: bytes | str | None, limit: int = 300, secrets: Iterable[str] = ()) -> str:
    """A loggable excerpt of an error body: one line, credentials masked, at most `limit` characters (plus a note
    of how many were left out)."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    total = len(text)
    # masked while line breaks still end header echoes, then made one line
    text = _CONTROL.sub(" ", mask(text[:_SCAN], secrets)).strip()
    if len(text) > limit or total > _SCAN:
        return f"{text[:limit]}… ({total} characters in all)"
    return text
