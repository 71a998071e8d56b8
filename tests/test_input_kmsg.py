"""The kmsg input: decoding real /dev/kmsg captures exactly, counting overwritten records, and reading the real
/dev/kmsg through a Pipeline with boot-id + sequence checkpoints (no loss, no duplicates across restarts)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import orjson
import pytest

from logagent import metrics
from logagent.checkpoint import CheckpointStore
from logagent.component import Context
from logagent.config import ConfigError, Section, parse_config
from logagent.deadletter import DeadLetter
from logagent.inputs.kmsg import KmsgDecoder, KmsgInput, SequenceGaps, read_boot_id
from logagent.inputs.kmsgformat import split_capture
from logagent.pipeline import Pipeline
from logagent.record import Batch, doc_id
from logagent.timefmt import format_rfc3339_ns
from tests.helpers import async_wait_for, kmsg_writable

KERNEL_DATA = Path(__file__).parent / "data" / "kernel"  # a copy of ../shared/testdata/kernel


def _labels(name: str) -> dict[int, dict]:
    return {lab["seq"]: lab for lab in map(json.loads, (KERNEL_DATA / f"{name}.labels.jsonl").read_text().splitlines())}


def _decode_capture(name: str) -> tuple[list[dict], KmsgDecoder]:
    decoder = KmsgDecoder()
    raws = list(split_capture((KERNEL_DATA / f"{name}.txt").read_bytes()))
    records, _ = decoder.decode(raws, boot_ns=1_700_000_000_000_000_000)
    records.extend(decoder.flush(1_700_000_000_000_000_000))
    return records, decoder


# -- decoding captures ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("capture", ["kmsg_sample", "kmsg_edge_cases"])
def test_capture_messages_decode_exactly_to_the_labelled_text(capture: str) -> None:
    labels = _labels(capture)
    records, decoder = _decode_capture(capture)
    assert decoder.malformed == 0
    covered: list[int] = []
    for rec in records:
        seqs = [s for s in labels if rec["seq"] <= s <= rec.get("last_seq", rec["seq"])]
        # A record joined from `c`/`+` fragments carries the fragments' texts, labelled one by one, in order.
        assert rec["message"] == "".join(labels[s]["message"] for s in sorted(seqs)), rec["seq"]
        covered.extend(seqs)
    assert sorted(covered) == sorted(labels)


def test_capture_fields_priority_and_dictionary_lines() -> None:
    records, _ = _decode_capture("kmsg_sample")
    by_seq = {r["seq"]: r for r in records}
    raw_headers = {}
    for raw in split_capture((KERNEL_DATA / "kmsg_sample.txt").read_bytes()):
        prio, seq, usec = raw.split(b";", 1)[0].split(b",")[:3]
        raw_headers[int(seq)] = (int(prio), int(usec), raw)
    for seq, (prio, usec, raw) in raw_headers.items():
        rec = by_seq[seq]
        assert (rec["level"], rec["facility"], rec["userspace"]) == (prio & 7, prio >> 3, prio >= 8)
        assert rec["mono_us"] == usec
        assert rec["time_ns"] == 1_700_000_000_000_000_000 + usec * 1000
        dict_lines = [ln[1:] for ln in raw.split(b"\n")[1:] if ln.startswith(b" ")]
        if dict_lines:
            assert rec["fields"] == dict(ln.decode().split("=", 1) for ln in dict_lines)
        else:
            assert "fields" not in rec
    assert any("fields" in r for r in records), "the sample has dictionary lines"


def test_capture_joins_fragments_into_one_record() -> None:
    records, _ = _decode_capture("kmsg_edge_cases")
    joined = [r for r in records if "last_seq" in r]
    assert [(r["seq"], r["last_seq"]) for r in joined] == [(3031, 3032)]
    assert joined[0]["message"] == "Modules linked in: xt_nat xt_tcpudp veth nf_conntrack_netlink br_netfilter " \
                                   "bridge stp llc overlay"


def test_rfc3339_time_has_nanoseconds_in_utc() -> None:
    assert format_rfc3339_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert format_rfc3339_ns(0) == "1970-01-01T00:00:00.000000000Z"


# -- overwritten records (EPIPE) ------------------------------------------------------------------------------------

def test_the_sample_capture_gap_of_37_overwritten_records_is_counted() -> None:
    _, decoder = _decode_capture("kmsg_sample")
    assert decoder.gaps.lost == 37


def test_gaps_after_epipe_are_counted_per_burst_and_in_total() -> None:
    gaps = SequenceGaps()
    assert gaps.observe([5, 6, 7]) == 0
    # read() returned EPIPE: the reader continues at the oldest record left, 45 -> 37 records were overwritten
    assert gaps.observe([45, 46]) == 37
    assert gaps.observe([47, 50, 51, 60]) == 2 + 8
    assert gaps.observe([]) == 0
    assert gaps.lost == 47 and gaps.last == 60


def test_restart_after_overwrite_counts_records_lost_while_down_and_skips_acknowledged() -> None:
    # Checkpoint says seq 10 was acknowledged; the buffer now starts at 8 (nothing lost) ...
    dec = KmsgDecoder(skip_through=10, last_seen=10)
    raws = [f"6,{s},{s * 1000},-;line {s}\n".encode() for s in range(8, 14)]
    records, lost = dec.decode(raws, 0)
    assert [r["seq"] for r in records] == [11, 12, 13] and lost == 0
    # ... or it starts at 25 (records 11..24 were overwritten while the agent was down)
    dec = KmsgDecoder(skip_through=10, last_seen=10)
    records, lost = dec.decode([f"6,{s},0,-;x\n".encode() for s in range(25, 28)], 0)
    assert [r["seq"] for r in records] == [25, 26, 27] and lost == 14


def test_a_malformed_record_is_shipped_flagged_not_dropped() -> None:
    dec = KmsgDecoder()
    records, lost = dec.decode([b"6,1,0,-;good\n", b"garbage without header\n", b"6,2,0,-;also good\n"], 0)
    assert [r["message"] for r in records] == ["good", "also good", "garbage without header"]
    assert records[-1]["flags"] == ["unparsed"] and dec.malformed == 1 and lost == 0


def test_settings_reject_a_read_buffer_below_one_kernel_record() -> None:
    with pytest.raises(ConfigError, match=r"a.yaml: inputs\[0\].read_buffer: must be at least 8192"):
        KmsgInput.parse_settings(Section({"read_buffer": 4096}, "inputs[0]", "a.yaml"))
    with pytest.raises(ConfigError, match="read_from: expected one of head, tail"):
        KmsgInput.parse_settings(Section({"read_from": "middle"}, "inputs[0]", "a.yaml"))


# -- the real /dev/kmsg -------------------------------------------------------------------------------------------

root_kmsg = pytest.mark.skipif(not kmsg_writable(), reason="needs root and a readable, writable /dev/kmsg")


def _write_kmsg(text: str) -> None:
    fd = os.open("/dev/kmsg", os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _config(tmp_path: Path, out: Path, **settings):
    doc = {
        "state_dir": str(tmp_path / "state"), "grace_period": "5s", "checkpoint_interval": "50ms",
        "inputs": [{"type": "kmsg", "name": "kernel", "flush_interval": "50ms", **settings}],
        "outputs": [{"type": "file", "name": "out", "path": str(out), "fsync": False}],
    }
    return parse_config(doc, "test.yaml")


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _with(path: Path, marker: str) -> list[dict]:
    return [r for r in _read(path) if marker in r["message"]]


@root_kmsg
@pytest.mark.root
async def test_real_kmsg_delivers_written_records_and_restart_does_not_repeat_them(tmp_path: Path) -> None:
    marker = f"logagent-test-{uuid.uuid4()}"
    boot_id = read_boot_id()
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    p = Pipeline(_config(tmp_path, first))
    await p.start()
    for i in range(3):
        _write_kmsg(f"<3>{marker} record {i} caf\xe9\n")
    got = await async_wait_for(lambda: len(_with(first, marker)) == 3 and _with(first, marker), timeout=15,
                               what="the 3 written records in the output")
    assert [r["message"] for r in got] == [f"{marker} record {i} caf\xe9" for i in range(3)]
    # Userspace writes are recorded by the kernel with facility user (1), keeping the level: prio 11.
    assert {(r["level"], r["facility"], r["userspace"]) for r in got} == {(3, 1, True)}
    seqs = [r["seq"] for r in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert {(r["source"], r["boot_id"], r["input"]) for r in got} == {("kmsg", boot_id, "kernel")}
    assert all(r["time"].endswith("Z") and len(r["time"]) == 30 for r in got)
    tracker = p.ctx.checkpoints.tracker("kernel")
    await async_wait_for(lambda: (tracker.committed.get("kmsg") or {}).get("seq", -1) >= seqs[-1],
                         what="checkpoint past the written records")
    p.request_stop()
    await p.shutdown()
    # Each record in the buffer was delivered once in the first run.
    all_first = [r["seq"] for r in _read(first)]
    assert len(all_first) == len(set(all_first))

    p = Pipeline(_config(tmp_path, second))
    await p.start()
    _write_kmsg(f"<4>{marker} after restart\n")
    got2 = await async_wait_for(lambda: _with(second, marker), timeout=15, what="the record written after restart")
    p.request_stop()
    await p.shutdown()
    # The buffer is read in order, so everything before the new record has been seen by now: none repeated.
    assert [r["message"] for r in got2] == [f"{marker} after restart"]
    assert got2[0]["seq"] > seqs[-1] and got2[0]["level"] == 4
    assert set(r["seq"] for r in _read(second)).isdisjoint(all_first)
    # No gap between the runs: the second run starts right after the first run's last record.
    assert min(r["seq"] for r in _read(second)) == max(all_first) + 1


@root_kmsg
@pytest.mark.root
async def test_real_kmsg_new_boot_id_reads_the_buffer_from_its_start(tmp_path: Path) -> None:
    marker = f"logagent-test-{uuid.uuid4()}"
    boot_file = tmp_path / "boot_id"
    boot_file.write_text("11111111-2222-3333-4444-555555555555\n")
    out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write_kmsg(f"<6>{marker} before\n")
    p = Pipeline(_config(tmp_path, out1, boot_id_path=str(boot_file)))
    await p.start()
    await async_wait_for(lambda: _with(out1, marker), timeout=15, what="record in first run")
    tracker = p.ctx.checkpoints.tracker("kernel")
    await async_wait_for(lambda: tracker.committed.get("kmsg"), what="a checkpoint")
    p.request_stop()
    await p.shutdown()
    # A "reboot": the boot id changed, so the checkpointed seq means nothing; the buffer is read from its start.
    boot_file.write_text("66666666-7777-8888-9999-000000000000\n")
    p = Pipeline(_config(tmp_path, out2, boot_id_path=str(boot_file)))
    await p.start()
    got = await async_wait_for(lambda: _with(out2, marker), timeout=15, what="record read again for the new boot")
    p.request_stop()
    await p.shutdown()
    assert [r["message"] for r in got] == [f"{marker} before"]
    assert got[0]["boot_id"] == "66666666-7777-8888-9999-000000000000"
    assert min(r["seq"] for r in _read(out2)) == min(r["seq"] for r in _read(out1))


@root_kmsg
@pytest.mark.root
async def test_real_kmsg_read_from_tail_skips_the_existing_buffer_on_first_start(tmp_path: Path) -> None:
    marker = f"logagent-test-{uuid.uuid4()}"
    out = tmp_path / "out.jsonl"
    _write_kmsg(f"<6>{marker} old\n")
    lost_before = metrics.KMSG_LOST.labels(input="kernel")._value.get()
    p = Pipeline(_config(tmp_path, out, read_from="tail"))
    await p.start()
    inp = p.inputs["kernel"].input
    await async_wait_for(lambda: inp.opened, what="input positioned at the end of the buffer")
    _write_kmsg(f"<6>{marker} new\n")
    got = await async_wait_for(lambda: _with(out, marker), timeout=15, what="the new record")
    p.request_stop()
    await p.shutdown()
    assert [r["message"] for r in got] == [f"{marker} new"]
    assert metrics.KMSG_LOST.labels(input="kernel")._value.get() == lost_before


@root_kmsg
@pytest.mark.root
async def test_real_kmsg_unacknowledged_records_are_read_again_with_the_same_ids(tmp_path: Path) -> None:
    marker = f"logagent-test-{uuid.uuid4()}"
    cfg = _config(tmp_path, tmp_path / "unused.jsonl")
    settings = KmsgInput.parse_settings(Section({"flush_interval": "50ms"}, "inputs[0]", "test.yaml"))

    async def read_until_marker(store: CheckpointStore) -> list[Batch]:
        inp = KmsgInput("kernel", settings, Context(cfg, store, DeadLetter(str(tmp_path / "dead.jsonl"))))
        batches: list[Batch] = []

        async def emit(batch: Batch) -> None:
            batches.append(batch)

        task = asyncio.create_task(inp.run(emit))
        await async_wait_for(lambda: any(marker in r["message"] for b in batches for r in b.records), timeout=15,
                             what="the marker record")
        await inp.stop()
        await asyncio.wait_for(task, 10)
        return batches

    _write_kmsg(f"<5>{marker} unacked\n")
    store = CheckpointStore(tmp_path / "state")
    first = await read_until_marker(store)
    hit = next(i for i, b in enumerate(first) if any(marker in r["message"] for r in b.records))
    for b in first[:hit]:  # everything before the marker's batch is acknowledged, the marker's batch is not
        b.ack.done()
    store.close()
    boot_id = read_boot_id()
    marked = next(r for r in first[hit].records if marker in r["message"])
    assert first[hit].meta == {"input": "kernel", "source": "kmsg", "boot_id": boot_id,
                               "source_id": f"kmsg:{boot_id}", "pos_key": "seq"}
    saved = CheckpointStore(tmp_path / "state").load("kernel").get("kmsg")
    assert saved is None or (saved["boot_id"] == boot_id and saved["seq"] < marked["seq"])

    store = CheckpointStore(tmp_path / "state")
    second = await read_until_marker(store)
    store.close()
    again = [r for b in second for r in b.records if marker in r["message"]]
    assert [r["seq"] for r in again] == [marked["seq"]]
    assert doc_id(second[0].meta, again[0]) == doc_id(first[hit].meta, marked)
    # Acknowledged records are not read again; the first record read is the one after the checkpoint.
    if saved is not None:
        assert second[0].records[0]["seq"] == saved["seq"] + 1
