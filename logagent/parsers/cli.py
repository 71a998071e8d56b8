"""`logagent cat`: read container log files once, to EOF, through the agent's own line splitter and joiners, and
print the logical records as JSON lines — for trying the parsers (format, multiline mode) on a real file.

Each record prints `time`, `stream`, `message`, `fragments`, `lines` and, when present, `flags`, `attrs` and the
JSON body; `--all` adds `offset` and `time_ns`.
`-` reads stdin (like `classify`). A file that cannot be read is reported on stderr and skipped;
the exit status is 1 if any file failed. It never writes anywhere but stdout/stderr and keeps no state.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Any, BinaryIO

import orjson

from logagent.config import ConfigError, Section, load_yaml
from logagent.inputs.file.reader import LineSplitter, settle_utf8
from logagent.parsers.factory import BODY_PARSERS, FORMATS, MULTILINE, make_joiner, parse_parser_settings
from logagent.parsers.statemachine import parse_rules
from logagent.record import Record

_READ = 1 << 20
_SHOWN = ("time", "stream", "message", "fragments", "lines", "flags", "attrs")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="log files to read (-: stdin)")
    parser.add_argument("--format", choices=FORMATS, default="auto", help="line format (default: auto)")
    parser.add_argument("--multiline", choices=MULTILINE, default="none", help="stack trace grouping")
    parser.add_argument("--multiline-start", metavar="REGEX", help="with --multiline custom: a group starts here")
    parser.add_argument("--multiline-continue", metavar="REGEX", help="with --multiline custom: joins the group")
    parser.add_argument("--multiline-end", metavar="REGEX", help="with --multiline custom: joins and ends the group")
    parser.add_argument("--multiline-rules", metavar="FILE",
                        help="with --multiline custom: a YAML list of {state, regex, next_state} (a state machine)")
    parser.add_argument("--parser", choices=BODY_PARSERS, default="text", help="json: decode JSON bodies")
    parser.add_argument("--max-record-bytes", default="1MiB", help="bound on a joined record (default 1MiB)")
    parser.add_argument("--max-line-bytes", default="256KiB", help="bound on a physical line (default 256KiB)")
    parser.add_argument("--all", action="store_true", help="also print offset and time_ns")


def _settings(args: argparse.Namespace) -> Any:
    data: dict[str, Any] = {"format": args.format, "multiline": args.multiline, "parser": args.parser,
                            "max_record_bytes": args.max_record_bytes}
    if args.multiline_start is not None:
        data["multiline_start"] = args.multiline_start
    if args.multiline_continue is not None:
        data["multiline_continue"] = args.multiline_continue
    if args.multiline_end is not None:
        data["multiline_end"] = args.multiline_end
    if args.multiline_rules is not None:
        data["multiline_rules"] = _rules_file(args.multiline_rules)
    return parse_parser_settings(Section(data, "", "command line"))


def _rules_file(path: str) -> list[Any]:
    """The rules as written in the file, checked there so that an error names the file and the rule."""
    try:
        with open(path, encoding="utf-8") as f:
            rules = load_yaml(f.read(), path)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if isinstance(rules, dict) and "multiline_rules" in rules:
        rules = rules["multiline_rules"]  # the key as in an input's config
    parse_rules(Section({"multiline_rules": rules}, "", path), "multiline_rules")
    return rules  # type: ignore[no-any-return]


def run(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
        max_line = Section({"max_line_bytes": args.max_line_bytes}, "", "command line").size("max_line_bytes")
    except ConfigError as e:
        print(f"logagent cat: {e}", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    failed = 0
    try:
        for path in args.files:
            try:
                cat_file(path, settings, max_line, out, args.all)
            except BrokenPipeError:
                raise
            except OSError as e:
                failed += 1
                print(f"logagent cat: {path}: {e.strerror or e}", file=sys.stderr)
        out.flush()
    except BrokenPipeError:
        # the reader (head, less) went away: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 1 if failed else 0


def cat_file(path: str, settings: Any, max_line: int, out: BinaryIO, show_all: bool = False) -> int:
    """Print the records of one file (`-`: stdin); returns how many. Raises OSError if the file cannot be read."""
    if path == "-":
        stdin = sys.stdin.buffer
        if not isinstance(stdin, io.BufferedReader):  # replaced by a caller (tests, embedding)
            stdin = io.BufferedReader(stdin)
        return cat_stream("<stdin>", stdin, settings, max_line, out, show_all)
    with open(path, "rb") as f:
        return cat_stream(path, f, settings, max_line, out, show_all)


def cat_stream(name: str, f: io.BufferedReader, settings: Any, max_line: int, out: BinaryIO,
               show_all: bool = False) -> int:
    """Print the records read from `f` up to its end. `read1`: records of a pipe (`tail -f x.log | logagent cat
    -`) print as the chunks arrive, not once a whole read buffer is full."""
    joiner = make_joiner(settings, name)
    splitter = LineSplitter(max_line)
    count = 0
    end = 0
    while True:
        data = f.read1(_READ)
        if not data:
            break
        end += len(data)
        lines, offsets, flags = splitter.feed(data, end, 0.0)
        if lines:
            count += _write(out, joiner.feed(lines, offsets, flags), show_all)
    lines, offsets, flags = splitter.take_partial()
    if lines:
        count += _write(out, joiner.feed(lines, offsets, flags), show_all)
    count += _write(out, joiner.flush(0.0, force=True), show_all)
    return count


def _write(out: BinaryIO, records: list[Record], show_all: bool) -> int:
    if not records:
        return 0
    settle_utf8(records)
    dumps = orjson.dumps
    parts = []
    for rec in records:
        shown = {k: rec[k] for k in _SHOWN if k in rec}
        for k, v in rec.items():
            if k not in shown and k not in ("offset", "time_ns"):
                shown[k] = v  # JSON body fields (parser json) and anything a future joiner adds
        if show_all:
            shown["offset"] = rec["offset"]
            if "time_ns" in rec:
                shown["time_ns"] = rec["time_ns"]
        parts.append(dumps(shown))
    parts.append(b"")
    # U+2028/U+2029/U+0085 are valid raw in JSON, but line-splitting readers (Python's splitlines, JavaScript)
    # break records on them: written escaped, the JSON is the same
    data = b"\n".join(parts)
    if b"\xe2\x80\xa8" in data or b"\xe2\x80\xa9" in data or b"\xc2\x85" in data:
        data = data.replace(b"\xe2\x80\xa8", b"\\u2028").replace(b"\xe2\x80\xa9", b"\\u2029").replace(
            b"\xc2\x85", b"\\u0085")
    out.write(data)
    return len(records)
