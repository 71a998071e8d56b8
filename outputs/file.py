"""`file` output: JSON lines appended to a file, fsync'd (unless `fsync: false`) before the batch is acknowledged.

The file is written through aiofiles (a worker thread per call), so a slow disk does not stall the event loop, and
the write of one batch overlaps the parsing of the next.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiofiles

from logagent import metrics
from logagent.component import Output
from logagent.config import Section
from logagent.outputs.jsonlines import JsonLinesSettings, encode_batch, parse_common
from logagent.record import Batch


class FileOutput(Output[JsonLinesSettings]):
    settings: JsonLinesSettings

    @classmethod
    def parse_settings(cls, section: Section) -> JsonLinesSettings:
        return parse_common(section, need_path=True)

    async def start(self) -> None:
        assert self.settings.path is not None
        os.makedirs(os.path.dirname(os.path.abspath(self.settings.path)), exist_ok=True)
        self._fh: Any = await aiofiles.open(self.settings.path, "ab")
        self._records = metrics.RECORDS_OUT.labels(output=self.name)
        self._bytes = metrics.BYTES_OUT.labels(output=self.name)

    async def send(self, batch: Batch) -> None:
        data = encode_batch(batch)
        await self._fh.write(data)
        await self._fh.flush()
        if self.settings.fsync:
            await asyncio.to_thread(os.fsync, self._fh.fileno())
        self._records.inc(len(batch.records))
        self._bytes.inc(len(data))
        batch.ack.done()

    async def stop(self) -> None:
        await self._fh.close()
