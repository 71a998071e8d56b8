"""The netlink input in a network namespace the test creates: a veth pair set up and down, and neighbour entries
added, failing and deleted, arrive as node events with the right names and fields. Root only."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from logagent.config import ConfigError, Section, parse_config
from logagent.inputs.netlink import NetlinkInput
from logagent.pipeline import Pipeline
from tests.helpers import async_wait_for


def _can_make_namespaces() -> bool:
    if os.geteuid() != 0:
        return False
    name = f"la-probe-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True


pytestmark = [pytest.mark.root,
              pytest.mark.skipif(not _can_make_namespaces(), reason="needs root and `ip netns` (iproute2)")]


def ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, timeout=20)
    assert proc.returncode == 0, f"ip {' '.join(args)}: {proc.stderr.decode()}"


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"la-test-{uuid.uuid4().hex[:8]}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "add", "lva", "type", "veth", "peer", "name", "lvb")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _events(path: Path) -> list[tuple[str, str]]:
    return [(r["event"], r["interface"]) for r in _read(path)]


async def _started(tmp_path: Path, out: Path, **settings) -> Pipeline:
    doc = {"state_dir": str(tmp_path / "state"), "grace_period": "5s",
           "inputs": [{"type": "netlink", "name": "net", **settings}],
           "outputs": [{"type": "file", "name": "out", "path": str(out), "fsync": False}]}
    p = Pipeline(parse_config(doc, "test.yaml"))
    await p.start()
    inp = p.inputs["net"].input
    await async_wait_for(lambda: inp.opened or p.inputs["net"].task.done(), timeout=15, what="links dumped")
    assert inp.opened, "the netlink input failed to start"
    return p


async def test_veth_down_and_up_are_link_and_carrier_events(tmp_path: Path, netns: str) -> None:
    out = tmp_path / "events.jsonl"
    p = await _started(tmp_path, out, namespace=netns, neighbours=False)
    try:
        ip("-n", netns, "link", "set", "lva", "up")
        await async_wait_for(lambda: ("link_up", "lva") in _events(out), what="lva up")
        ip("-n", netns, "link", "set", "lvb", "up")
        await async_wait_for(lambda: ("carrier_up", "lva") in _events(out), what="lva carrier once the peer is up")
        ip("-n", netns, "link", "set", "lvb", "down")
        await async_wait_for(lambda: ("carrier_lost", "lva") in _events(out), what="lva carrier lost")
    finally:
        p.request_stop()
        await p.shutdown()
    # Exactly these transitions, in order: no event for the initial state, no duplicate for repeated messages.
    assert _events(out) == [("link_up", "lva"), ("link_up", "lvb"), ("carrier_up", "lva"),
                            ("link_down", "lvb"), ("carrier_lost", "lva")]
    records = _read(out)
    down = records[3]
    assert down["message"] == "link lvb down"
    assert (down["level"], down["admin_up"], down["carrier"]) == (4, False, False)
    assert records[4]["message"] == "link lva carrier lost" and records[4]["admin_up"] is True
    assert {(r["source"], r["input"], r["namespace"]) for r in records} == {("netlink", "net", netns)}
    assert len({r["ifindex"] for r in records}) == 2
    assert all(r["time"].endswith("Z") for r in records)


async def test_neighbour_entries_added_failed_and_deleted(tmp_path: Path, netns: str) -> None:
    ip("-n", netns, "addr", "add", "10.77.0.1/24", "dev", "lva")
    ip("-n", netns, "link", "set", "lva", "up")
    ip("-n", netns, "link", "set", "lvb", "up")
    # One ARP probe, 100 ms apart: an unanswered address fails within a fraction of a second.
    for key, value in (("mcast_solicit", "1"), ("retrans_time_ms", "100")):
        ip("netns", "exec", netns, "sh", "-c", f"echo {value} > /proc/sys/net/ipv4/neigh/lva/{key}")
    out = tmp_path / "events.jsonl"
    p = await _started(tmp_path, out, namespace=netns, interfaces=["lva"])
    try:
        ip("-n", netns, "neigh", "add", "10.77.0.9", "lladdr", "02:00:00:00:00:09", "dev", "lva", "nud", "permanent")
        await async_wait_for(lambda: ("neigh_new", "lva") in _events(out), what="neighbour added")
        ip("-n", netns, "neigh", "del", "10.77.0.9", "dev", "lva")
        await async_wait_for(lambda: ("neigh_deleted", "lva") in _events(out), what="neighbour deleted")
        # Traffic to an address nobody answers for: ARP resolution fails (lvb has no address).
        subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', "
                        "('10.77.0.8', 9))"], check=True, timeout=20)
        await async_wait_for(lambda: ("neigh_failed", "lva") in _events(out), timeout=15, what="neighbour failed")
    finally:
        p.request_stop()
        await p.shutdown()
    by_event = {}
    for r in _read(out):
        by_event.setdefault(r["event"], r)
    assert set(by_event) >= {"neigh_new", "neigh_deleted", "neigh_failed"}
    assert {r["interface"] for r in _read(out)} == {"lva"}  # lvb is filtered out by `interfaces`
    assert by_event["neigh_new"]["address"] == "10.77.0.9"
    assert by_event["neigh_new"]["lladdr"] == "02:00:00:00:00:09"
    assert by_event["neigh_new"]["state"] == "permanent"
    assert by_event["neigh_deleted"]["message"] == "neighbour 10.77.0.9 on lva deleted"
    failed = by_event["neigh_failed"]
    assert (failed["address"], failed["state"], failed["level"]) == ("10.77.0.8", "failed", 4)
    assert failed["probes"] >= 1
    assert [r["address"] for r in _read(out) if r["event"] == "neigh_failed"] == ["10.77.0.8"]
    assert failed["message"] == "neighbour 10.77.0.8 on lva failed"


def test_settings_need_something_to_listen_to() -> None:
    with pytest.raises(ConfigError, match=r"n.yaml: inputs\[2\].neighbours: links and neighbours are both off"):
        NetlinkInput.parse_settings(Section({"links": False, "neighbours": False}, "inputs[2]", "n.yaml"))
