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
import fnmatch
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from logagent import metrics, registry
from logagent.checkpoint import CheckpointStore
from logagent.component import Context, Input, Output, Stage
from logagent.config import AgentConfig, ComponentConfig
from logagent.deadletter import DeadLetter
from logagent.record import Batch

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
        try:
            await self.start()
            await self._stopping.wait()
            await self.shutdown()
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        return 0

    async def shutdown(self) -> None:
        grace = self.config.grace_period
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # 1. stop reading
        await asyncio.gather(*(self._stop_input(name, deadline) for name in list(self.inputs)))
        # 2. drain the router and the outputs within what is left of the grace period
        await self.queue.put(_STOP)
        try:
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

    async def _start_output(self, comp: ComponentConfig) -> None:
        out: Output = registry.build(comp, self.ctx)
        await out.start()
        ro = _RunningOutput(comp, out, asyncio.Queue(maxsize=self.config.limits.output_queue_batches),
                            match=comp.match)
        ro.task = asyncio.create_task(self._run_output(ro), name=f"output:{comp.name}")
        self.outputs[comp.name] = ro
        self._route_cache.clear()

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

    def apply_stages(self, batch: Batch) -> list[Batch]:
        batches = [batch]
        for rs in self.stages:
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
                for ro in self.outputs.values():
                    await ro.queue.put(_STOP)
                return
            for b in self.apply_stages(batch):
                await self.dispatch(b)

    async def dispatch(self, batch: Batch) -> None:
        targets = self._targets(batch.tag)
        batch.ack.share(len(targets))
        for ro in targets:
            await ro.queue.put(batch)

    # -- checkpoints ----------------------------------------------------------------------------------------
    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval)
            try:
                self.ctx.checkpoints.flush()
            except Exception:
                metrics.ERRORS.labels(component="checkpoints", kind="write_failed").inc()
                log.exception("checkpoint write failed; will retry")


async def run_agent(cfg: AgentConfig) -> int:
    pipeline = Pipeline(cfg)
    return await pipeline.run()
