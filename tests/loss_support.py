"""Support for the loss tests and `benchmarks/bench_loss.py`: a node's container runtime and kubelet, and logrotate,
writing and rotating real files while the real agent (`python -m logagent run`, a subprocess) ships them into the
Elasticsearch-faithful `_bulk` receiver (`create` with a known `_id` -> 409, as ES does), and is `kill -9`ed.

- `KubeletNode`: containers laid out as on a node (`/var/log/pods/<ns>_<pod>_<uid>/<c>/0.log`, linked from
  `/var/log/containers/<pod>_<ns>_<c>-<id>.log`), CRI lines written by one thread per container the way a runtime
  does (one `write(2)` per line, file kept open); the kubelet's rotation: `0.log` renamed to `0.log.<stamp>`
  when it passes `rotate_bytes`, the runtime writes a few more lines to the renamed file before it reopens
  `0.log`, and only `keep` rotated files are kept (the oldest is deleted).
- `CopyTruncate`: one file written with O_APPEND; logrotate's copytruncate (copy to `.1` after shifting `.1` ->
  `.2`..., then truncate). The bytes written between the copy and the truncation are lost by design: the rotator
  records exactly those lines (`window`), with the writer held only for the truncation.
- `Stored`: what the receiver holds, checked per line: lost (never stored), duplicated (stored under two ids).

Every line carries its id and the wall-clock time it was written, so latency is measured per line.
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.receivers.es import BulkReceiver


class TimedReceiver(BulkReceiver):
    """The `_bulk` receiver, stamping each document first stored with the moment its request had arrived whole
    (per-line latency: what the agent took, not the time this process then spends decoding the request)."""

    def __init__(self) -> None:
        super().__init__(keep_docs=False)
        self.arrived: dict[str, float] = {}
        self.decode_s = 0.0  # the receiver's own time between a request's arrival and its documents being stored

    async def bulk(self, request: Any) -> Any:
        await request.read()  # the whole body (aiohttp keeps it for the parser)
        received = time.time()
        n = len(self.docs)
        response = await super().bulk(request)
        if len(self.docs) > n:
            self.decode_s = max(self.decode_s, time.time() - received)
            for _id in itertools.islice(self.docs, n, None):  # dicts keep insertion order: the new ones are last
                self.arrived.setdefault(_id, received)
        return response


def line_id(message: str) -> str:
    return message.split(" ", 1)[0]


@dataclass
class Stored:
    lost: list[str]
    duplicated: list[str]
    total: int

    @classmethod
    def check(cls, receiver: BulkReceiver, expected: list[str]) -> Stored:
        counts = collections.Counter(line_id(d["message"]) for d in receiver.docs.values())
        lost = [i for i in expected if i not in counts]
        dups = sorted(i for i, n in counts.items() if n > 1)
        return cls(lost, dups, len(expected))

    def summary(self) -> str:
        """Lost lines as ranges per prefix (c0-0000100..c0-0000250), for a readable failure."""
        ranges: list[str] = []
        prev: tuple[str, int] | None = None
        start = ""
        for i in self.lost:
            prefix, _, num = i.rpartition("-") if "-" in i else (i[:1], "", i[1:])
            cur = (prefix, int(num))
            if prev is None or cur[0] != prev[0] or cur[1] != prev[1] + 1:
                if prev is not None:
                    ranges.append(f"{start}..{prev[1]}")
                start = i
            prev = cur
        if prev is not None:
            ranges.append(f"{start}..{prev[1]}")
        return f"{len(self.lost)} of {self.total} lost: " + ", ".join(ranges[:20])


# -- the kubelet layout ---------------------------------------------------------------------------------------
@dataclass
class Container:
    root: Path
    n: int
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    cid: str = field(default_factory=lambda: uuid.uuid4().hex + uuid.uuid4().hex)

    @property
    def directory(self) -> Path:
        return self.root / "var/log/pods" / f"ns_pod{self.n}-7d9f_{self.uid}" / "app"

    @property
    def log(self) -> Path:
        return self.directory / "0.log"

    @property
    def link(self) -> Path:
        return self.root / "var/log/containers" / f"pod{self.n}-7d9f_ns_app-{self.cid}.log"

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        self.link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(self.log, self.link)


class KubeletNode:
    """`containers` containers, each written at `rate` lines/s (0: as fast as `line_bytes` allows, throttled to
    `bytes_per_s`), rotated at `rotate_bytes`, `keep` rotated files kept."""

    def __init__(self, root: Path, containers: int, lines: int, line_bytes: int = 200, rate: float = 0.0,
                 rotate_bytes: int = 256 * 1024, keep: int = 3, late_lines: int = 3) -> None:
        self.root = root
        self.containers = [Container(root, i) for i in range(containers)]
        self.lines = lines  # per container
        self.line_bytes = line_bytes
        self.rate = rate
        self.rotate_bytes = rotate_bytes
        self.keep = keep
        self.late_lines = late_lines
        self.rotations = 0
        self.count = [0] * containers  # lines written per container
        self.history: list[tuple[float, int, int, str]] = []  # (time, container, first line of the next file, dest)
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.errors: list[BaseException] = []

    @property
    def glob(self) -> str:
        return f"{self.root}/var/log/containers/*.log"

    def create(self) -> None:
        for c in self.containers:
            c.create()

    @property
    def expected(self) -> list[str]:
        """Every line written so far (all of them once the writers are done)."""
        return [f"c{c.n}-{i:07d}" for c in self.containers for i in range(self.count[c.n])]

    def start(self) -> None:
        for c in self.containers:
            t = threading.Thread(target=self._run, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            self._stop.set()
            raise AssertionError("writers did not finish in time")
        if self.errors:
            raise self.errors[0]

    def stop(self) -> None:
        self._stop.set()

    def writing(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _line(self, c: Container, i: int) -> bytes:
        stamp = time.time()
        head = f"c{c.n}-{i:07d} t={stamp:.6f} "
        pad = "x" * max(0, self.line_bytes - len(head) - 45)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1e9):09d}Z"
        return f"{ts} stdout F {head}{pad}\n".encode()

    def _run(self, c: Container) -> None:
        try:
            self._write(c)
        except BaseException as e:  # reported by join()
            self.errors.append(e)

    def _write(self, c: Container) -> None:
        rotated: list[Path] = []
        f = open(c.log, "ab", buffering=0)
        size = 0
        start = time.monotonic()
        i = 0
        while i < self.lines and not self._stop.is_set():
            if self.rate:
                ahead = i / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(min(ahead, 0.05))
                    continue
            data = self._line(c, i)
            f.write(data)
            size += len(data)
            i += 1
            self.count[c.n] = i
            if size >= self.rotate_bytes:
                # kubelet: rename, the runtime writes on to the renamed file until it reopens its log
                stamp = time.strftime("%Y%m%d-%H%M%S") + f"{time.monotonic_ns() % 1_000_000:06d}"
                dest = c.log.with_name(f"0.log.{stamp}")
                os.rename(c.log, dest)
                self.rotations += 1
                self.history.append((time.time(), c.n, i, dest.name))
                for _ in range(min(self.late_lines, self.lines - i)):
                    f.write(self._line(c, i))
                    i += 1
                    self.count[c.n] = i
                f.close()
                f = open(c.log, "ab", buffering=0)
                size = 0
                rotated.append(dest)
                while len(rotated) > self.keep:
                    os.unlink(rotated.pop(0))
        f.close()


# -- copytruncate ---------------------------------------------------------------------------------------------
class CopyTruncate:
    """A writer appending to `path` and logrotate's copytruncate every `every` seconds, `keep` copies."""

    def __init__(self, directory: Path, lines: int, rate: float, every: float, keep: int = 5,
                 line_bytes: int = 120) -> None:
        self.path = directory / "app.log"
        self.lines = lines
        self.rate = rate
        self.every = every
        self.keep = keep
        self.line_bytes = line_bytes
        self.lock = threading.Lock()
        self.window: set[str] = set()  # lines written after a copy was taken and before the truncation
        self.rotations = 0
        self.written = 0
        self.done = threading.Event()
        self.expected = [f"L{i:07d}" for i in range(lines)]
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.path.touch()
        for target in (self._writer, self._rotator):
            t = threading.Thread(target=self._guard, args=(target,), daemon=True)
            t.start()
            self._threads.append(t)

    def _guard(self, target: Any) -> None:
        try:
            target()
        except BaseException as e:
            self.errors.append(e)
            self.done.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            raise AssertionError("copytruncate writer did not finish in time")
        if self.errors:
            raise self.errors[0]

    def _writer(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        start = time.monotonic()
        try:
            for i in range(self.lines):
                ahead = i / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
                head = f"L{i:07d} t={time.time():.6f} "
                with self.lock:
                    os.write(fd, (head + "y" * max(0, self.line_bytes - len(head) - 1) + "\n").encode())
                    self.written = i + 1
        finally:
            os.close(fd)
            self.done.set()

    def _rotator(self) -> None:
        while not self.done.wait(self.every):
            self.rotate()
        self.rotate()  # one more after the last line: the end is read from a copy too

    def rotate(self) -> None:
        d, name = self.path.parent, self.path.name
        oldest = d / f"{name}.{self.keep}"
        if oldest.exists():
            oldest.unlink()
        for n in range(self.keep - 1, 0, -1):
            src = d / f"{name}.{n}"
            if src.exists():
                os.rename(src, d / f"{name}.{n + 1}")
        copy = d / f"{name}.1"
        with open(self.path, "rb") as src_f, open(copy, "wb") as dst_f:
            copied = 0
            while chunk := src_f.read(1 << 20):
                dst_f.write(chunk)
                copied += len(chunk)
        with self.lock:  # the writer is held only for this: what it wrote since the copy is lost, by design
            size = os.path.getsize(self.path)
            if size > copied:
                with open(self.path, "rb") as f:
                    f.seek(copied)
                    lost = f.read(size - copied)
                self.window.update(line_id(x.decode()) for x in lost.split(b"\n") if x)
            os.truncate(self.path, 0)
        self.rotations += 1


# -- the agent ------------------------------------------------------------------------------------------------
def es_agent_config(work: Path, url: str, paths: list[str], fmt: str = "auto", **input_opts: Any) -> dict[str, Any]:
    return {
        "state_dir": str(work / "state"), "checkpoint_interval": "50ms", "grace_period": "5s",
        "http": {"enabled": False},
        "inputs": [{"type": "file", "name": "logs", "paths": paths, "format": fmt, "tag": "logs",
                    "rotate_wait": "2s", **input_opts}],
        "outputs": [{"type": "elasticsearch", "name": "es", "url": url, "index": "logs",
                     "retry": {"initial_backoff": "50ms", "max_backoff": "500ms"}}],
    }


class AgentProcess:
    """The real agent as a subprocess; `kill9()` and `restart()` for crash tests."""

    def __init__(self, work: Path, doc: dict[str, Any], inotify_instances: int | None = None) -> None:
        self.work = work
        self.cfg = work / "agent.yaml"
        self.cfg.write_text(yaml.safe_dump(doc))
        self.log_path = work / "agent.log"
        # run in a user namespace of its own whose inotify instance limit is this (the global sysctl and every
        # other process's budget are left alone)
        self.inotify_instances = inotify_instances
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0
        self.starts = 0
        self.kill_times: list[float] = []

    def start(self) -> AgentProcess:
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-m", "logagent", "run", "-c", str(self.cfg)]
        if self.inotify_instances is not None:
            cmd = ["unshare", "--user", "--map-root-user", "sh", "-c",
                   'echo "$0" > /proc/sys/user/max_inotify_instances && exec "$@"', str(self.inotify_instances), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        self.starts += 1
        return self

    def started(self) -> bool:
        """The latest start got as far as running its pipeline (its log says so)."""
        try:
            text = self.log_path.read_bytes()
        except OSError:
            return False
        return text.count(b'"pipeline started"') >= self.starts

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.kill_times.append(time.time())
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        deadline = time.monotonic() + 30
        while not self.started() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # a SIGTERM before its handlers are installed would kill it instead of stopping it
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def kill_loop(agent: AgentProcess, kills: int, running: Any, rng: random.Random, low: float = 0.3,
              high: float = 1.5, caught_up: Any = lambda: True) -> None:
    """`kill -9` the agent `kills` times at random moments while `running()` (writers at work), restarting it at
    once each time. Each kill lands `low`..`high` s after the agent's pipeline started (a restart takes seconds on
    a loaded machine: killing it while it imports would only test how long files outlive a dead agent), and once
    `caught_up()` says it reads as fast as the writers write again (else the kills only measure how long the
    rotated files outlive a lagging agent on a loaded machine)."""
    while agent.kills < kills and running():
        deadline = time.monotonic() + 60
        while not (agent.started() and caught_up()):
            if not agent.alive():
                raise AssertionError("agent died on its own:\n" + agent.log_tail())
            if time.monotonic() > deadline:
                return  # it does not catch up: no more kills; what is missing is reported by the caller
            time.sleep(0.02)
        time.sleep(rng.uniform(low, high))
        if not agent.alive():
            raise AssertionError("agent died on its own:\n" + agent.log_tail())
        agent.kill9()
        agent.start()
