"""logagent.metricslib: what it exposes parses with prometheus-client's own text parser, label values escaped,
counters and gauges as Prometheus types them, removed children gone, process metrics from /proc."""

from __future__ import annotations

import os
import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from logagent.metricslib import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest


def parsed(registry: CollectorRegistry) -> dict[str, tuple[str, dict[tuple[tuple[str, str], ...], float]]]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        out[fam.name] = (fam.type, {(s.name, *sorted(s.labels.items())): s.value for s in fam.samples})
    return out


def test_counters_gauges_and_awkward_label_values_round_trip_through_the_prometheus_parser() -> None:
    reg = CollectorRegistry()
    c = Counter("app_records_total", "Records\nread \\ by an input", ["input", "path"], registry=reg)
    g = Gauge("app_lag_bytes", "Lag", ["path"], registry=reg)
    plain = Gauge("app_ok", "One if fine", registry=reg)
    weird = 'a "quoted"\\path\nwith newline'
    c.labels(input="x", path=weird).inc(3)
    c.labels(input="x", path=weird).inc()
    c.labels(input="y", path="/p").inc(2.5)
    g.labels(path="/a").set(10)
    g.labels(path="/b").set(7)
    g.labels(path="/b").dec(2)
    plain.set(1)
    fams = parsed(reg)
    assert fams["app_records"][0] == "counter"
    assert fams["app_records"][1] == {("app_records_total", ("input", "x"), ("path", weird)): 4.0,
                                      ("app_records_total", ("input", "y"), ("path", "/p")): 2.5}
    assert fams["app_lag_bytes"] == ("gauge", {("app_lag_bytes", ("path", "/a")): 10.0,
                                               ("app_lag_bytes", ("path", "/b")): 5.0})
    assert fams["app_ok"] == ("gauge", {("app_ok",): 1.0})
    assert reg.get_sample_value("app_records_total", {"input": "x", "path": weird}) == 4.0
    assert reg.get_sample_value("app_records_total", {"input": "z", "path": weird}) is None
    assert c.labels(input="x", path=weird)._value.get() == 4.0

    g.remove("/a")
    assert parsed(reg)["app_lag_bytes"][1] == {("app_lag_bytes", ("path", "/b")): 5.0}


def test_misuse_is_refused() -> None:
    reg = CollectorRegistry()
    c = Counter("x_total", "x", ["a"], registry=reg)
    with pytest.raises(ValueError):
        c.labels(b="1")
    with pytest.raises(ValueError):
        c.labels("1", "2")
    with pytest.raises(ValueError):
        c.labels(a="1").inc(-1)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("x", "again", ["a"], registry=reg)


def test_increments_from_threads_are_not_lost() -> None:
    reg = CollectorRegistry()
    c = Counter("n_total", "n", ["t"], registry=reg)

    def work() -> None:
        child = c.labels(t="a")
        for _ in range(20_000):
            child.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reg.get_sample_value("n_total", {"t": "a"}) == 80_000


def test_process_metrics_are_this_process() -> None:
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    fams = parsed(reg)
    rss = fams["process_resident_memory_bytes"][1][("process_resident_memory_bytes",)]
    with open("/proc/self/status") as fh:
        vmrss = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))
    assert abs(rss - vmrss) < 0.2 * vmrss
    assert fams["process_cpu_seconds"][0] == "counter"
    assert fams["process_cpu_seconds"][1][("process_cpu_seconds_total",)] > 0
    assert fams["process_open_fds"][1][("process_open_fds",)] == pytest.approx(len(os.listdir("/proc/self/fd")),
                                                                                abs=3)
    start = fams["process_start_time_seconds"][1][("process_start_time_seconds",)]
    assert time.time() - 86400 < start <= time.time() + 1  # this test process started earlier today
