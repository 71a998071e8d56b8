"""The few protobuf wire-format pieces the Loki and SLS encoders build by hand (faster than message objects on the
hot path): varints and length-delimited fields. Field numbers stay with each encoder, next to its schema."""

from __future__ import annotations


def _encode(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Lengths of lines and fields are nearly always below 2^14: their varints are looked up, not built.
_SMALL = [_encode(i) for i in range(1 << 14)]


def varint(n: int) -> bytes:
    """An unsigned base-128 varint (n >= 0)."""
    if 0 <= n < 16384:
        return _SMALL[n]
    return _encode(n)


def ld(key: int, payload: bytes) -> bytes:
    """A length-delimited field: its key byte (field number << 3 | 2), the payload's length, the payload."""
    n = len(payload)
    return b"%c%b%b" % (key, _SMALL[n] if n < 16384 else _encode(n), payload)
