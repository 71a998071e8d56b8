"""`DeliveryOutput`: the `Output` every HTTP backend is (a codec plus the `Delivery` engine).

Before a batch is encoded, its records whose timestamp was out of range (flagged `time_out_of_range` by the parser,
which clamped `time_ns` so nothing downstream raises) are dead-lettered with reason `time_out_of_range`, the record
kept as read (its `message` and the runtime's `time` string untouched): no backend stores a clamped, false time,
and every other record of the batch ships. A batch
whose input counted no flagged record (`Batch.flagged == 0`) is not looked through.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from logagent import metrics
from logagent.component import Output
from logagent.delivery.codec import Codec, Item
from logagent.delivery.engine import Delivery
from logagent.parsers.timestamps import TIME_OUT_OF_RANGE
from logagent.record import Batch, noop_token

_Settings = TypeVar("_Settings")  # an output's settings dataclass


class DeliveryOutput(Output[_Settings], Generic[_Settings, Item]):
    """The output side every HTTP backend shares: a codec turns a batch into keyed parts (`codec.parts(batch)`
    -> [(key, items, nbytes)]), and the `Delivery` engine ships, retries, dead-letters and acknowledges them.
    A backend's module only builds `self.codec` and `self.delivery` in its `__init__`."""

    codec: Codec[Item]
    delivery: Delivery[Item]

    async def start(self) -> None:
        await self.delivery.start()

    async def send(self, batch: Batch) -> None:
        if batch.flagged != 0:
            kept = await self._set_aside_out_of_range(batch)
            if kept is None:
                batch.ack.done()  # every record was dead-lettered (written before this acknowledgement)
                return
            batch = kept
        try:
            parts = self.codec.parts(batch)
        except Exception as e:
            parts = await self._isolate(batch, e)
        await self.delivery.submit(batch.ack, parts)

    async def _set_aside_out_of_range(self, batch: Batch) -> Batch | None:
        """Dead-letter the records flagged `time_out_of_range`; the batch of the others (None: none left)."""
        records = batch.records
        bad = [i for i, r in enumerate(records) if "flags" in r and TIME_OUT_OF_RANGE in r["flags"]]
        if not bad:
            return batch
        dead = Batch(batch.tag, [records[i] for i in bad], batch.meta)
        self.log.warning("record with a timestamp out of range; dead-lettered, the rest of its batch is shipped",
                         extra={"output": self.name, "records": len(bad)})
        await asyncio.to_thread(self.ctx.dead_letter.write, self.name, TIME_OUT_OF_RANGE, list(dead.shipped()))
        if len(bad) == len(records):
            return None
        skip = set(bad)
        kept = [r for i, r in enumerate(records) if i not in skip]
        nbytes = batch.nbytes * len(kept) // len(records)
        flagged = None if batch.flagged is None else max(0, batch.flagged - len(bad))
        return Batch(batch.tag, kept, batch.meta, batch.ack, nbytes, flagged)

    async def _isolate(self, batch: Batch, error: Exception) -> list[tuple[str, list[Item], int]]:
        """A batch the codec cannot turn into items holds records it cannot encode (e.g. an integer beyond 64
        bits): halve it until those records stand alone, dead-letter each with the error, ship the rest.
        Costs log2(batch) extra `parts` calls per bad record, and nothing on good batches."""
        metrics.ERRORS.labels(component=self.name, kind="encode").inc()
        merged: dict[str, tuple[list[Item], list[int]]] = {}
        bad: list[tuple[int, str]] = []
        stack = [(0, len(batch.records), error)]
        while stack:
            lo, hi, err = stack.pop()
            if hi - lo == 1:
                bad.append((lo, f"encode_error: {type(err).__name__}: {err}"))
                continue
            for a, b in ((lo + (hi - lo) // 2, hi), (lo, lo + (hi - lo) // 2)):  # first half popped first
                part = Batch(batch.tag, batch.records[a:b], batch.meta, noop_token(),
                             batch.nbytes * (b - a) // max(1, len(batch.records)))
                try:
                    got = self.codec.parts(part)
                except Exception as e:
                    stack.append((a, b, e))
                    continue
                for key, items, nbytes in got:
                    entry = merged.setdefault(key, ([], [0]))
                    entry[0].extend(items)
                    entry[1][0] += nbytes
        if bad:
            shipped = list(batch.shipped())
            by_reason: dict[str, list[dict[str, Any]]] = {}
            for i, reason in sorted(bad):
                by_reason.setdefault(reason, []).append(shipped[i])
            for reason, records in by_reason.items():
                self.log.error("record cannot be encoded; dead-lettered, the rest of its batch is shipped",
                               extra={"output": self.name, "records": len(records), "error": reason[:300]})
                await asyncio.to_thread(self.ctx.dead_letter.write, self.name, reason, records)
        return [(key, items, n[0]) for key, (items, n) in merged.items()]

    async def flush(self) -> None:
        await self.delivery.flush()

    def cut(self) -> None:
        self.delivery.cut()

    async def stop(self) -> None:
        await self.delivery.stop()

    def ready(self) -> bool:
        return self.delivery.ready()
