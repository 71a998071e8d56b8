"""Hot reload: SIGHUP (or `logagent reload`) re-reads the config file and applies it to the running pipeline.

Reloads run one at a time; a request during one runs after it. An invalid config is rejected and logged, and the
running one stays in effect. The outcome is written for `logagent reload` (logagent.reload) and told to systemd.

Applying (`Reloader.apply`): components whose `fingerprint()` is unchanged keep running. New and changed outputs
are started first (a failing start rejects the reload with nothing changed); then, between two batches, the router
switches to the new outputs and stages; the replaced outputs get no new batches, are drained and stopped. A
changed input is stopped and its replacement starts only once every batch it emitted is acknowledged, so it
resumes from exactly the committed position: no record is lost or read twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from logagent import metrics
from logagent.supervisor import RUNNING

if TYPE_CHECKING:
    from logagent.checkpoint import PositionTracker
    from logagent.config import AgentConfig
    from logagent.pipeline import Pipeline, _RunningOutput, _RunningStage

log = logging.getLogger("logagent.pipeline")

_RESTART_ONLY = ("state_dir", "dead_letter_path", "limits", "checkpoint_interval")


class Reloader:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.task: asyncio.Task[None] | None = None
        self.again = False
        self.generation = 0

    def request(self) -> None:
        p = self.p
        if p.stopping or not p.started.is_set():
            log.warning("reload requested while starting or stopping; ignored")
            return
        if self.task is not None and not self.task.done():
            self.again = True
            return
        self.task = asyncio.create_task(self._requests(), name="reload")

    async def finish(self, grace: float) -> None:
        """At shutdown: let a running reload finish within the grace period."""
        task = self.task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), grace)
            except asyncio.TimeoutError:
                log.warning("reload still running at shutdown; cancelling it")
                task.cancel()

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _requests(self) -> None:
        while True:
            self.again = False
            await self.reload_from_file()
            if not self.again or self.p.stopping:
                return

    async def reload_from_file(self) -> bool:
        """Re-read, validate and apply the config file. Returns whether the new config was applied."""
        from logagent.config import ConfigError, load_config
        from logagent.reload import write_reload_status

        p = self.p
        notifier = p.ops.notifier
        if notifier is not None:
            notifier.reloading()
        path = None if p.config.file == "<embedded default>" else p.config.file
        log.info("reloading config", extra={"file": p.config.file})
        error: str | None = None
        try:
            await self.apply(load_config(path))
        except ConfigError as e:
            error = str(e)
            log.error("config reload rejected; the running config stays in effect", extra={"error": error})
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.exception("config reload failed; the running config stays in effect", extra={"error": error})
        metrics.CONFIG_RELOADS.labels(result="rejected" if error else "applied").inc()
        metrics.CONFIG_LAST_RELOAD_OK.set(0 if error else 1)
        self.generation += 1
        write_reload_status(p.config.state_dir, self.generation, error)
        if notifier is not None:
            notifier.ready("reload rejected: " + error.splitlines()[0] if error else "config reloaded")
        return error is None

    async def apply(self, new_cfg: AgentConfig) -> None:
        p = self.p
        old = p.config
        loop = asyncio.get_running_loop()
        grace = new_cfg.grace_period
        for attr in _RESTART_ONLY:
            if getattr(new_cfg, attr) != getattr(old, attr):
                log.warning("setting changes apply on restart only; keeping the running value",
                            extra={"setting": attr})
        if new_cfg.http.data != old.http.data:
            log.warning("setting changes apply on restart only; keeping the running value", extra={"setting": "http"})
        new_cfg = dataclasses.replace(new_cfg, state_dir=old.state_dir, dead_letter_path=old.dead_letter_path,
                                      limits=old.limits, checkpoint_interval=old.checkpoint_interval, http=old.http)

        keep_out = {c.name for c in new_cfg.outputs
                    if c.name in p.outputs and p.outputs[c.name].comp.fingerprint() == c.fingerprint()}
        old_stages = {rs.comp.name: rs for rs in p.stages}
        started: dict[str, _RunningOutput] = {}
        new_stages: list[_RunningStage] = []
        stages: list[_RunningStage] = []
        try:
            for comp in new_cfg.outputs:
                if comp.name not in keep_out:
                    started[comp.name] = await p.start_output(comp, register=False)
            for comp in new_cfg.stages:
                rs = old_stages.get(comp.name)
                if rs is None or rs.comp.fingerprint() != comp.fingerprint():
                    rs = await p.start_stage(comp)
                    new_stages.append(rs)
                stages.append(rs)
            try:
                # The router holds this lock for one batch at a time; an output whose backend accepts nothing can
                # hold the router, and then the reload is refused rather than waiting forever.
                await asyncio.wait_for(p.routing.acquire(), grace)
            except asyncio.TimeoutError:
                stuck = [n for n, ro in p.outputs.items() if ro.queue.full()]
                raise RuntimeError(f"the router is blocked on full outputs {stuck}: restart to replace them") from None
        except BaseException:
            for ro in started.values():
                ro.stopping = True
                if ro.task is not None:
                    ro.task.cancel()
                await ro.output.stop()
            for rs in new_stages:
                await p.stop_stage(rs)
            raise
        try:
            retired = [ro for name, ro in p.outputs.items() if name not in keep_out]
            p.outputs = {c.name: started.get(c.name) or p.outputs[c.name] for c in new_cfg.outputs}
            kept_stage_ids = {id(rs) for rs in stages}
            retired_stages = [rs for rs in p.stages if id(rs) not in kept_stage_ids]
            p.stages = stages
            p.invalidate_routes()
            p.config = new_cfg
            p.ctx.config = new_cfg
        finally:
            p.routing.release()

        new_inputs = {c.name: c for c in new_cfg.inputs}
        replaced_inputs = [name for name, ri in p.inputs.items()
                           if name not in new_inputs or ri.comp.fingerprint() != new_inputs[name].fingerprint()]
        added_inputs = [name for name in new_inputs if name not in p.inputs]

        async def retire_output(ro: _RunningOutput) -> None:
            await p.retire_output(ro)
            if ro.task is not None:
                await _await_slowly(ro.task, f"output {ro.comp.name} draining", grace)
            await ro.output.stop()
            successor = p.outputs.get(ro.comp.name)
            if successor is None:
                p.health_state.remove("output", ro.comp.name)
            elif successor.task is not None and not successor.task.done():
                p.health_state.set("output", ro.comp.name, RUNNING)  # the old one's "stopped" is not its state

        async def replace_input(name: str) -> None:
            if name in p.inputs:
                await p.stop_input(name, loop.time() + grace)
                tracker = p.ctx.checkpoints.tracker(name)
                await _await_slowly(_acknowledged(tracker), f"input {name} acknowledgements", grace)
                tracker.listeners.clear()  # the stopped input's; its replacement registers its own
                try:
                    tracker.flush()
                except Exception as e:  # kept and retried by the checkpoint writer
                    log.error("checkpoint write failed; will retry", extra={"error": f"{type(e).__name__}: {e}"})
            if name in new_inputs:
                p.start_input(new_inputs[name])
            else:
                p.health_state.remove("input", name)

        await asyncio.gather(*(retire_output(ro) for ro in retired),
                             *(replace_input(n) for n in [*replaced_inputs, *added_inputs]))
        for rs in retired_stages:
            await p.stop_stage(rs)
            if rs.comp.name in {s.comp.name for s in p.stages}:
                p.health_state.set("stage", rs.comp.name, RUNNING)  # replaced by a stage of the same name
            else:
                p.health_state.remove("stage", rs.comp.name)
        log.info("config reloaded", extra={
            "outputs_replaced": [ro.comp.name for ro in retired], "outputs_started": list(started),
            "inputs_replaced": replaced_inputs, "inputs_started": added_inputs,
            "stages_replaced": [rs.comp.name for rs in retired_stages]})


async def _acknowledged(tracker: PositionTracker) -> None:
    while tracker.pending():
        await asyncio.sleep(0.02)


async def _await_slowly(aw: Awaitable[object], what: str, warn_after: float) -> None:
    """Wait without a deadline (giving up would lose or duplicate records), warning when it takes long."""
    task = asyncio.ensure_future(aw)
    while True:
        done, _ = await asyncio.wait({task}, timeout=warn_after)
        if done:
            task.result()
            return
        log.warning("reload still waiting", extra={"for": what})
