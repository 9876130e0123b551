"""Remembering recently routed event ids, so a redelivery is not sent twice."""

from __future__ import annotations

from realtime_sync.core.dedupe import SeenIds


def test_an_unknown_event_id_is_not_seen() -> None:
    ids = SeenIds(window_s=600, max_ids=100)
    assert ids.seen("e1", 0.0) is False
    assert len(ids) == 0


def test_a_redelivered_event_id_is_seen_after_add() -> None:
    ids = SeenIds(window_s=600, max_ids=100)
    ids.add("e1", 0.0)
    assert ids.seen("e1", 0.0) is True
    assert ids.seen("e1", 599.0) is True
    assert "e1" in ids
    assert ids.seen("e2", 1.0) is False


def test_an_id_is_still_seen_at_exactly_the_window() -> None:
    ids = SeenIds(window_s=600, max_ids=100)
    ids.add("e1", 100.0)
    assert ids.seen("e1", 700.0) is True


def test_an_id_is_forgotten_after_the_window() -> None:
    ids = SeenIds(window_s=600, max_ids=100)
    ids.add("e1", 0.0)
    ids.add("e2", 300.0)
    assert ids.seen("e1", 600.5) is False
    assert ids.seen("e2", 600.5) is True
    assert len(ids) == 1
    assert ids.seen("e2", 901.0) is False
    assert len(ids) == 0


def test_expire_drops_only_old_ids() -> None:
    ids = SeenIds(window_s=10, max_ids=100)
    for i in range(10):
        ids.add(f"e{i}", float(i))
    ids.expire(15.5)
    assert [f"e{i}" in ids for i in range(10)] == [False] * 6 + [True] * 4


def test_the_count_bound_evicts_the_oldest() -> None:
    ids = SeenIds(window_s=600, max_ids=3)
    for i, event_id in enumerate(["a", "b", "c", "d"]):
        ids.add(event_id, float(i))
    assert len(ids) == 3
    assert ids.seen("a", 4.0) is False
    assert [ids.seen(e, 4.0) for e in ("b", "c", "d")] == [True, True, True]


def test_re_adding_an_id_refreshes_its_age() -> None:
    ids = SeenIds(window_s=600, max_ids=100)
    ids.add("a", 0.0)
    ids.add("b", 100.0)
    ids.add("a", 500.0)
    assert len(ids) == 2
    assert ids.seen("a", 750.0) is True
    assert ids.seen("b", 750.0) is False
    assert ids.seen("a", 1100.0) is True
    assert ids.seen("a", 1100.5) is False


def test_re_adding_an_id_protects_it_from_count_eviction() -> None:
    ids = SeenIds(window_s=600, max_ids=2)
    ids.add("a", 0.0)
    ids.add("b", 1.0)
    ids.add("a", 2.0)
    ids.add("c", 3.0)
    assert [ids.seen(e, 3.0) for e in ("a", "b", "c")] == [True, False, True]
