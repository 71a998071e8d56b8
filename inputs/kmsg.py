"""`kmsg` input: the kernel log ring buffer, read from `/dev/kmsg`, checkpointed by boot id and sequence number.

Each non-blocking `read()` of /dev/kmsg returns exactly one record (the buffer must hold the largest record, so it
is at least 8 KiB). `EPIPE` means the kernel overwrote records this reader had not read yet; the reader then
continues with the oldest record still there, and the gap in sequence numbers is what was lost: it is counted in
`logagent_kmsg_lost_records_total` and reading goes on.

The checkpoint is `{"boot_id", "seq"}` of the last record whose batch every output acknowledged. On restart in the
same boot the buffer is read from its start and records up to that seq are skipped (the device cannot seek to a
sequence number); a record overwritten while the agent was down is counted as lost. A different boot id means a
reboot: the new boot's buffer is read from its beginning. `read_from` only decides the very first start.

Record decoding (header, `\\xNN` escapes, dictionary lines, `c`/`+` fragments) is `logagent.inputs.kmsgformat`;
this module adds wall-clock time, batching, gap counting and positions. It must never checkpoint a sequence number
whose record has not been acknowledged, and never drop a malformed record silently (it is shipped flagged).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from logagent import metrics
from logagent.component import Context, Emit, Input
from logagent.config import Section
from logagent.inputs.kmsgformat import FragmentJoiner, KmsgFormatError, KmsgRecord, parse_record
from logagent.parsers.timestamps import NS_MAX, TIME_OUT_OF_RANGE
from logagent.record import Batch, Record
from logagent.timefmt import format_rfc3339_ns

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
CHECKPOINT_KEY = "kmsg"
# The kernel refuses a read() whose buffer cannot hold the whole record (EINVAL); records are at most ~8 KiB
# of text plus dictionary lines.
MIN_READ_BUFFER = 8192


_U64_MAX = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1


def boot_epoch_ns() -> int:
    """Wall-clock time of boot, as the kernel's monotonic clock counts it (kmsg timestamps use that clock)."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


class SequenceGaps:
    """Counts records missing from a stream of kmsg sequence numbers (overwritten before they were read).

    `last` is the highest sequence number seen; `observe` takes the seqs of one read burst, in order.
    """

    def __init__(self, last: int | None = None) -> None:
        self.last = last
        self.lost = 0

    def observe(self, seqs: list[int]) -> int:
        """Records missing before and between `seqs`; adds them to `lost` and returns them."""
        if not seqs:
            return 0
        prev = self.last
        missing = 0
        if prev is None:
            prev = seqs[0] - 1
        # A burst without gaps spans exactly len(seqs) numbers: check that once instead of walking every pair.
        if seqs[-1] - prev != len(seqs):
            for seq in seqs:
                if seq > prev + 1:
                    missing += seq - prev - 1
                prev = max(prev, seq)
        self.last = max(seqs[-1], self.last if self.last is not None else seqs[-1])
        self.lost += missing
        return missing


class KmsgDecoder:
    """Raw records -> shipped record dicts: parse, skip already-acknowledged seqs, count gaps, join fragments.

    Used by the live input and by tests over captures; it does no I/O.
    """

    def __init__(self, skip_through: int | None = None, last_seen: int | None = None) -> None:
        self.skip_through = skip_through
        self.gaps = SequenceGaps(last_seen)
        self.joiner = FragmentJoiner()
        self.malformed = 0

    def decode(self, raws: Iterable[bytes], boot_ns: int) -> tuple[list[Record], int]:
        """Records finished by this burst and the number of records found missing in it."""
        parsed: list[KmsgRecord] = []
        bad: list[Record] = []
        for raw in raws:
            try:
                rec = parse_record(raw)
            except KmsgFormatError:
                bad.append({"message": raw.decode("utf-8", "replace").rstrip("\n"), "flags": ["unparsed"]})
                continue
            if rec.seq > _U64_MAX or rec.prio > _U32_MAX:
                # The kernel's seq is a u64: a larger one is not a kernel record (a test device, a corrupted
                # buffer). Shipped raw and flagged, kept out of positions and gap counting. (A usec beyond 64 bits
                # is clamped by `to_records`, flagged time_out_of_range.)
                bad.append({"message": raw.decode("utf-8", "replace").rstrip("\n"), "flags": ["unparsed"],
                            "error": "seq beyond 64 bits or prio beyond 32"})
                continue
            parsed.append(rec)
        if bad:
            self.malformed += len(bad)
        skip = self.skip_through
        if skip is not None and parsed and parsed[0].seq <= skip:
            parsed = [r for r in parsed if r.seq > skip]
        lost = self.gaps.observe([r.seq for r in parsed])
        finished: list[KmsgRecord] = []
        feed = self.joiner.feed
        for rec in parsed:
            finished.extend(feed(rec))
        out = to_records(finished, boot_ns)
        out.extend(bad)
        return out, lost

    def flush(self, boot_ns: int) -> list[Record]:
        """Release a `c` fragment whose continuation never came (the buffer went quiet)."""
        return to_records(list(self.joiner.flush()), boot_ns)


