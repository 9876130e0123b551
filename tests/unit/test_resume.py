"""Per-user resume buffers: replaying what a reconnecting client missed with `since`."""

from __future__ import annotations

from realtime_sync.core.resume import (
    ENTRY_COST_BYTES,
    USER_COST_BYTES,
    Buffered,
    EvictionReason,
    ResumeBuffers,
    Snapshot,
    contiguous,
)


def _entry(n: int, task: str = "t", at: float = 0.0) -> Buffered:
    return Buffered(event_id=f"e{n}", task_key=task, frame=f"frame-{n}".encode(), at=at)


def _everything(_: str) -> bool:
    return True


def _filled(count: int, *, window_s: float = 300, max_events: int = 1000) -> ResumeBuffers:
    buffers = ResumeBuffers(window_s=window_s, max_events=max_events)
    for n in range(1, count + 1):
        buffers.append("alice", _entry(n, task="a" if n % 2 else "b", at=float(n)))
    return buffers


def test_since_returns_the_frames_after_the_id_in_order() -> None:
    buffers = _filled(5)
    assert buffers.since("alice", "e2", 10.0, _everything) == [b"frame-3", b"frame-4", b"frame-5"]


def test_since_filters_by_the_subscription_matcher() -> None:
    buffers = _filled(6)
    only_a = buffers.since("alice", "e1", 10.0, lambda key: key == "a")
    assert only_a == [b"frame-3", b"frame-5"]
    assert buffers.since("alice", "e1", 10.0, lambda _: False) == []


def test_since_the_newest_id_is_an_empty_replay() -> None:
    buffers = _filled(3)
    assert buffers.since("alice", "e3", 10.0, _everything) == []


def test_since_an_id_that_was_never_buffered_is_none() -> None:
    buffers = _filled(3)
    assert buffers.since("alice", "e999", 10.0, _everything) is None


def test_since_for_a_user_without_a_buffer_is_none() -> None:
    buffers = _filled(3)
    assert buffers.since("bob", "e1", 10.0, _everything) is None


def test_buffers_are_per_user() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=10)
    buffers.append("alice", _entry(1))
    buffers.append("bob", _entry(2))
    buffers.append("alice", _entry(3))
    assert buffers.since("alice", "e1", 0.0, _everything) == [b"frame-3"]
    assert buffers.since("bob", "e1", 0.0, _everything) is None
    assert buffers.since("bob", "e2", 0.0, _everything) == []
    assert buffers.user_count == 2
    assert buffers.event_count() == 3


def test_since_an_expired_id_is_none() -> None:
    buffers = ResumeBuffers(window_s=100, max_events=10)
    buffers.append("alice", _entry(1, at=0.0))
    buffers.append("alice", _entry(2, at=60.0))
    buffers.append("alice", _entry(3, at=90.0))
    assert buffers.since("alice", "e1", 100.0, _everything) == [b"frame-2", b"frame-3"]
    assert buffers.since("alice", "e1", 100.5, _everything) is None
    assert buffers.since("alice", "e2", 100.5, _everything) == [b"frame-3"]


def test_the_count_bound_forgets_the_oldest_events() -> None:
    buffers = _filled(5, max_events=3)
    assert buffers.event_count() == 3
    assert buffers.since("alice", "e1", 10.0, _everything) is None
    assert buffers.since("alice", "e2", 10.0, _everything) is None
    assert buffers.since("alice", "e3", 10.0, _everything) == [b"frame-4", b"frame-5"]


def test_purge_drops_expired_entries_and_empty_users() -> None:
    buffers = ResumeBuffers(window_s=100, max_events=10)
    buffers.append("alice", _entry(1, at=0.0))
    buffers.append("bob", _entry(2, at=0.0))
    buffers.append("bob", _entry(3, at=50.0))
    buffers.purge(120.0)
    assert buffers.user_count == 1
    assert buffers.event_count() == 1
    assert buffers.since("alice", "e1", 120.0, _everything) is None
    assert buffers.since("bob", "e3", 120.0, _everything) == []
    buffers.purge(151.0)
    assert buffers.user_count == 0
    assert buffers.event_count() == 0


