"""Kernel problem signatures against real-world wording variants that are NOT in the shared corpus.

`tests/data/kernel_variants.jsonl` holds lines collected from other kernel versions, drivers and architectures
(GitHub issue dmesg pastes, lkml quotes, node-problem-detector / gpud fixtures, kernel printk format strings filled
with plausible values; every line names its source) plus near-miss traps that must not be reported. Each line is
classified with the same engine as the shared-corpus tests, one line at a time and as one batch (the batch path
goes through the keyword prefilter, so a rule whose keywords miss a wording is caught here).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from logagent.signatures import rules as rules_mod
from logagent.signatures.rules import CATEGORIES, RuleSet, default_rules, load_rules

DATA = Path(__file__).parent / "data"
VARIANTS_FILE = DATA / "kernel_variants.jsonl"
VOCABULARY_README = DATA / "kernel" / "README.md"


def _variants() -> list[dict[str, Any]]:
    return [json.loads(line) for line in VARIANTS_FILE.read_text().splitlines() if line.strip()]


VARIANTS = _variants()


def _vocabulary() -> dict[str, str]:
    """signature -> category, from the label table (section 4) of the shared corpus README."""
    if not VOCABULARY_README.exists():
        return {}
    rows = re.findall(r"^\| (\w+) \| `(\w+)` \|", VOCABULARY_README.read_text(), re.MULTILINE)
    return {sig: cat for cat, sig in rows}


VOCABULARY = _vocabulary()


def _verdict(rs: RuleSet, message: str) -> tuple[str, str | None]:
    m = rs.classify(message)
    return (m.rule.category, m.rule.signature) if m else ("none", None)


def _expected(label: dict[str, Any]) -> tuple[str, str | None]:
    return (label["category"], label["signature"] if label["category"] != "none" else None)


@pytest.mark.parametrize("label", VARIANTS, ids=[f"{i}-{d['signature']}" for i, d in enumerate(VARIANTS)])
def test_every_variant_gets_its_label(label: dict[str, Any]) -> None:
    got = _verdict(default_rules(), label["line"])
    assert got == _expected(label), (
        f"line {label['line']!r} (source: {label['source']}) classified as {got}, label says {_expected(label)}")


def test_batch_prefilter_reports_exactly_the_labelled_lines() -> None:
    """The batch path (one keyword scan over the joined batch) reports the same lines with the same signatures;
    a `none` line is never reported, whatever its neighbours are."""
    lines = [d["line"] for d in VARIANTS]
    found = default_rules().classify_batch(lines)
    got = {i: (m.rule.category, m.rule.signature) for i, m in found.items()}
    expected = {i: _expected(d) for i, d in enumerate(VARIANTS) if d["category"] != "none"}
    assert got == expected


def test_regex_prefilter_fallback_agrees_on_the_variants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules_mod, "ahocorasick_rs", None)
    slow = load_rules()
    assert slow._automaton is None
    lines = [d["line"] for d in VARIANTS]
    assert {i: m.rule.name for i, m in slow.classify_batch(lines).items()} == {
        i: m.rule.name for i, m in default_rules().classify_batch(lines).items()}


def test_variant_file_is_well_formed() -> None:
    """Every line says where it came from, uses the corpus vocabulary, and appears once."""
    assert len(VARIANTS) >= 150
    assert sum(1 for d in VARIANTS if d["category"] == "none") >= 40
    assert len({d["line"] for d in VARIANTS}) == len(VARIANTS)
    for d in VARIANTS:
        assert set(d) == {"line", "category", "signature", "source"}, d
        assert d["source"].strip() and d["line"] != "", d
        assert d["category"] in (*CATEGORIES, "none"), d
        if d["category"] != "none" and VOCABULARY:
            assert VOCABULARY.get(d["signature"]) == d["category"], d


# Signatures whose message has had one fixed wording in every kernel, already in the shared corpus verbatim.
SINGLE_WORDING = {"tcp_tw_bucket_overflow"}  # "TCP: time wait bucket table overflow" (2.6 through 6.x)


@pytest.mark.skipif(not VOCABULARY, reason="shared corpus README (label vocabulary) not present")
def test_every_vocabulary_signature_has_real_world_variants() -> None:
    covered = {d["signature"] for d in VARIANTS if d["category"] != "none"}
    assert sorted(set(VOCABULARY) - covered - SINGLE_WORDING) == []


def test_variants_are_not_copies_of_the_shared_corpus() -> None:
    corpus_file = DATA / "kernel" / "kernel_signatures.jsonl"
    if not corpus_file.exists():
        pytest.skip("shared kernel corpus not present")
    corpus = {json.loads(line)["line"] for line in corpus_file.read_text().splitlines() if line.strip()}
    assert [d["line"] for d in VARIANTS if d["line"] in corpus] == []
