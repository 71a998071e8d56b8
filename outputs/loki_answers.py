"""Loki's 400 answers read back into *which* entries it refused, each with its own reason.

A Loki 400 to a push is partial: the distributor validates every entry on its own, writes the valid ones and then
answers 400 with the validation errors (grafana/loki `pkg/distributor/distributor.go` `Push`; messages from
`pkg/validation/validate.go`). The body is `util.GroupedErrors`: the distinct messages joined by `"; "`, each
prefixed `"<n> errors like: "` when it occurred more than once or when there are several distinct messages, in Go
map order (random). The messages name the stream (its label set as Loki normalised it: sorted, `service_name`
possibly added by `discover_service_name`) and identify the entry:

    entry for stream '{...}' has timestamp too old: <RFC 3339 s>, oldest acceptable timestamp is: <RFC 3339 s>
    entry for stream '{...}' has timestamp too new: <RFC 3339 s>
    Max entry size '<max>' bytes exceeded for stream '{...}' while adding an entry with length '<n>' bytes
    stream '{...}' has label value too long: '<value>'         (and label name too long, duplicate label name)
    entry for stream '{...}' has <n> label names; limit <m>
    Error parsing labels '<as sent>' with error: <why>          (these four refuse the whole stream)

An ingester refusal (`pkg/ingester/stream.go`, out of order / too far behind) instead lists up to
`max_returned_stream_errors` (10) entries by exact timestamp (Go `Time.String()`), then `user '<t>', total
ignored: <n> out of <m> for stream: {...}`; it names one stream only, so the entries of the other streams in the
request are retried (resending an accepted entry is harmless there unless Loki sharded the stream).

Resending an entry Loki already accepted is NOT harmless in general: with Loki 3's stream sharding
(`shard_streams.enabled`, on by default) a resent entry can land in another `__stream_shard__` stream and be
stored twice. So nothing that was accepted is resent: `refused()` returns the refused entries (by index) with
the message that refused them, and the caller confirms every other entry.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Sequence

from logagent.timefmt import rfc3339_ns

# A label set as Loki prints it: braces around name="value" pairs, values Go-quoted (may hold braces).
_LSET = r'\{(?:[^"{}]|"(?:[^"\\]|\\.)*")*\}'
_TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"
_END = r"(?=; |\n|$)"

# (kind, pattern). Kinds: "second" (entry identified by its second), "length" (by its line length),
# "stream" (the whole stream refused), "ingester" (the ingester's per-entry list).
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("second", re.compile(rf"entry for stream '(?P<s>{_LSET})' has timestamp too old: (?P<t>{_TS}), "
                          rf"oldest acceptable timestamp is: {_TS}")),
    ("second", re.compile(rf"entry for stream '(?P<s>{_LSET})' has timestamp too new: (?P<t>{_TS})")),
    ("length", re.compile(rf"Max entry size '\d+' bytes exceeded for stream '(?P<s>{_LSET})' while adding an "
                          rf"entry with length '(?P<n>\d+)' bytes")),
    ("stream", re.compile(rf"stream '(?P<s>{_LSET})' has (?:label value too long|label name too long|duplicate "
                          rf"label name): '.*?'{_END}")),
    ("stream", re.compile(rf"entry for stream '(?P<s>{_LSET})' has \d+ label names; limit \d+")),
    ("parse", re.compile(rf"Error parsing labels '(?P<s>.*?)' with error: .*?{_END}")),
)
_GROUP_PREFIX = re.compile(r"(\d+) errors like: $")
_INGESTER_ENTRY = re.compile(r"entry with timestamp (?P<t>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? [+-]\d{4} \S+) "
                             r"ignored, reason: '(?P<r>[^\n]*)',\n")
_INGESTER_TAIL = re.compile(rf"user '[^']*', total ignored: (?P<n>\d+) out of \d+ for stream: (?P<s>{_LSET})")
_OLDEST = re.compile(rf"oldest acceptable timestamp is: (?P<o>{_TS})")
_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_UNESCAPE = re.compile(r"\\(.)")

# An item as the Loki codec holds it: (labels string, time ns, line, structured metadata).
Item = tuple[str, int, str, tuple[tuple[str, str], ...]]


def parse_label_set(text: str) -> dict[str, str] | None:
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        return None
    inner = inner[1:-1].strip()
    out: dict[str, str] = {}
    pos = 0
    while pos < len(inner):
        m = _PAIR.match(inner, pos)
        if m is None:
            return None
        out[m.group(1)] = _UNESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
        pos = m.end()
    return out


def go_time_ns(text: str) -> int:
    """Go's `Time.String()` (`2006-01-02 15:04:05.999999999 -0700 MST`) to ns since the epoch."""
    date, clock, offset = text.split(" ")[:3]
    whole, _, frac = clock.partition(".")
    secs = calendar.timegm(time.strptime(f"{date} {whole}", "%Y-%m-%d %H:%M:%S"))
    sign = 1 if offset[0] == "+" else -1
    secs -= sign * (int(offset[1:3]) * 3600 + int(offset[3:5]) * 60)
    return secs * 1_000_000_000 + (int(frac.ljust(9, "0")[:9]) if frac else 0)


