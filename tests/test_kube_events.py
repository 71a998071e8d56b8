"""Cluster events (kube_events input) collected by exactly one agent, shipped once across a leader's death.

Two real agents (`python -m logagent run`, separate state dirs, as on two nodes) run the input against the fake
API server (Events list+watch, Leases with resourceVersion conflicts) and ship into the `_bulk` receiver. One
leads; it is killed with SIGKILL; the other takes the expired Lease over and resumes from the acknowledged
resourceVersion the leader kept on the Lease. Then the history is compacted (410 Gone): the new leader relists.
Every event version the server made must be stored exactly once, under the id derived from its uid and
resourceVersion (the receiver answers a second create of an id with 409, as Elasticsearch does).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from logagent.config import parse_config
from logagent.pipeline import Pipeline
from logagent.record import doc_id
from tests.filetail import read_output
from tests.helpers import async_wait_for
from tests.kube_apiserver import FakeApiServer
from tests.kube_objects import rbac_refuses
from tests.receivers.es import BulkReceiver

LEASE = ("logagent", "logagent-kube-events")
RV = "logagent.io/events-resource-version"


def _input(api: FakeApiServer, identity: str, **extra: Any) -> dict[str, Any]:
    return {"type": "kube_events", "name": "cluster-events", "api_server": api.url, "token_file": "/nonexistent",
            "ca_file": "/nonexistent", "identity": identity, "lease_duration": "3s", "renew_deadline": "2s",
            "retry_period": "300ms", "backoff_initial": "50ms", "backoff_max": "300ms", **extra}


def _agent(tmp_path: Path, api: FakeApiServer, es: BulkReceiver, identity: str) -> subprocess.Popen[bytes]:
    d = tmp_path / identity
    d.mkdir()
    cfg = {"state_dir": str(d / "state"), "checkpoint_interval": "20ms", "grace_period": "3s",
           "http": {"enabled": False}, "inputs": [_input(api, identity)],
           "outputs": [{"type": "elasticsearch", "name": "es", "url": es.url, "index": "kube-events",
                        "batch": {"max_wait": "50ms"}, "retry": {"initial_backoff": "20ms", "max_backoff": "200ms"}}]}
    (d / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "logagent", "run", "-c", str(d / "cfg.yaml")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "agent.log", "ab"), cwd=os.getcwd())


def _holder(api: FakeApiServer) -> str | None:
    lease = api.leases.get(LEASE)
    return lease["spec"].get("holderIdentity") if lease else None


async def _stop(p: subprocess.Popen[bytes]) -> None:
    """SIGTERM, waited for without blocking the loop: the agent's last requests go to servers in this loop."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            await async_wait_for(lambda: p.poll() is not None, timeout=15, what="the agent stopped")
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.mark.parametrize("handed_over", [True, False], ids=["position-on-the-lease", "killed-at-once"])
async def test_two_agents_one_leader_takeover_after_kill_9_and_every_event_stored_once(
        api: FakeApiServer, tmp_path: Path, handed_over: bool) -> None:
    """handed_over: the leader is killed after its acknowledged position reached the Lease (the follower resumes
    there, nothing is shipped twice); otherwise at once, maybe before its first renew (the follower ships again
    what it cannot know was shipped, and the ids make Elasticsearch store it once)."""
    es = await BulkReceiver().start()
    made = [api.add_event("shop", f"web-{i}.1", "Scheduled", f"assigned shop/web-{i} to n1") for i in range(5)]
    a = _agent(tmp_path, api, es, "agent-a")
    b: subprocess.Popen[bytes] | None = None
    try:
        await async_wait_for(lambda: _holder(api) == "agent-a", timeout=30, what="agent-a leads")
        b = _agent(tmp_path, api, es, "agent-b")
        await async_wait_for(lambda: len(es.docs) == 5, timeout=30, what="the existing events shipped")
        for i in range(5, 10):
            made.append(api.add_event("shop", f"web-{i}.1", "BackOff", f"Back-off restarting web-{i}",
                                      type_="Warning"))
        made.append(api.bump_event("shop", "web-5.1"))
        made.append(api.bump_event("shop", "web-5.1"))
        await async_wait_for(lambda: len(es.docs) == 12, timeout=30, what="watched events shipped")
        assert _holder(api) == "agent-a" and b.poll() is None  # the follower only waits
        if handed_over:
            # the leader's acknowledged position reaches the Lease with its next renew
            handed = made[-1]["metadata"]["resourceVersion"]
            await async_wait_for(lambda: int(api.leases[LEASE]["metadata"]["annotations"].get(RV, 0))
                                 >= int(handed), timeout=30, what="the position on the Lease")
        assert {w[1] for w in api.lease_writes if w[2] in (200, 201)} == {"agent-a"}

        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        on_lease, watches_before = api.leases[LEASE]["metadata"]["annotations"].get(RV), len(api.event_watches)
        for i in range(10, 15):  # while nobody leads
            made.append(api.add_event("kube-system", f"dns-{i}.1", "Unhealthy", "Readiness probe failed",
                                      type_="Warning"))
        await async_wait_for(lambda: _holder(api) == "agent-b", timeout=30, what="agent-b takes over")
        await async_wait_for(lambda: len(es.docs) == 17, timeout=30, what="events after the takeover")
        lease = api.leases[LEASE]
        assert lease["spec"]["leaseTransitions"] == 1
        if handed_over:
            # agent-b resumed watching from the handed-over position: no relist, nothing shipped twice
            assert api.event_watches[watches_before] == on_lease
            assert api.event_lists == 1 and es.conflicts == 0
        reshipped = es.conflicts
        # an update that raced the other elector was refused with 409 rather than both leading
        assert all(status in (200, 201, 409, 404) for _, _, status in api.lease_writes)

        # compaction: agent-b's watch gets 410 Gone and lists again, shipping only what it had not
        watches = len(api.event_watches)
        api.expire_events()
        for i in range(15, 18):
            made.append(api.add_event("shop", f"web-{i}.1", "Pulled", "image pulled"))
        await async_wait_for(lambda: len(es.docs) == 20 and len(api.event_watches) > watches + 1, timeout=30,
                             what="events after the relist")
        assert api.event_lists >= 2
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
        if b is not None:
            await _stop(b)
        await es.stop()
    assert _holder(api) == ""  # released on shutdown, so a follower would not wait for expiry

    versions = {(e["metadata"]["uid"], e["metadata"]["resourceVersion"]) for e in made}
    stored = [(d["event_uid"], d["resource_version"]) for d in es.docs.values()]
    assert sorted(stored) == sorted(versions)  # each event version exactly once, none missing
    assert es.auto_docs == []
    assert rbac_refuses(api.grants_used) == set()  # every call the shipped RBAC allows
    meta = {"source_id": "kube-events", "pos_key": "event_key"}
    assert all(_id == doc_id(meta, d) for _id, d in es.docs.items())  # the ids every agent derives alike
    # what the new leader shipped again after the handover landed on existing ids
    assert es.items_seen == len(versions) + es.conflicts
    print(f"\nevents={len(versions)} shipped again at the takeover={reshipped} (stored once: same ids)")
    doc = next(d for d in es.docs.values() if d["event_name"] == "web-5.1" and d["count"] == 3)
    assert doc["involved_object"]["kind"] == "Pod" and doc["reason"] == "BackOff" and doc["type"] == "Warning"
    assert doc["watch_type"] == "MODIFIED" and doc["namespace"] == "shop" and doc["source"]["component"] == "kubelet"


