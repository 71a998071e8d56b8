"""The pipeline: input -> stages -> route -> output -> ack -> checkpoint, wired from the config.

    inputs ──emit──▶ [queue: limits.queue_bytes] ──▶ router: stages in order, then fan-out by tag
                                                          │
                               ┌──────────────────────────┴──────────────┐
                               ▼                                         ▼
             [window: output_max_unacked_bytes]            [window: output_max_unacked_bytes]
                          output A                                  output B
                               └──── batch.ack.done() ──▶ PositionTracker ──▶ CheckpointStore

Every queue and window is bounded in bytes (and batches: logagent.flow), so a slow output fills its window, then
the router waits, then the main queue fills, then inputs wait inside `emit` and stop reading: memory stays
bounded by the limits. Small batches at low rates fit the windows by the hundred, so they never wait for an
output request to complete. A batch's token is shared once per output it is routed to; its position is
checkpointed when all of them acknowledged.

Every input, output, the router and the checkpoint writer run under the `Supervisor` (logagent.supervisor): a task
that fails is logged, restarted with backoff and shown by /readyz and `logagent_component_state`. No single
record ends a task: stage errors pass the batch on, output errors dead-letter it, the dead-letter writer never
raises. Operations (health server, systemd, pidfile) live in logagent.operations, hot reload in
logagent.hotreload.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from logagent import metrics, registry
from logagent.checkpoint import CheckpointStore, StateDirError, write_positions
from logagent.component import Context, Input, Output, Stage
from logagent.config import AgentConfig, ComponentConfig
from logagent.deadletter import DeadLetter
from logagent.flow import ByteQueue, ByteWindow, batch_cost
from logagent.hotreload import Reloader
from logagent.operations import Operations
from logagent.record import AckToken, Batch
from logagent.supervisor import RESTARTING, RUNNING, STOPPED, Health, Supervisor

log = logging.getLogger("logagent.pipeline")

_STOP = object()


def tag_matches(patterns: Iterable[str], tag: str) -> bool:
    return any(p == "*" or fnmatch.fnmatchcase(tag, p) for p in patterns)


@dataclass
class _RunningInput:
    comp: ComponentConfig
    input: Input[Any]
    task: asyncio.Task[None] | None = None
    stopping: bool = False


@dataclass
class _RunningOutput:
    comp: ComponentConfig
    output: Output[Any]
    queue: asyncio.Queue[Any]
    unacked: ByteWindow  # batches handed to this output and not yet acknowledged by it
    task: asyncio.Task[None] | None = None
    match: tuple[str, ...] = ()
    stopping: bool = False


@dataclass
class _RunningStage:
    comp: ComponentConfig
    stage: Stage[Any]
    match: tuple[str, ...] = ()


@dataclass
class Pipeline:
    config: AgentConfig
    ctx: Context = field(init=False)
    inputs: dict[str, _RunningInput] = field(default_factory=dict)
    stages: list[_RunningStage] = field(default_factory=list)
    outputs: dict[str, _RunningOutput] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            os.makedirs(self.config.state_dir, exist_ok=True)
        except OSError as e:
            raise StateDirError(f"state dir {self.config.state_dir}: cannot create it: {e.strerror}") from None
        self.ctx = Context(
            config=self.config,
            checkpoints=CheckpointStore(self.config.state_dir),
            dead_letter=DeadLetter(self.config.dead_letter_path),
        )
        limits = self.config.limits
        self.queue: ByteQueue[Any] = ByteQueue(limits.queue_bytes, limits.queue_batches)
        self._route_cache: dict[str, tuple[_RunningOutput, ...]] = {}
        self._stage_cache: dict[str, tuple[_RunningStage, ...]] = {}
        self._stopping = asyncio.Event()
        self._router_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()
        self.routing = asyncio.Lock()  # held by the router per batch: reload swaps components between batches
        self.health_state = Health()
        self.supervisor = Supervisor(self.health_state, self._stopping.is_set)
        self.ctx.services.health = self.health_state
        self.ops = Operations(self)
        self.reloader = Reloader(self)
        self.ctx.services.inject = self.inject
        self._late: list[Batch] = []  # injected while stopping
        self.ctx.services.stop_agent = self.request_stop  # e.g. the stdout output when stdout is gone

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        for comp in self.config.outputs:
            await self.start_output(comp)
        for comp in self.config.stages:
            self.stages.append(await self.start_stage(comp))
        self._router_task = asyncio.create_task(self.supervisor.run("pipeline", "router", self._route),
                                                name="router")
        self._checkpoint_task = asyncio.create_task(
            self.supervisor.run("pipeline", "checkpoints", self._write_checkpoints), name="checkpoints")
        for comp in self.config.inputs:
            self.start_input(comp)
        self.started.set()
        log.info("pipeline started", extra={"inputs": list(self.inputs), "outputs": list(self.outputs)})

    async def _write_checkpoints(self) -> None:
        await write_positions(self.ctx.checkpoints, lambda: self.config.checkpoint_interval, self.health_state)

    async def inject(self, batch: Batch) -> None:
        """Batches a stage makes outside `process()` (e.g. kernel incidents closed by their timeout) enter the
        pipeline here and are routed like input batches, with the same backpressure."""
        if self._stopping.is_set():
            # the stop marker may be queued already: the router ships these when it reaches it
            if self._router_task is not None and self._router_task.done():
                log.warning("a stage made a batch after the router stopped; it is not shipped",
                            extra={"tag": batch.tag, "records": batch.count()})
            else:
                self._late.append(batch)
            return
        await self.queue.put(batch, batch_cost(batch, self.config.limits.record_overhead))

    def request_stop(self) -> None:
        self._stopping.set()

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
                try:
                    self.ctx.checkpoints.flush()
                except Exception as e:
                    log.error("checkpoint write failed", extra={"error": f"{type(e).__name__}: {e}"})
                os._exit(128 + signum)

        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.ops.start()
            await self.start()
            self.ops.ready()
            await self._stopping.wait()
            await self.ops.stopping()
            await self.shutdown()
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            await self.ops.stop()
        return 0

    async def shutdown(self) -> None:
        grace = self.config.grace_period
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # 1. stop reading
        await asyncio.gather(*(self.stop_input(name, deadline) for name in list(self.inputs)))
        # 2. drain the router and the outputs within what is left of the grace period
        try:
            self.queue.put_unbounded(_STOP)  # after every batch already queued
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
            await self.stop_stage(rs)
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
        self.ctx.checkpoints.close()
        self.ctx.dead_letter.close()
        log.info("pipeline stopped")

    # -- components -----------------------------------------------------------------------------------------
    def start_input(self, comp: ComponentConfig) -> None:
        inp = registry.build_input(comp, self.ctx)
        ri = _RunningInput(comp, inp)

        async def restart() -> Callable[[], Awaitable[None]]:
            await self._rebuild_input(ri)
            return lambda: self._run_input(ri)

        ri.task = asyncio.create_task(
            self.supervisor.run("input", comp.name, lambda: self._run_input(ri), restart,
                                stopping=lambda: ri.stopping or self._stopping.is_set()),
            name=f"input:{comp.name}")
        self.inputs[comp.name] = ri

    async def _run_input(self, ri: _RunningInput) -> None:
        name = ri.comp.name
        records_in = metrics.RECORDS_IN.labels(input=name)
        bytes_in = metrics.BYTES_IN.labels(input=name)
        depth = metrics.QUEUE_DEPTH.labels(queue="pipeline")
        queue = self.queue

        overhead = self.config.limits.record_overhead

        async def emit(batch: Batch) -> None:
            records_in.inc(batch.count())
            bytes_in.inc(batch.nbytes)
            await queue.put(batch, batch_cost(batch, overhead))
            depth.set(queue.qsize())

        await ri.input.run(emit)

    async def _rebuild_input(self, ri: _RunningInput) -> None:
        """After a failure: stop what is left of the old instance, wait (bounded) until what it emitted is
        acknowledged, so the new one resumes from the committed position without reading it twice, and build a
        new instance from the config."""
        name = ri.comp.name
        try:
            await ri.input.stop()
        except Exception:
            log.exception("failed input did not stop cleanly", extra={"input": name})
        tracker = self.ctx.checkpoints.tracker(name)
        wait = max(30.0, self.config.grace_period)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while tracker.pending() and loop.time() < deadline and not self._stopping.is_set():
            await asyncio.sleep(0.05)  # acknowledgements come from outputs; there is no event per tracker
        if tracker.pending():
            log.warning("restarting the input before all it emitted was acknowledged; unacknowledged records "
                        "are read again", extra={"input": name, "pending": tracker.pending()})
        tracker.listeners.clear()  # the failed instance's; the new one registers its own
        ri.input = registry.build_input(ri.comp, self.ctx)

    async def stop_input(self, name: str, deadline: float) -> None:
        ri = self.inputs.pop(name)
        ri.stopping = True
        await ri.input.stop()
        st = self.health_state.components.get(("input", name))
        if ri.task is not None and st is not None and st.state == RESTARTING:
            ri.task.cancel()  # waiting out its backoff: nothing to drain
            await asyncio.gather(ri.task, return_exceptions=True)
        elif ri.task is not None:
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(ri.task, max(0.1, deadline - loop.time()))
            except asyncio.TimeoutError:
                ri.task.cancel()
        self.health_state.set("input", name, STOPPED)

    async def start_stage(self, comp: ComponentConfig) -> _RunningStage:
        stage = registry.build_stage(comp, self.ctx)
        await stage.start()
        self.health_state.set("stage", comp.name, RUNNING)
        return _RunningStage(comp, stage, comp.match)

    async def stop_stage(self, rs: _RunningStage) -> None:
        try:
            await rs.stage.stop()
        except Exception:
            log.exception("stage stop failed", extra={"stage": rs.comp.name})
        self.health_state.set("stage", rs.comp.name, STOPPED)

    async def start_output(self, comp: ComponentConfig, register: bool = True) -> _RunningOutput:
        out = registry.build_output(comp, self.ctx)
        await out.start()
        limits = self.config.limits
        ro = _RunningOutput(comp, out, asyncio.Queue(maxsize=limits.output_queue_batches),
                            ByteWindow(limits.output_max_unacked_bytes, limits.output_max_unacked_batches),
                            match=comp.match)
        ro.unacked.on_block = lambda: _cut_when_idle(ro)
        ro.task = asyncio.create_task(
            self.supervisor.run("output", comp.name, lambda: self._run_output(ro),
                                stopping=lambda: ro.stopping or self._stopping.is_set()),
            name=f"output:{comp.name}")
        if register:  # a reload registers its new outputs itself, all at once, between two batches
            self.outputs[comp.name] = ro
            self._route_cache.clear()
        return ro

    async def retire_output(self, ro: _RunningOutput) -> None:
        """No new batches; it flushes every batch it was given, then its task ends (reload)."""
        ro.stopping = True
        await ro.queue.put(_STOP)

    async def _run_output(self, ro: _RunningOutput) -> None:
        name = ro.comp.name
        depth = metrics.QUEUE_DEPTH.labels(queue=f"output:{name}")
        while True:
            _cut_when_idle(ro)
            batch = await ro.queue.get()
            depth.set(ro.queue.qsize())
            if batch is _STOP:
                ro.stopping = True
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
                await asyncio.to_thread(self.ctx.dead_letter.write, name,
                                        f"output_error: {type(e).__name__}: {e}", list(batch.shipped()))
                if not batch.ack.completed:
                    batch.ack.done()

    def invalidate_routes(self) -> None:
        self._route_cache.clear()
        self._stage_cache.clear()

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
                except Exception as e:
                    # A stage bug passes the batch on unchanged: records are never lost to a parser error.
                    metrics.ERRORS.labels(component=rs.comp.name, kind="stage_crashed").inc()
                    log.exception("stage failed on a batch; passing it on unchanged", extra={"stage": rs.comp.name})
                    self.health_state.degraded("stage", rs.comp.name,
                                               f"failed on a batch: {type(e).__name__}: {e}"[:300])
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
                async with self.routing:
                    await self._drain_stages()
                for ro in self.outputs.values():
                    await ro.queue.put(_STOP)
                return
            async with self.routing:
                try:
                    for b in self.apply_stages(batch):
                        await self.dispatch(b)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # Not acknowledged (part of it may be out already): the position holds, a restart reads it
                    # again. Dead-lettered too, so that the records are not only in a log line.
                    metrics.ERRORS.labels(component="router", kind="batch_failed").inc()
                    log.exception("routing a batch failed", extra={"tag": batch.tag})
                    await asyncio.to_thread(self.ctx.dead_letter.write, "router",
                                            f"router_error: {type(e).__name__}: {e}", list(batch.shipped()))

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

        Each output gets its own view of the batch with its own token, whose acknowledgement frees the batch's
        bytes in the output's unacknowledged window (`output_max_unacked_bytes`/`_batches`): an output that accepts
        batches faster than its backend confirms them is held here, so memory stays bounded whatever it does.
        """
        targets = self._targets(batch.tag)
        if not targets:
            batch.ack.done()
            return
        shares = batch.ack.split(len(targets))
        nbytes = batch.nbytes
        cost = batch_cost(batch, self.config.limits.record_overhead)
        for ro, share in zip(targets, shares):
            await ro.unacked.acquire(cost)
            view = Batch(batch.tag, batch.rows, batch.meta, AckToken(_release(ro.unacked, cost, share)), nbytes,
                         batch.flagged)
            await ro.queue.put(view)

    # -- operations and reload: `self.ops` (logagent.operations), `self.reloader` (logagent.hotreload) ------------
    def request_reload(self) -> None:
        self.reloader.request()


def _cut_when_idle(ro: _RunningOutput) -> None:
    """The router waits for room in the output's window and the output has taken every batch queued for it: what
    it holds must ship now (`Output.cut`), not at its batching timeout, or the window would stall the pipeline."""
    if ro.unacked.waiting and ro.queue.empty():
        ro.output.cut()


def _release(window: ByteWindow, nbytes: int, share: AckToken) -> Callable[[], None]:
    def on_done() -> None:
        window.release(nbytes)
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
