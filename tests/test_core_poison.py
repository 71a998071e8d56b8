"""No single record can end a task (issue 9, item 6).

- A CRI/docker timestamp outside the signed 64-bit nanosecond range (year 9999, year 1012) is clamped at parse time
  and the record flagged `time_out_of_range`, so no encoder raises; every HTTP output (Elasticsearch, Loki, SLS)
  dead-letters such a record with reason `time_out_of_range` (the record as read: message and the runtime's time
  string verbatim), counted in `logagent_dead_lettered_records_total`, and every other line arrives. The agent is
  the real one, the backends are the receivers on 127.0.0.1.
- A record an encoder cannot encode at all (an integer beyond 64 bits) is dead-lettered with the encoder's error;
  the rest of its batch ships.
- The dead-letter writer never raises: unserializable records are still written, a failing write is counted.
- kmsg records with absurd fields are shipped flagged, without ending the decoder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

from logagent import metrics
from logagent.deadletter import DeadLetter
from logagent.inputs.kmsg import KmsgDecoder
from logagent.parsers.cri import CriJoiner
from logagent.parsers.docker import DockerJoiner
from logagent.parsers.timestamps import NS_MAX, NS_MIN
from logagent.record import AckToken, Batch
from tests.helpers import async_wait_for
from tests.ops_support import Agent, agent_base_url, sample, scrape
from tests.receivers.es import BulkReceiver
from tests.receivers.harness import build_output, dead_letters, make_context
from tests.receivers.loki import LokiReceiver
from tests.receivers.sls import SlsReceiver

GOOD = 300
FUTURE = "9999-12-31T23:59:59.999999999Z stdout F poison from the year 9999"
PAST = "1012-03-04T05:06:07.000000001Z stderr F poison from the year 1012"


def _cri_lines(start: int, n: int) -> list[str]:
    return [f"2024-05-14T09:{(i // 60) % 60:02d}:{i % 60:02d}.{i:09d}Z stdout F good line {i}"
            for i in range(start, start + n)]


def _write(path: Path, lines: list[str]) -> None:
    with open(path, "a") as fh:
        fh.write("".join(line + "\n" for line in lines))


def _agent(tmp_path: Path, output: dict[str, Any]) -> Agent:
    cfg = {"state_dir": str(tmp_path / "state"), "checkpoint_interval": "50ms", "http": {"address": "127.0.0.1:0"},
           "inputs": [{"type": "file", "name": "pods", "paths": [str(tmp_path / "logs" / "*.log")],
                       "format": "cri", "poll_interval": "200ms"}],
           "outputs": [output]}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return Agent(tmp_path / "cfg.yaml", tmp_path)


def _dead_lettered(base: str, output: str) -> float:
    return sample(scrape(base), "logagent_dead_lettered_records_total", output=output, reason="time_out_of_range")


def _dead(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "dead-letter.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_out_of_range_timestamps_are_clamped_and_flagged_at_parse_time() -> None:
    cri = CriJoiner().feed(["2024-05-14T09:12:03.5Z stdout F ok", FUTURE, PAST], [0, 40, 80])
    assert [r["time_ns"] for r in cri] == [1715677923500000000, NS_MAX, NS_MIN]
    assert [r.get("flags") for r in cri] == [None, ["time_out_of_range"], ["time_out_of_range"]]
    assert cri[1]["time"] == "9999-12-31T23:59:59.999999999Z"  # the runtime's string is kept as written
    docker = DockerJoiner().feed(['{"log":"x\\n","stream":"stdout","time":"9999-01-01T00:00:00Z"}',
                                  '{"log":"y\\n","stream":"stderr","time":"2024-05-14T09:12:03Z"}'], [0, 60])
    assert [(r["message"], r["time_ns"], r.get("flags")) for r in docker] == [
        ("x", NS_MAX, ["time_out_of_range"]), ("y", 1715677923000000000, None)]
    # a batch of P pieces and F lines (its own fast path) flags them too
    mixed = CriJoiner().feed(["2024-05-14T09:12:03.5Z stdout P ab", "2024-05-14T09:12:03.6Z stdout F cd", FUTURE,
                              "2024-05-14T09:12:03.7Z stderr F ok"], [0, 40, 80, 160])
    assert [(r["message"], r["time_ns"], r.get("flags")) for r in mixed] == [
        ("abcd", 1715677923500000000, None), ("poison from the year 9999", NS_MAX, ["time_out_of_range"]),
        ("ok", 1715677923700000000, None)]
    # every clamped value fits the encoders' 64-bit integers
    orjson.dumps(cri + docker + mixed)


def _check_dead(dead: list[dict[str, Any]], output: str) -> None:
    by_message = {d["record"]["message"]: d for d in dead}
    assert set(by_message) == {"poison from the year 9999", "poison from the year 1012"}
    assert all(d["reason"] == "time_out_of_range" and d["output"] == output for d in dead)
    # the record as read: the runtime's time string and the message verbatim, the clamped time_ns beside them
    future = by_message["poison from the year 9999"]["record"]
    past = by_message["poison from the year 1012"]["record"]
    assert (future["time"], future["stream"], future["time_ns"]) == ("9999-12-31T23:59:59.999999999Z", "stdout",
                                                                      NS_MAX)
    assert (past["time"], past["stream"], past["time_ns"]) == ("1012-03-04T05:06:07.000000001Z", "stderr", NS_MIN)
    assert future["flags"] == ["time_out_of_range"] and future["path"].endswith("app.log")


async def test_year_9999_cri_line_is_dead_lettered_by_elasticsearch_and_every_other_line_arrives(tmp_path) -> None:
    rec = await BulkReceiver().start()
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "app.log"
    _write(log, [*_cri_lines(0, GOOD // 2), FUTURE, PAST, *_cri_lines(GOOD // 2, GOOD // 2)])
    agent = _agent(tmp_path, {"type": "elasticsearch", "name": "es", "url": rec.url, "index": "logs",
                              "batch": {"max_wait": "50ms"}})
    try:
        base = agent_base_url(agent)
        await async_wait_for(lambda: len(rec.docs) >= GOOD and len(_dead(tmp_path)) >= 2
                             or agent.proc.poll() is not None, 30, what="good lines stored, poison dead-lettered")
        assert agent.proc.poll() is None, agent.stderr_path.read_text()[-3000:]
        # the output still works after them
        _write(log, _cri_lines(GOOD, 10))
        await async_wait_for(lambda: len(rec.docs) == GOOD + 10, 30, what="lines written after the poison")
        assert _dead_lettered(base, "es") == 2
    finally:
        assert agent.stop() == 0
        await rec.stop()
    assert sorted(d["message"] for d in rec.docs.values()) == sorted(f"good line {i}" for i in range(GOOD + 10))
    assert all("flags" not in d for d in rec.docs.values())
    _check_dead(_dead(tmp_path), "es")


async def test_year_9999_cri_line_is_dead_lettered_by_loki_and_every_other_line_arrives(tmp_path) -> None:
    # Loki refuses entries newer than now + creation_grace_period (10 min by default) and, with its default
    # reject_old_samples, older than reject_old_samples_max_age (168 h: here a week before the good lines): a
    # time the agent can represent but Loki refuses (year 2100) is dead-lettered with Loki's own reason
    rec = await LokiReceiver(reject_after_ns=time.time_ns() + 600 * 10**9,
                             reject_before_ns=1_715_040_000 * 10**9).start()  # 2024-05-07T00:00:00Z
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "app.log"
    too_new = "2100-01-01T00:00:00Z stdout F from the year 2100"
    _write(log, [*_cri_lines(0, GOOD // 2), FUTURE, PAST, too_new, *_cri_lines(GOOD // 2, GOOD // 2)])
    agent = _agent(tmp_path, {"type": "loki", "name": "loki", "url": rec.url, "batch": {"max_wait": "50ms"},
                              "labels": {"job": "pods"}, "retry": {"initial_backoff": "20ms"}})
    try:
        base = agent_base_url(agent)
        await async_wait_for(lambda: rec.entries_stored >= GOOD and len(_dead(tmp_path)) >= 3
                             or agent.proc.poll() is not None, 30, what="good lines stored, poison dead-lettered")
        assert agent.proc.poll() is None, agent.stderr_path.read_text()[-3000:]
        _write(log, _cri_lines(GOOD, 10))
        await async_wait_for(lambda: rec.entries_stored == GOOD + 10, 30, what="lines written after the poison")
        assert _dead_lettered(base, "loki") == 2
    finally:
        assert agent.stop() == 0
        await rec.stop()
    stored = sorted(line for _, _, line, _ in rec.stored())
    assert stored == sorted(f"good line {i}" for i in range(GOOD + 10))
    dead = _dead(tmp_path)
    refused = [d for d in dead if d["reason"] != "time_out_of_range"]
    assert [d["record"]["line"] for d in refused] == ["from the year 2100"]
    assert "timestamp too new" in refused[0]["reason"]
    _check_dead([d for d in dead if d["reason"] == "time_out_of_range"], "loki")


async def test_sls_dead_letters_a_record_whose_time_was_out_of_range_and_ships_the_rest(tmp_path) -> None:
    rec = await SlsReceiver("k8s-prod", "cn-hangzhou.log.aliyuncs.com", {"LTAI-test": "test-secret"}).start()
    ctx = make_context(tmp_path)
    out = build_output("sls", {"url": rec.url, "endpoint": "cn-hangzhou.log.aliyuncs.com", "project": "k8s-prod",
                               "logstore": "k8s-logs", "access_key_id": "LTAI-test",
                               "access_key_secret": "test-secret", "batch": {"max_wait": "20ms"}}, ctx)
    records = CriJoiner().feed([*_cri_lines(0, 20), FUTURE, *_cri_lines(20, 20)], list(range(0, 4100, 100)))
    acked: list[bool] = []
    batch = Batch("app", records, {"input": "in", "source_id": "f1", "pos_key": "offset"},
                  AckToken(lambda: acked.append(True)), 4100, flagged=1)
    await out.start()
    try:
        await out.send(batch)
        await async_wait_for(lambda: acked == [True], 20, what="the batch acknowledged")
    finally:
        await out.stop()
        await rec.stop()
    assert sorted(g["contents"]["message"] for g in rec.logs) == sorted(f"good line {i}" for i in range(40))
    dead = dead_letters(ctx)
    assert [(d["reason"], d["record"]["message"], d["record"]["time"]) for d in dead] == [
        ("time_out_of_range", "poison from the year 9999", "9999-12-31T23:59:59.999999999Z")]
    # counted in the dead-letter metric, under its reason
    assert metrics.DEAD_LETTERED.labels(output="out", reason="time_out_of_range")._value.get() >= 1


async def test_a_record_no_encoder_can_encode_is_dead_lettered_and_the_rest_of_the_batch_ships(tmp_path) -> None:
    rec = await BulkReceiver().start()
    ctx = make_context(tmp_path)
    out = build_output("elasticsearch", {"url": rec.url, "index": "logs", "batch": {"max_wait": "20ms"}}, ctx)
    records: list[dict[str, Any]] = [{"message": f"m{i}", "offset": i * 10} for i in range(50)]
    records[17]["n"] = 1 << 70  # no 64-bit integer holds it: orjson, and so the ES encoder, refuse it
    records[33]["n"] = -(1 << 80)
    acked: list[bool] = []
    batch = Batch("app", records, {"input": "in", "source_id": "f1", "pos_key": "offset"},
                  AckToken(lambda: acked.append(True)), 500)
    await out.start()
    try:
        await out.send(batch)
        await async_wait_for(lambda: acked == [True], 20, what="the batch acknowledged")
    finally:
        await out.stop()
        await rec.stop()
    assert sorted(d["message"] for d in rec.docs.values()) == sorted(f"m{i}" for i in range(50) if i not in (17, 33))
    dead = dead_letters(ctx)
    assert sorted(d["record"]["message"] for d in dead) == ["m17", "m33"]
    assert all(d["reason"] == "encode_error: TypeError: Integer exceeds 64-bit range" for d in dead)
    # the dead-letter file keeps the value exactly (the stdlib encoder writes big integers)
    assert {d["record"]["message"]: d["record"]["n"] for d in dead} == {"m17": 1 << 70, "m33": -(1 << 80)}


def test_the_dead_letter_writer_never_raises_and_counts_what_it_could_not_write(tmp_path) -> None:
    dl = DeadLetter(tmp_path / "dl.jsonl")
    assert dl.write("es", "mapper_parsing_exception: x", [{"n": 1 << 70, (1, 2): "tuple key", "s": "\ud800"}]) == 1
    line = orjson.loads((tmp_path / "dl.jsonl").read_bytes())
    assert line["reason"] == "mapper_parsing_exception: x" and "unserializable" in line["record"]
    dl.close()

    # a directory where the file should be: every write fails, none raises, each is counted
    (tmp_path / "blocked.jsonl").mkdir()
    failing = DeadLetter(tmp_path / "blocked.jsonl")
    before = metrics.DROPPED.labels(component="es", reason="dead_letter_failed")._value.get()
    assert failing.write("es", "bad", [{"message": "a"}, {"message": "b"}]) == 0
    assert failing.write("es", "bad", [{"message": "c"}]) == 0
    assert failing.failed == 3
    assert metrics.DROPPED.labels(component="es", reason="dead_letter_failed")._value.get() - before == 3
    # and it works again once the path is usable
    os.rmdir(tmp_path / "blocked.jsonl")
    assert failing.write("es", "bad", [{"message": "d"}]) == 1
    failing.close()


def test_kmsg_records_with_absurd_fields_are_shipped_flagged_and_the_decoder_goes_on() -> None:
    d = KmsgDecoder()
    raws = [b"6,1,100,-;first\n", b"6,99999999999999999999999,100,-;seq beyond 64 bits\n",
            b"6,2,99999999999999999999999,-;usec beyond 64 bits\n", b"999999999999999999999,3,100,-;absurd prio\n",
            b"6,3,200,-;after them\n"]
    out, lost = d.decode(raws, 1_700_000_000 * 10**9)
    assert lost == 0
    by_msg = {r["message"]: r for r in out}
    assert by_msg["first"]["seq"] == 1 and "flags" not in by_msg["first"]
    assert by_msg["after them"]["seq"] == 3
    usec = by_msg["usec beyond 64 bits"]
    assert (usec["seq"], usec["time_ns"], usec["flags"]) == (2, NS_MAX, ["time_out_of_range"])
    assert by_msg["6,99999999999999999999999,100,-;seq beyond 64 bits"]["flags"] == ["unparsed"]
    assert by_msg["999999999999999999999,3,100,-;absurd prio"]["flags"] == ["unparsed"]
    assert d.malformed == 2
    orjson.dumps(out)  # nothing left that a 64-bit encoder refuses
    out2, _ = d.decode([b"6,4,300,-;still decoding\n"], 1_700_000_000 * 10**9)
    assert [r["message"] for r in out2] == ["still decoding"]


async def test_an_item_the_codec_cannot_read_back_is_still_dead_lettered_and_acknowledged(tmp_path) -> None:
    """A rejected item whose `dead_record` fails (an injected codec fault) is written as its repr: the lane does
    not end with the batch's token pending."""

    def refuse(meta: dict[str, Any], doc: dict[str, Any], attempt: int) -> tuple[int, str, str] | None:
        if doc["message"] == "m3":
            return 400, "mapper_parsing_exception", "failed to parse field [n]"
        return None

    rec = await BulkReceiver(item_fault=refuse).start()
    ctx = make_context(tmp_path)
    out = build_output("elasticsearch", {"url": rec.url, "index": "logs", "batch": {"max_wait": "20ms"}}, ctx)
    real = out.codec.dead_record

    def broken(key: str, item: Any) -> dict[str, Any]:
        if b'"m3"' in item:
            raise ValueError("cannot read it back")
        return real(key, item)

    out.codec.dead_record = broken
    acked: list[bool] = []
    records = [{"message": f"m{i}", "offset": i} for i in range(6)]
    await out.start()
    try:
        await out.send(Batch("app", records, {"input": "in", "source_id": "f1", "pos_key": "offset"},
                             AckToken(lambda: acked.append(True)), 60))
        await async_wait_for(lambda: acked == [True], 20, what="the batch acknowledged")
    finally:
        await out.stop()
        await rec.stop()
    assert sorted(d["message"] for d in rec.docs.values()) == ["m0", "m1", "m2", "m4", "m5"]
    dead = dead_letters(ctx)
    assert len(dead) == 1 and dead[0]["reason"].startswith("mapper_parsing_exception")
    assert '"m3"' in dead[0]["record"]["undecodable_item"] and dead[0]["record"]["error"].startswith("ValueError")