def to_records(recs: list[KmsgRecord], boot_ns: int) -> list[Record]:
    out: list[Record] = []
    append = out.append
    for r in recs:
        ts = boot_ns + r.usec * 1000
        clamped = ts > NS_MAX  # ~292 years of uptime: only an absurd usec gets here
        if clamped:
            ts = NS_MAX
        rec: Record = {
            "message": r.message,
            "time": format_rfc3339_ns(ts),
            "time_ns": ts,
            "level": r.prio & 7,
            "facility": r.prio >> 3,
            "userspace": r.prio >= 8,
            "seq": r.seq,
            "mono_us": r.usec,
        }
        if r.fields:
            rec["fields"] = r.fields
        if len(r.seqs) > 1:
            rec["last_seq"] = r.seqs[-1]
        if clamped:
            rec["flags"] = [TIME_OUT_OF_RANGE]
            rec["mono_us"] = min(r.usec, _U64_MAX)
        append(rec)
    return out


def last_position(records: list[Record]) -> int | None:
    for rec in reversed(records):
        seq = rec.get("last_seq", rec.get("seq"))
        if seq is not None:
            return int(seq)
    return None


@dataclass(frozen=True)
class KmsgSettings:
    path: str
    tag: str
    read_from: str
    flush_interval: float
    read_buffer: int
    boot_id_path: str


