"""The kernel problem rules engine: YAML rules -> one classifier with a cheap prefilter.

A `RuleSet` is built once from the shipped rules (package data `logagent/signatures/rules/kernel.yaml`) plus the
user's files (`rules_files`): a user rule with the same name replaces the shipped one, `disable: [names]` removes
rules. Classification is by the decoded message text only (never by syslog level).

Cost: every rule names literal `keywords`; one compiled alternation of all keywords is searched over a whole
batch of messages joined together, so a batch of normal lines costs one C-level regex scan and no per-rule work.
Only the few messages that contain a keyword are tried against the rules' patterns.

This module must never do I/O after loading, and never decide grouping: that is `grouping.py`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

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

    def match(self, message: str) -> dict[str, str] | None:
        """Fields from the first matching pattern, or None. Empty named groups are left out."""
        if self.exclude is not None and self.exclude.search(message):
            return None
        for pat in self.patterns:
            m = pat.search(message)
            if m is not None:
                return {k: v.strip() for k, v in m.groupdict().items() if v}
        return None


@dataclass(frozen=True)
class Match:
    rule: Rule
    fields: dict[str, str]


@dataclass
class RuleSet:
    rules: list[Rule]
    context: list[re.Pattern[str]]
    group_windows: dict[str, float]
    _prefilter: re.Pattern[str] = field(init=False)
    _context_re: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        keywords = sorted({k for r in self.rules for k in r.keywords}, key=len, reverse=True)
        self._prefilter = re.compile("|".join(map(re.escape, keywords)) if keywords else r"(?!x)x")
        self._context_re = re.compile("|".join(f"(?:{p.pattern})" for p in self.context) or r"(?!x)x")

    # -- classification -------------------------------------------------------------------------------------
    def classify(self, message: str) -> Match | None:
        """The first rule matching one message (no prefilter shortcut needed for one line)."""
        if self._prefilter.search(message) is None:
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
        first = self._prefilter.search(joined)
        if first is None:
            return {}
        starts: list[int] = []
        pos = 0
        for m in messages:
            starts.append(pos)
            pos += len(m) + 1
        out: dict[int, Match] = {}
        candidates: set[int] = set()
        search = self._prefilter.search
        hit: re.Match[str] | None = first
        while hit is not None:
            idx = bisect.bisect_right(starts, hit.start()) - 1
            candidates.add(idx)
            # continue after this message: one hit is enough to make it a candidate
            nxt = starts[idx + 1] if idx + 1 < len(starts) else len(joined)
            hit = search(joined, nxt)
        for idx in sorted(candidates):
            found = self._try_rules(messages[idx])
            if found is not None:
                out[idx] = found
        return out

    def is_context(self, message: str) -> bool:
        return self._context_re.match(message) is not None

    def window(self, group: str, category: str) -> float:
        w = self.group_windows
        return w.get(group, w.get(category, w.get("default", 60.0)))

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
             "opens", "rank", "description"}
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
    return Rule(
        name=name,
        signature=sig,
        category=cat,
        severity=sev,
        permanent=bool(data.get("permanent", False)),
        keywords=tuple(keywords),
        patterns=tuple(_compile(p, f"{where}.patterns[{i}]") for i, p in enumerate(patterns)),
        exclude=_compile(exclude, f"{where}.exclude") if exclude is not None else None,
        group=str(data.get("group", cat)),
        opens=bool(data.get("opens", False)),
        rank=int(data.get("rank", SEVERITIES[sev])),
        source=where,
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
    unknown = set(doc) - {"version", "groups", "context", "rules", "disable"}
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
    return RuleSet(rules, context, windows)


_DEFAULT: RuleSet | None = None


def default_rules() -> RuleSet:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_rules()
    return _DEFAULT
