"""The whole agent, per output: CPU per GB of container logs, memory, bytes on the wire (issue 11).

One command runs `python -m logagent run` as a subprocess for each output, on real files, with real HTTP to a
loopback receiver in another process, and prints one table:

    python benchmarks/bench_agent.py [--lines 2000000] [--rounds 1] [--outputs es,es-none,loki,sls,file]
                                     [--steady 60] [--quick] [--dir DIR] [--py-spy DIR] [--set KEY=YAML]

Workload (throughput): N CRI lines (default 2,000,000 ≈ 330 MB, 165 B average, ~1.4 % `P` pieces: the generator
of `bench_tail.py`) in `/var/log/pods/shop_web-0_<uid>/main/0.log` under a work directory, linked from
`/var/log/containers/web-0_shop_main-<id>.log` as the kubelet does. The agent runs a `file` input (`format: cri`)
on the containers glob, the `kubernetes` stage (`api: false`: metadata from the path) and one output, everything
else at its defaults. The agent starts with the link absent; once `/healthz` answers and it has sat idle for
`--idle` seconds (its idle RSS is read then), the link is created and the clock starts. The run ends when the
receiver has counted every record; the agent is then stopped with SIGTERM and must exit 0 with the file
checkpointed at its size (`logagent status`).

    lines/s      physical input lines over the data phase (link created -> last record received)
    CPU-s/GB     user+system time of the agent process (all threads, /proc/<pid>/stat) in the data phase per
                 10^9 input bytes
    peak RSS     VmHWM of the agent at the end of the data phase
    idle RSS     VmRSS after start-up, with the output configured and nothing to read yet
    sent         bytes on the wire: request bodies as received (compressed when compressed) or the file's size

Outputs: `es` (elasticsearch, defaults: gzip), `es-none` (elasticsearch, `compression: none`), `loki` (protobuf +
snappy, the default), `sls` (lz4, the only choice), `file` (JSON lines, fsync at its default, on).

Steady rate (`--steady SECONDS`, elasticsearch defaults): a writer in this process appends 512-byte CRI lines at
10 MB/s (a 1 MB chunk each 100 ms) to the file being tailed; the agent's CPU over the window is printed as % of
one core, with its RSS at the end and its peak over the window.

The receivers (`--sink KIND`, run by this script in a child process) decode what they count: ES bodies are
un-gzipped and counted by NDJSON line pairs, Loki `PushRequest`s are snappy-decoded and parsed with
protoc-generated classes, SLS `LogGroup`s are LZ4-decoded and parsed likewise. They answer as the services do
on success (ES `{"errors": false}`, Loki 204, SLS 200). The first document of each output is kept and printed
with `--show-doc`.

`--rounds N` runs the outputs interleaved (es, es-none, loki, sls, file, es, ...) and prints medians: on a shared
machine that is the only fair comparison. `--quick` is 300,000 lines, 15 s steady, 2 s idle. `--py-spy DIR`
records a py-spy profile (collapsed stacks) of each agent run into DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_tail import cpu_seconds, generate_once, machine, memory_kib  # noqa: E402

OUTPUTS = ("es", "es-none", "loki", "sls", "file")
POD_UID = "6f1c2a4e-0b7d-4c1e-9a55-3d2f7e8b9c01"
CONTAINER_ID = "0123456789abcdef" * 4
SLS_ENDPOINT = "cn-bench.log.aliyuncs.com"

# -- the receiver (child process) ---------------------------------------------------------------------------------


def run_sink(kind: str, port_file: str, latency: float = 0.0) -> None:
    """A counting receiver that decodes the wire format and answers like the service on success, `latency`
    seconds after it has read a request (a backend's round trip: `--latency`)."""
    import asyncio
    import zlib

    import cramjam
    import lz4.block
    from aiohttp import web

    from logagent.outputs.proto.logproto_pb2 import PushRequest
    from logagent.outputs.proto.sls_logs_pb2 import LogGroup

    stats: dict[str, Any] = {"records": 0, "bytes": 0, "raw_bytes": 0, "requests": 0, "doc": None}

    async def bulk(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if latency:
            await asyncio.sleep(latency)
        stats["bytes"] += len(body)
        stats["requests"] += 1
        if request.headers.get("Content-Encoding") == "gzip":
            body = zlib.decompress(body, 47)
        stats["raw_bytes"] += len(body)
        n = body.count(b"\n")
        if n % 2 or not body.endswith(b"\n"):
            return web.json_response({"error": {"type": "illegal_argument_exception", "reason": "bad body"}},
                                     status=400)
        if stats["doc"] is None:
            lines = body.split(b"\n", 2)
            stats["doc"] = {"action": json.loads(lines[0]), "source": json.loads(lines[1])}
        stats["records"] += n // 2
        return web.Response(body=b'{"took":1,"errors":false,"items":[]}', content_type="application/json")

    async def push(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if latency:
            await asyncio.sleep(latency)
        stats["bytes"] += len(body)
        stats["requests"] += 1
        raw = bytes(cramjam.snappy.decompress_raw(body))
        stats["raw_bytes"] += len(raw)
        req = PushRequest()
        req.ParseFromString(raw)
        for s in req.streams:
            stats["records"] += len(s.entries)
        if stats["doc"] is None and req.streams:
            s = req.streams[0]
            e = s.entries[0]
            stats["doc"] = {"labels": s.labels, "line": e.line,
                            "metadata": {m.name: m.value for m in e.structuredMetadata}}
        return web.Response(status=204)

    async def putlogs(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if latency:
            await asyncio.sleep(latency)
        stats["bytes"] += len(body)
        stats["requests"] += 1
        raw = lz4.block.decompress(body, uncompressed_size=int(request.headers["x-log-bodyrawsize"]))
        stats["raw_bytes"] += len(raw)
        group = LogGroup()
        group.ParseFromString(raw)
        stats["records"] += len(group.Logs)
        if stats["doc"] is None and group.Logs:
            stats["doc"] = {c.Key: c.Value for c in group.Logs[0].Contents}
        return web.Response(status=200, headers={"x-log-requestid": f"bench-{stats['requests']}"})

    async def get_stats(request: web.Request) -> web.StreamResponse:
        return web.json_response(stats)

    async def main() -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_get("/stats", get_stats)
        if kind == "es":
            app.router.add_post("/_bulk", bulk)
        elif kind == "loki":
            app.router.add_post("/loki/api/v1/push", push)
        else:
            app.router.add_post("/logstores/{store}/shards/lb", putlogs)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        tmp = port_file + ".tmp"
        Path(tmp).write_text(str(sock.getsockname()[1]))
        os.rename(tmp, port_file)
        await asyncio.Event().wait()

    asyncio.run(main())


class Sink:
    def __init__(self, kind: str, work: Path, latency: float = 0.0) -> None:
        port_file = work / f"sink-{kind}.port"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, __file__, "--sink", kind, "--port-file", str(port_file),
                                      "--latency", str(latency)], cwd=ROOT)
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {kind} receiver did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port_file.read_text()}"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class FileCount:
    """The file output's progress: records are lines of the output file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.pos = 0
        self.doc: Any = None

    def stats(self) -> dict[str, Any]:
        if self.path.exists():
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                while chunk := fh.read(1 << 22):
                    if self.doc is None:
                        self.doc = json.loads(chunk.split(b"\n", 1)[0])
                    self.count += chunk.count(b"\n")
                    self.pos += len(chunk)
        return {"records": self.count, "bytes": self.pos, "doc": self.doc}


# -- the agent ----------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def output_config(kind: str, url: str, work: Path) -> dict[str, Any]:
    if kind == "es":
        return {"type": "elasticsearch", "name": "out", "url": url}
    if kind == "es-none":
        return {"type": "elasticsearch", "name": "out", "url": url, "compression": "none"}
    if kind == "loki":
        return {"type": "loki", "name": "out", "url": url}
    if kind == "sls":
        return {"type": "sls", "name": "out", "url": url, "endpoint": SLS_ENDPOINT, "project": "bench",
                "logstore": "k8s", "access_key_id": "bench-id", "access_key_secret": "bench-secret"}
    return {"type": "file", "name": "out", "path": str(work / "out.jsonl")}


def write_config(work: Path, out: dict[str, Any], port: int, limits: dict[str, Any] | None = None,
                 inp: dict[str, Any] | None = None) -> Path:
    cfg: dict[str, Any] = {
        "state_dir": str(work / "state"),
        "log_level": "warning",
        "http": {"address": f"127.0.0.1:{port}"},
        "inputs": [{"type": "file", "name": "containers", "paths": [str(work / "var/log/containers/*.log")],
                    "format": "cri", "tag": "kube", **(inp or {})}],
        "pipeline": [{"type": "kubernetes", "match": ["kube"], "api": False, "root": str(work)}],
        "outputs": [{**out, "match": ["*"]}],
    }
    if limits:
        cfg["limits"] = limits
    path = work / "agent.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


class Agent:
    def __init__(self, work: Path, cfg: Path, port: int) -> None:
        self.work = work
        with open(work / "agent.stderr", "wb") as stderr:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "logagent", "run", "-c", str(cfg)], cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 60
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not become healthy within 60s")
            time.sleep(0.05)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"agent exited with {self.proc.returncode}; see {self.work / 'agent.stderr'}")

    def cpu(self) -> float:
        return sum(cpu_seconds(self.pid))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def py_spy(pid: int, out: Path | None) -> subprocess.Popen[bytes] | None:
    if out is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "100", "--nonblocking", "--format", "raw",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def checkpointed(work: Path, path: Path) -> int | None:
    res = subprocess.run([sys.executable, "-m", "logagent", "status", "--state-dir", str(work / "state"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    for line in res.stdout.splitlines():
        row = json.loads(line)
        if row.get("path") in (str(path), os.path.realpath(path)):
            return int(row["offset"])
    return None


def layout(work: Path) -> tuple[Path, Path]:
    pods = work / f"var/log/pods/shop_web-0_{POD_UID}/main"
    pods.mkdir(parents=True, exist_ok=True)
    (work / "var/log/containers").mkdir(parents=True, exist_ok=True)
    return pods / "0.log", work / f"var/log/containers/web-0_shop_main-{CONTAINER_ID}.log"


def fresh(work: Path, link: Path) -> None:
    for stale in (work / "state", work / "out.jsonl", link):
        if stale.is_symlink() or stale.is_file():
            stale.unlink()
        elif stale.is_dir():
            shutil.rmtree(stale)


def throughput_run(kind: str, args: argparse.Namespace, work: Path, log: Path, link: Path, size: int,
                   expected: int) -> dict[str, Any]:
    fresh(work, link)
    sink_kind = {"es": "es", "es-none": "es", "loki": "loki", "sls": "sls"}.get(kind)
    sink = Sink(sink_kind, work, args.latency) if sink_kind else None
    counter: Any = sink if sink is not None else FileCount(work / "out.jsonl")
    port = free_port()
    out = {**output_config(kind, sink.url if sink else "", work), **args.output_settings}
    cfg = write_config(work, out, port, args.limits, args.input_settings)
    agent = Agent(work, cfg, port)
    spy = None
    try:
        time.sleep(args.idle)
        idle = memory_kib(agent.pid)["VmRSS"]
        cpu0 = agent.cpu()
        t0 = time.monotonic()
        spy = py_spy(agent.pid, Path(args.py_spy) / f"{kind}.txt" if args.py_spy else None)
        link.symlink_to(log)
        deadline = t0 + args.timeout
        got: dict[str, Any] = {"records": 0}
        while True:
            got = counter.stats()
            if got["records"] >= expected:
                break
            agent.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"{kind}: timed out with {got['records']:,} of {expected:,} records")
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        cpu = agent.cpu() - cpu0
        mem = memory_kib(agent.pid)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        rc = agent.stop()
    final = counter.stats()
    if sink is not None:
        sink.stop()
    offset = checkpointed(work, link)
    ok = rc == 0 and final["records"] == expected and offset == size
    r = {"kind": kind, "lines_s": args.lines / elapsed, "cpu_gb": cpu / (size / 1e9), "cpu": cpu, "elapsed": elapsed,
         "peak_mb": mem["VmHWM"] / 1024, "idle_mb": idle / 1024, "sent_mb": final["bytes"] / 1e6, "ok": ok,
         "doc": final.get("doc"), "records": final["records"], "requests": final.get("requests", 0)}
    print(f"  {kind:8s} {r['lines_s']:>9,.0f} lines/s {r['cpu_gb']:>6.1f} CPU-s/GB {r['peak_mb']:>6.1f} MB peak "
          f"{r['idle_mb']:>5.1f} MB idle {r['sent_mb']:>7.1f} MB sent  ({elapsed:.1f}s, {cpu:.1f} CPU-s"
          + (f", {r['requests']:,} requests)" if sink is not None else ")")
          + ("" if ok else f"  MISMATCH: rc {rc}, {final['records']:,}/{expected:,} records, "
                           f"checkpoint {offset} of {size}"), flush=True)
    return r


# -- steady rate ---------------------------------------------------------------------------------------------------


def steady_lines(pool: list[str], start: int, n: int) -> str:
    """n CRI lines of exactly 512 bytes (newline included), stamped now."""
    t = time.time_ns()
    secs, ns = divmod(t, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ns:09d}Z"
    head = f"{stamp} stdout F "
    room = 511 - len(head)
    out = []
    for i in range(start, start + n):
        msg = pool[i % len(pool)]
        msg = (msg + " " + "x" * room)[:room] if len(msg) < room else msg[:room]
        out.append(head + msg + "\n")
    return "".join(out)


def steady_run(args: argparse.Namespace, work: Path, log: Path, link: Path) -> dict[str, Any]:
    import random

    from bench_tail import _message_pool  # the same message bodies as the throughput file

    fresh(work, link)
    pool = [m for m in _message_pool(random.Random(2), 2048, False) if m.isascii()]
    sink = Sink("es", work)
    port = free_port()
    cfg = write_config(work, {**output_config("es", sink.url, work), **args.output_settings}, port, args.limits,
                       args.input_settings)
    agent = Agent(work, cfg, port)
    # beside the throughput file, under the pods directory: a link out of the input's root is refused
    target = log.with_name("1.log")
    target.unlink(missing_ok=True)
    rate = 10 * 1024 * 1024
    per_tick = rate // 10 // 512
    written = 0
    lines = 0
    try:
        with open(target, "w") as fh:
            link.symlink_to(target)
            warm = time.monotonic() + 3.0  # the file is found and read from its start before the window opens
            while time.monotonic() < warm:
                fh.write(steady_lines(pool, lines, per_tick))
                fh.flush()
                lines += per_tick
                time.sleep(0.1)
            cpu0 = agent.cpu()
            t0 = time.monotonic()
            tick = t0
            end = t0 + args.steady
            while tick < end:
                written += fh.write(steady_lines(pool, lines, per_tick))
                fh.flush()
                lines += per_tick
                tick += 0.1
                delay = tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            elapsed = time.monotonic() - t0
            cpu = agent.cpu() - cpu0
            mem = memory_kib(agent.pid)
        deadline = time.monotonic() + 60
        while sink.stats()["records"] < lines and time.monotonic() < deadline:
            time.sleep(0.1)
        got = sink.stats()["records"]
    finally:
        agent.stop()
        sink.stop()
    r = {"core_pct": 100 * cpu / elapsed, "rss_mb": mem["VmRSS"] / 1024, "peak_mb": mem["VmHWM"] / 1024,
         "mb_s": written / elapsed / 1e6, "ok": got == lines}
    print(f"  steady   {r['mb_s']:.1f} MB/s of 512 B lines for {elapsed:.0f}s: {r['core_pct']:.1f} % of a core, "
          f"RSS {r['rss_mb']:.1f} MB (peak {r['peak_mb']:.1f} MB)"
          + ("" if r["ok"] else f"  MISMATCH: {got:,} of {lines:,} records delivered"), flush=True)
    return r


# -- main ----------------------------------------------------------------------------------------------------------


def interpreter_floor() -> str:
    """RSS of this interpreter with nothing but asyncio (and the ssl it imports) loaded: what no agent on it can go
    below. With and without `site` (`-S`): this machine's site-packages may run .pth hooks an image would not."""
    code = "import asyncio; print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    out = []
    for flags in ([], ["-S"]):
        env = dict(os.environ)
        if flags:
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
        res = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env)
        out.append(f"{int(res.stdout.split()[0]) / 1024:.1f} MB" if res.returncode == 0 else "?")
    return f"python + asyncio {out[0]} ({out[1]} with -S)"




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=None, help="CRI lines to generate (default 2,000,000 ≈ 330 MB)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds over the outputs; medians printed")
    ap.add_argument("--outputs", default=",".join(OUTPUTS), help=f"comma-separated subset of {','.join(OUTPUTS)}")
    ap.add_argument("--steady", type=float, default=None, help="seconds of the 10 MB/s steady run (0: skip)")
    ap.add_argument("--idle", type=float, default=None, help="seconds the agent sits idle before data (idle RSS)")
    ap.add_argument("--quick", action="store_true", help="300,000 lines, 15 s steady, 2 s idle")
    ap.add_argument("--dir", help="work directory, kept (the generated file is reused when its parameters match)")
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--py-spy", metavar="DIR", help="record py-spy collapsed stacks of each run into DIR")
    ap.add_argument("--show-doc", action="store_true", help="print the first shipped document of each output")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                    help="an output setting for every output, e.g. fields=all or buffer_max_bytes=16MiB (repeatable)")
    ap.add_argument("--limit", action="append", default=[], metavar="KEY=YAML",
                    help="a `limits:` setting of the agent, e.g. queue_bytes=1MiB (repeatable)")
    ap.add_argument("--input", action="append", default=[], metavar="KEY=YAML",
                    help="a setting of the file input, e.g. read_buffer=256KiB (repeatable)")
    ap.add_argument("--latency", type=float, default=0.0, metavar="SECONDS",
                    help="the HTTP receivers answer each request this long after reading it (a backend's round trip)")
    ap.add_argument("--sink", help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        run_sink(args.sink, args.port_file, args.latency)
        return 0
    import yaml

    args.output_settings = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.set)}
    args.limits = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.limit)}
    args.input_settings = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.input)}
    args.lines = args.lines or (300_000 if args.quick else 2_000_000)
    args.steady = args.steady if args.steady is not None else (15.0 if args.quick else 60.0)
    args.idle = args.idle if args.idle is not None else (2.0 if args.quick else 5.0)
    kinds = [k.strip() for k in args.outputs.split(",") if k.strip()]
    for k in kinds:
        if k not in OUTPUTS:
            ap.error(f"unknown output {k!r}; choose from {', '.join(OUTPUTS)}")
    if args.py_spy:
        Path(args.py_spy).mkdir(parents=True, exist_ok=True)

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-agent-"))
    work.mkdir(parents=True, exist_ok=True)
    log, link = layout(work)
    try:
        print(f"machine: {machine()}", flush=True)
        print(f"interpreter floor: {interpreter_floor()}", flush=True)
        size, expected = generate_once(log, args.lines, None)
        print(f"{args.lines:,} CRI lines, {size / 1e6:.1f} MB -> {expected:,} records; file input (format cri) -> "
              f"kubernetes (path metadata) -> output; {args.rounds} round(s)", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        steady: list[dict[str, Any]] = []
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}", flush=True)
            for kind in kinds:
                runs[kind].append(throughput_run(kind, args, work, log, link, size, expected))
            if args.steady > 0:
                steady.append(steady_run(args, work, log, link))

        def med(rs: list[dict[str, Any]], key: str) -> float:
            return float(statistics.median(r[key] for r in rs))

        print(f"\nmedians of {args.rounds} round(s), {args.lines:,} lines, {size / 1e6:.0f} MB:")
        print("| output | lines/s | CPU-s/GB | peak RSS | idle RSS | bytes sent |")
        print("|---|--:|--:|--:|--:|--:|")
        for kind, rs in runs.items():
            print(f"| {kind} | {med(rs, 'lines_s'):,.0f} | {med(rs, 'cpu_gb'):.1f} | {med(rs, 'peak_mb'):.0f} MB | "
                  f"{med(rs, 'idle_mb'):.0f} MB | {med(rs, 'sent_mb'):,.0f} MB |")
        if steady:
            print(f"steady 10 MB/s, {args.steady:.0f}s: {med(steady, 'core_pct'):.1f} % of a core, RSS "
                  f"{med(steady, 'rss_mb'):.0f} MB (peak {med(steady, 'peak_mb'):.0f} MB)")
        if args.show_doc:
            for kind, rs in runs.items():
                print(f"{kind}: {json.dumps(rs[0]['doc'], ensure_ascii=False)}")
        ok = all(r["ok"] for rs in runs.values() for r in rs) and all(s["ok"] for s in steady)
        print("checked: every run delivered exactly the expected records, checkpointed at the file's size"
              if ok else "MISMATCH in some run (see above)")
        return 0 if ok else 1
    finally:
        if args.dir:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