def test_a_repeated_id_replays_from_its_latest_occurrence() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=10)
    for n in (1, 2, 1, 3):
        buffers.append("alice", _entry(n))
    assert buffers.since("alice", "e1", 0.0, _everything) == [b"frame-3"]


def test_a_snapshot_round_trips_and_restores_before_newer_events() -> None:
    """Events saved at shutdown are merged before the ones routed since, without dups."""
    from realtime_sync.core.resume import decode_snapshot, encode_snapshot

    old = [Buffered(f"e{i}", "1", f'{{"n":{i}}}'.encode(), 100.0 + i) for i in range(3)]
    raw = encode_snapshot(old, limit=2, generation="g1", saved_at=105.0)
    snapshot = decode_snapshot(raw)
    assert snapshot is not None
    assert (snapshot.generation, snapshot.saved_at) == ("g1", 105.0)
    restored = snapshot.entries
    assert [e.event_id for e in restored] == ["e1", "e2"]
    assert restored[0].frame == b'{"n":1}'

    buffers = ResumeBuffers(window_s=60, max_events=10)
    buffers.append("u", Buffered("e2", "1", b"{}", 103.0))
    buffers.append("u", Buffered("e3", "1", b"{}", 104.0))
    assert buffers.restore("u", restored, now=110.0) == 1
    assert [e.event_id for e in buffers.entries("u", now=110.0)] == ["e1", "e2", "e3"]
    assert buffers.since("u", "e1", 110.0, lambda _: True) == [b"{}", b"{}"]


def test_a_malformed_snapshot_decodes_to_nothing_usable() -> None:
    from realtime_sync.core.resume import decode_snapshot

    assert decode_snapshot(b"") is None
    assert decode_snapshot(b"not json") is None
    assert decode_snapshot(b'{"a":1}') is None
    assert decode_snapshot(b'[["ok", "1", "{}", 1]]') is None  # no generation: unusable
    assert decode_snapshot(b'{"generation":"g","saved_at":true,"entries":[]}') is None
    snapshot = decode_snapshot(
        b'{"generation":"g","saved_at":5,"entries":'
        b'[["e", "1", "{}", true], ["e", 1, "{}", 1.0], ["ok", "1", "{}", 1]]}'
    )
    assert snapshot == Snapshot("g", 5.0, [Buffered("ok", "1", b"{}", 1.0)])


def test_a_snapshot_is_merged_only_where_it_joins_this_runs_history() -> None:
    saved = Snapshot("g1", saved_at=1000.0, entries=[])
    # the run that took over from g1 (its hand-over claimed): whatever its start time
    assert contiguous(saved, claimed="g1", history_since=2000.0, margin_s=5)
    # a replica already receiving every event well before g1 saved (a rolling deploy)
    assert contiguous(saved, claimed=None, history_since=900.0, margin_s=5)
    # started after g1 saved, and g1's hand-over went to another run (which may have
    # crashed after delivering events it never saved): not mergeable
    assert not contiguous(saved, claimed="g2", history_since=1100.0, margin_s=5)
    assert not contiguous(saved, claimed=None, history_since=1100.0, margin_s=5)
    # within the clock-skew margin counts as "after"
    assert not contiguous(saved, claimed=None, history_since=997.0, margin_s=5)


def test_restore_skips_expired_entries() -> None:
    buffers = ResumeBuffers(window_s=10, max_events=10)
    added = buffers.restore("u", [Buffered("old", "1", b"{}", 1.0)], now=100.0)
    assert added == 0
    assert buffers.entries("u", now=100.0) == []


# --- total bounds: users and bytes ------------------------------------------------------


class _Evictions:
    def __init__(self) -> None:
        self.seen: list[EvictionReason] = []

    def __call__(self, reason: EvictionReason) -> None:
        self.seen.append(reason)


def test_past_max_users_the_least_recently_appended_user_is_evicted() -> None:
    evictions = _Evictions()
    buffers = ResumeBuffers(window_s=300, max_events=10, max_users=2, on_evict=evictions)
    buffers.append("alice", _entry(1, at=1.0))
    buffers.append("bob", _entry(2, at=2.0))
    buffers.append("alice", _entry(3, at=3.0))  # alice is now the most recent
    buffers.append("carol", _entry(4, at=4.0))
    assert buffers.user_count == 2
    assert buffers.since("bob", "e2", 5.0, _everything) is None
    assert buffers.since("alice", "e1", 5.0, _everything) == [b"frame-3"]
    assert evictions.seen == [EvictionReason.USERS]


