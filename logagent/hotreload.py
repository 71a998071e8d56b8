"""Hot reload: SIGHUP (or `logagent reload`) re-reads the config file and applies it to the running pipeline.

Reloads run one at a time; a request during one runs after it. An invalid config is rejected and logged, and the
running one stays in effect. The outcome is written for `logagent reload` (logagent.reload) and told to systemd.

Applying (`Reloader.apply`): components whose `fingerprint()` is unchanged keep running. New and changed outputs
are started first (a failing start rejects the reload with nothing changed); then, between two batches, the router
switches to the new outputs and stages; the replaced outputs get no new batches, are drained and stopped. A
changed input is stopped and its replacement starts only once every batch it emitted is acknowledged, so it
resumes from exactly the committed position: no record is lost or read twice.

A config that needs TLS, in an agent started without it (logagent.tls: asyncio was imported without ssl), cannot
be applied in place: once it is validated (as at start-up, CA and certificate files included) the agent restarts
in place instead. It stops as on SIGTERM (inputs stop, in-flight batches are delivered within the grace period,
positions are written), then `logagent.cli` executes it again, same pid and arguments, and the new process reports
the reload's generation once its pipeline started. A SIGTERM/SIGINT meanwhile cancels the restart: the agent exits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from logagent import metrics, tls
from logagent.supervisor import RUNNING

if TYPE_CHECKING:
    from logagent.checkpoint import PositionTracker
    from logagent.config import AgentConfig
    from logagent.pipeline import Pipeline, _RunningOutput, _RunningStage

log = logging.getLogger("logagent.pipeline")

_RESTART_ONLY = ("state_dir", "dead_letter_path", "limits", "checkpoint_interval")
RESTART_ENV = "LOGAGENT_RESTART_GENERATION"  # set for the process executed by a restart: the reload it applies
_restart: dict[str, str] | None = None  # what `restart_requested` hands to the command line


def restart_requested() -> dict[str, str] | None:
    """After the pipeline stopped: the environment to execute the agent again with, if a reload asked for it."""
    return _restart


class Reloader:
    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.task: asyncio.Task[None] | None = None
        self.again = False
        self.generation = 0
        self.restarting = False
        self._restarted = os.environ.pop(RESTART_ENV, None)

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

    def started(self) -> None:
        """The pipeline is running. In a process a restart executed: the reload that caused it is applied now."""
        from logagent.reload import write_reload_status

        if self._restarted is None:
            return
        try:
            self.generation = int(self._restarted)
        except ValueError:
            pass
        self._restarted = None
        metrics.CONFIG_RELOADS.labels(result="applied").inc()
        metrics.CONFIG_LAST_RELOAD_OK.set(1)
        write_reload_status(self.p.config.state_dir, self.generation, None)
        log.info("config reloaded", extra={"restarted": True, "generation": self.generation})

    async def reload_from_file(self) -> bool:
        """Re-read, validate and apply the config file. Returns whether the new config was applied (or the agent
        restarts to apply it)."""
        from logagent import registry
        from logagent.config import ConfigError, read_config
        from logagent.reload import write_reload_status

        p = self.p
        notifier = p.ops.notifier
        if notifier is not None:
            notifier.reloading()
        path = None if p.config.file == "<embedded default>" else p.config.file
        log.info("reloading config", extra={"file": p.config.file})
        error: str | None = None
        try:
            new_cfg = read_config(path)
            needs_tls = [] if tls.available() else tls.uses(new_cfg)
            if needs_tls:
                tls.enable()  # the new config's CA and certificate files are checked with ssl
            registry.validate(new_cfg)
            if needs_tls:
                self._restart(needs_tls)
                return True
            await self.apply(new_cfg)
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

    def _restart(self, needs_tls: list[str]) -> None:
        """Stop the pipeline gracefully; the command line then executes the agent again (see the module doc)."""
        global _restart
        log.warning("the new config needs TLS, which this process did not load: restarting in place",
                    extra={"needs_tls": needs_tls})
        _restart = {RESTART_ENV: str(self.generation + 1)}
        self.restarting = True
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signal_while_restarting, sig)
        self.p.request_stop()

    def _signal_while_restarting(self, signum: int) -> None:
        global _restart
        name = signal.Signals(signum).name
        if _restart is not None:
            _restart = None
            self.restarting = False
            log.info("shutting down instead of restarting", extra={"signal": name})
            if self.p.ops.notifier is not None:
                self.p.ops.notifier.stopping("shutting down: draining in-flight batches")
            return
        log.warning("second signal: exiting at once", extra={"signal": name})  # as Pipeline.run does
        try:
            self.p.ctx.checkpoints.flush()
        except Exception as e:
            log.error("checkpoint write failed", extra={"error": f"{type(e).__name__}: {e}"})
        os._exit(128 + signum)

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
