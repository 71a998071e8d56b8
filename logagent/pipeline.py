"""The pipeline: input -> stages -> route -> output -> ack -> checkpoint, wired from the config.

    inputs ──emit──▶ [queue: limits.queue_batches] ──▶ router: stages in order, then fan-out by tag
                                                          │
                               ┌──────────────────────────┴──────────────┐
                               ▼                                         ▼
                  [queue: output_queue_batches]              [queue: output_queue_batches]
                          output A                                  output B
                               └──── batch.ack.done() ──▶ PositionTracker ──▶ CheckpointStore

Every queue is bounded, so a slow output fills its queue, then the router waits, then the main queue fills,
then inputs wait inside `emit` and stop reading: memory stays bounded by the limits. A batch's token is
shared once per output it is routed to; its position is checkpointed when all of them acknowledged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import os
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from logagent import metrics, registry
from logagent.checkpoint import CheckpointStore
from logagent.component import Context, Input, Output, Stage
from logagent.config import AgentConfig, ComponentConfig
from logagent.deadletter import DeadLetter
from logagent.record import AckToken, Batch

log = logging.getLogger("logagent.pipeline")

_STOP = object()


def tag_matches(patterns: Iterable[str], tag: str) -> bool:
    return any(p == "*" or fnmatch.fnmatchcase(tag, p) for p in patterns)


@dataclass
class _RunningInput:
    comp: ComponentConfig
    input: Input
    task: asyncio.Task[None] | None = None


@dataclass
class _RunningOutput:
    comp: ComponentConfig
    output: Output
    queue: asyncio.Queue[Any]
    unacked: asyncio.Semaphore  # batches handed to this output and not yet acknowledged by it
    task: asyncio.Task[None] | None = None
    match: tuple[str, ...] = ()


@dataclass
class _RunningStage:
    comp: ComponentConfig
    stage: Stage
    match: tuple[str, ...] = ()


@dataclass
class Pipeline:
    config: AgentConfig
    ctx: Context = field(init=False)
    inputs: dict[str, _RunningInput] = field(default_factory=dict)
    stages: list[_RunningStage] = field(default_factory=list)
    outputs: dict[str, _RunningOutput] = field(default_factory=dict)

    def __post_init__(self) -> None:
        os.makedirs(self.config.state_dir, exist_ok=True)
        self.ctx = Context(
            config=self.config,
            checkpoints=CheckpointStore(self.config.state_dir),
            dead_letter=DeadLetter(self.config.dead_letter_path),
        )
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.config.limits.queue_batches)
        self._route_cache: dict[str, tuple[_RunningOutput, ...]] = {}
        self._stage_cache: dict[str, tuple[_RunningStage, ...]] = {}
        self._stopping = asyncio.Event()
        self._router_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        self._routing = asyncio.Lock()  # held by the router per batch: reload swaps components between batches
        self._ops = _Operations()
        self.ctx.services["pipeline.inject"] = self.inject
        self._late: list[Batch] = []  # injected while stopping
        self.ctx.services["stop_agent"] = self.request_stop  # e.g. the stdout output when stdout is gone

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        for comp in self.config.outputs:
            await self._start_output(comp)
        for comp in self.config.stages:
            stage = registry.build(comp, self.ctx)
            await stage.start()
            self.stages.append(_RunningStage(comp, stage, comp.match))
        self._router_task = asyncio.create_task(self._route(), name="router")
        self._checkpoint_task = asyncio.create_task(self._checkpoint_loop(), name="checkpoints")
        for comp in self.config.inputs:
            self._start_input(comp)
        self.started.set()
        log.info("pipeline started", extra={"inputs": list(self.inputs), "outputs": list(self.outputs)})

    async def inject(self, batch: Batch) -> None:
        """Batches a stage makes outside `process()` (e.g. kernel incidents closed by their timeout) enter the
        pipeline here and are routed like input batches, with the same backpressure."""
        if self._stopping.is_set():
            # the stop marker may be queued already: the router ships these when it reaches it
            if self._router_task is not None and self._router_task.done():
                log.warning("a stage made a batch after the router stopped; it is not shipped",
                            extra={"tag": batch.tag, "records": len(batch.records)})
            else:
                self._late.append(batch)
            return
        await self.queue.put(batch)

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def run(self, install_signals: bool = True) -> int:
        """Run until SIGTERM/SIGINT (or `request_stop`), then shut down gracefully. Returns the exit code."""
        loop = asyncio.get_running_loop()
        signals_seen = 0

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                self.request_stop()
            else:
                # Positions in the store are only ever acknowledged ones, so leaving now keeps at-least-once.
                log.warning("second signal: exiting at once", extra={"signal": signal.Signals(signum).name})
                self.ctx.checkpoints.flush()
                os._exit(128 + signum)

        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self._start_operations()
            await self.start()
            self._operations_ready()
            await self._stopping.wait()
            await self._operations_stopping()
            await self.shutdown()
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            await self._stop_operations()
        return 0

    async def shutdown(self) -> None:
        grace = self.config.grace_period
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # 1. stop reading
        await asyncio.gather(*(self._stop_input(name, deadline) for name in list(self.inputs)))
        # 2. drain the router and the outputs within what is left of the grace period
        try:
            # The queue may be full behind an output that accepts nothing: the stop marker waits its turn only
            # until the grace period is over.
            await asyncio.wait_for(self.queue.put(_STOP), max(0.0, deadline - loop.time()))
            if self._router_task is not None:
                await asyncio.wait_for(asyncio.shield(self._router_task), max(0.0, deadline - loop.time()))
            tasks = [o.task for o in self.outputs.values() if o.task is not None]
            if tasks:
                await asyncio.wait_for(asyncio.gather(*tasks), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            log.warning("grace period over; unacknowledged batches will be read again on restart",
                        extra={"grace_period": grace})
        for task in [self._router_task, *(o.task for o in self.outputs.values())]:
            if task is not None and not task.done():
                task.cancel()
        for ro in self.outputs.values():
            try:
                await ro.output.stop()
            except Exception:
                log.exception("output stop failed", extra={"output": ro.comp.name})
        for rs in self.stages:
            await rs.stage.stop()
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
        self.ctx.checkpoints.close()
        self.ctx.dead_letter.close()
        log.info("pipeline stopped")

    # -- components -----------------------------------------------------------------------------------------
    def _start_input(self, comp: ComponentConfig) -> None:
        inp: Input = registry.build(comp, self.ctx)
        ri = _RunningInput(comp, inp)
        ri.task = asyncio.create_task(self._run_input(ri), name=f"input:{comp.name}")
        self.inputs[comp.name] = ri

    async def _run_input(self, ri: _RunningInput) -> None:
        name = ri.comp.name
        records_in = metrics.RECORDS_IN.labels(input=name)
        bytes_in = metrics.BYTES_IN.labels(input=name)
        depth = metrics.QUEUE_DEPTH.labels(queue="pipeline")

        async def emit(batch: Batch) -> None:
            records_in.inc(len(batch.records))
            bytes_in.inc(batch.nbytes)
            await self.queue.put(batch)
            depth.set(self.queue.qsize())

        try:
            await ri.input.run(emit)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.ERRORS.labels(component=name, kind="input_crashed").inc()
            log.exception("input failed", extra={"input": name})

    async def _stop_input(self, name: str, deadline: float) -> None:
        ri = self.inputs.pop(name)
        await ri.input.stop()
        if ri.task is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(ri.task, max(0.1, deadline - loop.time()))
            except asyncio.TimeoutError:
                ri.task.cancel()

    async def _start_output(self, comp: ComponentConfig, register: bool = True) -> _RunningOutput:
        out: Output = registry.build(comp, self.ctx)
        await out.start()
        limits = self.config.limits
        ro = _RunningOutput(comp, out, asyncio.Queue(maxsize=limits.output_queue_batches),
                            asyncio.Semaphore(limits.output_max_unacked_batches), match=comp.match)
        ro.task = asyncio.create_task(self._run_output(ro), name=f"output:{comp.name}")
        if register:  # a reload registers its new outputs itself, all at once, between two batches
            self.outputs[comp.name] = ro
            self._route_cache.clear()
        return ro

    async def _run_output(self, ro: _RunningOutput) -> None:
        name = ro.comp.name
        depth = metrics.QUEUE_DEPTH.labels(queue=f"output:{name}")
        while True:
            batch = await ro.queue.get()
            depth.set(ro.queue.qsize())
            if batch is _STOP:
                await ro.output.flush()
                return
            try:
                await ro.output.send(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # An output bug must not lose the batch silently: dead-letter it with the reason, then ack.
                metrics.ERRORS.labels(component=name, kind="output_crashed").inc()
                log.exception("output failed on a batch; records go to the dead-letter file",
                              extra={"output": name})
                self.ctx.dead_letter.write(name, f"output_error: {type(e).__name__}: {e}", batch.shipped())
                if not batch.ack.completed:
                    batch.ack.done()

    # -- routing --------------------------------------------------------------------------------------------
    def _targets(self, tag: str) -> tuple[_RunningOutput, ...]:
        targets = self._route_cache.get(tag)
        if targets is None:
            targets = tuple(o for o in self.outputs.values() if tag_matches(o.match, tag))
            if len(self._route_cache) > 10000:
                self._route_cache.clear()
            self._route_cache[tag] = targets
        return targets

    def _stages_for(self, tag: str) -> tuple[_RunningStage, ...]:
        stages = self._stage_cache.get(tag)
        if stages is None:
            stages = tuple(s for s in self.stages if tag_matches(s.match, tag))
            if len(self._stage_cache) > 10000:
                self._stage_cache.clear()
            self._stage_cache[tag] = stages
        return stages

    def apply_stages(self, batch: Batch, first: int = 0) -> list[Batch]:
        batches = [batch]
        for rs in self.stages[first:]:
            nxt: list[Batch] = []
            for b in batches:
                if rs not in self._stages_for(b.tag):
                    nxt.append(b)
                    continue
                try:
                    results = list(rs.stage.process(b))
                except Exception:
                    # A stage bug passes the batch on unchanged: records are never lost to a parser error.
                    metrics.ERRORS.labels(component=rs.comp.name, kind="stage_crashed").inc()
                    log.exception("stage failed on a batch; passing it on unchanged", extra={"stage": rs.comp.name})
                    results = [b]
                if not any(r is b for r in results):
                    b.ack.done()
                nxt.extend(results)
            batches = nxt
        return batches

    async def _route(self) -> None:
        depth = metrics.QUEUE_DEPTH.labels(queue="pipeline")
        while True:
            batch = await self.queue.get()
            depth.set(self.queue.qsize())
            if batch is _STOP:
                async with self._routing:
                    await self._drain_stages()
                for ro in self.outputs.values():
                    await ro.queue.put(_STOP)
                return
            async with self._routing:
                for b in self.apply_stages(batch):
                    await self.dispatch(b)

    async def _drain_stages(self) -> None:
        """Shutdown: what stages still hold goes through the stages after them and out, before the outputs flush."""
        late, self._late = self._late, []
        for b in late:
            for out in self.apply_stages(b):
                await self.dispatch(out)
        for i, rs in enumerate(self.stages):
            try:
                held = rs.stage.drain()
            except Exception:
                metrics.ERRORS.labels(component=rs.comp.name, kind="stage_crashed").inc()
                log.exception("stage failed to drain at shutdown", extra={"stage": rs.comp.name})
                continue
            for b in held:
                for out in self.apply_stages(b, i + 1):
                    await self.dispatch(out)

    async def dispatch(self, batch: Batch) -> None:
        """Hand a batch to every output whose `match` selects its tag.

        Each output gets its own view of the batch with its own token, whose acknowledgement frees one of the
        output's `output_max_unacked_batches` slots: an output that accepts batches faster than its backend
        confirms them is held here, so memory stays bounded whatever the output does.
        """
        targets = self._targets(batch.tag)
        if not targets:
            batch.ack.done()
            return
        shares = batch.ack.split(len(targets))
        for ro, share in zip(targets, shares):
            await ro.unacked.acquire()
            view = Batch(batch.tag, batch.records, batch.meta, AckToken(_release(ro.unacked, share)), batch.nbytes)
            await ro.queue.put(view)

    # -- operations: health, readiness, hot reload (logagent.http, logagent.sdnotify, logagent.reload) ---------
    def health(self) -> tuple[bool, str]:
        """For /healthz and the systemd watchdog: the loop is responsive and the pipeline's own tasks run."""
        hb = self._ops.heartbeat
        if hb is not None and hb.age() > self._ops.stall_timeout:
            return False, f"event loop stalled: last heartbeat {hb.age():.1f}s ago"
        if not self._stopping.is_set():
            for what, task in (("router", self._router_task), ("checkpoints", self._checkpoint_task)):
                if task is not None and task.done():
                    return False, f"{what} task ended"
        return True, "ok"

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """For /readyz: started, not stopping, and every output reachable or buffering below its limit."""
        if not self.started.is_set():
            return False, {"pipeline": "starting"}
        if self._stopping.is_set():
            return False, {"pipeline": "stopping"}
        not_ready: dict[str, str] = {}
        for name, ro in self.outputs.items():
            try:
                ok = ro.output.ready()
            except Exception as e:
                ok = False
                log.warning("output ready() failed", extra={"output": name, "error": repr(e)})
            if not ok:
                not_ready[f"output:{name}"] = "backend unreachable or buffer at its limit"
        return not not_ready, not_ready

    async def _start_operations(self) -> None:
        from logagent.http import HealthServer, LoopHeartbeat, parse_http_settings
        from logagent.sdnotify import Notifier

        ops = self._ops
        ops.notifier = Notifier()
        ops.heartbeat = LoopHeartbeat()
        ops.heartbeat.start()
        settings = parse_http_settings(self.config.http)
        ops.stall_timeout = settings.stall_timeout
        if settings.enabled:
            server = HealthServer(settings, self.health, self.readiness)
            await server.start()  # ListenError: the agent does not start (logagent.cli says why)
            ops.server = server

    def _operations_ready(self) -> None:
        from logagent.reload import write_pidfile
        from logagent.sdnotify import feed_watchdog, watchdog_interval

        ops = self._ops
        ops.pidfile = write_pidfile(self.config.state_dir)
        ops.notifier.ready(f"running: {len(self.inputs)} inputs, {len(self.outputs)} outputs")
        interval = watchdog_interval()
        if interval is not None:
            ops.watchdog_task = asyncio.create_task(feed_watchdog(ops.notifier, interval, self.health),
                                                    name="watchdog")

    async def _operations_stopping(self) -> None:
        ops = self._ops
        ops.notifier.stopping("shutting down: draining in-flight batches")
        task = ops.reload_task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self.config.grace_period)
            except asyncio.TimeoutError:
                log.warning("reload still running at shutdown; cancelling it")
                task.cancel()

    async def _stop_operations(self) -> None:
        from logagent.reload import remove_pidfile

        ops = self._ops
        for task in (ops.watchdog_task, ops.reload_task):
            if task is not None and not task.done():
                task.cancel()
        if ops.heartbeat is not None:
            ops.heartbeat.stop()
        if ops.server is not None:
            await ops.server.stop()
        if ops.pidfile is not None:
            remove_pidfile(ops.pidfile)

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file. Reloads run one at a time; a request during one runs after it."""
        ops = self._ops
        if self._stopping.is_set() or not self.started.is_set():
            log.warning("reload requested while starting or stopping; ignored")
            return
        if ops.reload_task is not None and not ops.reload_task.done():
            ops.reload_again = True
            return
        ops.reload_task = asyncio.create_task(self._reload_requests(), name="reload")

    async def _reload_requests(self) -> None:
        while True:
            self._ops.reload_again = False
            await self.reload_from_file()
            if not self._ops.reload_again or self._stopping.is_set():
                return

    async def reload_from_file(self) -> bool:
        """Re-read and validate the config file and apply it; an invalid one is rejected and logged, and the
        running config stays in effect. Returns whether the new config was applied."""
        from logagent.config import ConfigError, load_config
        from logagent.reload import write_reload_status

        ops = self._ops
        if ops.notifier is not None:
            ops.notifier.reloading()
        path = None if self.config.file == "<embedded default>" else self.config.file
        log.info("reloading config", extra={"file": self.config.file})
        error: str | None = None
        try:
            await self.reload(load_config(path))
        except ConfigError as e:
            error = str(e)
            log.error("config reload rejected; the running config stays in effect", extra={"error": error})
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.exception("config reload failed; the running config stays in effect", extra={"error": error})
        metrics.CONFIG_RELOADS.labels(result="rejected" if error else "applied").inc()
        metrics.CONFIG_LAST_RELOAD_OK.set(0 if error else 1)
        ops.reload_generation += 1
        write_reload_status(self.config.state_dir, ops.reload_generation, error)
        if ops.notifier is not None:
            ops.notifier.ready("reload rejected: " + error.splitlines()[0] if error else "config reloaded")
        return error is None

    async def reload(self, new_cfg: AgentConfig) -> None:
        """Apply a validated config to the running pipeline.

        Components whose `fingerprint()` is unchanged keep running. New and changed outputs are started first (a
        failing start rejects the reload with nothing changed); then, between two batches, the router switches to
        the new outputs and stages; the replaced outputs get no new batches, are drained and stopped. A changed
        input is stopped and its replacement starts only once every batch it emitted is acknowledged, so it
        resumes from exactly the committed position: no record is lost or read twice.
        """
        old = self.config
        loop = asyncio.get_running_loop()
        grace = new_cfg.grace_period
        for attr in ("state_dir", "dead_letter_path", "limits", "checkpoint_interval"):
            if getattr(new_cfg, attr) != getattr(old, attr):
                log.warning("setting changes apply on restart only; keeping the running value",
                            extra={"setting": attr})
        if new_cfg.http.data != old.http.data:
            log.warning("setting changes apply on restart only; keeping the running value", extra={"setting": "http"})
        new_cfg = dataclasses.replace(new_cfg, state_dir=old.state_dir, dead_letter_path=old.dead_letter_path,
                                      limits=old.limits, checkpoint_interval=old.checkpoint_interval, http=old.http)

        keep_out = {c.name for c in new_cfg.outputs
                    if c.name in self.outputs and self.outputs[c.name].comp.fingerprint() == c.fingerprint()}
        old_stages = {rs.comp.name: rs for rs in self.stages}
        started: dict[str, _RunningOutput] = {}
        new_stages: list[_RunningStage] = []
        stages: list[_RunningStage] = []
        try:
            for comp in new_cfg.outputs:
                if comp.name not in keep_out:
                    started[comp.name] = await self._start_output(comp, register=False)
            for comp in new_cfg.stages:
                rs = old_stages.get(comp.name)
                if rs is None or rs.comp.fingerprint() != comp.fingerprint():
                    stage = registry.build(comp, self.ctx)
                    await stage.start()
                    rs = _RunningStage(comp, stage, comp.match)
                    new_stages.append(rs)
                stages.append(rs)
            try:
                # The router holds this lock for one batch at a time; an output whose backend accepts nothing can
                # hold the router, and then the reload is refused rather than waiting forever.
                await asyncio.wait_for(self._routing.acquire(), grace)
            except asyncio.TimeoutError:
                stuck = [n for n, ro in self.outputs.items() if ro.queue.full()]
                raise RuntimeError(f"the router is blocked on full outputs {stuck}: restart to replace them") from None
        except BaseException:
            for ro in started.values():
                if ro.task is not None:
                    ro.task.cancel()
                await ro.output.stop()
            for rs in new_stages:
                await rs.stage.stop()
            raise
        try:
            retired = [ro for name, ro in self.outputs.items() if name not in keep_out]
            self.outputs = {c.name: started.get(c.name) or self.outputs[c.name] for c in new_cfg.outputs}
            kept_stage_ids = {id(rs) for rs in stages}
            retired_stages = [rs for rs in self.stages if id(rs) not in kept_stage_ids]
            self.stages = stages
            self._route_cache.clear()
            self._stage_cache.clear()
            self.config = new_cfg
            self.ctx.config = new_cfg
        finally:
            self._routing.release()

        new_inputs = {c.name: c for c in new_cfg.inputs}
        replaced_inputs = [name for name, ri in self.inputs.items()
                           if name not in new_inputs or ri.comp.fingerprint() != new_inputs[name].fingerprint()]
        added_inputs = [name for name in new_inputs if name not in self.inputs]

        async def retire_output(ro: _RunningOutput) -> None:
            await ro.queue.put(_STOP)  # after every batch it was given: it flushes them, then its task ends
            if ro.task is not None:
                await self._await_slowly(ro.task, f"output {ro.comp.name} draining", grace)
            await ro.output.stop()

        async def replace_input(name: str) -> None:
            if name in self.inputs:
                await self._stop_input(name, loop.time() + grace)
                tracker = self.ctx.checkpoints.tracker(name)
                await self._await_slowly(self._acknowledged(tracker), f"input {name} acknowledgements", grace)
                tracker.listeners.clear()  # the stopped input's; its replacement registers its own
                tracker.flush()
            if name in new_inputs:
                self._start_input(new_inputs[name])

        await asyncio.gather(*(retire_output(ro) for ro in retired),
                             *(replace_input(n) for n in [*replaced_inputs, *added_inputs]))
        for rs in retired_stages:
            await rs.stage.stop()
        log.info("config reloaded", extra={
            "outputs_replaced": [ro.comp.name for ro in retired], "outputs_started": list(started),
            "inputs_replaced": replaced_inputs, "inputs_started": added_inputs,
            "stages_replaced": [rs.comp.name for rs in retired_stages]})

    @staticmethod
    async def _acknowledged(tracker: Any) -> None:
        while tracker.pending():
            await asyncio.sleep(0.02)

    @staticmethod
    async def _await_slowly(aw: Any, what: str, warn_after: float) -> None:
        """Wait without a deadline (giving up would lose or duplicate records), warning when it takes long."""
        task = asyncio.ensure_future(aw)
        while True:
            done, _ = await asyncio.wait({task}, timeout=warn_after)
            if done:
                task.result()
                return
            log.warning("reload still waiting", extra={"for": what})

    # -- checkpoints ----------------------------------------------------------------------------------------
    async def _checkpoint_loop(self) -> None:
        """Write acknowledged positions soon after they advance (at most once per `checkpoint_interval`): the
        shorter the gap, the fewer records a `kill -9` makes the next run send again."""
        dirty = asyncio.Event()
        self.ctx.checkpoints.on_dirty = dirty.set
        while True:
            await dirty.wait()
            dirty.clear()
            await asyncio.sleep(self.config.checkpoint_interval)
            try:
                self.ctx.checkpoints.flush()
            except Exception:
                metrics.ERRORS.labels(component="checkpoints", kind="write_failed").inc()
                log.exception("checkpoint write failed; will retry")


@dataclass
class _Operations:
    """The operational side of a running agent: health server, systemd notifications, pidfile, reloads."""

    server: Any = None  # logagent.http.HealthServer
    heartbeat: Any = None  # logagent.http.LoopHeartbeat
    notifier: Any = None  # logagent.sdnotify.Notifier
    stall_timeout: float = 10.0
    watchdog_task: asyncio.Task[None] | None = None
    reload_task: asyncio.Task[None] | None = None
    reload_again: bool = False
    reload_generation: int = 0
    pidfile: str | None = None


def _release(slots: asyncio.Semaphore, share: AckToken) -> Callable[[], None]:
    def on_done() -> None:
        slots.release()
        share.done()

    return on_done


async def run_agent(cfg: AgentConfig) -> int:
    from logagent.summary import report_start, stored_positions

    pipeline = Pipeline(cfg)
    # the start-up summary on stderr; positions are read before the inputs start (and store theirs)
    summary = asyncio.create_task(report_start(pipeline, stored_positions(cfg, pipeline.ctx.checkpoints.load)),
                                  name="start-summary")
    try:
        return await pipeline.run()
    finally:
        summary.cancel()
