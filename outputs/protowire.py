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


# Lengths of lines and fields are nearly always below 2^14: one or two bytes, looked up in a 256-entry table. (A
# table of all 16,384 encodings saved ~0.1 us a call and cost 0.7 MB of the idle agent's RSS, issue 11; with the
# native accelerator these run per request, not per record.)
_BYTE = [bytes((i,)) for i in range(0x100)]


def varint(n: int) -> bytes:
    """An unsigned base-128 varint (n >= 0)."""
    if 0 <= n < 0x80:
        return _BYTE[n]
    if 0 < n < 0x4000:
        return _BYTE[(n & 0x7F) | 0x80] + _BYTE[n >> 7]
    return _encode(n)


def ld(key: int, payload: bytes) -> bytes:
    """A length-delimited field: its key byte (field number << 3 | 2), the payload's length, the payload."""
    return b"%c%b%b" % (key, varint(len(payload)), payload)
