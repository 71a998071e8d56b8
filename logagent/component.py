"""The three kinds of pipeline component and what they are given.

An `Input` reads a source and emits `Batch`es, awaiting `emit` (which blocks when the pipeline is full: that is
the backpressure). A `Stage` transforms a batch synchronously (parse, enrich, detect). An `Output` takes batches,
ships them and acknowledges each batch's token once the backend confirmed it (or after dead-lettering records it
rejected for good). Each component parses its settings once, from a `Section`, in `parse_settings`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from logagent.checkpoint import CheckpointStore
from logagent.config import AgentConfig, Section
from logagent.deadletter import DeadLetter
from logagent.record import Batch
from logagent.services import Services

Emit = Callable[[Batch], Awaitable[None]]


@dataclass
class Context:
    """What every component may use: the agent config, checkpoints, the dead-letter file, and the typed slots
    through which components reach each other (`logagent.services.Services`)."""

    config: AgentConfig
    checkpoints: CheckpointStore
    dead_letter: DeadLetter
    services: Services = field(default_factory=Services)


_S = TypeVar("_S")  # a component's settings dataclass (what `parse_settings` returns)


class Component(abc.ABC, Generic[_S]):
    def __init__(self, name: str, settings: _S, ctx: Context) -> None:
        self.name = name
        self.settings = settings
        self.ctx = ctx
        self.log = logging.getLogger(f"logagent.{self.kind()}.{name}")

    @classmethod
    def kind(cls) -> str:
        return "component"

    def report_degraded(self, reason: str) -> None:
        """Say that this component works, but not as configured (e.g. "inotify unavailable: polling"): shown by
        /readyz and `logagent_component_state{state="degraded"}`, logged once per new reason. Cheap to repeat."""
        health = self.ctx.services.health
        if health is not None:
            health.degraded(self.kind(), self.name, reason)

    def report_recovered(self) -> None:
        """Back to normal after `report_degraded`."""
        health = self.ctx.services.health
        if health is not None:
            health.recovered(self.kind(), self.name)

    @classmethod
    @abc.abstractmethod
    def parse_settings(cls, section: Section) -> _S:
        """Validate settings into a frozen dataclass; call `section.done()` to reject unknown keys."""


class Input(Component[_S]):
    @classmethod
    def kind(cls) -> str:
        return "input"

    @abc.abstractmethod
    async def run(self, emit: Emit) -> None:
        """Read until `stop()` is called, emitting batches. Must not return early on a bad record."""

    async def stop(self) -> None:
        """Stop reading soon; `run` returns after emitting what it already read."""


class Stage(Component[_S]):
    @classmethod
    def kind(cls) -> str:
        return "stage"

    async def start(self) -> None:
        """Start background work (e.g. an API watch)."""

    async def stop(self) -> None:
        """Stop background work."""

    def drain(self) -> list[Batch]:
        """At shutdown, after the inputs stopped and before the outputs flush: batches the stage still holds
        (e.g. a kernel report waiting for its last lines), so that they are shipped rather than lost."""
        return []

    @abc.abstractmethod
    def process(self, batch: Batch) -> Iterable[Batch]:
        """Return the batch (changed or not), several batches, or none. A batch that is not returned is
        acknowledged by the pipeline; derived batches (events) carry a no-op token."""


class Output(Component[_S]):
    @classmethod
    def kind(cls) -> str:
        return "output"

    async def start(self) -> None:
        """Open connections, start flush timers."""

    @abc.abstractmethod
    async def send(self, batch: Batch) -> None:
        """Take a batch; call `batch.ack.done()` exactly once when all of it is delivered or dead-lettered.
        May await to apply backpressure (e.g. while too many requests are in flight)."""

    async def flush(self) -> None:
        """Ship what is buffered and wait for it (used at shutdown and reload)."""

    def cut(self) -> None:
        """Start shipping what is buffered now, without waiting for it: the pipeline calls this when this output's
        unacknowledged window is full, so nothing more arrives until what it holds is confirmed."""

    async def stop(self) -> None:
        """Close connections. Called after `flush`."""

    def ready(self) -> bool:
        """For /readyz: the backend is reachable or the buffer is below its limit."""
        return True
