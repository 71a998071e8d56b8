"""Incident assembly: kernel records -> one `Incident` per reported problem.

A kernel problem report is many records: an OOM report runs from `<comm> invoked oom-killer` through the task
table to `oom-kill:` / `Out of memory: Killed process` / `oom_reaper:`; an oops has `BUG:`, `Oops:`, registers, a
call trace and maybe `Kernel panic`. Headlines (records a rule matches) of the same rule *group* that arrive within
the group's window join one open incident; context lines (call trace, registers, Mem-Info, ...) fold into the
incident that received the last record, and are never reported on their own. The incident is named by its
highest-ranked headline (an OOM report is `oom_killed_process`, not `oom_killer_invoked`).

An incident closes when
  * a headline of a rule marked `opens` starts the next report of its group,
  * a headline of its group arrives after the window (record time; by record count when records carry no time),
  * the records of the batch just fed are newer than its window (a replay of old records closes as it goes),
  * `expire(now)` finds no record arrived for it for `window` seconds of wall-clock time (the live timeout),
  * it reached `max_records`, or `flush()` is called (end of input).
Its stored lines are bounded by `max_lines` (headlines are always kept; later context lines are only counted).

Cost: the rules' prefilter scans a batch once; records are looked at one by one only at prefilter hits and for up
to `context_gap` records after an incident received a record. A batch of ordinary lines with no incident open
costs one regex scan. This module does no I/O and never decides what a line means: that is `rules.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from logagent.signatures.rules import Match, Rule, RuleSet

TimeOf = Callable[[int], "float | None"]
PosOf = Callable[[int], "tuple[Any, Any]"]
FlagOf = Callable[[int], bool]


@dataclass
class Incident:
    group: str
    source: str
    first_pos: Any
    last_pos: Any
    first_index: int
    last_index: int
    first_time: float | None
    last_time: float | None
    last_arrival: float
    first_line: str
    last_line: str
    lines: list[str] = field(default_factory=list)
    headlines: list[tuple[Any, Match]] = field(default_factory=list)  # (position, match) in arrival order
    records: int = 0
    lines_dropped: int = 0
    injected: bool = False  # a headline came from userspace (prio >= 8): a fault injector or a test tool
    reported_open: bool = False  # its permanent problem was reported while the report was still open

    # -- naming ---------------------------------------------------------------------------------------------
    @property
    def primary(self) -> Rule:
        """The headline rule with the highest rank names the incident; the earliest wins a tie."""
        best = self.headlines[0][1].rule
        for _, m in self.headlines[1:]:
            if m.rule.rank > best.rank:
                best = m.rule
        return best

    @property
    def category(self) -> str:
        return self.primary.category

    @property
    def signature(self) -> str:
        return self.primary.signature

    @property
    def severity(self) -> str:
        return self.primary.severity

    @property
    def permanent(self) -> bool:
        return any(m.rule.permanent for _, m in self.headlines)

    @property
    def headline_positions(self) -> list[Any]:
        return [p for p, _ in self.headlines]

    @property
    def cause(self) -> str:
        """The first headline's signature: what started the report (the oops behind `Kernel panic - not syncing:
        Fatal exception`, the RCU stall before the soft lockup)."""
        return self.headlines[0][1].rule.signature

    @property
    def signatures(self) -> list[str]:
        """Every headline signature, first occurrence order (e.g. nvme timeout, I/O error, remount...)."""
        return list(dict.fromkeys(m.rule.signature for _, m in self.headlines))

    def fields(self) -> dict[str, str]:
        """Fields of all headlines; a higher-ranked headline's value wins (the kill line's anon-rss, not the
        reaper's 0)."""
        out: dict[str, str] = {}
        for _, m in sorted(self.headlines, key=lambda h: -h[1].rule.rank):
            for k, v in m.fields.items():
                out.setdefault(k, v)
        return out

    def summary(self) -> dict[str, Any]:
        """The JSON shape `logagent classify` prints and the stage builds its event record from."""
        out: dict[str, Any] = {
            "category": self.category,
            "signature": self.signature,
            "severity": self.severity,
            "permanent": self.permanent,
            "cause": self.cause,
            "fields": self.fields(),
            "first_line": self.first_line,
            "last_line": self.last_line,
        }
        sigs = self.signatures
        if len(sigs) > 1:
            out["signatures"] = sigs
        if self.injected:
            out["injected"] = True
        return out


@dataclass
class _SourceState:
    name: str
    index: int = 0  # records fed so far: a record's index is its place in this source's stream
    open: dict[str, Incident] = field(default_factory=dict)  # group -> the open incident
    current: Incident | None = None  # the incident the last headline/context record went to
    claimed: int = -1  # index of the last record that went into an incident
    # the previous batch's trailing lead-in lines: (index, message, position, time), oldest first
    tail: list[tuple[int, str, tuple[Any, Any], float | None]] = field(default_factory=list)


class IncidentAssembler:
    """Feeds batches of kernel messages through the rules and returns the incidents that closed."""

    def __init__(self, rules: RuleSet, max_lines: int = 200, max_records: int = 5000, context_gap: int = 50,
                 context_window: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 lead_in_lines: int = 5) -> None:
        self.rules = rules
        self.lead_in_lines = lead_in_lines if rules.lead_in else 0
        self.max_lines = max_lines
        self.max_records = max_records
        self.context_gap = context_gap
        self.context_window = context_window
        self.clock = clock
        self._sources: dict[str, _SourceState] = {}

    # -- feeding --------------------------------------------------------------------------------------------
    def feed(self, messages: Sequence[str], pos_of: PosOf, time_of: TimeOf | None = None,
             userspace_of: FlagOf | None = None, source: str = "") -> list[Incident]:
        """Classify and group one batch (in order). `pos_of(i)` gives the (first, last) position of record i
        (kmsg sequence numbers, journal cursors or line numbers), `time_of(i)` its time in seconds or None.
        Accessors are called only for the records that matter, never for every record."""
        st = self._sources.get(source)
        if st is None:
            st = self._sources[source] = _SourceState(source)
        time_of = time_of or _no_time
        n = len(messages)
        matches = self.rules.classify_batch(messages)
        hits = sorted(matches)
        closed: list[Incident] = []
        now = self.clock()
        base = st.index
        h = 0
        i = 0
        is_context = self.rules.is_context
        while i < n:
            cur = st.current
            if cur is not None and base + i - cur.last_index > self.context_gap:
                st.current = cur = None
            if cur is None:
                if h >= len(hits):
                    break
                i = hits[h]  # nothing open to fold into: skip straight to the next headline
            if h < len(hits) and hits[h] == i:
                h += 1
                opened = self._headline(st, base + i, messages[i], matches[i], pos_of(i), time_of(i),
                                        userspace_of(i) if userspace_of is not None else False, now, closed)
                if opened is not None and self.lead_in_lines:
                    self._lead_in(st, opened, messages, base, i, pos_of, time_of)
                st.claimed = base + i
            elif cur is not None and is_context(messages[i]):
                t = time_of(i)
                if t is not None and cur.last_time is not None and t - cur.last_time > self.context_window:
                    st.current = None  # a stray indented line long after the report is not part of it
                else:
                    self._add(cur, base + i, messages[i], pos_of(i), t, now, headline=False)
                    st.claimed = base + i
            i += 1
        if self.lead_in_lines:
            self._keep_tail(st, messages, base, pos_of, time_of)
        st.index = base + n
        if n:
            newest = time_of(n - 1)
            if newest is not None:
                for group, inc in list(st.open.items()):
                    if inc.last_time is not None and newest - inc.last_time > self._window(inc):
                        closed.append(self._close(st, inc))
        closed.sort(key=lambda inc: inc.first_index)
        return closed

    def expire(self, now: float | None = None) -> list[Incident]:
        """Incidents that received nothing for their window (wall clock): the live timeout."""
        now = self.clock() if now is None else now
        out: list[Incident] = []
        for st in self._sources.values():
            for inc in list(st.open.values()):
                if now - inc.last_arrival >= self._window(inc):
                    out.append(self._close(st, inc))
        out.sort(key=lambda inc: (inc.source, inc.first_index))
        return out

    def flush(self) -> list[Incident]:
        """Close everything (end of input, shutdown)."""
        out: list[Incident] = []
        for st in self._sources.values():
            for inc in list(st.open.values()):
                out.append(self._close(st, inc))
        out.sort(key=lambda inc: (inc.source, inc.first_index))
        return out

    def open_incidents(self) -> list[Incident]:
        """Reports still open (that may get more lines), oldest first."""
        return sorted((inc for st in self._sources.values() for inc in st.open.values()),
                      key=lambda inc: (inc.source, inc.first_index))

    @property
    def pending(self) -> int:
        return sum(len(st.open) for st in self._sources.values())

    # -- internals ------------------------------------------------------------------------------------------
    def _window(self, inc: Incident) -> float:
        return self.rules.window(inc.group, inc.headlines[0][1].rule.category)

    def _joins(self, inc: Incident, match: Match) -> bool:
        """May this headline join the open incident of its group? `join_on` fields must agree where both have
        them (another interface's watchdog is another report); an `opens` rule joins only an incident holding
        one of its `joins` signatures (a soft lockup after the RCU stall of the same CPU)."""
        rule = match.rule
        if rule.join_on:
            have = inc.fields()
            if any(f in match.fields and f in have and match.fields[f] != have[f] for f in rule.join_on):
                return False
        if rule.opens:
            return bool(rule.joins) and any(m.rule.signature in rule.joins for _, m in inc.headlines)
        return True

    def _headline(self, st: _SourceState, index: int, message: str, match: Match, pos: tuple[Any, Any],
                  t: float | None, injected: bool, now: float, closed: list[Incident]) -> Incident | None:
        """File one headline; the incident when it opened a new one."""
        rule = match.rule
        inc = st.open.get(rule.group)
        opened = None
        if inc is not None:
            if t is not None and inc.last_time is not None:
                joinable = t - inc.last_time <= self._window(inc)
            else:
                joinable = index - inc.last_index <= self.context_gap
            if not joinable or inc.records >= self.max_records or not self._joins(inc, match):
                closed.append(self._close(st, inc))
                inc = None
        if inc is None:
            inc = Incident(group=rule.group, source=st.name, first_pos=pos[0],
                           last_pos=pos[1], first_index=index, last_index=index, first_time=t, last_time=t,
                           last_arrival=now, first_line=message, last_line=message)
            st.open[rule.group] = inc
            opened = inc
        inc.headlines.append((pos[0], match))
        if injected:
            inc.injected = True
        self._add(inc, index, message, pos, t, now, headline=True)
        st.current = inc
        return opened

    def _lead_in(self, st: _SourceState, inc: Incident, messages: Sequence[str], base: int, i: int,
                 pos_of: PosOf, time_of: TimeOf) -> None:
        """Lines right before a new report's first headline that introduce it (rules file `lead_in`) join it,
        unless another incident took them already. Looks back at most `lead_in_lines` records, into the
        previous batch's tail when the headline is at the start of this one."""
        lead: list[tuple[int, str, tuple[Any, Any], float | None]] = []
        j = i - 1
        tail = list(st.tail)
        while len(lead) < self.lead_in_lines:
            index = base + j
            if index <= st.claimed:
                break
            if j >= 0:
                if not self.rules.is_lead_in(messages[j]):
                    break
                lead.append((index, messages[j], pos_of(j), time_of(j)))
            else:
                if not tail or tail[-1][0] != index:
                    break
                lead.append(tail.pop())
            j -= 1
        if not lead:
            return
        lead.reverse()
        inc.lines[:0] = [m for _, m, _, _ in lead]
        inc.records += len(lead)
        inc.first_index, inc.first_pos = lead[0][0], lead[0][2][0]
        first_time = next((t for _, _, _, t in lead if t is not None), None)
        if first_time is not None:
            inc.first_time = first_time

    def _keep_tail(self, st: _SourceState, messages: Sequence[str], base: int, pos_of: PosOf,
                   time_of: TimeOf) -> None:
        """The trailing lead-in lines of this batch, for a headline at the start of the next one."""
        tail: list[tuple[int, str, tuple[Any, Any], float | None]] = []
        j = len(messages) - 1
        while j >= 0 and len(tail) < self.lead_in_lines and self.rules.is_lead_in(messages[j]):
            tail.append((base + j, messages[j], pos_of(j), time_of(j)))
            j -= 1
        tail.reverse()
        st.tail = tail

    def _add(self, inc: Incident, index: int, message: str, pos: tuple[Any, Any], t: float | None, now: float,
             headline: bool) -> None:
        inc.records += 1
        if len(inc.lines) < self.max_lines or headline:
            inc.lines.append(message)
        else:
            inc.lines_dropped += 1
        inc.last_pos = pos[1]
        inc.last_index = index
        inc.last_line = message
        inc.last_arrival = now
        if t is not None:
            inc.last_time = t
            if inc.first_time is None:
                inc.first_time = t

    def _close(self, st: _SourceState, inc: Incident) -> Incident:
        if st.open.get(inc.group) is inc:
            del st.open[inc.group]
        if st.current is inc:
            st.current = None
        return inc


def _no_time(i: int) -> None:
    return None

