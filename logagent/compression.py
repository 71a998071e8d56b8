"""Request body compression for the HTTP outputs: gzip (HTTP Content-Encoding), snappy (the raw block Loki's push
API wants) and LZ4 (the raw block SLS wants).

gzip is ISA-L's igzip (python-isal) at level 1 when it is installed, else zlib at level 1. Measured on the
Elasticsearch `_bulk` bodies of benchmarks/bench_agent.py: igzip level 1 costs ~0.7 CPU-s per GB of body for a
ratio of ~0.105, where cramjam's gzip at level 3 (the former default) cost ~7 CPU-s/GB for ~0.095 and zlib
level 1 ~5 CPU-s/GB for ~0.11. ISA-L levels 0-3 exist; above 1 the cost triples for a percent of ratio.

Each codec's library is imported the first time it is used, so an agent that never sends snappy or LZ4 does not
carry those modules in memory (the idle figure).

Must never: change what a receiver decodes (every body is the standard format of its kind), or compress what the
caller asked to send plain (`none`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

GZIP_LEVEL = 1
_GZIP_WBITS = 31  # zlib's "gzip container" window bits


def _gzip_compressor() -> Callable[[bytes], bytes]:
    try:
        from isal import isal_zlib  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover - isal is a dependency; a platform without a wheel falls back
        return lambda data: _zlib_gzip(data)

    def igzip(data: bytes) -> bytes:
        return bytes(isal_zlib.compress(data, GZIP_LEVEL, _GZIP_WBITS))

    return igzip


def gzip_parts(parts: list[bytes], group: int = 512) -> bytes:
    """gzip of `b"".join(parts)` without building the joined body: the parts are fed to one stream `group` at a
    time, so only the compressed output is held (an Elasticsearch request of 4 MB of documents is ~0.4 MB
    compressed). The same gzip stream as `compress("gzip", b"".join(parts))` to any decoder."""
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover - see _gzip_compressor
        c: Any = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    else:
        c = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, _GZIP_WBITS)
    join = b"".join
    out = [c.compress(join(parts[i:i + group])) for i in range(0, len(parts), group)]
    out.append(c.flush())
    return join(out)


def _zlib_gzip(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    return c.compress(data) + c.flush()


_codecs: dict[str, Callable[[bytes], bytes]] = {}


def _snappy(data: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress_raw(data))


def _lz4(data: bytes) -> bytes:
    import lz4.block

    return bytes(lz4.block.compress(data, store_size=False))


def compress(kind: str, data: bytes) -> bytes:
    """gzip: HTTP Content-Encoding. snappy: the raw block format (Loki push). lz4: raw LZ4 block without the
    size prefix (SLS `x-log-compresstype: lz4`, the raw size travels in `x-log-bodyrawsize`). none: data."""
    fn = _codecs.get(kind)
    if fn is None:
        if kind == "gzip":
            fn = _gzip_compressor()
        elif kind == "snappy":
            fn = _snappy
        elif kind == "lz4":
            fn = _lz4
        elif kind == "none":
            return data
        else:
            raise ValueError(f"unknown compression {kind!r}")
        _codecs[kind] = fn
    return fn(data)
