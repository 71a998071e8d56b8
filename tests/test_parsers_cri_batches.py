"""The CRI joiner's batch paths give exactly what the line-by-line path gives, however the lines are batched:
runs of `F` lines, `P` pieces on either stream (stdout and stderr interleaved), partials left open across
batches, joined lines cut at `max_record_bytes`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from logagent.parsers.cri import CriJoiner

LINE = st.tuples(st.sampled_from(["stdout", "stderr"]), st.sampled_from(["F", "F", "F", "P"]),
                 st.text(alphabet="ab \u00e9", max_size=12), st.integers(0, 59), st.integers(0, 999_999_999))


def cri_lines(spec: list[tuple[str, str, str, int, int]]) -> tuple[list[str], list[int]]:
    lines, offsets, pos = [], [], 0
    for stream, tag, text, sec, frac in spec:
        stamp = f"2024-05-14T09:12:{sec:02d}.{frac:09d}".rstrip("0").rstrip(".") + "Z"
        line = f"{stamp} {stream} {tag} {text}"
        lines.append(line)
        offsets.append(pos)
        pos += len(line.encode()) + 1
    return lines, offsets


def line_by_line(lines: list[str], offsets: list[int], max_bytes: int) -> list[dict]:
    j = CriJoiner(max_record_bytes=max_bytes, clock=lambda: 0.0)
    out: list[dict] = []
    for line, off in zip(lines, offsets):
        j._line(out, line, line.split(" ", 3), off, None)
    return out + j.flush(0.0, force=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(LINE, max_size=60), st.lists(st.integers(1, 20), min_size=1, max_size=10),
       st.sampled_from([1 << 20, 8]))
def test_batched_feeding_equals_the_line_by_line_path(spec, cuts, max_bytes) -> None:
    lines, offsets = cri_lines(spec)
    j = CriJoiner(max_record_bytes=max_bytes, clock=lambda: 0.0)
    got: list[dict] = []
    i = k = 0
    while i < len(lines):
        n = cuts[k % len(cuts)]
        got += j.feed(lines[i:i + n], offsets[i:i + n])
        i += n
        k += 1
    got += j.flush(0.0, force=True)
    assert got == line_by_line(lines, offsets, max_bytes)
