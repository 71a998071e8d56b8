"""Supervision (issue 9, item 4): a component that fails is restarted with backoff, logged, and reported by name on
/readyz and in `logagent_component_state`; a degraded component is reported too, while records still flow.

The pipeline runs in-process with its real HTTP server on 127.0.0.1 (port 0), a real file output, and test inputs
that fail the way the file input failed in the issue (EMFILE from inotify at watcher start); the last test runs the
real agent with a kmsg input whose device is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from logagent import registry
from logagent.component import Input, Stage
from logagent.config import Section, parse_config
from logagent.pipeline import Pipeline
from logagent.record import Batch
from tests.helpers import async_wait_for, kmsg_writable, wait_for
from tests.ops_support import Agent, agent_base_url, http_get, read_jsonl, sample, scrape, write_lines


class FlakyInput(Input):
    """Emits records 0..9 from its committed position, 5 per batch; fails with EMFILE after the first batch, and
    at every start while `FlakyInput.broken` is set."""

    broken = True
    starts = 0

    @classmethod
    def parse_settings(cls, section: Section) -> None:
        section.done()

    async def run(self, emit: Any) -> None:
        FlakyInput.starts += 1
        self._stop = asyncio.Event()
        tracker = self.ctx.checkpoints.tracker(self.name)
        pos = (tracker.committed.get("src") or {"offset": 0})["offset"]
        if pos > 0 and FlakyInput.broken:
            raise OSError(errno.EMFILE, "Too many open files (inotify_init1)")
        while pos < 10:
            records = [{"message": f"line {i}", "offset": i} for i in range(pos, pos + 5)]
            pos += 5
            await emit(Batch("flaky", records, {"input": self.name}, tracker.token("src", {"offset": pos}), 50))
            if FlakyInput.broken:
                await async_wait_for(lambda: tracker.pending() == 0, what="the first batch acknowledged")
                raise OSError(errno.EMFILE, "Too many open files (inotify_init1)")
        await self._stop.wait()

    async def stop(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()


class DegradedInput(Input):
    """Reports itself degraded (as the file input does when it falls back to polling), emits, recovers on cue."""

    recover: asyncio.Event

    @classmethod
    def parse_settings(cls, section: Section) -> None:
        section.done()

    async def run(self, emit: Any) -> None:
        self._stop = asyncio.Event()
        self.report_degraded("inotify unavailable (EMFILE): polling every 1s")
        await emit(Batch("deg", [{"message": "still flowing"}], {"input": self.name}))
        await DegradedInput.recover.wait()
        self.report_recovered()
        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()


class BrokenStage(Stage):
    @classmethod
    def parse_settings(cls, section: Section) -> None:
        section.done()

    def process(self, batch: Batch) -> list[Batch]:
        raise KeyError("kubernetes")


@pytest.fixture(autouse=True)
def _types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.INPUTS, "flaky", f"{__name__}:FlakyInput")
    monkeypatch.setitem(registry.INPUTS, "degraded", f"{__name__}:DegradedInput")
    monkeypatch.setitem(registry.STAGES, "broken", f"{__name__}:BrokenStage")
    FlakyInput.broken = True
    FlakyInput.starts = 0


def _pipeline(tmp_path: Path, inputs: list[dict[str, Any]], stages: list[dict[str, Any]] | None = None) -> Pipeline:
    return Pipeline(parse_config({
        "state_dir": str(tmp_path / "state"), "checkpoint_interval": "20ms", "grace_period": "2s",
        "http": {"address": "127.0.0.1:0"}, "inputs": inputs, "pipeline": stages or [],
        "outputs": [{"type": "file", "name": "sink", "path": str(tmp_path / "out.jsonl")}]}, "test.yaml"))


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if resp.content_type == "application/json" else body.decode()


def _metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _shipped(tmp_path: Path) -> list[str]:
    path = tmp_path / "out.jsonl"
    return [orjson.loads(line)["message"] for line in path.read_bytes().splitlines()] if path.exists() else []


async def test_a_failing_input_is_restarted_and_readyz_names_it_until_it_runs_again(tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="logagent.supervisor")
    p = _pipeline(tmp_path, [{"type": "flaky", "name": "flaky"}])
    await p.ops.start()
    await p.start()
    host, port = p.ops.s.server.bound[0]
    base = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            # it failed after its first batch and keeps failing at start: restarting, with its name and error
            await async_wait_for(lambda: FlakyInput.starts >= 2, 20, what="a restart")
            status, body = await _get(session, base + "/readyz")
            assert status == 503
            assert body["not_ready"] == {"input:flaky": "restarting: OSError: [Errno 24] Too many open files "
                                                        "(inotify_init1)"}
            metrics = (await _get(session, base + "/metrics"))[1]
            assert _metric(metrics, "logagent_component_state", component="flaky", kind="input",
                           state="restarting") == 1
            assert _metric(metrics, "logagent_component_state", component="flaky", kind="input",
                           state="running") == 0
            assert (_metric(metrics, "logagent_component_restarts_total", component="flaky", kind="input") or 0) >= 1
            status, body = await _get(session, base + "/healthz")
            assert status == 200 and "input:flaky restarting" in body["reason"]

            FlakyInput.broken = False  # the cause went away: the next restart runs, from the acknowledged position
            await async_wait_for(lambda: len(_shipped(tmp_path)) == 10, 30, what="the rest shipped after restart")
            status, body = await _get(session, base + "/readyz")
            assert (status, body) == (200, {"status": "ready", "not_ready": {}})
            metrics = (await _get(session, base + "/metrics"))[1]
            assert _metric(metrics, "logagent_component_state", component="flaky", kind="input",
                           state="running") == 1
    finally:
        p.request_stop()
        await p.shutdown()
        await p.ops.stop()
    assert _shipped(tmp_path) == [f"line {i}" for i in range(10)]  # each once: restarts resume where acked
    restarts = [r for r in caplog.records if r.getMessage() == "restarting component"]
    assert restarts and all(r.component == "flaky" for r in restarts)  # type: ignore[attr-defined]
    delays = [r.delay_s for r in restarts]  # type: ignore[attr-defined]
    assert delays == sorted(delays) and delays[0] == 0.5  # backoff grows


async def test_shutdown_does_not_wait_out_the_backoff_of_a_restarting_input(tmp_path) -> None:
    p = _pipeline(tmp_path, [{"type": "flaky", "name": "flaky"}])
    p.config = p.ctx.config = dataclasses.replace(p.config, grace_period=60.0)
    await p.start()
    try:
        # starts at 0, 0.5, 1.5, 3.5 and 7.5 s, each failing: the next one is 8 s away
        await async_wait_for(lambda: FlakyInput.starts >= 5, 30, what="five failed starts")
    finally:
        p.request_stop()
        await asyncio.wait_for(p.shutdown(), 5)  # not the 8 s backoff, nor the 60 s grace period
    assert p.health_state.components[("input", "flaky")].state == "stopped"


async def test_a_degraded_input_is_listed_by_readyz_while_its_records_flow(tmp_path) -> None:
    DegradedInput.recover = asyncio.Event()
    p = _pipeline(tmp_path, [{"type": "degraded", "name": "pods"}])
    await p.ops.start()
    await p.start()
    host, port = p.ops.s.server.bound[0]
    base = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await async_wait_for(lambda: _shipped(tmp_path) == ["still flowing"], 20, what="the record shipped")
            status, body = await _get(session, base + "/readyz")
            assert (status, body) == (200, {"status": "ready", "not_ready": {}, "degraded": {
                "input:pods": "degraded: inotify unavailable (EMFILE): polling every 1s"}})
            metrics = (await _get(session, base + "/metrics"))[1]
            assert _metric(metrics, "logagent_component_state", component="pods", kind="input",
                           state="degraded") == 1
            DegradedInput.recover.set()
            await async_wait_for(lambda: not p.health_state.not_running(), 20, what="recovered")
            status, body = await _get(session, base + "/readyz")
            assert (status, body) == (200, {"status": "ready", "not_ready": {}})
    finally:
        p.request_stop()
        await p.shutdown()
        await p.ops.stop()


async def test_a_stage_that_fails_on_a_batch_passes_it_on_and_is_reported_degraded(tmp_path) -> None:
    DegradedInput.recover = asyncio.Event()
    DegradedInput.recover.set()
    p = _pipeline(tmp_path, [{"type": "degraded", "name": "pods"}], [{"type": "broken", "name": "kube"}])
    await p.start()
    try:
        await async_wait_for(lambda: _shipped(tmp_path) == ["still flowing"], 20, what="the record shipped")
        assert p.health_state.degraded_components() == {"stage:kube": "degraded: failed on a batch: KeyError: "
                                                                      "'kubernetes'"}
    finally:
        p.request_stop()
        await p.shutdown()


def test_the_real_agent_reports_a_failing_input_by_name_on_readyz_and_restarts_it(tmp_path) -> None:
    """`python -m logagent run` with a kmsg input whose device is missing: the file input keeps shipping, /readyz
    answers 503 naming `input:kernel`, and once the device appears (a link to the real /dev/kmsg, root only) the
    restarted input runs and /readyz answers 200."""
    device = tmp_path / "kmsg"
    (tmp_path / "logs").mkdir()
    cfg = {"state_dir": str(tmp_path / "state"), "http": {"address": "127.0.0.1:0"},
           "inputs": [{"type": "file", "name": "app", "paths": [str(tmp_path / "logs" / "*.log")],
                       "poll_interval": "200ms"},
                      {"type": "kmsg", "name": "kernel", "path": str(device)}],
           "outputs": [{"type": "file", "name": "sink", "path": str(tmp_path / "out.jsonl")}]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    agent = Agent(tmp_path / "cfg.yaml", tmp_path)
    try:
        base = agent_base_url(agent)
        write_lines(tmp_path / "logs" / "a.log", ["still shipped"])
        wait_for(lambda: any(r.get("message") == "still shipped" for r in read_jsonl(tmp_path / "out.jsonl")), 30,
                 what="the file input shipping")
        status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(http_get(base + "/readyz")), 30,
                                what="/readyz 503")
        not_ready = orjson.loads(body)["not_ready"]
        assert list(not_ready) == ["input:kernel"]
        assert not_ready["input:kernel"].startswith("restarting: FileNotFoundError: [Errno 2] No such file")
        assert sample(scrape(base), "logagent_component_state", component="kernel", kind="input",
                      state="restarting") == 1
        assert sample(scrape(base), "logagent_component_state", component="app", kind="input", state="running") == 1
        assert agent.logged("restarting component")
        if not kmsg_writable():
            return
        os.symlink("/dev/kmsg", device)  # the device appears: the next restart opens it
        wait_for(lambda: http_get(base + "/readyz")[0] == 200, 60, what="/readyz 200 once the input runs")
        assert sample(scrape(base), "logagent_component_state", component="kernel", kind="input",
                      state="running") == 1
        assert sample(scrape(base), "logagent_component_restarts_total", component="kernel", kind="input") >= 1
    finally:
        assert agent.stop() == 0
