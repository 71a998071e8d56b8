"""The `multiline: auto` corpus (tests/data/multiline_auto/*.records, format in its README): parsed into the
physical CRI lines to write and the records expected, per stream."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

AUTO = Path(__file__).parent / "data" / "multiline_auto"


@dataclass
class Expected:
    stream: str
    lines: list[str] = field(default_factory=list)
    first: int = 0  # index of its first physical line

    @property
    def trace(self) -> bool:
        return len(self.lines) > 1


@dataclass
class Corpus:
    name: str
    physical: list[tuple[str, str]]  # (stream, text) in file order
    records: list[Expected]  # in order of their first physical line

    def cri(self) -> bytes:
        """The file containerd would write: one F line per physical line, timestamps 1 µs apart (trailing zeros of
        the fraction trimmed, as Go's RFC3339Nano does)."""
        out = []
        for i, (stream, text) in enumerate(self.physical):
            frac = f"{i + 1:06d}".rstrip("0")
            out.append(f"2024-05-14T09:00:00.{frac}Z {stream} F {text}\n")
        return "".join(out).encode()

    def time_of(self, rec: Expected) -> str:
        return f"2024-05-14T09:00:00.{f'{rec.first + 1:06d}'.rstrip('0')}Z"

    def expected(self) -> dict[str, list[list[str]]]:
        out: dict[str, list[list[str]]] = {}
        for r in self.records:
            out.setdefault(r.stream, []).append(r.lines)
        return out


def _unescape(line: str) -> str:
    """`\\t` is a tab, `\\\\t` a literal backslash-t."""
    return "\\t".join(part.replace("\\t", "\t") for part in line.split("\\\\t"))


def load(name: str) -> Corpus:
    path = AUTO / f"{name}.records"
    physical: list[tuple[str, str]] = []
    records: list[Expected] = []
    labels: dict[str, Expected] = {}
    current: Expected | None = None
    each_own = False
    stream = ""
    for n, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if raw.startswith("=== "):
            words = raw[4:].split()
            stream = words[0]
            assert stream in ("stdout", "stderr"), f"{path}:{n}: stream {stream!r}"
            each_own = "*" in words
            label = next((w[1:] for w in words if w.startswith("@")), None)
            if "+" in words:
                assert label in labels, f"{path}:{n}: continues unknown record @{label}"
                current = labels[label]
            else:
                current = None if each_own else Expected(stream, first=len(physical))
                if current is not None:
                    records.append(current)
                    if label:
                        labels[label] = current
            continue
        if stream == "":
            continue  # before the first header: nothing
        if raw == "" and n == len(path.read_text(encoding="utf-8").split("\n")):
            break  # the file's final newline
        text = _unescape(raw)
        if each_own:
            records.append(Expected(stream, [text], first=len(physical)))
        else:
            assert current is not None
            current.lines.append(text)
        physical.append((stream, text))
    records.sort(key=lambda r: r.first)
    return Corpus(name, physical, records)


def names() -> list[str]:
    return sorted(p.name[: -len(".records")] for p in AUTO.glob("*.records"))


def false_joins(corpus: Corpus, got: dict[str, list[list[str]]]) -> tuple[int, int, int, int]:
    """(ordinary lines, ordinary lines that came out joined to another line, traces, traces not one record).

    A record's identity is its lines in order per stream: an expected single line that is not a record of its
    own in the output (it is inside a bigger record) is a false join; an expected trace that is not exactly one
    output record is a split (or a merge with something else)."""
    ordinary = joined = traces = broken = 0
    for stream, want in corpus.expected().items():
        have = got.get(stream, [])
        have_set = {tuple(r) for r in have}
        inside = {line for r in have if len(r) > 1 for line in r}
        for rec in want:
            if len(rec) == 1:
                ordinary += 1
                if (rec[0],) not in have_set and rec[0] in inside:
                    joined += 1
            else:
                traces += 1
                if tuple(rec) not in have_set:
                    broken += 1
    return ordinary, joined, traces, broken
