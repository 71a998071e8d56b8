"""`logagent` command line: run, check, status, and the tools that reuse the pipeline's parts
(`cat`, `classify`, `sidecar`, `reload`), which live with the code they exercise and are imported on demand."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

# Commands implemented beside the code they exercise. Each module has `configure(parser)` and `run(args) -> int`.
PLUGIN_COMMANDS = {
    "cat": ("logagent.parsers.cli", "read container log files once and print the logical records"),
    "classify": ("logagent.signatures.cli", "classify kernel log text with the problem signatures"),
    "sidecar": ("logagent.sidecar", "run inside a pod: tail files on a shared volume to stdout"),
    "reload": ("logagent.reload", "ask a running agent to re-read its config"),
}
# ...of which these never need TLS: as the program, they run without a TLS stack (logagent.tls; a sidecar runs in
# every pod that has one: idle RSS 28.2 -> 24.1 MB)
NO_TLS_COMMANDS = frozenset({"sidecar"})


def _cmd_run(args: argparse.Namespace) -> int:
    from logagent import selflog, tls
    from logagent.config import ConfigError, read_config

    try:
        cfg = read_config(args.config, aside=True)  # PyYAML is imported by a child, not by the agent
        # Before anything imports asyncio: without a TLS stack when nothing in the config can need one
        tls_uses = tls.uses(cfg)
        if not tls_uses:
            tls.disable()
        from logagent import registry

        registry.validate(cfg)
    except ConfigError as e:
        print(f"logagent: config error: {e}", file=sys.stderr)
        return 2
    selflog.setup(cfg.log_level)
    import asyncio

    from logagent.hotreload import restart_requested
    from logagent.http import ListenError
    from logagent.pipeline import run_agent

    runner: Any = asyncio.run
    if tls_uses:
        try:  # a faster event loop; it needs ssl loaded (its module init reads ssl.SSLContext)
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
    from logagent import allocator

    allocator.tune()
    _tune_gc()
    from logagent.checkpoint import StateDirError

    try:
        code = int(runner(run_agent(cfg)))
    except ListenError as e:
        print(f"logagent: cannot start: {cfg.file}: {e}", file=sys.stderr)
        return 1
    except StateDirError as e:  # full disk, read-only or unwritable state dir: one line, no traceback
        print(f"logagent: {e}", file=sys.stderr)
        return 1
    env = restart_requested()
    if env is not None and code == 0:
        return _exec_self(env)
    return code


def _exec_self(env: dict[str, str]) -> int:
    """Run this command again in this process (same pid, same arguments, `env` added): the pipeline has stopped
    and its checkpoints are written (logagent.hotreload: a reload that needs TLS in a process without it).
    Returns only if the interpreter cannot be executed: 1, and the service manager restarts the agent."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, **env})
    except OSError as e:
        print(f"logagent: cannot restart {sys.executable}: {e.strerror or e}; exiting", file=sys.stderr)
    return 1


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a process that moves millions of short-lived objects.

    Records are dicts of strings and numbers, which CPython does not track; what the collector sees is per-line
    temporaries (parser split lists) and per-batch lists. With the default gen-0 threshold (700) it ran ~5,000
    times per 330 MB of log and promoted the temporaries alive at that moment, which triggered full collections
    over every module object: ~1 CPU-s of the agent's ~5.6 (benchmarks/bench_tail.py). Freezing what start-up
    created (modules, config) keeps full collections off it, and a 50,000 threshold lets the temporaries die
    before a collection sees them: ~0.05 CPU-s. Only the agent's own process calls this (never a test process).
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _cmd_check(args: argparse.Namespace) -> int:
    import yaml

    from logagent.config import ConfigError, load_config
    from logagent.configdump import resolved_config

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"logagent: config error: {e}", file=sys.stderr)
        return 2
    print(f"# {cfg.file}: OK. Resolved: defaults filled in, ${{VAR}} expanded, secrets masked.")
    from logagent import tls

    tls_uses = tls.uses(cfg)
    print(f"# TLS: loaded, for {'; '.join(tls_uses)}" if tls_uses else
          "# TLS: not loaded (no https URL, no tls settings, no Kubernetes API in this config)")
    print(yaml.safe_dump(resolved_config(cfg), sort_keys=False), end="")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from logagent.config import ConfigError, load_config
    from logagent.status import print_status

    cfg = None
    if args.config is not None:
        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            print(f"logagent: config error: {e}", file=sys.stderr)
            return 2
    state_dir = args.state_dir or (cfg.state_dir if cfg is not None else None) or \
        os.environ.get("LOGAGENT_STATE_DIR", "/var/lib/logagent")
    return print_status(state_dir, args.json, cfg)


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PLUGIN_COMMANDS:
        module_name, help_text = PLUGIN_COMMANDS[argv[0]]
        if as_program and argv[0] in NO_TLS_COMMANDS and "ssl" not in sys.modules:
            from logagent import tls

            tls.disable()
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"logagent {argv[0]}", description=help_text)
        module.configure(parser)
        return int(module.run(parser.parse_args(argv[1:])))

    parser = argparse.ArgumentParser(prog="logagent", description="Node log collection agent")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the agent (embedded default config when no -c)")
    p.add_argument("-c", "--config", help="config file (YAML)")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("check", help="validate a config and print it resolved; exit 2 on error")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("status", help="tracked files with checkpointed offset, size and lag")
    p.add_argument("-c", "--config", help="the agent's config: its state_dir, and files its globs match but it "
                                          "has not opened yet")
    p.add_argument("--state-dir", help="default: the config's state_dir, $LOGAGENT_STATE_DIR, /var/lib/logagent")
    p.add_argument("--json", action="store_true", help="one JSON object per tracked source")
    p.set_defaults(func=_cmd_status)
    for name, (_, help_text) in PLUGIN_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
