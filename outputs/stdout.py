"""`stdout` output: JSON lines on standard output, for debugging and for the embedded default config."""

from __future__ import annotations

import sys

from logagent import metrics
from logagent.component import Output
from logagent.config import Section
from logagent.outputs.jsonlines import JsonLinesSettings, encode_batch, parse_common
from logagent.record import Batch


class StdoutOutput(Output):
    type_name = "stdout"
    settings: JsonLinesSettings

    @classmethod
    def parse_settings(cls, section: Section) -> JsonLinesSettings:
        return parse_common(section, need_path=False)

    async def send(self, batch: Batch) -> None:
        data = encode_batch(batch)
        out = sys.stdout.buffer
        out.write(data)
        out.flush()
        metrics.RECORDS_OUT.labels(output=self.name).inc(len(batch.records))
        metrics.BYTES_OUT.labels(output=self.name).inc(len(data))
        batch.ack.done()
