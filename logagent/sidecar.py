"""`logagent sidecar`: run inside a pod, tail files on a volume shared with the application, and write every record
to stdout in the envelope the node agent recognises (`logagent.outputs.sidecar`).

    logagent sidecar --path '/var/log/app/*.log' [--path GLOB ...] [--state-dir DIR] [--exclude GLOB ...]
                     [--multiline java|python|go|node|ruby] [--parser text|json] [--format raw|auto|cri|docker]

It is the ordinary pipeline with an embedded config: one `file` input (the same tailer as the node agent, with its
rotation handling and checkpoints) and one `sidecar` output. Checkpoints live on the shared volume by default
(`<first glob's directory>/.logagent-sidecar`), so a restarted sidecar container resumes where the previous one's
output was acknowledged: a batch is acknowledged once written and flushed to stdout.

This command must never print anything but envelopes on stdout: its own logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from logagent.config import AgentConfig, ConfigError, parse_config

STATE_DIR_NAME = ".logagent-sidecar"
_MAGIC = ("*", "?", "[")


def default_state_dir(globs: list[str]) -> str:
    """`<fixed directory part of the first glob>/.logagent-sidecar`: on the shared volume, next to the logs, so
    the checkpoints survive the sidecar container's restarts as long as the pod (and its volume) lives."""
    fixed: list[str] = []
    parts = globs[0].split("/")
    for part in parts[:-1]:
        if any(c in part for c in _MAGIC):
            break
        fixed.append(part)
    return os.path.join("/".join(fixed) or "/", STATE_DIR_NAME)


def sidecar_config(globs: list[str], state_dir: str | None = None, fmt: str | None = None,
                   multiline: str | None = None, exclude: list[str] | None = None,
                   poll_interval: str | None = None, log_level: str = "info",
                   parser: str | None = None) -> AgentConfig:
    """The embedded pipeline config for the sidecar. Raises ConfigError (with the option's name) when invalid."""
    state = state_dir or default_state_dir(globs)
    file_input: dict[str, Any] = {
        "type": "file", "name": "sidecar", "tag": "sidecar", "paths": globs,
        # the checkpoint database sits beside the logs; a broad glob must not tail it
        "exclude": [*(exclude or []), f"{state}/*", f"{state}/**"],
    }
    if fmt:
        file_input["format"] = fmt
    if multiline:
        file_input["multiline"] = multiline
    if parser:
        file_input["parser"] = parser
    if poll_interval:
        file_input["poll_interval"] = poll_interval
    data = {
        "state_dir": state,
        "log_level": log_level,
        "http": {"enabled": False},  # a sidecar has no port of its own to offer
        "inputs": [file_input],
        "outputs": [{"type": "sidecar", "name": "envelope"}],
    }
    from logagent import registry

    cfg = parse_config(data, "<logagent sidecar>")
    registry.validate(cfg)
    return cfg


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", action="append", required=True, metavar="GLOB",
                        help="absolute glob of files to tail (repeatable), e.g. '/var/log/app/*.log'")
    parser.add_argument("--state-dir", help=f"checkpoint directory (default: <first glob's directory>/"
                                            f"{STATE_DIR_NAME}, on the shared volume)")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="files to leave out")
    parser.add_argument("--format", help="record format of the files (default raw: one line, one record)")
    parser.add_argument("--multiline", help="join stack traces: java, python, go, node, ruby")
    parser.add_argument("--parser", help="json: an application's JSON lines become fields (under `json`)")
    parser.add_argument("--poll-interval", help="stat poll interval behind inotify (default 1s)")
    parser.add_argument("--log-level", default=os.environ.get("LOGAGENT_LOG_LEVEL", "info"),
                        choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    from logagent import selflog
    from logagent.pipeline import Pipeline

    try:
        cfg = sidecar_config(args.path, args.state_dir, args.format, args.multiline, args.exclude,
                             args.poll_interval, args.log_level, args.parser)
    except ConfigError as e:
        print(f"logagent sidecar: {_option_names(str(e))}", file=sys.stderr)
        return 2
    selflog.setup(cfg.log_level)

    async def main() -> int:
        pipeline = Pipeline(cfg)
        # the envelope output stops the agent when stdout is gone (see logagent.outputs.sidecar)
        pipeline.ctx.services.stop_agent = pipeline.request_stop
        code = await pipeline.run()
        out = pipeline.outputs.get("envelope")
        broken = getattr(out.output, "broken", None) if out is not None else None
        return 1 if broken else code

    return asyncio.run(main())


def _option_names(message: str) -> str:
    """Config errors name keys of the embedded config; say which command-line option they came from."""
    for key, option in (("inputs[0].paths", "--path"), ("inputs[0].format", "--format"),
                        ("inputs[0].multiline", "--multiline"), ("inputs[0].exclude", "--exclude"),
                        ("inputs[0].parser", "--parser"),
                        ("inputs[0].poll_interval", "--poll-interval"), ("state_dir", "--state-dir")):
        message = message.replace(key, option)
    return message
