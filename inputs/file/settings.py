"""Settings of the `file` input, validated once at load time.

The parser keys (`format`, `multiline`, `max_record_bytes`, `parser`) belong to `logagent.parsers.factory`; this
module hands the section to it before rejecting unknown keys, and never interprets those keys itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from logagent.config import Section
from logagent.parsers.factory import ParserSettings, parse_parser_settings


@dataclass(frozen=True)
class FileSettings:
    paths: tuple[str, ...]
    exclude: tuple[str, ...]
    read_from: str  # "head" | "tail": only for files present at the very first start
    tag: str | None  # None: the input's name
    max_line_bytes: int
    read_buffer: int
    poll_interval: float
    partial_line_flush: float
    rotate_wait: float  # how long a rotated-away or deleted file is kept open after its last growth
    fingerprint_bytes: int
    max_open_files: int  # descriptors the input may hold; rotated files read to their end are closed first
    parser: ParserSettings  # format, multiline, body parser: logagent.parsers.factory owns these keys
    symlink_targets: tuple[str, ...] = ()  # directories symlinks may lead into besides the globs' roots (confine)


def parse_file_settings(section: Section) -> FileSettings:
    paths = section.str_list("paths")
    if not paths:
        raise section.error("at least one glob is required", "paths")
    for p in paths:
        if not p.startswith("/"):
            raise section.error(f"globs must be absolute paths, got {p!r}", "paths")
    exclude = section.str_list("exclude", [])
    settings = FileSettings(
        paths=tuple(paths),
        exclude=tuple(exclude),
        read_from=section.str("read_from", "head", choices=("head", "tail")),
        tag=section.str("tag", None),
        max_line_bytes=_at_least(section, "max_line_bytes", section.size("max_line_bytes", 256 * 1024), 16),
        read_buffer=_at_least(section, "read_buffer", section.size("read_buffer", 256 * 1024), 4096),
        poll_interval=section.duration("poll_interval", 1.0),
        partial_line_flush=section.duration("partial_line_flush", 5.0),
        rotate_wait=section.duration("rotate_wait", 5.0),
        fingerprint_bytes=_at_least(section, "fingerprint_bytes", section.size("fingerprint_bytes", 1024), 16),
        max_open_files=section.int("max_open_files", 4096, min=16),
        parser=parse_parser_settings(section),
        symlink_targets=tuple(section.str_list("symlink_targets", [])),
    )
    if settings.poll_interval <= 0:
        raise section.error("must be more than 0", "poll_interval")
    for target in settings.symlink_targets:
        if not target.startswith("/"):
            raise section.error(f"must be absolute directories, got {target!r}", "symlink_targets")
    section.done()
    return settings


def _at_least(section: Section, key: str, value: int, low: int) -> int:
    if value < low:
        raise section.error(f"must be at least {low} bytes, got {value}", key)
    return value
