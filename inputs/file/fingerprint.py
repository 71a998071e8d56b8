"""File identity: (device, inode) plus a hash of the file's first bytes.

(dev, ino) tells renames apart (a renamed file keeps its inode); the head hash tells inode reuse apart (a new
file that got a deleted file's inode has other first bytes). A file shorter than `fingerprint_bytes` is
fingerprinted on the bytes it has (`length` says how many) and upgraded as it grows; a stored fingerprint matches
a file whose first `length` bytes hash the same.

`source_id` is separate: it names the file in deterministic record ids, so it must not depend on when the file
was read. It hashes the first line (up to `fingerprint_bytes`), which is fixed once that line is complete.

This module never reads more than `fingerprint_bytes` of a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import xxhash


@dataclass(frozen=True, slots=True)
class FileFingerprint:
    length: int  # bytes hashed: min(file size, fingerprint_bytes) when taken
    digest: str  # xxh64 hex of those bytes

    def encode(self) -> str:
        return f"{self.length}:{self.digest}"

    @classmethod
    def decode(cls, text: str) -> FileFingerprint | None:
        length, sep, digest = str(text).partition(":")
        if not sep or not length.isdigit():
            return None
        return cls(int(length), digest)


def read_head(fd: int, limit: int) -> bytes:
    return os.pread(fd, limit, 0)


def fingerprint_of(head: bytes) -> FileFingerprint:
    return FileFingerprint(len(head), xxhash.xxh64_hexdigest(head))


def matches(fd: int, fp: FileFingerprint) -> bool:
    """The file open at fd starts with the bytes `fp` was taken from."""
    if fp.length == 0:
        return True
    head = os.pread(fd, fp.length, 0)
    return len(head) == fp.length and xxhash.xxh64_hexdigest(head) == fp.digest


