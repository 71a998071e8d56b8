"""Counters and gauges with labels, and the Prometheus text format (0.0.4) they are scraped in.

Why not prometheus-client: importing it costs ~5 MB of RSS (its exposition module pulls in http.server,
urllib.request, wsgiref and the email package), a fifth of the idle agent's budget (25 MB, issue 11); the agent
uses counters, gauges and the process collector only. This module keeps prometheus-client's calling conventions
where the code and the tests use them (`Counter(name, help, labelnames, registry=)`, `.labels(**values)`,
`.inc()`, `.set()`, `.remove(*values)`, `child._value.get()`, `registry.get_sample_value(name, labels)`), and
its output parses with prometheus-client's own parser (tests/test_ops_metrics.py scrapes a running agent).

Updates take a lock per value: they are batch-level calls (a few per batch), and worker threads (compression,
file reads) may make them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Value:
    __slots__ = ("_v", "_lock")

    def __init__(self) -> None:
        self._v = 0.0
        self._lock = threading.Lock()

    def inc(self, n: float) -> None:
        with self._lock:
            self._v += n

    def set(self, v: float) -> None:
        with self._lock:
            self._v = float(v)

    def get(self) -> float:
        with self._lock:
            return self._v


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        if self.kind == "counter" and name.endswith("_total"):
            name = name[: -len("_total")]  # as prometheus-client: the family is `x`, the sample `x_total`
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Metric] = {}
        self._lock = threading.Lock()
        self._value = _Value()
        if registry is not None:
            registry.register(self)

    def labels(self, *values: Any, **kw: Any) -> Any:
        if not self.labelnames:
            raise ValueError(f"{self.name}: no labels declared")
        if kw:
            if values or set(kw) != set(self.labelnames):
                raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {sorted(kw)}")
            key = tuple(str(kw[n]) for n in self.labelnames)
        else:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}")
            key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    child = type(self)(self.name, self.documentation)
                    self._children[key] = child
        return child

    def remove(self, *values: Any) -> None:
        with self._lock:
            self._children.pop(tuple(str(v) for v in values), None)

    def clear(self) -> None:
        with self._lock:
            self._children.clear()

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        suffix = "_total" if self.kind == "counter" else ""
        if not self.labelnames:
            yield self.name + suffix, {}, self._value.get()
            return
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            yield self.name + suffix, dict(zip(self.labelnames, key)), child._value.get()


class Counter(_Metric):
    kind = "counter"

    def inc(self, n: float = 1) -> None:
        if n < 0:
            raise ValueError("counters only go up")
        self._value.inc(n)


class Gauge(_Metric):
    kind = "gauge"

    def inc(self, n: float = 1) -> None:
        self._value.inc(n)

    def dec(self, n: float = 1) -> None:
        self._value.inc(-n)

    def set(self, v: float) -> None:
        self._value.set(v)


class ProcessCollector:
    """process_* metrics of this process from /proc (what prometheus-client's ProcessCollector exports)."""

    name = "process"

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._boot = self._boot_time()
        if registry is not None:
            registry.register(self)

    @staticmethod
    def _boot_time() -> float:
        try:
            with open("/proc/stat", "rb") as fh:
                for line in fh:
                    if line.startswith(b"btime "):
                        return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def families(self) -> Iterator[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]:
        try:
            with open("/proc/self/stat", "rb") as fh:
                parts = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            return
        # fields after the command: state is parts[0] (field 3); utime 14, stime 15, starttime 22, vsize 23, rss 24
        utime, stime = float(parts[11]), float(parts[12])
        yield ("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge",
               [("process_virtual_memory_bytes", {}, float(parts[20]))])
        yield ("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
               [("process_resident_memory_bytes", {}, float(parts[21]) * self._page)])
        yield ("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", "gauge",
               [("process_start_time_seconds", {}, float(parts[19]) / self._ticks + self._boot)])
        yield ("process_cpu_seconds", "Total user and system CPU time spent in seconds.", "counter",
               [("process_cpu_seconds_total", {}, (utime + stime) / self._ticks)])
        try:
            fds = len(os.listdir("/proc/self/fd"))
            yield "process_open_fds", "Number of open file descriptors.", "gauge", [("process_open_fds", {}, fds)]
        except OSError:
            pass
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            yield ("process_max_fds", "Maximum number of open file descriptors.", "gauge",
                   [("process_max_fds", {}, float(soft))])
        except (ImportError, OSError, ValueError):
            pass


class CollectorRegistry:
    def __init__(self, auto_describe: bool = True) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[ProcessCollector] = []
        self._lock = threading.Lock()

    def register(self, metric: _Metric | ProcessCollector) -> None:
        with self._lock:
            if isinstance(metric, ProcessCollector):
                self._collectors.append(metric)
                return
            if metric.name in self._metrics:
                raise ValueError(f"Duplicated timeseries in CollectorRegistry: {metric.name}")
            self._metrics[metric.name] = metric

    def families(self) -> Iterator[tuple[str, str, str, Iterable[tuple[str, dict[str, str], float]]]]:
        with self._lock:
            metrics = list(self._metrics.values())
            collectors = list(self._collectors)
        for m in metrics:
            yield m.name, m.documentation, m.kind, m.samples()
        for c in collectors:
            yield from c.families()

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        want = labels or {}
        for _, _, _, samples in self.families():
            for sample, lab, value in samples:
                if sample == name and lab == want:
                    return value
        return None


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def generate_latest(registry: CollectorRegistry) -> bytes:
    """The text exposition format 0.0.4 of everything registered."""
    out: list[str] = []
    for name, doc, kind, samples in registry.families():
        if kind == "counter":
            name += "_total"  # the 0.0.4 format names a counter's family by its sample, as prometheus-client does
        out.append(f"# HELP {name} {doc.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}\n")
        out.append(f"# TYPE {name} {kind}\n")
        for sample, labels, value in samples:
            if labels:
                text = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                out.append(f"{sample}{{{text}}} {_number(value)}\n")
            else:
                out.append(f"{sample} {_number(value)}\n")
    return "".join(out).encode()
