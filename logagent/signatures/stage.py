"""`signatures` stage: kernel records in, the same records out, plus one event per kernel problem incident.

Kernel batches (tags `kernel_tags`, from the kmsg and journal inputs) pass on unchanged; their messages go through
the rules and the incident assembler (`incidents.py`), and every closed incident becomes one record of a derived
batch (tag `tag`, default `events.kernel`, no-op ack token: the kernel batch carries the position). Container-log
batches (tags `container_tags`) pass on unchanged too; the stage only remembers their last lines per container
(`attribution.ContainerTails`) so that an OOM kill in a Kubernetes container can carry the pod's metadata and the
last lines that container wrote.

An incident stays open while more of its report may come. It is emitted when the next batch shows it is over,
or by the stage's timer (started in `start()`) once nothing arrived for it for its group window. The timer hands
such events to `ctx.services.inject` (an `async (Batch) -> None` the pipeline offers for batches made
outside `process`) when there is one, and otherwise keeps them for the next `process` call.

Permanent signatures (read-only remount, XFS shutdown, GPU off the bus) set a node condition, kept in
`ctx.services.kernel_conditions` and the `logagent_kernel_node_condition` gauge for the life of the process
(the problem lasts until the node is repaired, usually by a reboot, which restarts the agent).

Only the kernel raises incidents. A record is kernel-originated when the kmsg input read it with facility 0 or the
journal input with `_TRANSPORT=kernel` and facility 0 (their `userspace: false`, in a batch whose `meta["source"]`
the input set to `kmsg` / `journal`). Anything else — `echo "<11>..." > /dev/kmsg`, `logger`, a file tagged
`kernel` — is *injected*, and `injected` decides what it does: `ignore` (default: shipped as it is, with
`userspace: true`, but never classified; a match is counted as `userspace_signature_ignored` and logged once per
signature), `report` (incidents flagged `injected: true`, shipped, but never a node condition nor handed to
`node_problems`: fault-injection drills) or
`trust` (as the kernel's, conditions included, still flagged: test nodes only).

This stage must never hold, change or drop the batches it is given, and never wait for anything.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from logagent import metrics
from logagent.component import Context, Stage
from logagent.config import Section
from logagent.record import Batch, Record, noop_token
from logagent.signatures.attribution import ContainerTails, attribute, parse_memcg, victim_memcg
from logagent.signatures.incidents import Incident, IncidentAssembler
from logagent.signatures.rules import RulesError, RuleSet, load_rules

INJECTED_MODES = ("ignore", "report", "trust")
KERNEL_SOURCES = frozenset({"kmsg", "journal"})  # the inputs that tell a record's origin (`userspace`)
IGNORED_FLAG = "userspace_signature_ignored"
# Fields that say which device a permanent condition is about (one condition per device).
_DEVICE_FIELDS = ("device", "pci", "bus_id", "interface")


@dataclass(frozen=True)
class SignatureSettings:
    rules_files: tuple[str, ...]
    disable: tuple[str, ...]
    tag: str
    kernel_tags: tuple[str, ...]
    container_tags: tuple[str, ...]
    last_lines: int
    tail_max_containers: int
    tail_max_bytes: int
    tail_max_line_bytes: int
    max_report_lines: int
    max_report_records: int
    context_gap: int
    flush_interval: float
    injected: str
    rules: RuleSet = field(compare=False, repr=False)


class SignatureDetector(Stage[SignatureSettings]):
    settings: SignatureSettings

    @classmethod
    def parse_settings(cls, section: Section) -> SignatureSettings:
        rules_files = tuple(section.str_list("rules_files", []))
        disable = tuple(section.str_list("disable", []))
        try:
            rules = load_rules(rules_files)
        except RulesError as e:
            raise section.error(str(e), "rules_files") from None
        unknown = sorted(set(disable) - {r.name for r in rules.rules})
        if unknown:
            # A misspelt name would leave the rule silently enabled.
            raise section.error(f"no rule named {', '.join(map(repr, unknown))} (rule names are in "
                                f"conf/signatures/kernel.yaml and the rules_files)", "disable")
        rules = rules.without(disable)
        s = SignatureSettings(
            rules_files=rules_files,
            disable=disable,
            tag=section.str("tag", "events.kernel"),
            kernel_tags=tuple(section.str_list("kernel_tags", ["kernel*", "journal*"])),
            container_tags=tuple(section.str_list("container_tags", ["kube*"])),
            last_lines=section.int("last_lines", 20, min=0, max=10000),
            tail_max_containers=section.int("tail_max_containers", 1000, min=1),
            tail_max_bytes=section.size("tail_max_bytes", 4 << 20),
            tail_max_line_bytes=section.size("tail_max_line_bytes", 2048),
            max_report_lines=section.int("max_report_lines", 200, min=1),
            max_report_records=section.int("max_report_records", 5000, min=1),
            context_gap=section.int("context_gap", 50, min=0),
            flush_interval=section.duration("flush_interval", 1.0),
            injected=section.str("injected", "ignore", choices=INJECTED_MODES),
            rules=rules,
        )
        if s.flush_interval <= 0:
            raise section.error("must be more than 0", "flush_interval")
        section.done()
        return s

    def __init__(self, name: str, settings: SignatureSettings, ctx: Context) -> None:
        super().__init__(name, settings, ctx)
        self.assembler = IncidentAssembler(settings.rules, max_lines=settings.max_report_lines,
                                           max_records=settings.max_report_records, context_gap=settings.context_gap)
        self.tails = ContainerTails(settings.last_lines, settings.tail_max_containers, settings.tail_max_bytes,
                                    settings.tail_max_line_bytes) if settings.last_lines > 0 else None
        self.conditions = ctx.services.kernel_conditions
        self._kinds: dict[str, str | None] = {}
        self._held: list[Incident] = []  # expired by the timer with no inject hook: emitted with the next batch
        self._timer: asyncio.Task[None] | None = None
        self._counters: dict[tuple[str, str], Any] = {}
        self._ignored = metrics.FLAGGED.labels(component=name, flag=IGNORED_FLAG)
        self._ignored_logged: set[str] = set()
        if settings.injected == "trust":
            self.log.warning("injected: trust — records written by userspace can raise kernel incidents and set node "
                             "conditions; use this on test nodes only", extra={"stage": name})

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._timer = asyncio.create_task(self._expire_loop(), name=f"signatures-{self.name}")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        pending = self._held + self.assembler.flush()
        self._held = []
        if not pending:
            return
        try:
            # At shutdown the router may already be gone and the queue full: never hang the stop on it.
            await asyncio.wait_for(self._deliver(pending), timeout=2.0)
        except asyncio.TimeoutError:
            self.log.warning("open kernel incidents not delivered at shutdown", extra={"incidents": len(pending)})
        if self._held:
            self.log.warning("open kernel incidents not delivered at shutdown (no pipeline.inject hook)",
                             extra={"incidents": len(self._held)})

    def drain(self) -> list[Batch]:
        """Shutdown: every open report goes out as it is, before the outputs flush."""
        pending = self._held + self.assembler.flush()
        self._held = []
        return [self.events_batch(pending)] if pending else []

    async def _expire_loop(self) -> None:
        while True:
            # A timer tick, not a wait for a condition: incidents time out on the wall clock.
            await asyncio.sleep(self.settings.flush_interval)
            try:
                expired = self.assembler.expire()
                if expired:
                    await self._deliver(expired)
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.ERRORS.labels(component=self.name, kind="signatures_timer").inc()
                self.log.exception("flushing timed-out kernel incidents failed")

    async def _deliver(self, incidents: list[Incident]) -> None:
        inject = self.ctx.services.inject
        if inject is None:
            self._held.extend(incidents)
            return
        await inject(self.events_batch(incidents))

    # -- the hot path ---------------------------------------------------------------------------------------
    def _kind(self, tag: str) -> str | None:
        kind = self._kinds.get(tag, "?")
        if kind == "?":
            s = self.settings
            if any(fnmatch.fnmatchcase(tag, p) for p in s.kernel_tags):
                kind = "kernel"
            elif any(fnmatch.fnmatchcase(tag, p) for p in s.container_tags):
                kind = "container"
            else:
                kind = None
            if len(self._kinds) > 10000:
                self._kinds.clear()
            self._kinds[tag] = kind
        return kind

    def process(self, batch: Batch) -> Iterable[Batch]:
        kind = self._kind(batch.tag)
        incidents: list[Incident] = []
        if self._held:
            incidents, self._held = self._held, []
        if kind == "kernel" and batch.records:
            incidents.extend(self.feed(batch))
            if self.assembler.pending:
                self._report_open()
        elif kind == "container" and self.tails is not None and batch.records:
            kmeta = batch.meta.get("kubernetes")
            if kmeta:
                tail = batch.records[-self.settings.last_lines:]
                self.tails.add(kmeta, [m if isinstance(m, str) else str(m)
                                       for m in (r.get("message", "") for r in tail)])
        if self.assembler.pending:
            incidents.extend(self.assembler.expire())
        if not incidents:
            return (batch,)
        return (batch, self.events_batch(incidents))

    def feed(self, batch: Batch) -> list[Incident]:
        """Run one kernel batch through the rules and the assembler; the incidents it closed."""
        records = batch.records
        meta = batch.meta
        messages = [r.get("message") or "" for r in records]
        trusted_source = meta.get("source") in KERNEL_SOURCES
        if self.settings.injected == "ignore":
            if trusted_source:
                injected = [i for i, r in enumerate(records) if r.get("userspace") is not False]
            else:
                injected = list(range(len(records)))
            if injected:
                self._ignore(batch, messages, injected)
        pos_key = meta.get("pos_key") or "seq"
        last_key = "last_seq" if pos_key == "seq" else pos_key

        def pos_of(i: int) -> tuple[Any, Any]:
            r = records[i]
            first = r.get(pos_key)
            return first, r.get(last_key, first)

        def time_of(i: int) -> float | None:
            return record_time(records[i])

        def userspace_of(i: int) -> bool:
            return not trusted_source or records[i].get("userspace") is not False

        source = str(meta.get("source_id") or batch.tag)
        try:
            return self.assembler.feed(messages, pos_of, time_of, userspace_of, source)
        except TypeError:
            # A record whose message is not text (an input bug): classify the rest, count it.
            metrics.ERRORS.labels(component=self.name, kind="message_not_text").inc()
            messages = [m if isinstance(m, str) else str(m) for m in messages]
            return self.assembler.feed(messages, pos_of, time_of, userspace_of, source)

    def _report_open(self) -> None:
        report = self.ctx.services.node_problems_open  # a report still open holding a permanent problem
        if report is None:
            return
        for inc in self.assembler.open_incidents():
            if inc.permanent and not inc.reported_open and not inc.injected:
                inc.reported_open = True
                report(inc.summary())

    def _ignore(self, batch: Batch, messages: list[str], injected: list[int]) -> None:
        """Blank the injected records' text for classification (their positions still count), counting and logging
        (once per signature) those that would have matched a rule."""
        try:
            matches = self.settings.rules.classify_batch([messages[i] for i in injected])
        except TypeError:
            matches = {}
        for j, m in matches.items():
            self._ignored.inc()
            sig = m.rule.signature
            if sig not in self._ignored_logged and len(self._ignored_logged) < 1000:
                self._ignored_logged.add(sig)
                rec = batch.records[injected[j]]
                self.log.warning("a record written by userspace matches a kernel signature; it raises no incident",
                                 extra={"signature": sig, "source": batch.meta.get("source") or batch.tag,
                                        "identifier": rec.get("identifier"), "pid": rec.get("pid"),
                                        "facility": rec.get("facility")})
        for i in injected:
            messages[i] = ""

    # -- events ---------------------------------------------------------------------------------------------
    def events_batch(self, incidents: list[Incident]) -> Batch:
        records = [self.event_record(inc) for inc in incidents]
        report = self.ctx.services.node_problems  # the `node_problems` stage: Events, conditions
        if report is not None:
            # what acts on the Node (Events, conditions) comes from the kernel only: a drill's injected incidents
            # (`injected: report`) are shipped, never reported to Kubernetes
            trusted = records if self.settings.injected == "trust" else [r for r in records if not r.get("injected")]
            if trusted:
                report(trusted)
        counts = collections.Counter((r["category"], r["signature"]) for r in records)
        for key, n in counts.items():
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = metrics.KERNEL_SIGNATURES.labels(category=key[0], signature=key[1])
            counter.inc(n)
        return Batch(self.settings.tag, records, {"stage": self.name, "source": "signatures"}, noop_token(),
                     sum(len(line) for r in records for line in r["lines"]))

    def event_record(self, inc: Incident) -> Record:
        rec: Record = inc.summary()
        rec["message"] = f"{inc.category}/{inc.signature}: {inc.first_line}"
        rec["lines"] = inc.lines
        if inc.lines_dropped:
            rec["lines_dropped"] = inc.lines_dropped
        positions = inc.headline_positions
        if isinstance(inc.first_pos, int) or inc.first_pos is None:
            rec["first_seq"], rec["last_seq"], rec["headline_seqs"] = inc.first_pos, inc.last_pos, positions
            pos_key = "first_seq"
        else:
            rec["first_cursor"], rec["last_cursor"] = inc.first_pos, inc.last_pos
            pos_key = "first_cursor"
        if inc.first_time is not None:
            rec["time"] = format_time(inc.first_time)
        # A deterministic id: the same incident read again after a restart is stored once by idempotent outputs.
        rec["source_id"] = f"{inc.source}#signatures"
        rec["pos_key"] = pos_key
        if inc.category == "oom":
            self._attribute_oom(rec, inc)
        if inc.permanent and (not inc.injected or self.settings.injected == "trust"):
            self._set_condition(rec, inc)
        return rec

    def _attribute_oom(self, rec: Record, inc: Incident) -> None:
        memcg = victim_memcg(rec["fields"], inc.lines)
        owner = parse_memcg(memcg)
        if owner is None:
            return
        kubernetes = self.ctx.services.kubernetes
        rec.update(attribute(owner, kubernetes.cache if kubernetes is not None else None, self.tails))

    # -- node conditions ------------------------------------------------------------------------------------
    def _set_condition(self, rec: Record, inc: Incident) -> None:
        fields = rec["fields"]
        device = next((fields[k] for k in _DEVICE_FIELDS if fields.get(k)), "")
        sig = next(m.rule.signature for _, m in sorted(inc.headlines, key=lambda h: -h[1].rule.rank)
                   if m.rule.permanent)
        key = f"{sig}:{device}" if device else sig
        cond = self.conditions.get(key)
        if cond is None:
            cond = self.conditions[key] = {"signature": sig, "category": inc.category, "device": device,
                                           "since": rec.get("time"), "count": 0}
        cond["count"] += 1
        cond["last"] = rec.get("time")
        cond["last_line"] = inc.first_line
        metrics.KERNEL_CONDITIONS.labels(signature=sig, device=device).set(1)
        rec["condition"] = key

def record_time(rec: Record) -> float | None:
    """Seconds since the epoch from a kernel record: `time_ns` (kmsg, journal), else `time` as a number or an
    RFC 3339 string. Called only for headline and context records, never for every record."""
    ns = rec.get("time_ns")
    if isinstance(ns, int):
        return ns / 1e9
    t = rec.get("time")
    if isinstance(t, (int, float)):
        return float(t)
    if isinstance(t, str) and t:
        try:
            return datetime.fromisoformat(t[:26] + "+00:00" if t.endswith("Z") and "." in t else
                                          t.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def format_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
