"""Support for the end-to-end tests: a node's container-log tree in a temp dir, written the way the kubelet and the
container runtime write it, and the agent configuration that tails it as deployed.

`ContainerLog` lays one container out as a node does — the runtime writes `/var/log/pods/<ns>_<pod>_<uid>/<c>/0.log`,
the kubelet links `/var/log/containers/<pod>_<ns>_<c>-<64 hex id>.log` to it — and rotates it by the kubelet's
scheme (`0.log` renamed to `0.log.<YYYYmmdd-HHMMSS>`, then the runtime reopens a new `0.log`). Tests write bytes
into these files while the agent runs; what the agent made of them is read from its output file only.
"""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.filetail import agent_config

KEYS = ("time", "stream", "message", "fragments", "lines")


@dataclass
class ContainerLog:
    root: Path
    namespace: str = "shop"
    pod: str = "orders-5f6d7c8b9-x2k4q"
    container: str = "orders"
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    container_id: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex)
    restart: int = 0
    written: int = 0  # bytes written to the current 0.log

    @property
    def directory(self) -> Path:
        return self.root / "var/log/pods" / f"{self.namespace}_{self.pod}_{self.uid}" / self.container

    @property
    def path(self) -> Path:
        return self.directory / f"{self.restart}.log"

    @property
    def link(self) -> Path:
        return (self.root / "var/log/containers"
                / f"{self.pod}_{self.namespace}_{self.container}-{self.container_id}.log")

    @property
    def glob(self) -> str:
        return f"{self.root}/var/log/containers/*.log"

    def create(self) -> ContainerLog:
        """The runtime creates the (empty) log file, the kubelet links it (absolute target, as it does)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self.link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(self.path, self.link)
        return self

    def write(self, data: bytes) -> None:
        """One write(2) in append mode, as the runtime does for each log record."""
        with open(self.path, "ab") as f:
            f.write(data)
        self.written += len(data)

    def rotate(self, stamp: str = "20240514-091205") -> Path:
        """The kubelet's rotation: rename `0.log` to `0.log.<stamp>`, the runtime reopens a new empty `0.log`."""
        rotated = self.path.with_name(f"{self.path.name}.{stamp}")
        os.rename(self.path, rotated)
        self.path.touch()
        self.written = 0
        return rotated

    def path_meta(self) -> dict[str, Any]:
        """What the paths alone say about the container (the kubernetes stage with `api: false`)."""
        return {"namespace": self.namespace, "pod": self.pod, "pod_uid": self.uid, "container": self.container,
                "container_id": self.container_id, "restart_count": self.restart}


def node_agent_config(tmp_path: Path, log: ContainerLog, multiline: str = "none",
                      stages: list[dict[str, Any]] | None = None, **input_opts: Any) -> dict[str, Any]:
    """The deployed container-log input (format auto, tag kube) over the test's node tree, the kubernetes stage
    without API access (path metadata), a JSON-lines file output."""
    kube = {"type": "kubernetes", "api": False, "root": str(log.root)}
    return agent_config(tmp_path, [log.glob], top={"pipeline": [kube, *(stages or [])]}, format="auto",
                        multiline=multiline, tag="kube", poll_interval="100ms", **input_opts)


def cuts_for(data: bytes, n: int, seed: str) -> list[int]:
    """n distinct cut positions in data, reproducible per seed: byte positions anywhere, so most fall mid-line and
    some inside a UTF-8 character."""
    rng = random.Random(seed)
    if len(data) < 2:
        return []
    return sorted(rng.sample(range(1, len(data)), min(n, len(data) - 1)))


def followed_tail(file_input: Any, link: Path) -> Any:
    """The tailer's `Tail` for the file the link points at now (None until it follows it)."""
    key = file_input.by_path.get(str(link))
    return file_input.tails.get(key) if key is not None else None


def comparable(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records grouped per stream with only the compared fields: the README's rule (order within a stream)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r.get("stream", "?"), []).append({k: r.get(k) for k in KEYS})
    return out
