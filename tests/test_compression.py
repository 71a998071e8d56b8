"""`gzip_parts`: the Elasticsearch body compressed as one gzip stream fed part by part (the uncompressed body is
never built), decoded by the standard library's gzip, as a receiver does."""

from __future__ import annotations

import gzip
import random

from logagent.compression import compress, gzip_parts


def _items(n: int) -> list[bytes]:
    rng = random.Random(11)
    return [b'{"create":{"_index":"logs","_id":"s:%x"}}\n{"message":"%s","stream":"stdout"}\n'
            % (i, "".join(rng.choice("abcdefgh ") for _ in range(rng.randrange(0, 400))).encode()) for i in range(n)]


def test_the_parts_decode_to_the_joined_body_across_groups() -> None:
    for n, group in ((0, 512), (1, 512), (511, 512), (512, 512), (513, 512), (5000, 512), (37, 5)):
        items = _items(n)
        body = gzip_parts(items, group)
        assert gzip.decompress(body) == b"".join(items), (n, group)
        assert body[:2] == b"\x1f\x8b"  # a gzip member (Content-Encoding: gzip), not raw deflate


def test_the_stream_compresses_as_the_one_shot_gzip_does() -> None:
    items = _items(5000)
    streamed, one_shot = gzip_parts(items), compress("gzip", b"".join(items))
    assert gzip.decompress(one_shot) == gzip.decompress(streamed)
    assert len(streamed) < len(b"".join(items)) / 2  # random letters of 9 kinds: ~3 bits each
    assert abs(len(streamed) - len(one_shot)) < len(one_shot) * 0.02  # the same level: the same ratio
