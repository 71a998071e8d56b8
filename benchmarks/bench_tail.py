"""Tailing throughput and cost: the agent as a subprocess, one file of Kubernetes CRI lines -> file output.

Generates N CRI lines (~165 bytes on average: RFC3339Nano timestamps with Go's trailing zeros trimmed, stdout and
stderr, mostly `F` with some messages split into `P` pieces, access logs, JSON bodies, Java and Go log lines),
runs `python -m logagent run -c CFG` with a `file` input (`format: cri`, or `raw` / `auto`) and a `file` output
(fsync off), waits until the output holds every expected record, stops the agent with SIGTERM and prints:

    lines/s, MB/s      physical input lines and input bytes over the data phase
    CPU-s/GB           user+system time of the agent process (all its threads, from /proc/<pid>/stat) per 10^9
                       input bytes; the data phase (from the moment the output file is opened, after imports and
                       config load) and, separately, the whole run including start-up
    peak RSS           VmHWM of the agent process just before it is stopped

The data phase ends when the output last grew, so idle polling at the end is not counted as time. After the
stop, the run is checked: the output holds exactly the expected number of records and `logagent status` shows
the file checkpointed at its size (every record acknowledged). A mismatch exits 1.

    python benchmarks/bench_tail.py [--lines 2000000] [--format cri|raw|auto] [--multiline java] [--keep]
                                    [--dir DIR] [--py-spy FILE.svg|FILE.txt]

Reference (issue 2): Fluent Bit 5.1 tailing 330 MB of CRI lines (165 B average) with its CRI parser into a file,
on a 2-core machine: ~45 CPU-s/GB at ~140k lines/s, 48 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

# -- the log file -------------------------------------------------------------------------------------------------

_PATHS = ["/api/v1/orders", "/api/v1/orders/{id}", "/api/v1/cart", "/healthz", "/metrics", "/static/app.js",
          "/api/v2/users/{id}/profile", "/login", "/api/v1/search?q=shoes&page={n}", "/favicon.ico"]
_AGENTS = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
           "kube-probe/1.29", "Go-http-client/1.1", "curl/8.5.0", "Prometheus/2.51.0",
           "okhttp/4.12.0"]
_JAVA_CLASSES = ["c.e.shop.CheckoutController", "o.s.web.servlet.DispatcherServlet", "c.e.shop.repo.OrderRepository",
                 "c.z.hikari.pool.HikariPool", "o.a.kafka.clients.consumer.KafkaConsumer"]
_GO_FILES = ["server.go", "handler.go", "reconcile.go", "cache.go", "leaderelection.go"]
_WORDS = ["order", "payment", "user", "cart", "item", "stock", "shipment", "invoice", "retry", "timeout", "upstream",
          "cache", "miss", "hit", "refresh", "token", "session", "backend", "replica", "shard", "queue", "lag",
          "commit", "rebalance", "partition", "offset"]


def _message_pool(rng: random.Random, size: int, java_only: bool) -> list[str]:
    """Varied message bodies; the file draws from this pool so generating 2M lines stays fast."""
    pool = []
    for i in range(size):
        kind = "java" if java_only else rng.choices(["access", "json", "java", "klog", "short", "text"],
                                                     weights=[30, 25, 15, 12, 8, 10])[0]
        ip = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        words = " ".join(rng.choices(_WORDS, k=rng.randrange(2, 9)))
        if kind == "access":
            path = rng.choice(_PATHS).format(id=rng.randrange(10**6), n=rng.randrange(1, 50))
            pool.append(f'{ip} - - [14/May/2024:09:{i % 60:02d}:{rng.randrange(60):02d} +0000] "GET {path} HTTP/1.1" '
                        f'{rng.choice([200, 200, 200, 201, 204, 301, 404, 500])} {rng.randrange(50, 90000)} "-" '
                        f'"{rng.choice(_AGENTS)}"')
        elif kind == "json":
            pool.append(json.dumps({"level": rng.choice(["info", "info", "warn", "error", "debug"]),
                                    "ts": 1715677923.0 + i / 1000, "logger": rng.choice(["http", "db", "worker"]),
                                    "msg": words, "request_id": f"{rng.getrandbits(64):016x}",
                                    "trace_id": f"{rng.getrandbits(128):032x}",
                                    "duration_ms": rng.randrange(1, 3000)}, separators=(",", ":")))
        elif kind == "java":
            pool.append(f"2024-05-14 09:{i % 60:02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d} "
                        f"{rng.choice(['INFO', 'INFO', 'WARN', 'ERROR', 'DEBUG'])} 1 --- "
                        f"[nio-8080-exec-{rng.randrange(1, 17)}] {rng.choice(_JAVA_CLASSES)} : {words} "
                        f"id={rng.randrange(10**7)}")
        elif kind == "klog":
            pool.append(f"I0514 09:{i % 60:02d}:{rng.randrange(60):02d}.{rng.randrange(10**6):06d}       1 "
                        f"{rng.choice(_GO_FILES)}:{rng.randrange(40, 900)}] \"{words}\" "
                        f"object=\"shop/web-{rng.randrange(40)}\" attempt={rng.randrange(5)}")
        elif kind == "short":
            pool.append(rng.choice(["ok", "ready", "GET /healthz 200", "tick", "", "flushing 3 segments",
                                    "connection reset by peer", "done in 12ms"]))
        else:
            pool.append(f"{words} {words} {rng.randrange(10**9)} from {ip}")
    return pool


_STACK = ["java.lang.IllegalStateException: order {n} is already closed",
          "\tat com.example.shop.Order.close(Order.java:{n})",
          "\tat com.example.shop.CheckoutService.finish(CheckoutService.java:{n})",
          "\tat org.springframework.web.servlet.FrameworkServlet.service(FrameworkServlet.java:{n})",
          "\tat org.apache.catalina.core.ApplicationFilterChain.doFilter(ApplicationFilterChain.java:{n})",
          "\tat java.base/java.lang.Thread.run(Thread.java:{n})",
          "Caused by: java.sql.SQLTransientConnectionException: HikariPool-1 - Connection is not available",
          "\t... 42 more"]


def generate(path: Path, lines: int, multiline: str | None, seed: int = 1) -> tuple[int, int]:
    """Write `lines` CRI lines to path. Returns (bytes, logical records a CRI [+ multiline] parser makes of them).

    About 2% of messages are written in two `P` pieces and an `F`; with multiline java, 5% of log lines on a
    stream are followed by a stack trace on the same stream (continuation lines, one record with their header).
    """
    rng = random.Random(seed)
    pool = _message_pool(rng, 8192, multiline is not None)
    sec = 1715677923
    ns = 0
    second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    written = 0
    records = 0
    out: list[str] = []
    with open(path, "w", encoding="utf-8") as fh:
        n = 0
        while n < lines:
            ns += rng.randrange(1, 120_000)
            if ns >= 1_000_000_000:
                sec += ns // 1_000_000_000
                ns %= 1_000_000_000
                second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            frac = f"{ns:09d}".rstrip("0")
            stamp = f"{second_text}.{frac}Z" if frac else f"{second_text}Z"
            stream = "stdout" if rng.random() < 0.8 else "stderr"
            msg = pool[rng.randrange(len(pool))]
            roll = rng.random()
            if roll < 0.02 and len(msg) > 60 and n + 3 <= lines:
                a, b = len(msg) // 3, 2 * len(msg) // 3
                out.append(f"{stamp} {stream} P {msg[:a]}\n{stamp} {stream} P {msg[a:b]}\n"
                           f"{stamp} {stream} F {msg[b:]}\n")
                n += 3
            elif multiline and roll > 0.95 and n + 1 + len(_STACK) <= lines:
                out.append(f"{stamp} {stream} F {msg}\n")
                for frame in _STACK:
                    out.append(f"{stamp} {stream} F {frame.format(n=rng.randrange(20, 900))}\n")
                n += 1 + len(_STACK)
            else:
                out.append(f"{stamp} {stream} F {msg}\n")
                n += 1
            records += 1
            if len(out) >= 50_000:
                written += fh.write("".join(out))
                out.clear()
        written += fh.write("".join(out))
    size = path.stat().st_size
    assert size == written or not path.read_bytes().isascii()
    return size, records


# -- the agent ----------------------------------------------------------------------------------------------------

def write_config(work: Path, log: Path, out: Path, fmt: str, multiline: str | None, limits: dict[str, int]) -> Path:
    inp = {"type": "file", "name": "bench", "paths": [str(log)], "format": fmt, "read_from": "head"}
    if multiline:
        inp["multiline"] = multiline
        inp["multiline_flush"] = "500ms"  # the last trace waits this long for more lines
    cfg = {
        "state_dir": str(work / "state"),
        "log_level": "warning",
        "limits": limits,
        "http": {"address": "127.0.0.1:0"},
        "inputs": [inp],
        "outputs": [{"type": "file", "name": "out", "path": str(out), "fsync": False}],
    }
    path = work / "agent.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    return path


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[7])  # minflt (field 10 of stat)


def memory_kib(pid: int) -> dict[str, int]:
    result = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                result[key] = int(value.split()[0])
    return result


def run_agent(work: Path, cfg: Path, out: Path, expected: int, timeout: float,
              py_spy: str | None) -> dict[str, float]:
    with open(work / "agent.stderr", "wb") as stderr:
        t_spawn = time.monotonic()
        agent = subprocess.Popen([sys.executable, "-m", "logagent", "run", "-c", str(cfg)], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    spy = None
    try:
        while not out.exists():  # the file output opens it at start, before the input reads a byte
            if agent.poll() is not None:
                raise SystemExit(f"agent exited with {agent.returncode} before opening its output; "
                                 f"see {work / 'agent.stderr'}")
            time.sleep(0.005)
        t0 = time.monotonic()
        cpu0 = cpu_seconds(agent.pid)
        faults0 = minor_faults(agent.pid)
        if py_spy:
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(agent.pid), "--rate", "200", "--nonblocking",
                                    "--format", "flamegraph" if py_spy.endswith(".svg") else "raw", "-o", py_spy],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        count = 0
        last_growth = t0
        deadline = t0 + timeout
        with open(out, "rb") as fh:
            while count < expected:
                chunk = fh.read(1 << 22)
                if chunk:
                    count += chunk.count(b"\n")
                    last_growth = time.monotonic()
                    continue
                if agent.poll() is not None:
                    raise SystemExit(f"agent exited with {agent.returncode}; see {work / 'agent.stderr'}")
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out: {count} of {expected} records after {timeout:.0f}s")
                time.sleep(0.02)
        cpu1 = cpu_seconds(agent.pid)
        faults = minor_faults(agent.pid) - faults0
        mem = memory_kib(agent.pid)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        rc = agent.wait(60)
    if rc != 0:
        raise SystemExit(f"agent exited with {rc} after SIGTERM; see {work / 'agent.stderr'}")
    return {"elapsed": last_growth - t0, "cpu": sum(cpu1) - sum(cpu0), "sys": cpu1[1] - cpu0[1],
            "cpu_total": sum(cpu1), "startup": t0 - t_spawn, "faults": faults,
            "hwm_kib": mem.get("VmHWM", 0), "rss_kib": mem.get("VmRSS", 0), "records": count}


def checkpointed(work: Path, log: Path) -> int | None:
    """The checkpointed offset of the log file, as `logagent status --json` reports it after the stop."""
    res = subprocess.run([sys.executable, "-m", "logagent", "status", "--state-dir", str(work / "state"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    for line in res.stdout.splitlines():
        row = json.loads(line)
        if row.get("path") == str(log):
            return int(row["offset"])
    return None


def generate_once(log: Path, lines: int, multiline: str | None) -> tuple[int, int]:
    """Generate the file, or reuse one generated with the same parameters in the same directory (--dir)."""
    params = log.with_suffix(".params")
    wanted = {"lines": lines, "multiline": multiline, "version": 1}
    if log.exists() and params.exists():
        known = json.loads(params.read_text())
        if {k: known.get(k) for k in wanted} == wanted and known.get("size") == log.stat().st_size:
            print(f"reusing {lines:,} lines, {known['size'] / 1e6:.1f} MB: {log}", flush=True)
            return known["size"], known["records"]
    t = time.monotonic()
    size, records = generate(log, lines, multiline)
    params.write_text(json.dumps({**wanted, "size": size, "records": records}))
    print(f"generated {lines:,} lines, {size / 1e6:.1f} MB ({size / lines:.0f} B/line) "
          f"in {time.monotonic() - t:.1f}s: {log}", flush=True)
    return size, records


def one_run(args: argparse.Namespace, work: Path, log: Path, size: int, expected: int, limits: dict) -> dict:
    out = work / "out.jsonl"
    for stale in (out, work / "state"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    cfg = write_config(work, log, out, args.format, args.multiline, limits)
    r = run_agent(work, cfg, out, expected, args.timeout, args.py_spy)
    offset = checkpointed(work, log)
    with open(out, "rb") as fh:  # after the stop: nothing written twice during shutdown either
        r["records"] = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 22), b""))
    gb = size / 1e9
    r.update(lines_s=args.lines / r["elapsed"], mb_s=size / 1e6 / r["elapsed"], cpu_gb=r["cpu"] / gb,
             rss_mb=r["hwm_kib"] / 1024, ok=r["records"] == expected and offset == size)
    print(f"  {r['lines_s']:>10,.0f} lines/s {r['mb_s']:>6.1f} MB/s {r['cpu_gb']:>6.1f} CPU-s/GB "
          f"{r['rss_mb']:>6.1f} MB peak RSS   ({r['elapsed']:.2f}s; {r['cpu']:.2f} CPU-s, {r['sys']:.2f} system; "
          f"{r['faults']:,} page faults; start-up {r['startup']:.2f}s, whole run {r['cpu_total'] / gb:.1f} CPU-s/GB)",
          flush=True)
    if not r["ok"]:
        print(f"  MISMATCH: {r['records']:,} records (expected {expected:,}), checkpoint {offset} (size {size})")
    return r


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM; Python {platform.python_version()}; "
            f"{platform.system()} {platform.release()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=2_000_000, help="physical CRI lines to generate (default 2M ~ 330MB)")
    ap.add_argument("--format", choices=("cri", "raw", "auto"), default="cri", help="the input's format setting")
    ap.add_argument("--multiline", choices=("java",), default=None, help="java stack traces, `multiline: java`")
    ap.add_argument("--runs", type=int, default=1, help="run the agent this many times; the median is summarised")
    ap.add_argument("--limit", action="append", default=[], metavar="KEY=VALUE",
                    help="a `limits` setting for the agent, e.g. queue_batches=8 (repeatable)")
    ap.add_argument("--dir", help="work directory, kept (the generated file is reused when its parameters match)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds of data phase")
    ap.add_argument("--py-spy", metavar="FILE", help="record a py-spy profile of the data phase (needs py-spy): a "
                    "flame graph for *.svg, else collapsed stacks")
    args = ap.parse_args()

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-tail-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "containers" / "web-0_shop_main-0123abcd.log"
    log.parent.mkdir(exist_ok=True)
    limits: dict[str, int | str] = {}
    for item in args.limit:
        key, _, value = item.partition("=")
        limits[key] = int(value) if value.isdigit() else value
    try:
        print(f"machine: {machine()}", flush=True)
        size, logical = generate_once(log, args.lines, args.multiline)
        expected = args.lines if args.format == "raw" else logical
        mode = args.format + (f" + multiline {args.multiline}" if args.multiline else "")
        print(f"format {mode}: {args.lines:,} lines -> {expected:,} records; file output, fsync off"
              + (f"; limits {limits}" if limits else ""), flush=True)
        runs = [one_run(args, work, log, size, expected, limits) for _ in range(args.runs)]
        if args.runs > 1:
            def median(key: str) -> float:
                return float(statistics.median(r[key] for r in runs))
            print(f"median of {args.runs}: {median('lines_s'):,.0f} lines/s, {median('mb_s'):.1f} MB/s, "
                  f"{median('cpu_gb'):.1f} CPU-s/GB, {median('rss_mb'):.1f} MB peak RSS")
        ok = all(r["ok"] for r in runs)
        if ok:
            print(f"checked: every run wrote exactly {expected:,} records and checkpointed the file at its size")
        return 0 if ok else 1
    finally:
        if args.keep or args.dir:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