async def test_filters_by_type_namespace_reason_and_kind(api: FakeApiServer, tmp_path: Path) -> None:
    api.add_event("shop", "a.1", "BackOff", "back-off", type_="Warning")
    api.add_event("shop", "b.1", "Scheduled", "scheduled")  # Normal: filtered
    api.add_event("other", "c.1", "BackOff", "back-off", type_="Warning")  # namespace: filtered
    api.add_event("shop", "d.1", "Unhealthy", "probe", type_="Warning")  # reason: filtered
    api.add_event("shop", "e.1", "BackOff", "back-off", kind="Node", obj_name="n1", type_="Warning")  # kind
    out = tmp_path / "out.jsonl"
    doc = {"state_dir": str(tmp_path / "state"), "grace_period": "3s", "checkpoint_interval": "20ms",
           "http": {"enabled": False},
           "inputs": [_input(api, "solo", types=["Warning"], namespaces=["shop"], reasons=["BackOff"],
                             kinds=["Pod"])],
           "outputs": [{"type": "file", "path": str(out), "fsync": False}]}
    p = Pipeline(parse_config(doc, "test.yaml"))
    await p.start()
    try:
        await async_wait_for(lambda: read_output(out), timeout=30, what="the wanted event")
        api.add_event("shop", "f.1", "BackOff", "back-off again", type_="Warning")
        await async_wait_for(lambda: len(read_output(out)) == 2, timeout=30, what="the watched one")
    finally:
        p.request_stop()
        await p.shutdown()
    assert [r["event_name"] for r in read_output(out)] == ["a.1", "f.1"]
    assert read_output(out)[0]["input"] == "cluster-events"


async def test_two_electors_racing_for_an_expired_lease_one_wins_the_other_gets_409(api: FakeApiServer) -> None:
    from logagent.kubernetes.api import ApiCredentials
    from logagent.kubernetes.client import ApiClient
    from logagent.kubernetes.lease import LeaderElector

    clients = [ApiClient(ApiCredentials(server=api.url)) for _ in range(3)]
    try:
        old, a, b = (LeaderElector(c, "logagent", "race", ident, lease_duration=1.0, renew_deadline=0.6,
                                   retry_period=0.2) for c, ident in zip(clients, ("old", "a", "b"), strict=True))
        assert await old.try_acquire_or_renew()
        # both see the lease held by "old"; it is not renewed, so on their own clocks it expires
        assert not await a.try_acquire_or_renew() and not await b.try_acquire_or_renew()
        deadline = asyncio.get_running_loop().time() + 1.1
        while asyncio.get_running_loop().time() < deadline:  # the lease's duration passing, not a condition
            await asyncio.sleep(0.1)
        won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
        assert sorted(won) == [False, True]
        assert [s for v, _, s in api.lease_writes if v == "update"][-2:].count(409) == 1
        winner = a if won[0] else b
        assert api.leases[("logagent", "race")]["spec"]["holderIdentity"] == winner.identity
        assert api.leases[("logagent", "race")]["spec"]["leaseTransitions"] == 1
        # the winner cannot renew (the API server fails): it steps down within renew_deadline, never holds on
        api.fail_next("PUT", "/apis/coordination.k8s.io", 500, times=100)
        winner.is_leader = True
        await asyncio.wait_for(winner.hold(), 5)
        assert winner.is_leader is False
    finally:
        for c in clients:
            await c.close()