def test_a_frame_shared_by_many_users_is_counted_once() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=10)
    shared = Buffered("e1", "t", b"x" * 10_000, 0.0)
    for n in range(100):
        buffers.append(f"user-{n}", shared)
    assert buffers.byte_count == 10_000 + 100 * (USER_COST_BYTES + ENTRY_COST_BYTES)


def test_past_max_bytes_the_least_recently_appended_users_are_evicted() -> None:
    evictions = _Evictions()
    buffers = ResumeBuffers(window_s=300, max_events=10, max_bytes=5_000, on_evict=evictions)
    for n in range(10):
        buffers.append(f"user-{n}", Buffered(f"e{n}", "t", b"x" * 1_000, float(n)))
    assert buffers.byte_count <= 5_000
    assert buffers.since("user-9", "e9", 10.0, _everything) == []
    assert buffers.since("user-0", "e0", 10.0, _everything) is None
    assert evictions.seen and set(evictions.seen) == {EvictionReason.BYTES}


def test_one_user_over_max_bytes_loses_its_own_oldest_events() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=100, max_bytes=5_000)
    for n in range(10):
        buffers.append("alice", Buffered(f"e{n}", "t", b"x" * 1_000, float(n)))
    assert buffers.byte_count <= 5_000
    assert buffers.since("alice", "e0", 10.0, _everything) is None
    assert buffers.since("alice", "e8", 10.0, _everything) == [b"x" * 1_000]


def test_accounting_returns_to_zero_when_everything_expires() -> None:
    buffers = ResumeBuffers(window_s=10, max_events=2, max_users=3)
    shared = _entry(1, at=1.0)
    for user in ("a", "b", "c", "d"):
        buffers.append(user, shared)
        buffers.append(user, _entry(2, at=2.0))
        buffers.append(user, _entry(3, at=3.0))
    buffers.purge(100.0)
    assert (buffers.user_count, buffers.byte_count) == (0, 0)


def test_an_evicted_user_does_not_get_a_snapshot_joined_over_the_gap() -> None:
    """Events buffered between a snapshot and the eviction are gone: restoring the snapshot
    would replay it and silently skip them, so the resume is not recovered."""
    buffers = ResumeBuffers(window_s=300, max_events=10, max_users=1)
    snapshot = [_entry(1, at=1.0)]  # saved by the previous run
    buffers.append("alice", _entry(2, at=2.0))  # alice missed this one while away
    buffers.append("bob", _entry(3, at=3.0))  # evicts alice at t=3
    buffers.append("alice", _entry(4, at=4.0))  # evicts bob; alice holds only e4
    assert buffers.since("alice", "e1", 5.0, _everything) is None
    assert buffers.restore("alice", snapshot, now=5.0) == 0
    assert buffers.since("alice", "e1", 5.0, _everything) is None
    # What arrived after the eviction resumes as usual.
    assert buffers.since("alice", "e4", 5.0, _everything) == []


def test_a_user_never_evicted_still_restores_its_snapshot() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=10, max_users=2)
    buffers.append("alice", _entry(2, at=2.0))
    assert buffers.restore("alice", [_entry(1, at=1.0)], now=5.0) == 1
    assert buffers.since("alice", "e1", 5.0, _everything) == [b"frame-2"]


def test_eviction_memory_is_bounded_and_still_blocks_forgotten_users() -> None:
    """Past max_users remembered evictions the oldest are forgotten, but no snapshot
    older than a forgotten eviction is joined for anyone."""
    buffers = ResumeBuffers(window_s=300, max_events=10, max_users=1)
    for n in range(5):
        buffers.append(f"user-{n}", _entry(n, at=float(n + 1)))
    # user-0..3 were evicted; only the latest one or two evictions are remembered.
    assert buffers.restore("user-0", [_entry(100, at=0.5)], now=10.0) == 0
    assert buffers.restore("user-9", [_entry(101, at=0.5)], now=10.0) == 0