class KmsgInput(Input[KmsgSettings]):
    settings: KmsgSettings

    @classmethod
    def parse_settings(cls, section: Section) -> KmsgSettings:
        s = KmsgSettings(
            path=section.str("path", "/dev/kmsg"),
            tag=section.str("tag", "kernel"),
            read_from=section.str("read_from", "head", choices=("head", "tail")),
            flush_interval=section.duration("flush_interval", 0.2),
            read_buffer=section.size("read_buffer", 16384),
            boot_id_path=section.str("boot_id_path", BOOT_ID_PATH),
        )
        if s.read_buffer < MIN_READ_BUFFER:
            raise section.error(f"must be at least {MIN_READ_BUFFER} bytes (one whole kernel record)", "read_buffer")
        section.done()
        return s

    def __init__(self, name: str, settings: KmsgSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self._stopping = False
        self._wake: asyncio.Future[None] | None = None
        self.opened = False  # positioned in the buffer (for tests and status): records written now will be read
        self.lost = 0

    async def stop(self) -> None:
        self._stopping = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # -- reading ------------------------------------------------------------------------------------------------
    def _open(self) -> tuple[int, KmsgDecoder, str]:
        s = self.settings
        boot_id = read_boot_id(s.boot_id_path)
        saved = self.ctx.checkpoints.tracker(self.name).committed.get(CHECKPOINT_KEY)
        fd = os.open(s.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if isinstance(saved, dict) and saved.get("boot_id") == boot_id and isinstance(saved.get("seq"), int):
            # Same boot: read from the buffer's start and skip what was acknowledged. A first record above
            # seq + 1 means records were overwritten while we were down: the gap counter reports them.
            decoder = KmsgDecoder(skip_through=saved["seq"], last_seen=saved["seq"])
            self.log.info("resuming kernel log", extra={"boot_id": boot_id, "after_seq": saved["seq"]})
        elif saved:
            decoder = KmsgDecoder()
            self.log.info("new boot: reading its kernel log from the start",
                          extra={"boot_id": boot_id, "previous_boot_id": saved.get("boot_id")})
        else:
            decoder = KmsgDecoder()
            if s.read_from == "tail":
                os.lseek(fd, 0, os.SEEK_END)
        return fd, decoder, boot_id

    def _read_burst(self, fd: int, limit: int) -> tuple[list[bytes], bool]:
        """Up to `limit` raw records; the flag says the buffer is drained (the next read would block)."""
        raws: list[bytes] = []
        size = self.settings.read_buffer
        read = os.read
        while len(raws) < limit:
            try:
                raws.append(read(fd, size))
            except BlockingIOError:
                return raws, True
            except BrokenPipeError:
                # Records were overwritten; the next read returns the oldest one still in the buffer, and the
                # sequence gap says how many were lost.
                continue
            except InterruptedError:
                continue
        return raws, False

    async def _wait_readable(self, fd: int, timeout: float | None) -> bool:
        """Wait until the device has a record, `stop()` is called, or `timeout` passes (then False)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._wake = fut

        def readable() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
            self._wake = None

    async def run(self, emit: Emit) -> None:
        s = self.settings
        limits = self.ctx.config.limits
        tracker = self.ctx.checkpoints.tracker(self.name)
        try:
            fd, decoder, boot_id = self._open()
        except OSError as e:
            metrics.ERRORS.labels(component=self.name, kind="open_failed").inc()
            self.log.error("cannot read the kernel log", extra={"path": s.path, "error": str(e)})
            raise
        self.opened = True
        meta = {"input": self.name, "source": "kmsg", "boot_id": boot_id, "source_id": f"kmsg:{boot_id}",
                "pos_key": "seq"}
        lost_metric = metrics.KMSG_LOST.labels(input=self.name)
        flagged = metrics.FLAGGED.labels(component=self.name, flag="unparsed")
        loop = asyncio.get_running_loop()
        pending: list[Record] = []
        pending_bytes = 0
        first_pending_at = 0.0
        last_data_at = 0.0
        position = tracker.committed.get(CHECKPOINT_KEY)

        async def cut() -> None:
            nonlocal pending, pending_bytes
            if not pending:
                return
            nonlocal position
            seq = last_position(pending)
            if seq is not None:
                position = {"boot_id": boot_id, "seq": seq}
            # A batch of unparsed records only re-states the previous position: tokens commit in order, so it
            # can never move the checkpoint backwards.
            token = tracker.token(CHECKPOINT_KEY, position)
            batch = Batch(s.tag, pending, meta, token, pending_bytes)
            pending, pending_bytes = [], 0
            await emit(batch)

        try:
            while not self._stopping:
                room = max(1, limits.batch_max_records - len(pending))
                raws, drained = self._read_burst(fd, room)
                if raws:
                    last_data_at = loop.time()
                    malformed_before = decoder.malformed
                    records, lost = decoder.decode(raws, boot_epoch_ns())
                    if lost:
                        self.lost += lost
                        lost_metric.inc(lost)
                        self.log.warning("kernel log records were overwritten before they were read",
                                         extra={"lost": lost, "boot_id": boot_id})
                    if decoder.malformed != malformed_before:
                        flagged.inc(decoder.malformed - malformed_before)
                    if records:
                        if not pending:
                            first_pending_at = loop.time()
                        pending.extend(records)
                        pending_bytes += sum(map(len, raws))
                if len(pending) >= limits.batch_max_records or pending_bytes >= limits.batch_max_bytes:
                    await cut()
                    continue
                if not drained:
                    continue
                now = loop.time()
                if pending:
                    deadline: float | None = first_pending_at + s.flush_interval
                elif decoder.joiner.pending is not None:
                    deadline = last_data_at + s.flush_interval
                else:
                    deadline = None
                if deadline is None:
                    await self._wait_readable(fd, None)
                    continue
                if now < deadline and await self._wait_readable(fd, deadline - now):
                    continue
                if self._stopping:
                    break
                if decoder.joiner.pending is not None and loop.time() - last_data_at >= s.flush_interval:
                    # Quiet for a whole flush interval: the fragment's continuation is not coming.
                    pending.extend(decoder.flush(boot_epoch_ns()))
                await cut()
            # Stopping: ship what was read. A fragment still waiting for its continuation stays unshipped and
            # unacknowledged, so the next start reads it again.
            await cut()
        finally:
            os.close(fd)
