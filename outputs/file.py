"""`file` output: JSON lines appended to a file, fsync'd before the batch is acknowledged.

Writes go through a worker thread so a slow disk does not stall the event loop.
"""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

from logagent import metrics
from logagent.component import Output
from logagent.config import Section
from logagent.outputs.jsonlines import JsonLinesSettings, encode_batch, parse_common
from logagent.record import Batch


class FileOutput(Output):
    type_name = "file"
    settings: JsonLinesSettings

    @classmethod
    def parse_settings(cls, section: Section) -> JsonLinesSettings:
        return parse_common(section, need_path=True)

    async def start(self) -> None:
        assert self.settings.path is not None
        os.makedirs(os.path.dirname(os.path.abspath(self.settings.path)), exist_ok=True)
        self._fh: BinaryIO = open(self.settings.path, "ab")
        self._records = metrics.RECORDS_OUT.labels(output=self.name)
        self._bytes = metrics.BYTES_OUT.labels(output=self.name)

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._fh.flush()
        if self.settings.fsync:
            os.fsync(self._fh.fileno())

    async def send(self, batch: Batch) -> None:
        data = encode_batch(batch)
        await asyncio.to_thread(self._write, data)
        self._records.inc(len(batch.records))
        self._bytes.inc(len(data))
        batch.ack.done()

    async def stop(self) -> None:
        self._fh.close()
