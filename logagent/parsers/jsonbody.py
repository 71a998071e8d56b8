"""JSON bodies: an application's JSON log line becomes fields (orjson), as the `json` stage or `parser: json`.

A record whose `message` starts with `{` is decoded; the object goes under `target` (default `json`, like a
Fluent Bit `Merge_Log_Key` or Vector's `.json = parse_json!(.message)`), or is merged into the record itself
when `target` is empty (Fluent Bit's `Merge_Log` without a key). Merged keys never overwrite the record's own
fields (`message`, `time`, `stream`, `offset`...): such a key is stored as `json_<key>`. An identity key
(`kubernetes`, `input`, `path`, `host`, ... see `logagent.identity`) is stored as `json_<key>` too, even when the
record has no such field yet, and the record is flagged `identity_field`: a body can never say who wrote it. The
message is kept unless `keep_message: false`.

On failure (not JSON, or not an object) the record stays text and, with `flag_invalid` (default), is flagged
`json_invalid`. It must never drop a record or lose its text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from logagent import metrics
from logagent.component import Context, Stage
from logagent.config import Section
from logagent.identity import IDENTITY_FLAG, IDENTITY_KEYS
from logagent.parsers.base import LineJoiner
from logagent.record import Batch, Record

# Keys a merged body never sets: identity, and `flags` (the agent's own list of what happened to the record).
_AGENT_KEYS = IDENTITY_KEYS | {"flags"}


@dataclass(frozen=True)
class JsonBodySettings:
    field: str = "message"
    target: str = "json"  # "" merges into the record
    keep_message: bool = True
    flag_invalid: bool = True


def parse_json_body_settings(section: Section) -> JsonBodySettings:
    return JsonBodySettings(
        field=section.str("field", "message"),
        target=section.str("target", "json"),
        keep_message=section.bool("keep_message", True),
        flag_invalid=section.bool("flag_invalid", True),
    )


class JsonBodyParser:
    """Decodes the JSON bodies of a list of records in place; returns how many were flagged `json_invalid`."""

    def __init__(self, settings: JsonBodySettings) -> None:
        self.settings = settings
        self.claimed = 0  # records whose body named an identity field (kept as json_<key>, flagged)

    def apply(self, records: list[Record]) -> int:
        s = self.settings
        field = s.field
        candidates = [r for r in records if str(r.get(field, ""))[:1] == "{"]
        invalid = 0
        loads = orjson.loads
        for rec in candidates:
            try:
                obj = loads(rec[field])
            except orjson.JSONDecodeError:
                obj = None
            if type(obj) is not dict:
                if s.flag_invalid:
                    _flag(rec, "json_invalid")
                    invalid += 1
                continue
            if not s.keep_message:
                del rec[field]
            if s.target:
                rec[s.target] = obj
            else:
                claimed = not IDENTITY_KEYS.isdisjoint(obj)
                for k, v in obj.items():
                    rec[k if k not in rec and k not in _AGENT_KEYS else f"json_{k}"] = v
                if claimed:
                    _flag(rec, IDENTITY_FLAG)
                    self.claimed += 1
        return invalid


def _flag(rec: Record, flag: str) -> None:
    flags = rec.get("flags")
    if flags is None:
        rec["flags"] = [flag]
    elif flag not in flags:
        rec["flags"] = [*flags, flag]


class JsonBodyJoiner:
    """`parser: json` on a file input: the format/multiline joiner, then JSON bodies of what it emits."""

    def __init__(self, inner: LineJoiner, parser: JsonBodyParser) -> None:
        self.inner = inner
        self.parser = parser

    def feed(self, lines: list[str], offsets: list[int], flags: dict[int, list[str]] | None = None) -> list[Record]:
        records = self.inner.feed(lines, offsets, flags)
        if records:
            self.parser.apply(records)
        return records

    def flush(self, now: float, force: bool = False) -> list[Record]:
        records = self.inner.flush(now, force)
        if records:
            self.parser.apply(records)
        return records

    def held_from(self) -> int | None:
        return self.inner.held_from()


class JsonBody(Stage[JsonBodySettings]):
    """The `json` stage: JSON bodies of every batch it matches."""

    settings: JsonBodySettings

    @classmethod
    def parse_settings(cls, section: Section) -> JsonBodySettings:
        settings = parse_json_body_settings(section)
        section.done()
        return settings

    def __init__(self, name: str, settings: JsonBodySettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.parser = JsonBodyParser(settings)
        self._invalid = metrics.FLAGGED.labels(component=name, flag="json_invalid")
        self._claimed = metrics.FLAGGED.labels(component=name, flag=IDENTITY_FLAG)

    def process(self, batch: Batch) -> Iterable[Batch]:
        parser = self.parser
        before = parser.claimed
        invalid = parser.apply(batch.records)
        if invalid:
            self._invalid.inc(invalid)
        if parser.claimed != before:
            self._claimed.inc(parser.claimed - before)
        return (batch,)
