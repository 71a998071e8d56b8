"""Docker json-file lines: `{"log": "...\n", "stream": "stdout|stderr", ["attrs": {...},] "time": "<RFC3339Nano>"}`.

`DockerJoiner` decodes each line with orjson and joins the daemon's 16 KiB splits (a `log` without a trailing
`\n` goes on in the next line of the same stream), then drops the final `\n`. `attrs` (log-opt labels/env) is
kept from the first piece. A line that is not such an object (invalid JSON, no `log` string, unknown stream, bad
time) is passed through whole, flagged `unparsed`; nothing is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from logagent.parsers.partials import PartialLines, unparsed
from logagent.parsers.timestamps import TIME_OUT_OF_RANGE, clamped, time_ns
from logagent.record import Record

STREAMS = ("stdout", "stderr")


def _decode(line: str) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def looks_like_docker(line: str) -> bool:
    if not line.startswith("{"):
        return False
    doc = _decode(line)
    return isinstance(doc, dict) and isinstance(doc.get("log"), str)


class DockerJoiner:
    def __init__(self, max_record_bytes: int = 1 << 20, partial_flush: float | None = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.partials = PartialLines(max_record_bytes, clock)
        self.partial_flush = partial_flush

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        try:
            docs = list(map(orjson.loads, lines))
        except orjson.JSONDecodeError:
            docs = list(map(_decode, lines))
        out: list[Record] = []
        add = self.partials.add
        for i, doc in enumerate(docs):
            fl = flags.get(i) if flags else None
            try:
                text = doc["log"]
                stream = doc["stream"]
                ts = doc["time"]
            except (KeyError, TypeError, IndexError):
                out.append(unparsed(lines[i], offsets[i], fl))
                continue
            tns = time_ns(ts) if type(ts) is str else None
            if type(text) is not str or stream not in STREAMS or tns is None:
                out.append(unparsed(lines[i], offsets[i], fl))
                continue
            if clamped(tns):
                fl = [*(fl or ()), TIME_OUT_OF_RANGE]
            final = text.endswith("\n")
            add(out, stream, text[:-1] if final else text, offsets[i], ts, tns, final, fl, doc.get("attrs"))
        return out

    def flush(self, now: float, force: bool = False) -> list[Record]:
        return self.partials.flush(now, self.partial_flush, force)

    def held_from(self) -> int | None:
        return self.partials.held_from()
