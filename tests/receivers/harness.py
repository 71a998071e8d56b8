"""Fixtures shared by the output tests: a real `Context` (agent config, checkpoint store, dead-letter file), an
output built from a settings mapping exactly as the config loader builds it, numbered batches whose tokens record
what was acknowledged and when, and a reader for the dead-letter file.

Nothing here fakes a backend: outputs talk HTTP to the receivers in this package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from logagent import registry
from logagent.checkpoint import CheckpointStore
from logagent.component import Context, Output
from logagent.config import ComponentConfig, Section, parse_config
from logagent.deadletter import DeadLetter
from logagent.record import AckToken, Batch


def make_context(tmp_path: Path) -> Context:
    state = tmp_path / "state"
    cfg = parse_config({"state_dir": str(state),
                        "inputs": [{"type": "file", "name": "in", "paths": [str(tmp_path / "*.log")]}],
                        "outputs": [{"type": "stdout"}]}, "test.yaml")
    return Context(config=cfg, checkpoints=CheckpointStore(state), dead_letter=DeadLetter(cfg.dead_letter_path))


def build_output(kind: str, settings: dict[str, Any], ctx: Context, name: str = "out") -> Output:
    """Parse the settings through the output's own `parse_settings` (so config errors are exercised too)."""
    section = Section(dict(settings, type=kind, name=name), "outputs[0]", "test.yaml")
    section.str("type")
    section.str("name")
    comp = ComponentConfig("output", kind, name, section, ("*",))
    cls = registry.component_class(comp)
    out: Output = cls(name, cls.parse_settings(section), ctx)
    return out


def dead_letters(ctx: Context) -> list[dict[str, Any]]:
    path = Path(ctx.config.dead_letter_path)
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


class AckLedger:
    """Hands out batch tokens and checks, at the moment each token completes, that the batch's records are all
    resolved at the backend (`is_resolved(record)` -> bool). A token completing early is recorded as a
    violation; tests assert there are none and that every token completed exactly once."""

    def __init__(self, is_resolved: Callable[[dict[str, Any], dict[str, Any]], bool]) -> None:
        self.is_resolved = is_resolved
        self.acked: list[int] = []
        self.violations: list[str] = []

    def token(self, n: int, batch_ref: list[Batch]) -> AckToken:
        def on_done() -> None:
            batch = batch_ref[0]
            early = [r for r in batch.records if not self.is_resolved(batch.meta, r)]
            if early:
                self.violations.append(f"batch {n} acknowledged with {len(early)} records unresolved")
            self.acked.append(n)

        return AckToken(on_done)


def numbered_batches(ledger: AckLedger, batches: int, per_batch: int, *, source_id: str = "file:abc",
                     tag: str = "app", meta: dict[str, Any] | None = None, time_base: int = 1_714_560_000,
                     message: Callable[[int], str] = lambda i: f"line {i}") -> list[Batch]:
    """`batches` batches of `per_batch` records with offsets 0.., each with a ledger token."""
    out = []
    i = 0
    for n in range(batches):
        records = []
        for _ in range(per_batch):
            records.append({"message": message(i), "offset": i * 100,
                            "time": f"2024-05-01T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}000000Z",
                            "stream": "stdout"})
            i += 1
        ref: list[Batch] = []
        b = Batch(tag, records, {"input": "in", "path": "/var/log/app.log", "source_id": source_id,
                                 "pos_key": "offset", **(meta or {})}, ledger.token(n, ref))
        ref.append(b)
        out.append(b)
    return out


async def run_output(out: Output, batches: list[Batch]) -> None:
    """Start an output, send it the batches, wait for it to flush (bounded), stop it."""
    await out.start()
    try:
        for b in batches:
            await out.send(b)
        await asyncio.wait_for(out.flush(), 20)
    finally:
        await out.stop()
