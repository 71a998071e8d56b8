"""OOM attribution: which pod and container an OOM kill hit, and the last lines that container wrote.

The kernel names the victim's memory cgroup in the `oom-kill:` line (`task_memcg=`, 4.19+) or, on older kernels,
in `Task in <memcg> killed as a result of limit of <memcg>`. Kubernetes puts every container in a cgroup whose
path carries the pod uid and the container id:

    cgroup v1 / cgroupfs driver   /kubepods[/burstable|/besteffort]/pod<uid>/<container id>
    systemd driver (v1 and v2)    /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice/
                                  cri-containerd-<id>.scope | docker-<id>.scope | crio-<id>.scope

`parse_memcg` reads those; the pod cache (`ctx.services.kubernetes.cache`, a `PodCache`, read as a `PodLookup`)
turns them into metadata when the API watch runs, and without it the path alone still gives pod uid and container
id.

`ContainerTails` keeps the last lines of every container whose log batches pass the stage, in memory bounded by
a number of containers, lines per container and total bytes (least recently written container evicted first).
It works per batch: one `extend` of a batch's last N messages, never a loop over every line.

This module never does I/O and never waits for the API server.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from logagent.services import PodLookup

_POD_V1 = re.compile(r"/pod(?P<uid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
                     r"(?:/(?P<cid>[0-9a-fA-F]{12,64}))?(?:/|$)")
_POD_SYSTEMD = re.compile(r"-pod(?P<uid>[0-9a-fA-F]{8}_[0-9a-fA-F]{4}_[0-9a-fA-F]{4}_[0-9a-fA-F]{4}_[0-9a-fA-F]{12})"
                          r"\.slice(?:/(?:cri-containerd|docker|crio|cri-o|containerd)-(?P<cid>[0-9a-fA-F]{12,64})"
                          r"\.scope)?")
_TASK_IN = re.compile(r"^Task in (?P<memcg>\S+) killed as a result of limit of (?P<limit>\S+)")
_QOS = re.compile(r"kubepods[-/.](?:slice/kubepods-)?(?P<qos>burstable|besteffort)")


@dataclass(frozen=True)
class CgroupOwner:
    """What a memcg path says about the container it belongs to."""

    pod_uid: str
    container_id: str | None
    qos_class: str

    def as_meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pod_uid": self.pod_uid, "qos_class": self.qos_class}
        if self.container_id:
            out["container_id"] = self.container_id
        return out


def parse_memcg(path: str | None) -> CgroupOwner | None:
    """Pod uid and container id from a Kubernetes memory cgroup path; None for any other cgroup."""
    if not path or "kubepods" not in path:
        return None
    m = _POD_SYSTEMD.search(path)
    if m is not None:
        uid = m["uid"].replace("_", "-")
    else:
        m = _POD_V1.search(path)
        if m is None:
            return None
        uid = m["uid"]
    q = _QOS.search(path)
    return CgroupOwner(uid.lower(), m["cid"].lower() if m["cid"] else None,
                       q["qos"].capitalize() if q else "Guaranteed")


def victim_memcg(fields: dict[str, str], lines: Sequence[str]) -> str | None:
    """The victim's memcg: the oom-kill line's `task_memcg`, else the pre-4.19 `Task in ... killed` line."""
    memcg = fields.get("task_memcg")
    if memcg:
        return memcg
    for line in lines:
        if line.startswith("Task in "):
            m = _TASK_IN.match(line)
            if m is not None:
                return m["memcg"]
    return None


class ContainerTails:
    """The last `lines` messages of each container, bounded in containers and bytes.

    Keys: the container id when the batch metadata has one, else `<pod uid>/<container name>` (a /var/log/pods
    path read without the API gives no id). `last(...)` tries the id, then the pod's container by name, then the
    pod's only buffered container.
    """

    def __init__(self, lines: int = 20, max_containers: int = 1000, max_bytes: int = 4 << 20,
                 max_line_bytes: int = 2048) -> None:
        self.lines = lines
        self.max_containers = max_containers
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        self._tails: OrderedDict[str, tuple[deque[str], list[int]]] = OrderedDict()  # key -> (lines, [bytes])
        self._by_pod: dict[str, dict[str, str]] = {}  # pod uid -> container name -> key
        self._key_pod: dict[str, tuple[str, str]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._tails)

    def add(self, kmeta: dict[str, Any], messages: Sequence[str]) -> None:
        """Remember the last lines of one container-log batch (`kmeta` is its `meta["kubernetes"]`)."""
        if self.lines <= 0 or not messages:
            return
        cid = kmeta.get("container_id")
        uid = kmeta.get("pod_uid")
        name = kmeta.get("container") or ""
        if not name and not cid:
            return  # a pod volume's files (kube-volume): not what a container wrote to its stdout
        if cid:
            key = str(cid)
        elif uid:
            key = f"{uid}/{name}"
        else:
            return
        entry = self._tails.get(key)
        if entry is None:
            entry = (deque(maxlen=self.lines), [0])
            self._tails[key] = entry
            if uid:
                self._by_pod.setdefault(str(uid), {})[name] = key
                self._key_pod[key] = (str(uid), name)
        else:
            self._tails.move_to_end(key)
        buf, size = entry
        cap = self.max_line_bytes
        buf.extend(m if len(m) <= cap else m[:cap] for m in messages[-self.lines:])
        new_size = sum(map(len, buf))
        self.bytes += new_size - size[0]
        size[0] = new_size
        while self._tails and (len(self._tails) > self.max_containers or self.bytes > self.max_bytes):
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        key, (_, size) = self._tails.popitem(last=False)
        self.bytes -= size[0]
        owner = self._key_pod.pop(key, None)
        if owner is not None:
            names = self._by_pod.get(owner[0])
            if names is not None and names.get(owner[1]) == key:
                del names[owner[1]]
                if not names:
                    del self._by_pod[owner[0]]

    def last(self, container_id: str | None, pod_uid: str | None = None,
             container: str | None = None) -> tuple[list[str], str] | None:
        """(lines, how they were matched: container_id | pod_container | pod_only) or None."""
        if container_id:
            entry = self._tails.get(container_id)
            if entry is None and len(container_id) >= 12:  # runtimes and logs disagree on short/long ids
                entry = next((e for k, e in self._tails.items() if k.startswith(container_id)
                              or container_id.startswith(k)), None)
            if entry is not None:
                return list(entry[0]), "container_id"
        if pod_uid:
            names = self._by_pod.get(pod_uid)
            if names:
                if container and container in names:
                    return list(self._tails[names[container]][0]), "pod_container"
                if len(names) == 1:
                    return list(self._tails[next(iter(names.values()))][0]), "pod_only"
        return None


def attribute(owner: CgroupOwner, cache: PodLookup | None, tails: ContainerTails | None) -> dict[str, Any]:
    """Event fields for an OOM kill in a Kubernetes container: `kubernetes` metadata (from the pod cache when it
    knows the pod, else from the path) and `container_last_lines` with how they were matched."""
    kmeta: dict[str, Any] | None = None
    if cache is not None:
        if owner.container_id:
            kmeta = cache.by_container_id(owner.container_id)
        if kmeta is None:
            pod = cache.by_uid(owner.pod_uid)
            if pod is not None:
                containers = pod.pop("containers", [])
                kmeta = pod
                for c in containers:
                    cid = c.get("container_id")
                    if owner.container_id and cid and (cid.startswith(owner.container_id)
                                                       or owner.container_id.startswith(cid)):
                        kmeta.update({k: v for k, v in c.items() if v is not None})
                        break
    if kmeta is None:
        kmeta = owner.as_meta()
    else:
        kmeta = dict(kmeta)
        kmeta.setdefault("qos_class", owner.qos_class)
        if owner.container_id:
            kmeta.setdefault("container_id", owner.container_id)
    out: dict[str, Any] = {"kubernetes": kmeta}
    if tails is not None:
        found = tails.last(owner.container_id, owner.pod_uid, kmeta.get("container"))
        if found is not None:
            out["container_last_lines"], out["container_lines_matched_by"] = found
    return out
