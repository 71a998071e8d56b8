"""`logagent classify [FILE]`: run the kernel problem rules and incident grouping over kernel log text.

Reads FILE (stdin when none or "-") and prints one JSON object per incident: category, signature, severity,
permanent, fields, first_line, last_line (plus where the incident sits: `first_seq`/`last_seq` for /dev/kmsg
records, `first_lineno`/`last_lineno` otherwise). Lines that are no problem print nothing. The input format is
detected line by line, so a paste mixing formats works:

    6,1021,4183225,-,caller=T1;text          raw /dev/kmsg records (dictionary lines " KEY=value" are skipped)
    <3>[   12.345678] text                   dmesg -r (also without the timestamp: dmesg -r -t)
    [   12.345678] text, [Mon May  1 ...] text, [  12.3][ T123] text      dmesg, dmesg -T, printk caller ids
    May  1 12:00:00 host kernel: text        journalctl -k, /var/log/kern.log (also short-iso, short-precise)
    text                                     plain lines

Input is processed in chunks as it arrives, so `dmesg -w | logagent classify` reports incidents live: an incident
is printed when its report is complete (the next report started, or its window passed without more lines).

This module only adapts text formats to the rules engine; it must not classify anything itself.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

import orjson

from logagent.inputs.kmsgformat import FragmentJoiner, KmsgFormatError, KmsgRecord, parse_record
from logagent.signatures.incidents import Incident, IncidentAssembler
from logagent.signatures.rules import RulesError, load_rules

_KMSG = re.compile(rb"^\d+,\d+,\d+,[^;]*;")
_DICT_LINE = re.compile(rb"^ [A-Z_][A-Z0-9_]*=")
_PRIO = re.compile(r"^<(\d{1,3})>")
_DMESG_TS = re.compile(r"^\[\s*(\d+\.\d+)\]\s?")
_DMESG_CTIME = re.compile(r"^\[([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4})\]\s?")
_CALLER = re.compile(r"^\[\s*[TC]\d+\]\s?")
_SYSLOG = re.compile(
    r"^(?:(?P<short>[A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d(?:\.\d+)?)|(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
    r"(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?))\s+\S+\s+kernel:\s?")
CHUNK_LINES = 1024


@dataclass(slots=True)
class KernelLine:
    message: str
    first: int  # kmsg sequence number, or line number
    last: int
    time: float | None
    userspace: bool
    kmsg: bool


def parse_text_line(text: str, lineno: int, year: int) -> KernelLine:
    """One line of dmesg / journalctl / syslog / plain text -> message (prefixes stripped) and time."""
    t: float | None = None
    userspace = False
    m = _PRIO.match(text)
    if m is not None:
        userspace = int(m.group(1)) >= 8
        text = text[m.end():]
    m = _DMESG_TS.match(text)
    if m is not None:
        t = float(m.group(1))
        text = text[m.end():]
    else:
        m = _DMESG_CTIME.match(text)
        if m is not None:
            t = _parse_ctime(m.group(1))
            text = text[m.end():]
        else:
            m = _SYSLOG.match(text)
            if m is not None:
                t = _parse_syslog_time(m.group("short"), m.group("iso"), year)
                text = text[m.end():]
                ts = _DMESG_TS.match(text)  # kern.log lines often keep the kernel's own timestamp
                if ts is not None:
                    text = text[ts.end():]
    m = _CALLER.match(text)
    if m is not None:
        text = text[m.end():]
    return KernelLine(text, lineno, lineno, t, userspace, False)


def _parse_ctime(value: str) -> float | None:
    try:
        return datetime.strptime(value, "%a %b %d %H:%M:%S %Y").timestamp()
    except ValueError:
        return None


def _parse_syslog_time(short: str | None, iso: str | None, year: int) -> float | None:
    try:
        if iso is not None:
            return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
        assert short is not None
        base, _, frac = short.partition(".")
        stamp = datetime.strptime(f"{year} {' '.join(base.split())}", "%Y %b %d %H:%M:%S").timestamp()
        return stamp + (float(f"0.{frac}") if frac else 0.0)
    except (ValueError, AssertionError):
        return None


def read_lines(stream: IO[bytes]) -> Iterator[list[bytes]]:
    """Chunks of raw lines: up to CHUNK_LINES, or what arrived before the input went quiet (live pipes)."""
    fd = stream.fileno() if hasattr(stream, "fileno") else None
    chunk: list[bytes] = []
    while True:
        if chunk and fd is not None and not _readable(fd):
            yield chunk
            chunk = []
        line = stream.readline()
        if not line:
            break
        chunk.append(line.rstrip(b"\r\n"))
        if len(chunk) >= CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _readable(fd: int) -> bool:
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True  # not selectable (a regular file is always readable): keep filling the chunk


class LineDecoder:
    """Raw input lines -> KernelLines, per line format; joins kmsg `c`/`+` fragments across chunks."""

    def __init__(self) -> None:
        self.lineno = 0
        self.joiner = FragmentJoiner()
        self.year = datetime.now(timezone.utc).year
        self.bad = 0

    def decode(self, raws: list[bytes]) -> list[KernelLine]:
        out: list[KernelLine] = []
        last_kmsg = False
        for raw in raws:
            self.lineno += 1
            if _KMSG.match(raw):
                try:
                    rec = parse_record(raw)
                except KmsgFormatError:
                    self.bad += 1
                    continue
                out.extend(self._kmsg(self.joiner.feed(rec)))
                last_kmsg = True
                continue
            if last_kmsg and _DICT_LINE.match(raw):
                continue  # a /dev/kmsg dictionary line (SUBSYSTEM=, DEVICE=) belongs to the record above
            last_kmsg = False
            out.extend(self._kmsg(self.joiner.flush()))
            out.append(parse_text_line(raw.decode("utf-8", "replace"), self.lineno, self.year))
        return out

    def flush(self) -> list[KernelLine]:
        return list(self._kmsg(self.joiner.flush()))

    @staticmethod
    def _kmsg(recs: Iterator[KmsgRecord]) -> Iterator[KernelLine]:
        for r in recs:
            yield KernelLine(r.message, r.seq, r.last_seq, r.usec / 1e6, r.userspace, True)


def incident_json(inc: Incident, kmsg_positions: bool, with_lines: bool) -> dict[str, Any]:
    out = inc.summary()
    if kmsg_positions:
        out["first_seq"], out["last_seq"] = inc.first_pos, inc.last_pos
    else:
        out["first_lineno"], out["last_lineno"] = inc.first_pos, inc.last_pos
    out["records"] = inc.records
    if with_lines:
        out["lines"] = inc.lines
    return out


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default="-", help="kernel log text (default: stdin)")
    parser.add_argument("--rules", action="append", default=[], metavar="FILE",
                        help="extra rules file (YAML), like the stage's rules_files; repeatable")
    parser.add_argument("--disable", action="append", default=[], metavar="NAME", help="disable a rule; repeatable")
    parser.add_argument("--lines", action="store_true", help="include every line of each incident's report")


def run(args: argparse.Namespace) -> int:
    try:
        rules = load_rules(args.rules)
    except RulesError as e:
        print(f"logagent classify: {e}", file=sys.stderr)
        return 2
    unknown = sorted(set(args.disable) - {r.name for r in rules.rules})
    if unknown:
        print(f"logagent classify: --disable: no rule named {', '.join(map(repr, unknown))}", file=sys.stderr)
        return 2
    rules = rules.without(args.disable)
    try:
        stream: IO[bytes] = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    except OSError as e:
        print(f"logagent classify: {args.file}: {e.strerror}", file=sys.stderr)
        return 2
    assembler = IncidentAssembler(rules)
    decoder = LineDecoder()
    out = sys.stdout.buffer

    def emit(incidents: list[Incident]) -> None:
        for inc in incidents:
            out.write(orjson.dumps(incident_json(inc, inc.source == "kmsg", args.lines)) + b"\n")
        out.flush()

    def feed(lines: list[KernelLine]) -> list[Incident]:
        # kmsg records and text lines are separate streams (positions are seqs in one, line numbers in the
        # other); runs of each are fed in order.
        closed: list[Incident] = []
        start = 0
        while start < len(lines):
            kind = lines[start].kmsg
            end = start
            while end < len(lines) and lines[end].kmsg == kind:
                end += 1
            run_ = lines[start:end]
            closed += assembler.feed([ln.message for ln in run_], lambda i: (run_[i].first, run_[i].last),
                                     lambda i: run_[i].time, lambda i: run_[i].userspace,
                                     "kmsg" if kind else "text")
            start = end
        return closed

    try:
        with stream:
            for chunk in read_lines(stream):
                emit(feed(decoder.decode(chunk)))
            emit(feed(decoder.flush()))
            emit(assembler.flush())
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # `| head`: stop quietly
        return 0
    if decoder.bad:
        print(f"logagent classify: {decoder.bad} malformed /dev/kmsg record(s) skipped", file=sys.stderr)
    return 0

