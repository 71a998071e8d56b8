"""Acknowledgement tokens and in-order checkpoint commits."""

from __future__ import annotations

import pytest

from logagent.checkpoint import CheckpointStore
from logagent.record import AckToken, Batch, doc_id


def test_token_fires_once_after_every_share_is_done() -> None:
    fired = []
    tok = AckToken(lambda: fired.append(1))
    tok.share(3)
    tok.done()
    tok.done()
    assert fired == []
    tok.done()
    assert fired == [1]
    with pytest.raises(RuntimeError):
        tok.done()


def test_share_zero_completes_immediately() -> None:
    fired = []
    tok = AckToken(lambda: fired.append(1))
    tok.share(0)
    assert fired == [1] and tok.completed


def test_split_children_complete_the_parent_share() -> None:
    fired = []
    tok = AckToken(lambda: fired.append(1))
    tok.share(2)
    children = tok.split(3)
    tok.done()  # the other output's share
    children[0].done()
    children[2].done()
    assert fired == []
    children[1].done()
    assert fired == [1]


def test_tracker_commits_in_order_and_persists(tmp_path) -> None:
    store = CheckpointStore(tmp_path)
    tr = store.tracker("files")
    t1, t2, t3 = tr.token("a", {"offset": 10}), tr.token("a", {"offset": 20}), tr.token("a", {"offset": 30})
    t3.done()
    t2.done()
    assert "a" not in tr.committed  # 10 not acknowledged yet: nothing may be committed
    t1.done()
    assert tr.committed["a"] == {"offset": 30}
    assert tr.outstanding("a") == 0
    store.close()
    reopened = CheckpointStore(tmp_path)
    assert reopened.tracker("files").committed == {"a": {"offset": 30}}
    reopened.tracker("files").forget("a")
    reopened.close()
    assert CheckpointStore(tmp_path).load("files") == {}


def test_doc_id_is_stable_per_source_position() -> None:
    meta = {"source_id": "file:abc", "pos_key": "offset"}
    a = doc_id(meta, {"offset": 100, "message": "x"})
    assert a == doc_id(meta, {"offset": 100, "message": "changed"})
    assert a != doc_id(meta, {"offset": 101})
    assert doc_id({}, {"offset": 1}) is None
    b = Batch("t", [{"offset": 1, "message": "m"}], meta={"input": "i"})
    assert list(b.shipped()) == [{"input": "i", "offset": 1, "message": "m"}]
