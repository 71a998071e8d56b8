"""Protobuf bodies, generated classes (outputs/proto/*_pb2.py) against hand encoding (varints and length-delimited
fields concatenated as bytes), on one Loki push of 5,000 entries and one SLS LogGroup of 4,096 logs. Checks that
both give the same bytes, then prints the median time of each. The Loki output uses the generated classes (its
former hand encoder is reproduced here); the SLS output keeps its hand encoder (the generated build is written
here), because that is what the figures say. Both outputs' default paths now go through the native accelerator
when it is built (logagent/_speedups.c); the SLS codec runs with `fields: all` here, as the generated build
ships every field.

    python benchmarks/bench_protobuf.py [--runs 9]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

from logagent.config import Section
from logagent.outputs import loki, sls
from logagent.outputs.proto.sls_logs_pb2 import Log, LogGroup
from logagent.record import Batch


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(key: int, payload: bytes) -> bytes:
    return bytes((key,)) + varint(len(payload)) + payload


def hand_entry(ts_ns: int, line: str, metadata: tuple[tuple[str, str], ...]) -> bytes:
    secs, nanos = divmod(ts_ns, 1_000_000_000)
    stamp = (b"\x08" + varint(secs) if secs else b"") + (b"\x10" + varint(nanos) if nanos else b"")
    out = ld(0x0A, stamp) + ld(0x12, line.encode())
    for name, value in metadata:
        out += ld(0x1A, ld(0x0A, name.encode()) + ld(0x12, value.encode()))
    return out


def hand_push(streams: dict[str, list[loki.Item]]) -> bytes:
    out = []
    for labels, entries in streams.items():
        body = [ld(0x0A, labels.encode())]
        body.extend(ld(0x12, hand_entry(ts, line, md)) for _, ts, line, md in entries)
        out.append(ld(0x0A, b"".join(body)))
    return b"".join(out)


def generated_sls(meta: dict[str, Any], records: list[dict[str, Any]], ts: int, source: str) -> bytes:
    """The same LogGroup built with the generated classes (the fastest way found: `Logs.add` with Content
    objects; a template Log copied per record, or Log objects extended into the group, are slower)."""
    shared = sls_pairs(meta)
    content = Log.Content
    group = LogGroup(Source=source)
    add = group.Logs.add
    secs, nanos = divmod(ts, 1_000_000_000)
    for r in records:
        add(Time=secs, Time_ns=nanos, Contents=[content(Key=k, Value=v) for k, v in shared + sls_pairs(r)])
    return group.SerializeToString()


def sls_pairs(fields: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in fields.items():
        sls._flatten(k, v, out)
    return out


def timed(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {platform.processor() or 'cpu'}")

    labels = '{app="web", container="main", namespace="shop", pod="web-1"}'
    md = (("pod_uid", "3f1c2a7e-uid"), ("filename", "/var/log/pods/shop_web-1/main/0.log"))
    items = [(labels, 1_714_557_600_000_000_000 + i * 1_000_123,
              f"10.0.0.{i % 250} - - GET /api/v1/items/{i} HTTP/1.1 200 {i * 7} 12ms curl/8.5", md)
             for i in range(5000)]
    streams = {labels: items}
    assert loki.push_body(streams, native=False) == hand_push(streams) == loki.push_body(streams), "bodies differ"
    gen, hand = timed(lambda: loki.push_body(streams, native=False), args.runs), timed(lambda: hand_push(streams),
                                                                                        args.runs)
    native = timed(lambda: loki.push_body(streams), args.runs)  # the accelerator's entries when it is built
    print(f"loki push, 5000 entries:   generated {gen:7.1f} ms   hand {hand:7.1f} ms   ({hand / gen:.1f}x)   "
          f"push_body (accelerator: {loki.speedups.loki_entries is not None}) {native:7.1f} ms")

    meta = {"input": "in", "path": "/var/log/pods/shop_web-1/main/0.log",
            "kubernetes": {"namespace": "shop", "pod": "web-1", "container": "main", "node": "node-a"}}
    records = [{"message": f"GET /api/v1/items/{i} 200 {i * 7}", "offset": i * 100, "stream": "stdout",
                "time": "2024-05-01T10:00:00.123456789Z"} for i in range(4096)]
    settings = sls.SlsOutput.parse_settings(Section(
        {"endpoint": "cn-hangzhou.log.aliyuncs.com", "project": "p", "logstore": "l", "access_key_id": "a",
         "access_key_secret": "b", "source": "node-a", "fields": "all"}, "outputs[0]", "bench"))
    codec = sls.SlsPutLogs("bench", settings)

    def output_hand() -> bytes:  # what the sls output does: parts() per batch, the LogGroup body in encode()
        ((_, logs, _),) = codec.parts(Batch("t", records, meta))
        return b"".join(logs) + b"\x22\x06node-a"

    ts = sls.rfc3339_ns(records[0]["time"])
    assert output_hand() == generated_sls(meta, records, ts, "node-a"), "SLS bodies differ"
    hand = timed(output_hand, args.runs)
    gen = timed(lambda: generated_sls(meta, records, ts, "node-a"), args.runs)
    print(f"sls LogGroup, 4096 logs:   generated {gen:7.1f} ms   hand {hand:7.1f} ms   ({hand / gen:.1f}x)")


if __name__ == "__main__":
    main()