class _Streams:
    """Our streams in one request, found from the label set a Loki message names."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.by_text: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            self.by_text.setdefault(it[0], []).append(i)
        self.parsed = {text: parse_label_set(text) or {} for text in self.by_text}

    def find(self, named: str, exact: bool = False) -> list[int]:
        if named in self.by_text:
            return self.by_text[named]
        if exact:
            return []
        theirs = parse_label_set(named)
        if theirs is None:
            return []
        # Loki may have added labels (service_name): ours is the largest label set contained in theirs.
        best: str | None = None
        for text, ours in self.parsed.items():
            contained = all(theirs.get(k) == v for k, v in ours.items())
            if contained and (best is None or len(ours) > len(self.parsed[best])):
                best = text
        return self.by_text[best] if best is not None else []


def refused(items: Sequence[Item], body: str) -> tuple[list[tuple[int, str]], list[int], int]:
    """From a 400 body: ([(item index, the message that refused it)], [indices to retry], causes understood).

    Every message the body holds is one cause; its entries get that message as their reason. With zero causes
    understood the caller cannot tell what was written and must treat the request as a whole."""
    streams = _Streams(items)
    rejected: dict[int, str] = {}
    causes = 0
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(body):
            reason = m.group(0)
            prefix = _GROUP_PREFIX.search(body, max(0, m.start() - 24), m.start())
            if prefix is not None:
                reason = f"{prefix.group(1)} errors like: {reason}"
            idx = streams.find(m.group("s"), exact=kind == "parse")
            if kind == "second":
                second = rfc3339_ns(m.group("t")) // 1_000_000_000
                idx = [i for i in idx if items[i][1] // 1_000_000_000 == second]
            elif kind == "length":
                n = int(m.group("n"))
                idx = [i for i in idx if len(items[i][2].encode("utf-8", "surrogateescape")) == n]
            causes += 1
            for i in idx:
                rejected.setdefault(i, reason)
    retry: list[int] = []
    tail = _INGESTER_TAIL.search(body)
    if tail is not None:
        causes += 1
        in_stream = set(streams.find(tail.group("s")))
        listed = 0
        for e in _INGESTER_ENTRY.finditer(body):
            listed += 1
            ts = go_time_ns(e.group("t"))
            reason = f"{e.group('r')} ({tail.group(0)})"
            for i in in_stream:
                if items[i][1] == ts:
                    rejected.setdefault(i, reason)
        if int(tail.group("n")) > listed:
            # More refused than listed: those older than the oldest acceptable time are refused too.
            oldest = _OLDEST.search(body)
            cutoff = rfc3339_ns(oldest.group("o")) if oldest else None
            for i in in_stream:
                if i not in rejected and cutoff is not None and items[i][1] < cutoff:
                    rejected[i] = f"entry too far behind, oldest acceptable timestamp is: {oldest and oldest['o']} " \
                                  f"({tail.group(0)})"
        # The ingester names one stream; what happened to the others' entries is not said: send them again.
        retry = [i for i in range(len(items)) if i not in in_stream and i not in rejected]
    return sorted(rejected.items()), retry, causes
