"""A paced input for the flow-control test and benchmark: `sources` container files written at `rate` lines/s in
total, each source emitting `per_batch` lines at a time (a tailer reading a file a few lines after each write),
every record stamped (`t`) with the time its line was written."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from logagent.component import Input
from logagent.config import Section
from logagent.record import Batch


@dataclass(frozen=True)
class PacedSettings:
    sources: int
    rate: int
    seconds: float
    per_batch: int


class PacedInput(Input):
    written = 0
    stopped_at = 0.0

    @classmethod
    def parse_settings(cls, section: Section) -> PacedSettings:
        s = PacedSettings(section.int("sources"), section.int("rate"), section.duration("seconds"),
                          section.int("per_batch", 5))
        section.done()
        return s

    async def run(self, emit: Any) -> None:
        """The writers keep their schedule whatever the pipeline does: each source writes per_batch lines
        every `period` seconds (sources spread over the period); each wakeup emits, per source, every line written
        and not yet emitted (a tailer reading what is new), each stamped with the time it was written."""
        self._stop = asyncio.Event()
        s = self.settings
        tracker = self.ctx.checkpoints.tracker(self.name)
        per_batch = s.per_batch
        period = per_batch * s.sources / s.rate
        t0 = time.monotonic()
        emitted = [0] * s.sources  # writes (of per_batch lines) of each source already emitted
        total_writes = int(s.seconds / period)
        while not self._stop.is_set():
            now = time.monotonic()
            for src in range(s.sources):
                phase = period * src / s.sources
                due = min(total_writes, int((now - t0 - phase) / period) + 1 if now - t0 >= phase else 0)
                if due <= emitted[src]:
                    continue
                records = [{"message": f"s{src} l{w * per_batch + k}", "offset": (w * per_batch + k) * 100,
                            "t": t0 + phase + w * period}
                           for w in range(emitted[src], due) for k in range(per_batch)]
                emitted[src] = due
                await emit(Batch(f"node.{src}", records,
                                 {"input": self.name, "source_id": f"f{src}", "pos_key": "offset"},
                                 tracker.token(f"f{src}", {"offset": due * per_batch * 100}), 100 * len(records)))
            if min(emitted) >= total_writes:
                break
            await asyncio.sleep(max(0.0, period / 10 - (time.monotonic() - now)))  # the tailer's next look
        PacedInput.written = sum(emitted) * per_batch
        PacedInput.stopped_at = t0 + total_writes * period
        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()
