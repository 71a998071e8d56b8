"""`stdout` output: JSON lines on standard output, for debugging and for the embedded default config.

`StreamOutput` is what every stdout writer shares (this output and `sidecar`): the write goes through a thread, so
a reader slow to drain the pipe blocks the write and not the event loop, and a batch is acknowledged only after its
bytes were written and flushed. When stdout is gone (EPIPE: `logagent run | head`, or a runtime that closed the
pipe) nothing more is acknowledged and the agent stops: the next run reads those records again. It must never
drop a batch and acknowledge it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import BinaryIO, TypeVar

from logagent import metrics
from logagent.component import Context, Output
from logagent.config import Section
from logagent.outputs.jsonlines import JsonLinesSettings, encode_batch, parse_common
from logagent.record import Batch

_S = TypeVar("_S")  # the settings of the concrete output


class StreamOutput(Output[_S]):
    """Writes `encode(batch)` to a byte stream (stdout by default) and acknowledges after the flush."""

    def __init__(self, name: str, settings: _S, ctx: Context, stream: BinaryIO | None = None) -> None:
        super().__init__(name, settings, ctx)
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.broken: str | None = None  # why the stream cannot be written any more
        self._records = metrics.RECORDS_OUT.labels(output=name)
        self._bytes = metrics.BYTES_OUT.labels(output=name)

    def encode(self, batch: Batch) -> bytes:
        raise NotImplementedError

    def _write(self, data: bytes) -> None:
        self.stream.write(data)
        self.stream.flush()

    async def send(self, batch: Batch) -> None:
        if self.broken is not None:
            return  # not acknowledged: the position stays, the next run reads it again
        data = self.encode(batch)
        try:
            await asyncio.to_thread(self._write, data)
        except (OSError, ValueError) as e:  # EPIPE, EBADF; ValueError: the stream was closed
            self.broken = f"{type(e).__name__}: {e}"
            metrics.ERRORS.labels(component=self.name, kind="stdout_closed").inc()
            self.log.error("stdout cannot be written; stopping without acknowledging", extra={"error": self.broken})
            stop = self.ctx.services.stop_agent
            if stop is not None:
                stop()
            else:
                os.kill(os.getpid(), signal.SIGTERM)
            return
        self._records.inc(len(batch.records))
        self._bytes.inc(len(data))
        batch.ack.done()

    def ready(self) -> bool:
        return self.broken is None


class StdoutOutput(StreamOutput[JsonLinesSettings]):

    @classmethod
    def parse_settings(cls, section: Section) -> JsonLinesSettings:
        return parse_common(section, need_path=False)

    def encode(self, batch: Batch) -> bytes:
        return encode_batch(batch)
