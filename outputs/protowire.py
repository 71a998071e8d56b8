"""The few protobuf wire-format pieces the Loki and SLS encoders build by hand (faster than message objects on the
hot path): varints and length-delimited fields. Field numbers stay with each encoder, next to its schema."""

from __future__ import annotations


def varint(n: int) -> bytes:
    """An unsigned base-128 varint (n >= 0)."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(key: int, payload: bytes) -> bytes:
    """A length-delimited field: its key byte (field number << 3 | 2), the payload's length, the payload."""
    return bytes((key,)) + varint(len(payload)) + payload
