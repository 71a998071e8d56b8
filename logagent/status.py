"""`logagent status`: what each input has checkpointed, and for files how far behind the checkpoint is.

Reads the checkpoint database read-only, so it works while the agent runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson

from logagent.checkpoint import CheckpointStore


def collect(state_dir: str) -> list[dict[str, Any]]:
    store = CheckpointStore(state_dir, readonly=True)
    rows = []
    for input_name, key, value, updated in store.load_all():
        row: dict[str, Any] = {"input": input_name, "key": key, "updated": updated}
        if isinstance(value, dict) and "offset" in value and "path" in value:
            row["path"] = value["path"]
            row["offset"] = value["offset"]
            try:
                st = os.stat(value["path"])
                same = (st.st_dev, st.st_ino) == (value.get("dev"), value.get("ino"))
                row["size"] = st.st_size if same else None
                row["lag_bytes"] = max(0, st.st_size - value["offset"]) if same else None
                if not same:
                    row["note"] = "path now holds another file (rotated)"
            except OSError:
                row["size"] = None
                row["lag_bytes"] = None
                row["note"] = "file gone"
        else:
            row["position"] = value
        rows.append(row)
    return rows


def print_status(state_dir: str, as_json: bool = False) -> int:
    if not (Path(state_dir) / "checkpoints.db").exists():
        print(f"logagent: no checkpoint store in {state_dir}", file=sys.stderr)
        return 1
    rows = collect(state_dir)
    if as_json:
        for row in rows:
            sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0
    print(f"{'INPUT':<14} {'OFFSET':>14} {'SIZE':>14} {'LAG':>12}  PATH / POSITION")
    for row in rows:
        if "path" in row:
            size = "-" if row["size"] is None else str(row["size"])
            lag = "-" if row["lag_bytes"] is None else str(row["lag_bytes"])
            note = f"  ({row['note']})" if "note" in row else ""
            print(f"{row['input']:<14} {row['offset']:>14} {size:>14} {lag:>12}  {row['path']}{note}")
        else:
            position = orjson.dumps(row['position']).decode()
            print(f"{row['input']:<14} {'':>14} {'':>14} {'':>12}  {row['key']}: {position}")
    return 0
