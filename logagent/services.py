"""How components reach each other: `Services`, one typed slot per thing a component offers to others.

Each slot has one provider and is read where it is needed (a slot left `None` means that provider is not configured
or not started, and every reader copes with that):

- `health` (the pipeline): `report_degraded` / `report_recovered` of every component.
- `inject` (the pipeline): batches a stage makes outside `process`, e.g. kernel incidents closed by their timer.
- `stop_agent` (the pipeline; the sidecar command sets its own): the stdout outputs stop the agent when stdout
  is gone.
- `kubernetes` (the first `kubernetes` stage, shared by all of them): the pod cache and the one list+watch; the
  `signatures` stage reads the cache (`PodLookup`) to attribute an OOM kill to its pod.
- `file_overrides` (the `kubernetes` stage, once started): the file input asks it for a path's pod annotations
  (parser, multiline, exclude) when it opens a file.
- `node_problems`, `node_problems_open` (the `node_problems` stage): the `signatures` stage hands them its incidents.
- `kernel_conditions` (the `signatures` stages): the node conditions kernel incidents set, for the process's life.

The slots hold typed callables and Protocols, so mypy follows every call across components.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from logagent.record import Batch, Record

if TYPE_CHECKING:
    from logagent.kubernetes.stage import KubernetesShared


class HealthReport(Protocol):
    """Where components say they work, but not as configured (`logagent.supervisor.Health`)."""

    def degraded(self, kind: str, name: str, reason: str) -> None: ...

    def recovered(self, kind: str, name: str) -> None: ...


class PodLookup(Protocol):
    """The read side of the pod cache (`logagent.kubernetes.cache.PodCache`): a pod's or container's metadata."""

    def by_uid(self, uid: str) -> dict[str, Any] | None: ...

    def by_container_id(self, container_id: str) -> dict[str, Any] | None: ...


# a path's settings from its pod's annotations (`{"exclude": True}`, a parser, multiline), or None for none
FileOverrides = Callable[[str], "dict[str, Any] | None"]
# a batch into the pipeline, routed like an input's, with the same backpressure
Inject = Callable[[Batch], Awaitable[None]]
# the event records of closed kernel incidents, to be reported to Kubernetes (never waits)
ProblemsReport = Callable[[list[Record]], None]
# a permanent problem in a report still open (`Incident.summary()`): its node condition is set at once
OpenProblemReport = Callable[[dict[str, Any]], None]


@dataclass
class Services:
    """The typed slots through which components find each other (see the module docstring for who fills which)."""

    health: HealthReport | None = None
    inject: Inject | None = None
    stop_agent: Callable[[], None] | None = None
    kubernetes: KubernetesShared | None = None
    file_overrides: FileOverrides | None = None
    node_problems: ProblemsReport | None = None
    node_problems_open: OpenProblemReport | None = None
    kernel_conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
