"""Parser settings of a file input and the joiner each file gets.

`parse_parser_settings(section)` reads the parser keys of a `file` input (`format`, `multiline*`,
`max_record_bytes`, `partial_flush`, `parser`, `json_key`) into a frozen `ParserSettings`, compiling regexes once
so a bad one is a load-time error naming its key. It does not call `section.done()`: the file input does, after
reading its own keys. `make_joiner(settings, path, overrides)` builds the stack for one file:
format joiner (raw | cri | docker | auto) -> multiline grouping -> JSON bodies, where pod annotations
(`overrides`: `multiline`, `parser`) replace the input's choice for that file.

It must never fail on a bad annotation: an unknown value is logged and the input's own settings are used.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logagent.config import Section
from logagent.parsers.base import LineJoiner, RawJoiner

if TYPE_CHECKING:
    from logagent.parsers.statemachine import Rule

# The joiners are imported where they are built: an agent loads only the formats and multiline modes its config
# names (autotrace alone brings ahocorasick_rs; issue 11's idle figure).

log = logging.getLogger("logagent.parsers")

FORMATS = ("auto", "cri", "docker", "raw")
# auto: every runtime below in one pass; dotnet, php and dart use its rules (their traces have no look-alikes)
MULTILINE = ("none", "auto", "java", "python", "go", "node", "ruby", "dotnet", "php", "dart", "custom")
ANNOTATED = tuple(m for m in MULTILINE if m != "custom")  # what `logagent.io/multiline` may name
BODY_PARSERS = ("text", "json")


@dataclass(frozen=True)
class ParserSettings:
    format: str = "raw"
    multiline: str = "none"
    multiline_start: re.Pattern[str] | None = None
    multiline_continue: re.Pattern[str] | None = None
    multiline_end: re.Pattern[str] | None = None
    multiline_rules: tuple[Rule, ...] = ()
    multiline_flush: float = 2.0
    multiline_max_lines: int = 1000
    multiline_max_bytes: int = 1 << 20
    max_record_bytes: int = 1 << 20
    partial_flush: float = 5.0
    parser: str = "text"
    json_key: str = "json"


def _regex(section: Section, key: str) -> re.Pattern[str] | None:
    text = section.str(key, None)
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as e:
        raise section.error(f"invalid regular expression {text!r}: {e}", key) from None


def parse_parser_settings(section: Section) -> ParserSettings:
    fmt = section.str("format", "raw", choices=FORMATS)
    multiline = section.str("multiline", "none", choices=MULTILINE)
    start = _regex(section, "multiline_start")
    cont = _regex(section, "multiline_continue")
    end = _regex(section, "multiline_end")
    rules: tuple[Rule, ...] = ()
    if section.has("multiline_rules"):
        from logagent.parsers.statemachine import parse_rules

        rules = parse_rules(section, "multiline_rules")
    if multiline != "custom":
        for key, value in (("multiline_start", start), ("multiline_continue", cont), ("multiline_end", end),
                           ("multiline_rules", rules)):
            if value:
                raise section.error("is only used with multiline: custom", key)
    elif rules:
        for key, value in (("multiline_start", start), ("multiline_continue", cont), ("multiline_end", end)):
            if value is not None:
                raise section.error("cannot be combined with multiline_rules (the rules say where groups start)", key)
    elif start is None and cont is None:
        raise section.error("multiline: custom needs multiline_start and/or multiline_continue, or multiline_rules",
                            "multiline")
    max_record = section.size("max_record_bytes", 1 << 20)
    if max_record < 64:
        raise section.error(f"must be at least 64 bytes, got {max_record}", "max_record_bytes")
    ml_bytes = section.size("multiline_max_bytes", max_record)
    if ml_bytes < 64:
        raise section.error(f"must be at least 64 bytes, got {ml_bytes}", "multiline_max_bytes")
    settings = ParserSettings(
        format=fmt,
        multiline=multiline,
        multiline_start=start,
        multiline_continue=cont,
        multiline_end=end,
        multiline_rules=rules,
        multiline_flush=section.duration("multiline_flush", 2.0),
        multiline_max_lines=section.int("multiline_max_lines", 1000, min=1),
        multiline_max_bytes=min(ml_bytes, max_record),
        max_record_bytes=max_record,
        partial_flush=section.duration("partial_flush", 5.0),
        parser=section.str("parser", "text", choices=BODY_PARSERS),
        json_key=section.str("json_key", "json"),
    )
    return settings


def format_joiner(fmt: str, settings: ParserSettings, clock: Callable[[], float] = time.monotonic) -> LineJoiner:
    if fmt == "cri":
        from logagent.parsers.cri import CriJoiner

        return CriJoiner(settings.max_record_bytes, settings.partial_flush, clock)
    if fmt == "docker":
        from logagent.parsers.docker import DockerJoiner

        return DockerJoiner(settings.max_record_bytes, settings.partial_flush, clock)
    if fmt == "auto":
        from logagent.parsers.detect import AutoJoiner

        return AutoJoiner(lambda detected: format_joiner(detected, settings, clock))
    return RawJoiner()


def make_joiner(settings: ParserSettings, path: str, overrides: Mapping[str, Any] | None = None,
                clock: Callable[[], float] = time.monotonic) -> LineJoiner:
    multiline = settings.multiline
    body = settings.parser
    if overrides:
        wanted = overrides.get("multiline")
        if wanted is not None:
            if wanted in ANNOTATED:
                multiline = wanted
            else:
                log.warning("ignoring multiline annotation %r (known: %s)", wanted, ", ".join(ANNOTATED),
                            extra={"path": path})
        wanted = overrides.get("parser")
        if wanted is not None:
            if wanted in BODY_PARSERS:
                body = wanted
            else:
                log.warning("ignoring parser annotation %r (known: text, json)", wanted, extra={"path": path})
    joiner = format_joiner(settings.format, settings, clock)
    if multiline != "none":
        from logagent.parsers import modes
        from logagent.parsers.multiline import MultilineJoiner

        prefilter = None
        if multiline == "custom":
            if settings.multiline_rules:
                from logagent.parsers.statemachine import state_machine

                step = state_machine(settings.multiline_rules)
            else:
                step = modes.custom(settings.multiline_start, settings.multiline_continue, settings.multiline_end)
        elif multiline in ("auto", "dotnet", "php", "dart"):
            from logagent.parsers import autotrace

            step, prefilter = autotrace.auto, autotrace.hits
        else:
            step = modes.BUILTIN[multiline]
        joiner = MultilineJoiner(joiner, step, settings.multiline_flush, settings.multiline_max_lines,
                                 settings.multiline_max_bytes, clock, prefilter)
    if body == "json":
        from logagent.parsers.jsonbody import JsonBodyJoiner, JsonBodyParser, JsonBodySettings

        joiner = JsonBodyJoiner(joiner, JsonBodyParser(JsonBodySettings(target=settings.json_key)))
    return joiner
