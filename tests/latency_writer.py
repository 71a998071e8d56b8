"""The writer of the latency test and `bench_loss.py busy`, as a process of its own: CRI lines round robin over the
given files (one `write(2)` per line), paced to `rate` lines/s in total, each carrying the wall-clock time it was
written. A process of its own so that writing 5,000 lines/s does not hold the interpreter lock of the process that
receives and timestamps them (that wait would count as the agent's latency).

    python -m tests.latency_writer RATE SECONDS FILE...   (prints the lines written per file, as JSON)
"""

from __future__ import annotations

import json
import signal
import sys
import time


def write(paths: list[str], rate: float, seconds: float) -> list[int]:
    files = [open(p, "ab", buffering=0) for p in paths]
    count = [0] * len(files)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        start = time.monotonic()
        i = 0
        total = int(rate * seconds)
        while i < total and not stopping:
            ahead = i / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
            n = i % len(files)
            seq = i // len(files)
            stamp = time.time()
            files[n].write(f"2024-05-14T09:12:05.000000000Z stdout F c{n}-{seq:07d} t={stamp:.6f} "
                           f"GET /api/v1/items?page={seq} 200\n".encode())
            count[n] = seq + 1
            i += 1
    finally:
        for f in files:
            f.close()
    return count


if __name__ == "__main__":
    print(json.dumps(write(sys.argv[3:], float(sys.argv[1]), float(sys.argv[2]))), flush=True)
