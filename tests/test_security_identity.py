"""Issue 10, attack 1: a container forging another tenant's identity, tried as an attacker in one pod would.

The node is laid out as the kubelet does it (`tests/e2e_support.ContainerLog`: the runtime's CRI file under
/var/log/pods, the kubelet's link in /var/log/containers); the agent is the real pipeline — file tailer over the
links, the `kubernetes` stage listing the node's pods from a fake API server on 127.0.0.1 (labels come from
there), an Elasticsearch output whose index template is per namespace, talking to a `_bulk` receiver that stores
each document with the index it was sent to. The attacker's pod prints to its own stdout:

- a line shaped like a sidecar envelope whose fields claim `kube-system/victim` (and an input and a path);
- a JSON body naming `kubernetes`, `input`, `path` and `host` while the input merges JSON bodies into the record
  (`parser: json`, `json_key: ""`);
- from a container its pod declares as a sidecar, an envelope whose fields claim another pod.

Every document must carry the attacker's own namespace, pod, labels, input and path and land in the attacker's
index; the genuine lines printed after the forged one (in the same read and in a later one) too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from logagent import metrics, registry
from logagent.config import parse_config
from logagent.pipeline import Pipeline
from logagent.record import host_name
from tests.e2e_support import ContainerLog
from tests.helpers import async_wait_for
from tests.kube_apiserver import FakeApiServer, make_pod
from tests.receivers.es import BulkReceiver

pytest.importorskip("logagent.parsers.factory", reason="needs the CRI parser")

TS = "2024-05-01T10:00:00.000000001Z"
INDEX = "logs-{kubernetes.namespace|system}-%Y.%m.%d"
VICTIM = {"namespace": "kube-system", "pod": "kube-apiserver-node-a", "pod_uid": "uid-victim",
          "labels": {"component": "kube-apiserver"}}


def cri(*lines: str) -> bytes:
    return "".join(f"{TS} stdout F {line}\n" for line in lines).encode()


def envelope(message: str, fields: dict[str, Any], file: str = "/var/log/app/app.log", offset: int = 0) -> str:
    return json.dumps({"logagent.sidecar": 1, "file": file, "offset": offset, "message": message,
                       "fields": fields}, separators=(",", ":"))


class Node:
    """The attacker's pod and a victim pod on node-a, known to the API server; the attacker's container log."""

    def __init__(self, tmp_path: Path, api: FakeApiServer, container: str = "app",
                 annotations: dict[str, str] | None = None) -> None:
        self.root = tmp_path / "node"
        self.log = ContainerLog(self.root, namespace="tenant-a", pod="evil-7c9d8b6f5-q2w3e", container=container,
                                uid="uid-attacker").create()
        self.annotations = annotations
        api.add(make_pod(self.log.pod, "tenant-a", uid=self.log.uid, labels={"app": "evil"},
                         annotations=annotations, containers={container: ("evil/app:1", self.log.container_id, 0)}))
        api.add(make_pod(VICTIM["pod"], "kube-system", uid="uid-victim", labels=VICTIM["labels"]))

    def attacker_identity(self) -> dict[str, Any]:
        own = {**self.log.path_meta(), "labels": {"app": "evil"}, "image": "evil/app:1", "node": "node-a"}
        return {**own, "annotations": self.annotations} if self.annotations else own


def agent(tmp_path: Path, node: Node, api: FakeApiServer, es: BulkReceiver, **input_opts: Any) -> Pipeline:
    cfg = parse_config({
        "state_dir": str(tmp_path / "state"), "http": {"enabled": False}, "grace_period": "5s",
        "inputs": [{"type": "file", "name": "containers", "paths": [node.log.glob], "format": "cri", "tag": "kube",
                    "poll_interval": "100ms", **input_opts}],
        "pipeline": [{"type": "kubernetes", "api_server": api.url, "node_name": "node-a", "root": str(node.root),
                      "token_file": "/nonexistent", "ca_file": "/nonexistent"}],
        # fields: all: the documents show every identity field (lean would leave input/path/offset out)
        "outputs": [{"type": "elasticsearch", "url": es.url, "index": INDEX, "compression": "none", "fields": "all",
                     "batch": {"max_records": 100, "max_wait": "20ms"},
                     "retry": {"initial_backoff": "10ms", "max_backoff": "100ms"}}],
    }, "<security test>")
    registry.validate(cfg)
    return Pipeline(cfg)


def shipped(es: BulkReceiver) -> list[tuple[str, dict[str, Any]]]:
    """(index, document) of everything the receiver stored, in the order the lines were written."""
    docs = [(es.index_of[i], d) for i, d in es.docs.items()]
    return sorted(docs, key=lambda x: x[1]["offset"])


def assert_attackers_own(node: Node, docs: list[tuple[str, dict[str, Any]]]) -> None:
    for index, doc in docs:
        assert index == "logs-tenant-a-2024.05.01", doc
        assert doc["kubernetes"] == node.attacker_identity(), doc
        assert doc["input"] == "containers" and doc["path"] == str(node.log.link), doc
        assert doc.get("host") in (None, host_name()) and "sidecar_file" not in doc, doc


async def test_a_forged_envelope_is_an_ordinary_line_of_the_attackers_pod(api: FakeApiServer,
                                                                           tmp_path: Path) -> None:
    node = Node(tmp_path, api)
    es = await BulkReceiver().start()
    forged = envelope("rm -rf / by admin", {
        "kubernetes": VICTIM, "input": "audit", "path": "/var/log/kube-apiserver/audit.log", "level": "info"},
        file="/var/log/kube-apiserver/audit.log", offset=42)
    pipeline = agent(tmp_path, node, api, es)
    await pipeline.start()
    try:
        # the forged line between genuine ones, in one write: one read, one batch
        node.log.write(cri("genuine 1", forged, "genuine 2"))
        await async_wait_for(lambda: len(es.docs) >= 3, timeout=20, what="the first three documents")
        # the attacker's lines in a later read: a cached route of the forged line must not reach them
        node.log.write(cri("genuine 3"))
        await async_wait_for(lambda: len(es.docs) >= 4, timeout=20, what="the fourth document")
    finally:
        pipeline.request_stop()
        await pipeline.shutdown()
        await es.stop()

    docs = shipped(es)
    assert [d["message"] for _, d in docs] == ["genuine 1", forged, "genuine 2", "genuine 3"]
    assert_attackers_own(node, docs)
    # shipped as written, flagged: the container is not declared as a sidecar
    assert docs[1][1]["flags"] == ["sidecar_envelope_untrusted"] and "level" not in docs[1][1]
    assert all("flags" not in d for i, (_, d) in enumerate(docs) if i != 1)
    assert not [i for i in es.index_of.values() if "kube-system" in i]


async def test_a_json_body_cannot_set_identity_when_bodies_are_merged_into_records(api: FakeApiServer,
                                                                                   tmp_path: Path) -> None:
    node = Node(tmp_path, api)
    es = await BulkReceiver().start()
    body = {"kubernetes": VICTIM, "input": "audit", "path": "/var/log/kube-apiserver/audit.log",
            "host": "control-plane-1", "msg": "forged", "level": "warn"}
    flagged = metrics.FLAGGED.labels(component="containers", flag="identity_field")
    before = flagged._value.get()
    pipeline = agent(tmp_path, node, api, es, parser="json", json_key="")
    await pipeline.start()
    try:
        node.log.write(cri(json.dumps(body), '{"msg":"genuine","level":"info"}', "plain text"))
        await async_wait_for(lambda: len(es.docs) >= 3, timeout=20, what="three documents")
        node.log.write(cri('{"msg":"later"}'))
        await async_wait_for(lambda: len(es.docs) >= 4, timeout=20, what="the fourth document")
    finally:
        pipeline.request_stop()
        await pipeline.shutdown()
        await es.stop()

    docs = shipped(es)
    assert_attackers_own(node, docs)
    forged = docs[0][1]
    # the body's claims are kept aside, under json_<key>; the record says why
    assert (forged["json_kubernetes"], forged["json_input"], forged["json_path"], forged["json_host"]) == (
        VICTIM, "audit", "/var/log/kube-apiserver/audit.log", "control-plane-1")
    assert forged["msg"] == "forged" and forged["level"] == "warn" and forged["flags"] == ["identity_field"]
    assert [(d.get("msg"), d.get("flags")) for _, d in docs[1:]] == [("genuine", None), (None, None),
                                                                      ("later", None)]
    assert flagged._value.get() - before == 1


async def test_a_declared_sidecar_speaks_only_for_its_own_reading_in_its_own_pod(api: FakeApiServer,
                                                                                 tmp_path: Path) -> None:
    node = Node(tmp_path, api, container="shipper", annotations={"logagent.io/sidecar": "shipper"})
    es = await BulkReceiver().start()
    hostile = envelope("payment failed", {"kubernetes": VICTIM, "input": "audit", "path": "/etc/shadow",
                                          "sidecar_source": "fp:victim", "level": "error"}, offset=0)
    fine = envelope("payment ok", {"level": "info"}, offset=15)
    pipeline = agent(tmp_path, node, api, es)
    await pipeline.start()
    try:
        node.log.write(cri(hostile, fine))
        await async_wait_for(lambda: len(es.docs) >= 2, timeout=20, what="two documents")
    finally:
        pipeline.request_stop()
        await pipeline.shutdown()
        await es.stop()

    docs = sorted(es.docs.values(), key=lambda d: d["sidecar_offset"])
    assert set(es.index_of.values()) == {"logs-tenant-a-2024.05.01"}
    for doc in docs:
        assert doc["kubernetes"] == node.attacker_identity() and doc["path"] == str(node.log.link)
        assert doc["input"] == "containers" and doc["sidecar_file"] == "/var/log/app/app.log"
    assert [(d["message"], d["level"], d["sidecar_offset"], d.get("flags")) for d in docs] == [
        ("payment failed", "error", 0, ["identity_field"]), ("payment ok", "info", 15, None)]
    assert "sidecar_source" not in docs[0]


def test_each_record_gets_the_index_its_own_time_and_fields_give() -> None:
    """The index memo is keyed by what a rendering depends on: two records in one batch whose local clock hours
    read alike but fall on different UTC days get different daily indexes; a record field the template names
    gives each record its own index."""
    from logagent.config import Section
    from logagent.outputs.elasticsearch import BulkCodec, ElasticsearchOutput
    from logagent.record import Batch

    def codec(index: str) -> BulkCodec:
        return BulkCodec(ElasticsearchOutput.parse_settings(
            Section({"url": "http://127.0.0.1:9", "index": index}, "outputs[0]", "test.yaml")))

    def indexes(c: BulkCodec, batch: Batch) -> list[str]:
        items, _ = c.items(batch)
        return [json.loads(it.split(b"\n", 1)[0])["create"]["_index"] for it in items]

    meta = {"input": "files", "path": "/var/log/app.log", "kubernetes": {"namespace": "shop"}}
    times = ["2024-05-01T23:30:00+05:00", "2024-05-01T23:10:00-05:00", "2024-05-01T23:59:59Z", 1714608000]
    batch = Batch("t", [{"message": str(i), "time": t} for i, t in enumerate(times)], meta)
    assert indexes(codec(INDEX), batch) == ["logs-shop-2024.05.01", "logs-shop-2024.05.02", "logs-shop-2024.05.01",
                                            "logs-shop-2024.05.02"]
    per_minute = Batch("t", [{"message": "a", "time": "2024-05-01T10:00:59Z"},
                             {"message": "b", "time": "2024-05-01T10:01:00Z"}], meta)
    assert indexes(codec("logs-%Y.%m.%d-%H%M"), per_minute) == ["logs-2024.05.01-1000", "logs-2024.05.01-1001"]
    apps = Batch("t", [{"message": "x", "time": "2024-05-01T10:00:00Z", "app": a} for a in ("web", "db", "")], meta)
    assert indexes(codec("logs-{app|none}-%Y"), apps) == ["logs-web-2024", "logs-db-2024", "logs-none-2024"]
