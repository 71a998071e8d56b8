"""Pure parsing of the `/dev/kmsg` record format (and of captures of it, like `kmsg_sample.txt`).

One `read()` of /dev/kmsg returns one record:

    <prio>,<seq>,<usec>,<flags>[,<more fields>];<escaped text>\n[ KEY=value\n ...]

`prio` = facility * 8 + level; `seq` is a 64-bit integer (kept as a Python int, never a float); `usec` is
monotonic time since boot; flags `c`/`+` mark fragments of a line printed in pieces (3.x/4.x kernels); unknown
comma fields (`caller=T1`) are ignored; the text starts after the FIRST `;` and may be empty or start with spaces;
`\\xNN` escapes are decoded to bytes and then read as UTF-8 (invalid sequences replaced); lines after the header
that start with one space are `KEY=value` dictionary lines of the same record.

This module does no I/O and knows nothing about rules: the kmsg input and `logagent classify` both use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_HEADER = re.compile(rb"^(\d+),(\d+),(\d+),([^,;]*)(?:,[^;]*)?;")


def unescape(raw: bytes) -> str:
    """Decode kmsg text: `\\xNN` -> byte NN, then UTF-8 with replacement characters."""
    if b"\\x" in raw:
        raw = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    return raw.decode("utf-8", "replace")


@dataclass
class KmsgRecord:
    prio: int
    seq: int
    usec: int
    flags: str
    message: str
    fields: dict[str, str] = field(default_factory=dict)
    seqs: list[int] = field(default_factory=list)  # every record seq this (possibly joined) record covers

    @property
    def level(self) -> int:
        return self.prio & 7

    @property
    def facility(self) -> int:
        return self.prio >> 3

    @property
    def userspace(self) -> bool:
        """Written into /dev/kmsg by a process (facility != kern), not by the kernel."""
        return self.prio >= 8

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else self.seq


class KmsgFormatError(ValueError):
    pass


def parse_record(raw: bytes) -> KmsgRecord:
    """One record as returned by one read() of /dev/kmsg. Raises KmsgFormatError on a malformed header."""
    m = _HEADER.match(raw)
    if m is None:
        raise KmsgFormatError(f"not a /dev/kmsg record header: {raw[:60]!r}")
    rest = raw[m.end():]
    if rest.endswith(b"\n"):
        rest = rest[:-1]
    text, _, dict_part = rest.partition(b"\n")
    fields: dict[str, str] = {}
    if dict_part:
        for line in dict_part.split(b"\n"):
            if line.startswith(b" ") and b"=" in line:
                k, _, v = line[1:].partition(b"=")
                fields[k.decode("ascii", "replace")] = unescape(v)
    seq = int(m.group(2))
    return KmsgRecord(
        prio=int(m.group(1)),
        seq=seq,
        usec=int(m.group(3)),
        flags=m.group(4).decode("ascii", "replace") or "-",
        message=unescape(text),
        fields=fields,
        seqs=[seq],
    )


def split_capture(data: bytes) -> Iterator[bytes]:
    """Raw records from a capture (records one after another, dictionary lines indented by one space)."""
    current: list[bytes] = []
    for line in data.split(b"\n"):
        if line.startswith(b" ") and current:
            current.append(line)
            continue
        if current:
            yield b"\n".join(current) + b"\n"
        current = [line] if line else []
    if current:
        yield b"\n".join(current) + b"\n"


class FragmentJoiner:
    """Joins old-kernel continuation fragments: a `c` record starts a line, `+` records append to it.

    Feed records in order; `feed` yields finished records. A pending `c` line is released by the next record
    that is not a `+` fragment, or by `flush()` (the live input calls it when the buffer went quiet).
    """

    def __init__(self) -> None:
        self.pending: KmsgRecord | None = None

    def feed(self, rec: KmsgRecord) -> Iterator[KmsgRecord]:
        if rec.flags == "+" and self.pending is not None:
            self.pending.message += rec.message
            self.pending.seqs.append(rec.seq)
            self.pending.fields.update(rec.fields)
            return
        if self.pending is not None:
            yield self.pending
            self.pending = None
        if rec.flags == "c":
            self.pending = rec
        else:
            yield rec

    def flush(self) -> Iterator[KmsgRecord]:
        if self.pending is not None:
            yield self.pending
            self.pending = None


def parse_capture(data: bytes | str) -> list[KmsgRecord]:
    """All records of a /dev/kmsg capture, fragments joined. Malformed lines raise KmsgFormatError."""
    if isinstance(data, str):
        data = data.encode()
    joiner = FragmentJoiner()
    out: list[KmsgRecord] = []
    for raw in split_capture(data):
        out.extend(joiner.feed(parse_record(raw)))
    out.extend(joiner.flush())
    return out


