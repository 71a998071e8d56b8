# The native accelerator (logagent/_speedups.c); see logagent/speedups.py.
from collections.abc import Callable
from typing import Any

def cri_records(lines: list[str], offsets: list[int], streams: tuple[str, str], /) -> (
    tuple[list[dict[str, Any]], list[int]] | None): ...
def es_items(records: list[dict[str, Any]], first: bytes | Callable[[str], bytes], middle: bytes | None,
             date_hours: bool, /) -> list[bytes] | None: ...
