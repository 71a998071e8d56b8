"""`logagent reload`: ask the running agent to re-read its config (the same as `kill -HUP`), and say what happened.

The running agent writes its pid to `<state_dir>/logagent.pid` once its pipeline started and, after every reload,
the outcome to `<state_dir>/logagent.reload.json` (`{"generation": n, "ok": bool, "error": str|null}`). This
command validates the config first when given `-c` (so a typo is reported here, not only in the agent's log),
sends SIGHUP and waits for the next generation to report back.

This module must never signal a process that is not a logagent (a stale pidfile after a reboot can name any pid).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import orjson

PIDFILE = "logagent.pid"
STATUSFILE = "logagent.reload.json"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_pidfile(state_dir: str) -> str | None:
    path = Path(state_dir) / PIDFILE
    try:
        _atomic_write(path, f"{os.getpid()}\n".encode())
    except OSError:
        return None  # reload by signal still works; only `logagent reload` cannot find us
    return str(path)


def remove_pidfile(path: str) -> None:
    """Remove our pidfile, but not one a newer agent wrote over it."""
    try:
        if Path(path).read_text().strip() == str(os.getpid()):
            os.unlink(path)
    except OSError:
        pass


def write_reload_status(state_dir: str, generation: int, error: str | None) -> None:
    body = {"generation": generation, "pid": os.getpid(), "ok": error is None, "error": error, "time": time.time()}
    try:
        _atomic_write(Path(state_dir) / STATUSFILE, orjson.dumps(body))
    except OSError:
        pass


def read_reload_status(state_dir: str) -> dict[str, object]:
    try:
        data = orjson.loads((Path(state_dir) / STATUSFILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_logagent(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"logagent" in cmdline


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="validate this config before signalling (and take state_dir from it)")
    parser.add_argument("--state-dir", help="where the running agent keeps logagent.pid "
                        "(default: from -c, else $LOGAGENT_STATE_DIR, else /var/lib/logagent)")
    parser.add_argument("--pid", type=int, help="signal this pid instead of reading the pidfile")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the outcome (default 30)")
    parser.add_argument("--no-wait", action="store_true", help="send the signal and return")


def run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir
    if args.config:
        from logagent.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            print(f"logagent reload: config error, not reloading: {e}", file=sys.stderr)
            return 2
        state_dir = state_dir or cfg.state_dir
    state_dir = state_dir or os.environ.get("LOGAGENT_STATE_DIR", "/var/lib/logagent")

    pid = args.pid
    if pid is None:
        pidfile = Path(state_dir) / PIDFILE
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            print(f"logagent reload: no running agent found (no readable pidfile at {pidfile})", file=sys.stderr)
            return 1
    if not _is_logagent(pid):
        print(f"logagent reload: pid {pid} is not a running logagent (stale pidfile?)", file=sys.stderr)
        return 1

    before = read_reload_status(state_dir)
    before_key = (before.get("pid"), before.get("generation"))
    os.kill(pid, signal.SIGHUP)
    if args.no_wait:
        print(f"logagent reload: sent SIGHUP to {pid}")
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        status = read_reload_status(state_dir)
        if status.get("pid") == pid and (status.get("pid"), status.get("generation")) != before_key:
            if status.get("ok"):
                print(f"logagent reload: pid {pid} applied the new config")
                return 0
            print(f"logagent reload: pid {pid} rejected the new config and keeps the old one: {status.get('error')}",
                  file=sys.stderr)
            return 1
        time.sleep(0.05)  # polling a file another process writes; there is no event to wait on
    print(f"logagent reload: sent SIGHUP to {pid}, no outcome within {args.timeout:g}s "
          f"(see the agent's log)", file=sys.stderr)
    return 1
