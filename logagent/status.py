"""`logagent status`: what each input has checkpointed, and for files how far behind the checkpoint is.

Reads the checkpoint database read-only, so it works while the agent runs. A file rotated away (renamed in its
directory) is looked up where it lives now (`locate`, as the file input does after a restart), so its unread
bytes show. With the config (`-c`), files that match an input's globs but have no position yet are listed as
not opened. Internal rows (the file input's "has started" marker) are not shown. A database that cannot be read
is reported in one line, never with a traceback.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

from logagent.checkpoint import CheckpointStore
from logagent.config import AgentConfig
from logagent.inputs.file.checkpoints import STARTED_KEY, StoredPosition, file_key, locate
from logagent.inputs.file.discovery import FileGlobs

_INTERNAL_KEYS = {STARTED_KEY}


def _file_row(row: dict[str, Any], key: str, value: dict[str, Any]) -> None:
    row["path"] = value["path"]
    row["offset"] = value["offset"]
    row["size"] = None
    row["lag_bytes"] = None
    stored = StoredPosition.parse(key, value)
    where = locate(stored) if stored is not None else None
    if where is None:
        row["note"] = "file gone"
        return
    try:
        st = os.stat(where)
    except OSError:
        row["note"] = "file gone"
        return
    row["size"] = st.st_size
    row["lag_bytes"] = max(0, st.st_size - value["offset"])
    if where != value["path"]:
        row["rotated_to"] = where
        row["note"] = f"rotated to {where}"


def collect(state_dir: str, cfg: AgentConfig | None = None) -> list[dict[str, Any]]:
    """Raises sqlite3.DatabaseError when the store cannot be read."""
    store = CheckpointStore(state_dir, readonly=True)
    try:
        entries = store.load_all()
    finally:
        store.close()
    rows = []
    known: dict[str, set[str]] = {}
    for input_name, key, value, updated in entries:
        if key in _INTERNAL_KEYS:
            continue
        known.setdefault(input_name, set()).add(key)
        row: dict[str, Any] = {"input": input_name, "key": key, "updated": updated}
        if isinstance(value, dict) and "offset" in value and "path" in value:
            _file_row(row, key, value)
        else:
            row["position"] = value
        rows.append(row)
    if cfg is not None:
        rows.extend(_not_opened(cfg, known))
    return rows


def _not_opened(cfg: AgentConfig, known: dict[str, set[str]]) -> list[dict[str, Any]]:
    """Files an input's globs match that it has no position for: not opened yet (or excluded by a pod
    annotation, or unreadable: the agent's log says which)."""
    rows = []
    for comp in cfg.inputs:
        if comp.type != "file":
            continue
        paths = tuple(comp.section.resolved.get("paths") or ())
        exclude = tuple(comp.section.resolved.get("exclude") or ())
        for path, found in sorted(FileGlobs(paths, exclude).scan().files.items()):
            if file_key(found.dev, found.ino) in known.get(comp.name, set()):
                continue
            rows.append({"input": comp.name, "key": file_key(found.dev, found.ino), "path": path, "offset": None,
                         "size": found.size, "lag_bytes": found.size, "note": "not opened yet"})
    return rows


def print_status(state_dir: str, as_json: bool = False, cfg: AgentConfig | None = None) -> int:
    db = Path(state_dir) / "checkpoints.db"
    if not db.exists():
        print(f"logagent: no checkpoint store in {state_dir}", file=sys.stderr)
        return 1
    try:
        rows = collect(state_dir, cfg)
    except (sqlite3.DatabaseError, orjson.JSONDecodeError) as e:
        print(f"logagent: cannot read the checkpoint store {db}: {e}", file=sys.stderr)
        return 1
    if as_json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0
    print(f"{'INPUT':<14} {'OFFSET':>14} {'SIZE':>14} {'LAG':>12}  PATH / POSITION")
    for row in rows:
        if "path" in row:
            offset = "-" if row["offset"] is None else str(row["offset"])
            size = "-" if row["size"] is None else str(row["size"])
            lag = "-" if row["lag_bytes"] is None else str(row["lag_bytes"])
            note = f"  ({row['note']})" if "note" in row else ""
            print(f"{row['input']:<14} {offset:>14} {size:>14} {lag:>12}  {row['path']}{note}")
        else:
            position = orjson.dumps(row["position"]).decode()
            print(f"{row['input']:<14} {'':>14} {'':>14} {'':>12}  {row['key']}: {position}")
    return 0
