"""The kernel problem rules engine: YAML rules -> one classifier with a cheap prefilter.

A `RuleSet` is built once from the shipped rules (package data `logagent/signatures/rules/kernel.yaml`, which
`conf/signatures/kernel.yaml` links to) plus the user's files (`rules_files`): a user rule with the same name
replaces the shipped one, `disable: [names]` removes rules. Classification is by the decoded message text
only (never by syslog level).

Cost: every rule names literal `keywords`; one Aho-Corasick automaton of all keywords (ahocorasick_rs; a regex
alternation when it is not installed, ~30x slower) scans a whole batch of messages joined together, so a batch of
normal lines costs one native scan and no per-line or per-rule Python work. Only the few messages that contain a
keyword are tried against the rules' patterns.

This module must never do I/O after loading, and never decide grouping: that is `incidents.py`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from itertools import accumulate
from pathlib import Path
from typing import Any

import yaml

try:
    import ahocorasick_rs
except ImportError:  # pragma: no cover - the regex prefilter is the fallback
    ahocorasick_rs = None  # type: ignore[assignment]

CATEGORIES = ("oom", "panic", "lockup", "hung_task", "fs", "network", "driver", "hardware")
SEVERITIES = {"info": 10, "warning": 20, "error": 30, "critical": 40}


class RulesError(Exception):
    """A rules file is invalid; the message names the file and the rule."""


@dataclass(frozen=True)
class Rule:
    name: str
    signature: str
    category: str
    severity: str
    permanent: bool
    keywords: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    exclude: re.Pattern[str] | None
    group: str
    opens: bool
    rank: int
    source: str
    join_on: tuple[str, ...] = ()  # fields that must agree (when both have them) to join an open incident
    joins: tuple[str, ...] = ()  # an `opens` rule still joins an open incident that has one of these signatures
    glued: tuple[re.Pattern[str], ...] = ()  # the `^`-anchored patterns without their anchor (console interleaving)

    def match(self, message: str) -> dict[str, str] | None:
        """Fields from the first matching pattern, or None. Empty named groups are left out.

        A headline the console glued to the end of another line (`...new USB deviceBUG: unable to handle...`)
        is found by the anchored patterns too, at a keyword that starts where a line could: right after a
        non-space character that is not a lower-case letter running into a lower-case word. A keyword after a
        space is ordinary text and never matched this way."""
        if self.exclude is not None and self.exclude.search(message):
            return None
        for pat in self.patterns:
            m = pat.search(message)
            if m is not None:
                return {k: v.strip() for k, v in m.groupdict().items() if v}
        if self.glued:
            for at in self._glue_points(message):
                for pat in self.glued:
                    m = pat.match(message, at)
                    if m is not None:
                        tail = message[at:]
                        if self.exclude is not None and self.exclude.search(tail):
                            return None
                        return {k: v.strip() for k, v in m.groupdict().items() if v}
        return None

    def _glue_points(self, message: str) -> list[int]:
        points: list[int] = []
        for k in self.keywords:
            at = message.find(k, 1)
            while at > 0:
                before, first = message[at - 1], message[at]
                if not before.isspace() and not (before.isalpha() and first.islower()) and before not in "'\"`(":
                    points.append(at)
                at = message.find(k, at + 1)
        return sorted(set(points))


@dataclass(frozen=True)
class Match:
    rule: Rule
    fields: dict[str, str]


@dataclass
class RuleSet:
    rules: list[Rule]
    context: list[re.Pattern[str]]
    group_windows: dict[str, float]
    lead_in: list[re.Pattern[str]] = field(default_factory=list)
    _prefilter: re.Pattern[str] = field(init=False)
    _context_re: re.Pattern[str] = field(init=False)
    _automaton: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        keywords = sorted({k for r in self.rules for k in r.keywords}, key=len, reverse=True)
        self._prefilter = re.compile("|".join(map(re.escape, keywords)) if keywords else r"(?!x)x")
        # keyword number -> the rules (by position) that name it: a hit tells which rules are worth trying
        self._keyword_rules: list[tuple[int, ...]] = [
            tuple(i for i, r in enumerate(self.rules) if k in r.keywords) for k in keywords]
        if ahocorasick_rs is not None and keywords:
            self._automaton = ahocorasick_rs.AhoCorasick(keywords)
        self._context_re = re.compile("|".join(f"(?:{p.pattern})" for p in self.context) or r"(?!x)x")
        self._lead_in_re = re.compile("|".join(f"(?:{p.pattern})" for p in self.lead_in) or r"(?!x)x")

    def _keyword_starts(self, text: str) -> list[int]:
        """Start offsets (in characters) of keyword occurrences; not necessarily all of them, but at least one
        in every stretch of text that has any."""
        if self._automaton is not None:
            return [start for _, start, _ in self._automaton.find_matches_as_indexes(text)]
        return [m.start() for m in self._prefilter.finditer(text)]

    # -- classification -------------------------------------------------------------------------------------
    def classify(self, message: str) -> Match | None:
        """The first rule matching one message (no prefilter shortcut needed for one line)."""
        if not self._keyword_starts(message):
            return None
        return self._try_rules(message)

    def _try_rules(self, message: str) -> Match | None:
        for rule in self.rules:
            for k in rule.keywords:
                if k in message:
                    break
            else:
                continue
            fields = rule.match(message)
            if fields is not None:
                return Match(rule, fields)
        return None

    def classify_batch(self, messages: Sequence[str]) -> dict[int, Match]:
        """Matches by index for a batch: one keyword scan over the joined text, rules only for the hits."""
        if not messages:
            return {}
        joined = "\n".join(messages)
        if self._automaton is not None:
            return self._classify_joined(messages, joined)
        hits = self._keyword_starts(joined)
        if not hits:
            return {}
        # Offsets of each message in `joined`, computed by C-level iterators (no Python call per line).
        starts = list(accumulate(map((1).__add__, map(len, messages)), initial=0))
        out: dict[int, Match] = {}
        candidates = {bisect.bisect_right(starts, h) - 1 for h in hits}
        for idx in sorted(candidates):
            found = self._try_rules(messages[idx])
            if found is not None:
                out[idx] = found
        return out

    def _classify_joined(self, messages: Sequence[str], joined: str) -> dict[int, Match]:
        found = self._automaton.find_matches_as_indexes(joined, overlapping=True)
        if not found:
            return {}
        starts = list(accumulate(map((1).__add__, map(len, messages)), initial=0))
        per_line: dict[int, set[int]] = {}
        keyword_rules = self._keyword_rules
        for kw, start, _ in found:
            idx = bisect.bisect_right(starts, start) - 1
            rules = per_line.get(idx)
            if rules is None:
                per_line[idx] = set(keyword_rules[kw])
            else:
                rules.update(keyword_rules[kw])
        out: dict[int, Match] = {}
        all_rules = self.rules
        for idx in sorted(per_line):
            message = messages[idx]
            for ri in sorted(per_line[idx]):  # file order: the more specific wording first
                rule = all_rules[ri]
                fields = rule.match(message)
                if fields is not None:
                    out[idx] = Match(rule, fields)
                    break
        return out

    def is_context(self, message: str) -> bool:
        return self._context_re.match(message) is not None

    def is_lead_in(self, message: str) -> bool:
        """A line a driver prints just before its headline (the GPU's identification before an Xid)."""
        return self._lead_in_re.match(message) is not None

    def window(self, group: str, category: str) -> float:
        w = self.group_windows
        return w.get(group, w.get(category, w.get("default", 60.0)))

    def without(self, names: Iterable[str]) -> RuleSet:
        """The same rules minus those named (the stage's `disable` setting)."""
        drop = set(names)
        if not drop:
            return self
        return RuleSet([r for r in self.rules if r.name not in drop], self.context, self.group_windows, self.lead_in)

    def by_name(self, name: str) -> Rule | None:
        for r in self.rules:
            if r.name == name:
                return r
        return None


# -- loading ------------------------------------------------------------------------------------------------
def _compile(pattern: Any, where: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise RulesError(f"{where}: expected a regex string, got {type(pattern).__name__}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise RulesError(f"{where}: invalid regex {pattern!r}: {e}") from None


def _rule(data: Any, where: str) -> Rule:
    if not isinstance(data, dict):
        raise RulesError(f"{where}: expected a mapping")
    known = {"name", "signature", "category", "severity", "permanent", "keywords", "patterns", "exclude", "group",
             "opens", "rank", "description", "join_on", "joins"}
    unknown = set(data) - known
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    sig = data.get("signature")
    if not isinstance(sig, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", sig):
        raise RulesError(f"{where}.signature: expected a snake_case name, got {sig!r}")
    name = data.get("name", sig)
    where = f"{where} ({name})"
    cat = data.get("category")
    if cat not in CATEGORIES:
        raise RulesError(f"{where}.category: expected one of {', '.join(CATEGORIES)}, got {cat!r}")
    sev = data.get("severity", "error")
    if sev not in SEVERITIES:
        raise RulesError(f"{where}.severity: expected one of {', '.join(SEVERITIES)}, got {sev!r}")
    keywords = data.get("keywords")
    if not isinstance(keywords, list) or not keywords or not all(isinstance(k, str) and k for k in keywords):
        raise RulesError(f"{where}.keywords: expected a non-empty list of literal strings (the prefilter)")
    patterns = data.get("patterns")
    if not isinstance(patterns, list) or not patterns:
        raise RulesError(f"{where}.patterns: expected a non-empty list of regexes")
    exclude = data.get("exclude")
    join_on, joins = data.get("join_on", []), data.get("joins", [])
    for key, value in (("join_on", join_on), ("joins", joins)):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise RulesError(f"{where}.{key}: expected a list of names")
    compiled = tuple(_compile(p, f"{where}.patterns[{i}]") for i, p in enumerate(patterns))
    return Rule(
        name=name,
        signature=sig,
        category=cat,
        severity=sev,
        permanent=bool(data.get("permanent", False)),
        keywords=tuple(keywords),
        patterns=compiled,
        exclude=_compile(exclude, f"{where}.exclude") if exclude is not None else None,
        group=str(data.get("group", cat)),
        opens=bool(data.get("opens", False)),
        rank=int(data.get("rank", SEVERITIES[sev])),
        source=where,
        join_on=tuple(join_on),
        joins=tuple(joins),
        glued=tuple(re.compile(p.pattern[1:]) for p in compiled if p.pattern.startswith("^")),
    )


def _load_doc(text: str, file: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RulesError(f"{file}: invalid YAML: {e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise RulesError(f"{file}: expected a mapping with `rules:`")
    unknown = set(doc) - {"version", "groups", "context", "lead_in", "rules", "disable"}
    if unknown:
        raise RulesError(f"{file}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    return doc


def shipped_rules_text() -> str:
    return resources.files("logagent.signatures").joinpath("rules/kernel.yaml").read_text()


def load_rules(rules_files: Iterable[str] = (), disable: Iterable[str] = (), include_shipped: bool = True) -> RuleSet:
    """Shipped rules, then each user file in order: same name replaces (in place), new names are appended
    before the shipped ones so that users can make a more specific wording win; `disable` removes by name."""
    docs: list[tuple[str, dict[str, Any]]] = []
    if include_shipped:
        docs.append(("<shipped>/kernel.yaml", _load_doc(shipped_rules_text(), "<shipped>/kernel.yaml")))
    for path in rules_files:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise RulesError(f"{path}: cannot read rules file: {e.strerror}") from None
        docs.append((path, _load_doc(text, path)))

    rules: list[Rule] = []
    context: list[re.Pattern[str]] = []
    lead_in: list[re.Pattern[str]] = []
    windows: dict[str, float] = {}
    disabled: set[str] = set(disable)
    for file, doc in docs:
        for k, v in (doc.get("groups") or {}).items():
            try:
                windows[str(k)] = float(v)
            except (TypeError, ValueError):
                raise RulesError(f"{file}: groups.{k}: expected seconds, got {v!r}") from None
        for i, p in enumerate(doc.get("context") or []):
            context.append(_compile(p, f"{file}: context[{i}]"))
        for i, p in enumerate(doc.get("lead_in") or []):
            lead_in.append(_compile(p, f"{file}: lead_in[{i}]"))
        disabled.update(str(n) for n in doc.get("disable") or [])
        user_new: list[Rule] = []
        for i, data in enumerate(doc.get("rules") or []):
            rule = _rule(data, f"{file}: rules[{i}]")
            for j, existing in enumerate(rules):
                if existing.name == rule.name:
                    rules[j] = rule
                    break
            else:
                if file.startswith("<shipped>"):
                    rules.append(rule)
                else:
                    user_new.append(rule)
        rules = user_new + rules
    rules = [r for r in rules if r.name not in disabled]
    return RuleSet(rules, context, windows, lead_in)


_DEFAULT: RuleSet | None = None


def default_rules() -> RuleSet:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_rules()
    return _DEFAULT
