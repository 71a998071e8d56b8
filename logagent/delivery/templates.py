"""Field templates shared by Elasticsearch index names and Loki labels."""

from __future__ import annotations

import time
from typing import Any

from logagent.config import Section

# strftime codes whose value changes at most once an hour: a rendered date needs only the record's hour
_HOURLY_CODES = frozenset("YmdHyjbBhaAuwUWVGgCeIp%")


class FieldTemplate:
    """`{dotted.path}` placeholders filled from a record (`{kubernetes.labels.app}`), `{path|default}` for a
    fallback when the field is missing or empty, plus strftime codes (`%Y.%m.%d`) from the record's time (UTC)
    when `dates` is on. Literal text stays as written; `{{` and `}}` are literal braces.

    A rendering depends on nothing but `values(record)` and, with dates, the record's time to `date_granularity`
    seconds: a cache of renderings must be keyed by exactly those, so that no record decides another's route."""

    __slots__ = ("text", "parts", "fields", "has_date", "dates", "date_granularity")

    def __init__(self, text: str, dates: bool = False) -> None:
        self.text = text
        self.dates = dates
        self.parts: list[tuple[str, Any]] = []  # ("lit", str) | ("field", (path tuple, default))
        i = 0
        lit: list[str] = []
        while i < len(text):
            ch = text[i]
            if text.startswith("{{", i) or text.startswith("}}", i):
                lit.append(ch)
                i += 2
                continue
            if ch == "{":
                end = text.find("}", i)
                if end < 0:
                    raise ValueError(f"unclosed '{{' in template {text!r}")
                if lit:
                    self.parts.append(("lit", "".join(lit)))
                    lit = []
                expr = text[i + 1:end].strip()
                name, _, default = expr.partition("|")
                if not name:
                    raise ValueError(f"empty field name in template {text!r}")
                self.parts.append(("field", (tuple(name.strip().split(".")), default)))
                i = end + 1
                continue
            lit.append(ch)
            i += 1
        if lit:
            self.parts.append(("lit", "".join(lit)))
        self.fields = [p[1][0] for p in self.parts if p[0] == "field"]
        self.has_date = dates and "%" in text
        codes = {text[i + 1] for i in range(len(text) - 1) if text[i] == "%"}
        self.date_granularity = 3600 if codes <= _HOURLY_CODES else 1

    @property
    def constant(self) -> bool:
        return not self.fields and not self.has_date

    def top_keys(self) -> set[str]:
        return {f[0] for f in self.fields}

    def render(self, record: dict[str, Any], time_ns: int | None = None) -> str:
        return self.render_values(self.values(record), time_ns)

    def values(self, record: dict[str, Any]) -> tuple[str, ...]:
        """The text each placeholder takes for this record (its fallback when the field is missing or empty)."""
        out = []
        for kind, val in self.parts:
            if kind == "lit":
                continue
            path, default = val
            cur: Any = record
            for p in path:
                if isinstance(cur, dict):
                    cur = cur.get(p)
                else:
                    cur = None
                    break
            out.append(default if cur is None or cur == "" else str(cur))
        return tuple(out)

    def render_values(self, values: tuple[str, ...], time_ns: int | None = None) -> str:
        out = []
        it = iter(values)
        for kind, val in self.parts:
            out.append(val if kind == "lit" else next(it))
        text = "".join(out)
        if self.has_date:
            t = time.gmtime((time_ns if time_ns is not None else time.time_ns()) // 1_000_000_000)
            text = time.strftime(text, t)
        return text


def check_template(section: Section, key: str, text: str, *, dates: bool = False, within: str = "") -> str:
    """`text` when it is a valid template; otherwise a config error naming the file and `key` (and `within` it, e.g.
    the label whose template it is)."""
    try:
        FieldTemplate(text, dates=dates)
    except ValueError as e:
        raise section.error(f"{within}: {e}" if within else str(e), key) from None
    return text
