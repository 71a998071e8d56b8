"""Source ids: what names one generation of a file in deterministic document ids (`logagent.record.doc_id`).

A document id is `hash(source id, offset)`, so two generations of one inode (a file truncated by copytruncate and
written again, or rewritten from the start) must never share a source id: equal offsets would give equal ids, and
Elasticsearch would answer 409 to a *different* line, which counts as delivered. Silent loss.

The first generation of a file is named by (device, inode) and its first line, so a reused inode with another
first line differs. Every later generation is named by (device, inode), its own first line *and the source id of
the generation before it*: the chain makes generation n+1 differ from generation n whatever their contents (an
empty file truncated again and again, a service writing the same banner every time).

The id must come out the same when a restarted agent reads the same generation again (its replays then land on the
same documents): it depends only on bytes that are fixed once written (the first line, complete) and on the parent
id stored with the position. It is computed once the first line is complete; a first line flushed without its
newline names the generation by the bytes it had then (`final`).
"""

from __future__ import annotations

import xxhash


def source_id(dev: int, ino: int, head: bytes, parent: str | None, final: bool) -> str | None:
    """The id of a generation whose file starts with `head`; None while its first line is incomplete (unless
    `final`: then the head as it is names it)."""
    nl = head.find(b"\n")
    if nl < 0 and not (final and head):
        return None
    first = head[: nl + 1] if nl >= 0 else head
    prefix = b"%d:%d:" % (dev, ino)
    if parent:
        prefix += b"gen<" + parent.encode() + b">:"
    return xxhash.xxh64_hexdigest(prefix + first)
