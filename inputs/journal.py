"""`journal` input: systemd journal entries (the local journal, a directory of journal files, or named files),
checkpointed by journal cursor.

Used for units and identifiers of interest, and for the kernel transport on hosts where /dev/kmsg is not readable
by the agent: kernel-transport records get the same fields as kmsg records (message, level, facility, userspace,
mono_us from the kernel's own timestamp, SUBSYSTEM/DEVICE dictionary fields).

Reading happens in one dedicated thread (sd-journal calls block and are not asyncio-aware); `Reader.wait` with a
timeout sleeps until the journal changes, so an idle journal costs one wake-up per second, never a busy loop.
The checkpoint is the cursor of the last entry whose batch every output acknowledged; a restart seeks to it and
skips that entry. This module must never store a cursor before its batch is acknowledged, and never drop an entry
whose message is not valid UTF-8 (it is shipped with replacement characters and flagged).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from dataclasses import dataclass
from typing import Any

from logagent import metrics
from logagent.component import Context, Emit, Input
from logagent.config import Section
from logagent.record import Batch, Record
from logagent.timefmt import format_rfc3339_ns

CHECKPOINT_KEY = "journal"
IDLE_WAIT = 1.0  # seconds a read waits for new entries before returning, so stop() is noticed
DEFAULT_FIELDS = ("_PID", "_COMM", "_HOSTNAME", "_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_TRANSPORT",
                  "_KERNEL_SUBSYSTEM", "_KERNEL_DEVICE", "_UDEV_SYSNAME", "_UDEV_DEVNODE", "CONTAINER_NAME")
# Kernel dictionary lines as journald stores them -> the KEY of the /dev/kmsg dictionary line.
_KERNEL_DICT = {"_KERNEL_SUBSYSTEM": "SUBSYSTEM", "_KERNEL_DEVICE": "DEVICE"}
_TOP_LEVEL = {"_TRANSPORT": "transport", "_SYSTEMD_UNIT": "unit", "SYSLOG_IDENTIFIER": "identifier"}


@dataclass(frozen=True)
class JournalSettings:
    tag: str
    units: tuple[str, ...]
    identifiers: tuple[str, ...]
    transports: tuple[str, ...]
    directory: str | None
    files: tuple[str, ...]
    read_from: str
    fields: tuple[str, ...]  # journal fields kept (in `fields`); ("*",) keeps all
    flush_interval: float


def _text(value: Any) -> tuple[str, bool]:
    """A journal field value as text; the flag says it was not valid UTF-8."""
    if isinstance(value, list):  # a field repeated in one entry: the first one is the entry's value
        value = value[0]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), False
        except UnicodeDecodeError:
            return value.decode("utf-8", "replace"), True
    return str(value), False


def _boot_id(raw: Any) -> str | None:
    """`_BOOT_ID` (32 hex digits) in the dashed form of /proc/sys/kernel/random/boot_id, as kmsg records have."""
    if raw is None:
        return None
    h, _ = _text(raw)
    if len(h) == 32:
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return h


def to_record(entry: dict[str, Any], realtime_us: int, mono_us: int, cursor: str,
              keep: tuple[str, ...]) -> Record:
    """One journal entry (raw `bytes` values) as a shipped record."""
    message, bad_utf8 = _text(entry.get("MESSAGE", b""))
    ts = realtime_us * 1000
    rec: Record = {"message": message, "time": format_rfc3339_ns(ts), "time_ns": ts, "cursor": cursor}
    prio = entry.get("PRIORITY")
    if prio is not None:
        try:
            rec["level"] = int(_text(prio)[0]) & 7
        except ValueError:
            pass
    facility: int | None = None
    fac = entry.get("SYSLOG_FACILITY")
    if fac is not None:
        try:
            facility = int(_text(fac)[0])
            rec["facility"] = facility
        except ValueError:
            pass
    transport = _text(entry["_TRANSPORT"])[0] if "_TRANSPORT" in entry else None
    # As for /dev/kmsg: a kernel-transport line with a facility other than kern was written by a process.
    rec["userspace"] = transport != "kernel" or bool(facility)
    source_mono = entry.get("_SOURCE_MONOTONIC_TIMESTAMP")
    if transport == "kernel" and source_mono is not None:
        try:
            mono_us = int(_text(source_mono)[0])  # the kernel's own timestamp, as in the kmsg header
        except ValueError:
            pass
    rec["mono_us"] = mono_us
    boot = _boot_id(entry.get("_BOOT_ID"))
    if boot is not None:
        rec["boot_id"] = boot
    for field, name in _TOP_LEVEL.items():
        if field in entry:
            rec[name] = _text(entry[field])[0]
    fields: dict[str, str] = {}
    names = entry.keys() if keep == ("*",) else [k for k in keep if k in entry]
    for k in names:
        if k == "MESSAGE" or k in _TOP_LEVEL:
            continue
        fields[_KERNEL_DICT.get(k, k) if transport == "kernel" else k] = _text(entry[k])[0]
    if fields:
        rec["fields"] = fields
    if bad_utf8:
        rec["flags"] = ["invalid_utf8"]
    return rec


class JournalInput(Input[JournalSettings]):
    settings: JournalSettings

    @classmethod
    def parse_settings(cls, section: Section) -> JournalSettings:
        s = JournalSettings(
            tag=section.str("tag", "journal"),
            units=tuple(section.str_list("units", [])),
            identifiers=tuple(section.str_list("identifiers", [])),
            transports=tuple(section.str_list("transports", [])),
            directory=section.str("directory", None),
            files=tuple(section.str_list("files", [])),
            read_from=section.str("read_from", "head", choices=("head", "tail")),
            fields=tuple(section.str_list("fields", list(DEFAULT_FIELDS))),
            flush_interval=section.duration("flush_interval", 0.2),
        )
        if s.directory and s.files:
            raise section.error("give either directory or files, not both", "files")
        section.done()
        return s

    def __init__(self, name: str, settings: JournalSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self._stopping = False
        self.opened = False  # the reader is positioned (for tests and status): entries written now will be read
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"journal-{name}")

    async def stop(self) -> None:
        self._stopping = True

    # -- the reader thread ----------------------------------------------------------------------------------------
    def _open(self, cursor: str | None) -> Any:
        from systemd import journal

        s = self.settings
        if s.directory:
            reader = journal.Reader(path=s.directory)
        elif s.files:
            reader = journal.Reader(files=list(s.files))
        else:
            reader = journal.Reader()
        # Alternatives: an entry is read when it matches any listed unit, identifier or transport. Values of one
        # field are OR-ed by sd-journal; the disjunction between the groups makes the groups alternatives too.
        groups = [("_SYSTEMD_UNIT", s.units), ("SYSLOG_IDENTIFIER", s.identifiers), ("_TRANSPORT", s.transports)]
        first = True
        for field, values in groups:
            if not values:
                continue
            if not first:
                reader.add_disjunction()
            for v in values:
                reader.add_match(**{field: v})
            first = False
        if cursor is not None:
            reader.seek_cursor(cursor)
            if reader._next():
                if not reader.test_cursor(cursor):
                    # The acknowledged entry is gone (vacuumed); we landed on the first entry after it: keep it.
                    reader._previous()
            self.log.info("resuming journal", extra={"cursor": cursor})
        elif s.read_from == "tail":
            reader.seek_tail()
            reader._previous()
        else:
            reader.seek_head()
        return reader

    def _read(self, reader: Any, max_records: int, max_bytes: int) -> tuple[list[Record], int, str | None]:
        """Entries available now (waiting up to the flush interval for more once one arrived)."""
        records: list[Record] = []
        nbytes = 0
        cursor: str | None = None
        keep = self.settings.fields
        first_at = 0.0
        # sd-journal's raw accessors: the Python converters would build datetime/UUID objects we turn back.
        next_entry, get_all = reader._next, reader._get_all
        while len(records) < max_records and nbytes < max_bytes and not self._stopping:
            if not next_entry():
                if not records:
                    reader.wait(IDLE_WAIT)
                    if not next_entry():
                        return records, nbytes, cursor
                else:
                    left = self.settings.flush_interval - (time.monotonic() - first_at)
                    if left <= 0 or reader.wait(left) == 0 or not next_entry():
                        return records, nbytes, cursor
            entry = get_all()
            cursor = reader._get_cursor()
            mono = reader._get_monotonic()
            rec = to_record(entry, reader._get_realtime(), int(mono[0]), cursor, keep)
            if not records:
                first_at = time.monotonic()
            records.append(rec)
            nbytes += len(rec["message"])
        return records, nbytes, cursor

    # -- the input ------------------------------------------------------------------------------------------------
    def _source_id(self) -> str:
        s = self.settings
        if s.directory:
            return f"journal:{os.path.abspath(s.directory)}"
        if s.files:
            return f"journal:{os.path.abspath(s.files[0])}"
        try:
            with open("/etc/machine-id", encoding="ascii") as f:
                return f"journal:{f.read().strip()}"
        except OSError:
            return "journal:local"

    async def run(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        tracker = self.ctx.checkpoints.tracker(self.name)
        saved = tracker.committed.get(CHECKPOINT_KEY)
        limits = self.ctx.config.limits
        try:
            reader = await loop.run_in_executor(self._thread, self._open, saved if isinstance(saved, str) else None)
        except Exception as e:
            metrics.ERRORS.labels(component=self.name, kind="open_failed").inc()
            self.log.error("cannot open the journal", extra={"error": str(e)})
            self._thread.shutdown(wait=False)
            raise
        self.opened = True
        meta = {"input": self.name, "source": "journal", "source_id": self._source_id(), "pos_key": "cursor"}
        flagged = metrics.FLAGGED.labels(component=self.name, flag="invalid_utf8")
        try:
            while not self._stopping:
                records, nbytes, cursor = await loop.run_in_executor(
                    self._thread, self._read, reader, limits.batch_max_records, limits.batch_max_bytes)
                if not records:
                    continue
                bad = sum(1 for r in records if "flags" in r)
                if bad:
                    flagged.inc(bad)
                await emit(Batch(self.settings.tag, records, meta, tracker.token(CHECKPOINT_KEY, cursor), nbytes))
        finally:
            await loop.run_in_executor(self._thread, reader.close)
            self._thread.shutdown(wait=False)
