"""Per-user resume buffers: replaying what a reconnecting client missed with `since`."""

from __future__ import annotations

from collections.abc import Callable

from realtime_sync.core.resume import (
    ENTRY_COST_BYTES,
    USER_COST_BYTES,
    Buffered,
    EvictionReason,
    Replay,
    ResumeBuffers,
    Resync,
    ResyncReason,
    Snapshot,
    contiguous,
)


def _entry(n: int, task: str = "t", at: float = 0.0) -> Buffered:
    return Buffered(event_id=f"e{n}", task_key=task, frame=f"frame-{n}".encode(), at=at)


def _everything(_: str) -> bool:
    return True


def _exact(*, window_s: float = 300, max_events: int = 1000, **margins: float) -> ResumeBuffers:
    """Buffers without a reorder margin: a replay is exactly what came after `since`."""
    return ResumeBuffers(
        window_s=window_s,
        max_events=max_events,
        margin_s=margins.get("margin_s", 0.0),
        margin_events=int(margins.get("margin_events", 0)),
    )


def _since(
    buffers: ResumeBuffers,
    user: str,
    since: str,
    now: float,
    matches: Callable[[str], bool],
) -> list[bytes] | None:
    """The replayed frames by position only, or None for a resync."""
    answer = buffers.replay(user, since, None, now, matches)
    return answer.frames if isinstance(answer, Replay) else None


def _filled(count: int, *, window_s: float = 300, max_events: int = 1000) -> ResumeBuffers:
    buffers = _exact(window_s=window_s, max_events=max_events)
    for n in range(1, count + 1):
        buffers.append("alice", _entry(n, task="a" if n % 2 else "b", at=float(n)))
    return buffers


def test_since_returns_the_frames_after_the_id_in_order() -> None:
    buffers = _filled(5)
    assert _since(buffers, "alice", "e2", 10.0, _everything) == [b"frame-3", b"frame-4", b"frame-5"]


def test_since_filters_by_the_subscription_matcher() -> None:
    buffers = _filled(6)
    only_a = _since(buffers, "alice", "e1", 10.0, lambda key: key == "a")
    assert only_a == [b"frame-3", b"frame-5"]
    assert _since(buffers, "alice", "e1", 10.0, lambda _: False) == []


def test_since_the_newest_id_is_an_empty_replay() -> None:
    buffers = _filled(3)
    assert _since(buffers, "alice", "e3", 10.0, _everything) == []


def test_since_an_id_that_was_never_buffered_is_none() -> None:
    buffers = _filled(3)
    assert _since(buffers, "alice", "e999", 10.0, _everything) is None


def test_since_for_a_user_without_a_buffer_is_none() -> None:
    buffers = _filled(3)
    assert _since(buffers, "bob", "e1", 10.0, _everything) is None


def test_buffers_are_per_user() -> None:
    buffers = _exact(window_s=300, max_events=10)
    buffers.append("alice", _entry(1))
    buffers.append("bob", _entry(2))
    buffers.append("alice", _entry(3))
    assert _since(buffers, "alice", "e1", 0.0, _everything) == [b"frame-3"]
    assert _since(buffers, "bob", "e1", 0.0, _everything) is None
    assert _since(buffers, "bob", "e2", 0.0, _everything) == []
    assert buffers.user_count == 2
    assert buffers.event_count() == 3


def test_since_an_expired_id_is_none() -> None:
    buffers = _exact(window_s=100, max_events=10)
    buffers.append("alice", _entry(1, at=0.0))
    buffers.append("alice", _entry(2, at=60.0))
    buffers.append("alice", _entry(3, at=90.0))
    assert _since(buffers, "alice", "e1", 100.0, _everything) == [b"frame-2", b"frame-3"]
    assert _since(buffers, "alice", "e1", 100.5, _everything) is None
    assert _since(buffers, "alice", "e2", 100.5, _everything) == [b"frame-3"]


def test_the_count_bound_forgets_the_oldest_events() -> None:
    buffers = _filled(5, max_events=3)
    assert buffers.event_count() == 3
    assert _since(buffers, "alice", "e1", 10.0, _everything) is None
    assert _since(buffers, "alice", "e2", 10.0, _everything) is None
    assert _since(buffers, "alice", "e3", 10.0, _everything) == [b"frame-4", b"frame-5"]


def test_purge_drops_expired_entries_and_empty_users() -> None:
    buffers = _exact(window_s=100, max_events=10)
    buffers.append("alice", _entry(1, at=0.0))
    buffers.append("bob", _entry(2, at=0.0))
    buffers.append("bob", _entry(3, at=50.0))
    buffers.purge(120.0)
    assert buffers.user_count == 1
    assert buffers.event_count() == 1
    assert _since(buffers, "alice", "e1", 120.0, _everything) is None
    assert _since(buffers, "bob", "e3", 120.0, _everything) == []
    buffers.purge(151.0)
    assert buffers.user_count == 0
    assert buffers.event_count() == 0


def test_a_repeated_id_replays_from_its_latest_occurrence() -> None:
    buffers = _exact(window_s=300, max_events=10)
    for n in (1, 2, 1, 3):
        buffers.append("alice", _entry(n))
    assert _since(buffers, "alice", "e1", 0.0, _everything) == [b"frame-3"]


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

    buffers = _exact(window_s=60, max_events=10)
    buffers.append("u", Buffered("e2", "1", b"{}", 103.0))
    buffers.append("u", Buffered("e3", "1", b"{}", 104.0))
    assert buffers.restore("u", restored, now=110.0) == 1
    assert [e.event_id for e in buffers.entries("u", now=110.0)] == ["e1", "e2", "e3"]
    assert _since(buffers, "u", "e1", 110.0, lambda _: True) == [b"{}", b"{}"]


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
    buffers = _exact(window_s=10, max_events=10)
    added = buffers.restore("u", [Buffered("old", "1", b"{}", 1.0)], now=100.0)
    assert added == 0
    assert buffers.entries("u", now=100.0) == []


# --- resuming on another replica: reorder margins, lag, trimmed windows, holes ----------


def _at(n: int, at: float, published: float | None = None, task: str = "t") -> Buffered:
    return Buffered(f"e{n}", task, f"frame-{n}".encode(), at, published)


def _replica(order: list[int], *, start: float = 100.0, **settings: float) -> ResumeBuffers:
    """A replica that received events e<n> in `order`, one every 0.1 s from `start`;
    event n was published at 100 + n/10 (the same on every replica)."""
    buffers = ResumeBuffers(
        window_s=settings.get("window_s", 300.0),
        max_events=int(settings.get("max_events", 1000)),
        started_at=settings.get("started_at", float("-inf")),
        margin_s=settings.get("margin_s", 2.0),
        margin_events=int(settings.get("margin_events", 4)),
    )
    for i, n in enumerate(order):
        buffers.append("alice", _at(n, start + i / 10, 100.0 + n / 10))
    return buffers


def _ids(answer: Replay | Resync) -> list[str]:
    assert isinstance(answer, Replay), answer
    return [frame.decode().removeprefix("frame-") for frame in answer.frames]


def test_an_event_ordered_before_since_on_this_replica_is_still_replayed() -> None:
    """The hole the issue measured: the client saw e1..e6 on replica A; replica B got e7
    before e6. An exact replay after e6 on B would skip e7; the margin replays it."""
    on_b = [1, 2, 3, 4, 5, 7, 6, 8, 9]
    exact = _replica(on_b, margin_s=0, margin_events=0)
    assert _ids(exact.replay("alice", "e6", None, 200.0, _everything)) == ["8", "9"]
    replayed = _ids(_replica(on_b).replay("alice", "e6", None, 200.0, _everything))
    assert {"7", "8", "9"} <= set(replayed)
    assert replayed == sorted(replayed, key=lambda n: on_b.index(int(n)))  # B's order


def test_the_count_margin_replays_entries_before_since_whatever_their_age() -> None:
    buffers = _exact(window_s=1000, margin_events=3)
    for n in range(1, 8):
        buffers.append("alice", _at(n, at=float(n * 100)))
    answer = buffers.replay("alice", "e5", None, 800.0, _everything)
    assert _ids(answer) == ["3", "4", "5", "6", "7"]


def test_the_time_margin_replays_what_arrived_shortly_before_since() -> None:
    buffers = _exact(margin_s=5)
    for n, at in enumerate((10.0, 20.0, 26.0, 29.0, 30.0, 31.0), start=1):
        buffers.append("alice", _at(n, at))
    # e5 arrived at 30: what arrived after 25 is replayed, e1 and e2 are not
    assert _ids(buffers.replay("alice", "e5", None, 40.0, _everything)) == ["3", "4", "5", "6"]


def test_the_subscription_still_filters_the_margin() -> None:
    buffers = _exact(margin_events=10)
    for n in range(1, 7):
        buffers.append("alice", _at(n, float(n), task="a" if n % 2 else "b"))
    answer = buffers.replay("alice", "e4", None, 10.0, lambda key: key == "a")
    assert _ids(answer) == ["1", "3", "5"]


def test_a_lagging_replica_replays_from_the_publish_time_instead_of_resyncing() -> None:
    """B has not received the client's last event yet: with `since_time` it replays what
    was published since then minus the margin; the rest arrives live."""
    lagging = _replica([1, 2, 3, 4], margin_s=0.25)  # e5, e6 not here yet
    assert isinstance(lagging.replay("alice", "e6", None, 200.0, _everything), Resync)
    answer = lagging.replay("alice", "e6", 100.6, 200.0, _everything)
    assert _ids(answer) == ["4"]  # published at 100.4 >= 100.6 - 0.25


def test_an_unknown_id_with_a_publish_time_replays_entries_without_one_by_arrival() -> None:
    buffers = _exact(margin_s=1)
    buffers.append("alice", _at(1, at=50.0))
    buffers.append("alice", _at(2, at=60.0))
    buffers.append("alice", _at(3, at=61.0, published=59.5))
    assert _ids(buffers.replay("alice", "gone", 60.0, 70.0, _everything)) == ["2", "3"]


def test_without_an_anchor_or_a_publish_time_the_position_is_unknown() -> None:
    buffers = _replica([1, 2, 3])
    assert buffers.replay("alice", "e99", None, 200.0, _everything) == Resync(
        ResyncReason.UNKNOWN_POSITION
    )
    assert buffers.replay("bob", "e1", None, 200.0, _everything) == Resync(
        ResyncReason.UNKNOWN_POSITION
    )


def test_a_replica_started_after_the_needed_span_answers_resync() -> None:
    """Events before this replica started never reached it: a replay that must reach back
    before its start is a resync, whether anchored by id or by publish time."""
    buffers = _replica([1, 2, 3, 4, 5, 6], start=100.0, started_at=99.0, margin_s=2.0)
    assert buffers.replay("alice", "e2", None, 200.0, _everything) == Resync(
        ResyncReason.WINDOW_ENDED
    )
    assert buffers.replay("alice", "x", 100.5, 200.0, _everything) == Resync(
        ResyncReason.WINDOW_ENDED
    )
    later = _replica(list(range(1, 60)), start=100.0, started_at=99.0, margin_s=2.0)
    assert isinstance(later.replay("alice", "e50", None, 200.0, _everything), Replay)
    assert isinstance(later.replay("alice", "x", 104.0, 200.0, _everything), Replay)
    # a user with no buffer here: recovered (nothing to replay) if the replica ran then
    assert later.replay("bob", "x", 104.0, 200.0, _everything) == Replay([])
    assert isinstance(later.replay("bob", "x", 100.0, 200.0, _everything), Resync)


def test_trimmed_by_count_past_the_margin_answers_resync_and_not_before() -> None:
    buffers = _replica(list(range(1, 21)), max_events=10, margin_events=4, margin_s=0.05)
    # e11..e20 are held; e1..e10 were trimmed by the count bound
    assert buffers.replay("alice", "e12", None, 200.0, _everything) == Resync(
        ResyncReason.WINDOW_ENDED
    )
    assert _ids(buffers.replay("alice", "e14", None, 200.0, _everything)) == [
        str(n) for n in range(11, 21)
    ]


def test_trimmed_by_age_within_the_time_margin_answers_resync() -> None:
    buffers = _exact(window_s=100, margin_s=5)
    buffers.append("alice", _at(1, at=0.0))
    buffers.append("alice", _at(2, at=3.0))
    buffers.append("alice", _at(3, at=20.0))
    # at 101, e1 (arrived at 0) is gone: a replay from e2 must reach back to -2
    assert buffers.replay("alice", "e2", None, 101.0, _everything) == Resync(
        ResyncReason.WINDOW_ENDED
    )
    assert _ids(buffers.replay("alice", "e3", None, 101.0, _everything)) == ["3"]


def test_a_hole_makes_any_resume_that_must_reach_it_a_resync() -> None:
    buffers = _exact(margin_s=5)
    for n, at in enumerate((10.0, 20.0, 30.0, 40.0), start=1):
        buffers.append("alice", _at(n, at, published=at))
        buffers.append("bob", _at(n, at, published=at))
    buffers.mark_hole("alice", 25.0)
    assert buffers.replay("alice", "e2", None, 50.0, _everything) == Resync(ResyncReason.HOLE)
    assert buffers.replay("alice", "e9", 22.0, 50.0, _everything) == Resync(ResyncReason.HOLE)
    # resuming from after the hole (beyond the margin) replays as usual
    assert _ids(buffers.replay("alice", "e4", None, 50.0, _everything)) == ["4"]
    # the hole is alice's only
    assert _ids(buffers.replay("bob", "e2", None, 50.0, _everything)) == ["2", "3", "4"]


def test_publish_times_survive_a_snapshot_and_older_snapshots_still_load() -> None:
    from realtime_sync.core.resume import decode_snapshot, encode_snapshot

    entries = [_at(1, 10.0, 9.5), _at(2, 11.0)]
    snapshot = decode_snapshot(encode_snapshot(entries, 10, generation="g", saved_at=12.0))
    assert snapshot is not None
    assert snapshot.entries == entries
    old = decode_snapshot(b'{"generation":"g","saved_at":5,"entries":[["e","1","{}",1]]}')
    assert old is not None
    assert old.entries == [Buffered("e", "1", b"{}", 1.0, None)]


def test_a_restored_snapshot_extends_history_back_to_its_oldest_entry() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=100, started_at=100.0, margin_s=5)
    buffers.append("alice", _at(9, at=101.0))
    saved = [_at(n, at=80.0 + n) for n in range(1, 9)]  # arrived 81..88 on the old run
    assert buffers.restore("alice", saved, now=110.0) == 8
    # anchored at e3 (83): must reach back to 78, before the snapshot's first entry
    assert buffers.replay("alice", "e3", None, 110.0, _everything) == Resync(
        ResyncReason.WINDOW_ENDED
    )
    assert _ids(buffers.replay("alice", "e8", None, 110.0, _everything))[-2:] == ["8", "9"]


def test_a_snapshot_says_how_far_back_its_history_reaches() -> None:
    from realtime_sync.core.resume import decode_snapshot, encode_snapshot

    entries = [_at(n, at=float(n)) for n in range(1, 6)]
    whole = decode_snapshot(encode_snapshot(entries, 10, generation="g", saved_at=9.0, floor=0.5))
    assert whole is not None
    assert whole.floor == 0.5
    ever = encode_snapshot(entries, 10, generation="g", saved_at=9.0, floor=float("-inf"))
    assert (decode_snapshot(ever) or whole).floor == 0.0
    # cut to the newest 3: the history now reaches back only to e2's arrival
    cut = decode_snapshot(encode_snapshot(entries, 3, generation="g", saved_at=9.0, floor=0.5))
    assert cut is not None
    assert ([e.event_id for e in cut.entries], cut.floor) == (["e3", "e4", "e5"], 2.0)


def test_a_whole_snapshot_lets_a_restarted_run_replay_from_its_first_entries() -> None:
    """The old run held everything since 50 for the user; the new run started at 100."""
    saved = [_at(n, at=80.0 + n / 10) for n in range(1, 4)]
    buffers = ResumeBuffers(window_s=300, max_events=100, started_at=100.0, margin_s=5)
    buffers.restore("alice", saved, now=110.0, floor=50.0)
    buffers.append("alice", _at(4, at=101.0))
    assert _ids(buffers.replay("alice", "e1", None, 110.0, _everything)) == ["1", "2", "3", "4"]
    assert buffers.floor("alice") == 50.0


def test_a_first_run_is_not_cut_at_its_start() -> None:
    """No earlier run of the consumer group: a resume anchored right after the replica
    started replays; with one, the earlier run may have acknowledged what is missing."""
    after_a_crash = _replica([1, 2, 3], start=100.0, started_at=99.9, margin_s=2.0)
    assert after_a_crash.replay("alice", "e2", None, 101.0, _everything) == Resync(
        ResyncReason.WINDOW_ENDED
    )
    first = _replica([1, 2, 3], start=100.0, started_at=99.9, margin_s=2.0)
    first.first_run()
    assert _ids(first.replay("alice", "e2", None, 101.0, _everything)) == ["1", "2", "3"]
    assert first.floor("alice") == float("-inf")


# --- total bounds: users and bytes ------------------------------------------------------


class _Evictions:
    def __init__(self) -> None:
        self.seen: list[EvictionReason] = []

    def __call__(self, reason: EvictionReason) -> None:
        self.seen.append(reason)


def test_past_max_users_the_least_recently_appended_user_is_evicted() -> None:
    evictions = _Evictions()
    buffers = ResumeBuffers(
        window_s=300, max_events=10, max_users=2, on_evict=evictions, margin_s=0, margin_events=0
    )
    buffers.append("alice", _entry(1, at=1.0))
    buffers.append("bob", _entry(2, at=2.0))
    buffers.append("alice", _entry(3, at=3.0))  # alice is now the most recent
    buffers.append("carol", _entry(4, at=4.0))
    assert buffers.user_count == 2
    assert _since(buffers, "bob", "e2", 5.0, _everything) is None
    assert _since(buffers, "alice", "e1", 5.0, _everything) == [b"frame-3"]
    assert evictions.seen == [EvictionReason.USERS]


def test_a_frame_shared_by_many_users_is_counted_once() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=10, margin_s=0, margin_events=0)
    shared = Buffered("e1", "t", b"x" * 10_000, 0.0)
    for n in range(100):
        buffers.append(f"user-{n}", shared)
    assert buffers.byte_count == 10_000 + 100 * (USER_COST_BYTES + ENTRY_COST_BYTES)


def test_past_max_bytes_the_least_recently_appended_users_are_evicted() -> None:
    evictions = _Evictions()
    buffers = ResumeBuffers(
        window_s=300,
        max_events=10,
        max_bytes=5_000,
        on_evict=evictions,
        margin_s=0,
        margin_events=0,
    )
    for n in range(10):
        buffers.append(f"user-{n}", Buffered(f"e{n}", "t", b"x" * 1_000, float(n)))
    assert buffers.byte_count <= 5_000
    assert _since(buffers, "user-9", "e9", 10.0, _everything) == []
    assert _since(buffers, "user-0", "e0", 10.0, _everything) is None
    assert evictions.seen and set(evictions.seen) == {EvictionReason.BYTES}


def test_one_user_over_max_bytes_loses_its_own_oldest_events() -> None:
    buffers = ResumeBuffers(
        window_s=300, max_events=100, max_bytes=5_000, margin_s=0, margin_events=0
    )
    for n in range(10):
        buffers.append("alice", Buffered(f"e{n}", "t", b"x" * 1_000, float(n)))
    assert buffers.byte_count <= 5_000
    assert _since(buffers, "alice", "e0", 10.0, _everything) is None
    assert _since(buffers, "alice", "e8", 10.0, _everything) == [b"x" * 1_000]


def test_accounting_returns_to_zero_when_everything_expires() -> None:
    buffers = ResumeBuffers(window_s=10, max_events=2, max_users=3, margin_s=0, margin_events=0)
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
    buffers = ResumeBuffers(window_s=300, max_events=10, max_users=1, margin_s=0, margin_events=0)
    snapshot = [_entry(1, at=1.0)]  # saved by the previous run
    buffers.append("alice", _entry(2, at=2.0))  # alice missed this one while away
    buffers.append("bob", _entry(3, at=3.0))  # evicts alice at t=3
    buffers.append("alice", _entry(4, at=4.0))  # evicts bob; alice holds only e4
    assert _since(buffers, "alice", "e1", 5.0, _everything) is None
    assert buffers.restore("alice", snapshot, now=5.0) == 0
    assert _since(buffers, "alice", "e1", 5.0, _everything) is None
    # What arrived after the eviction resumes as usual.
    assert _since(buffers, "alice", "e4", 5.0, _everything) == []


def test_a_user_never_evicted_still_restores_its_snapshot() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=10, max_users=2, margin_s=0, margin_events=0)
    buffers.append("alice", _entry(2, at=2.0))
    assert buffers.restore("alice", [_entry(1, at=1.0)], now=5.0) == 1
    assert _since(buffers, "alice", "e1", 5.0, _everything) == [b"frame-2"]


def test_eviction_memory_is_bounded_and_still_blocks_forgotten_users() -> None:
    """Past max_users remembered evictions the oldest are forgotten, but no snapshot
    older than a forgotten eviction is joined for anyone."""
    buffers = ResumeBuffers(window_s=300, max_events=10, max_users=1, margin_s=0, margin_events=0)
    for n in range(5):
        buffers.append(f"user-{n}", _entry(n, at=float(n + 1)))
    # user-0..3 were evicted; only the latest one or two evictions are remembered.
    assert buffers.restore("user-0", [_entry(100, at=0.5)], now=10.0) == 0
    assert buffers.restore("user-9", [_entry(101, at=0.5)], now=10.0) == 0


def test_blanked_entries_are_accounted_and_trimmed_like_any_other() -> None:
    """A frame blanked by a revocation still leaves the buffer by age or count, and the
    byte count follows (before, trimming a blanked entry raised KeyError in append)."""
    buffers = ResumeBuffers(window_s=10, max_events=2)
    shared = Buffered("e1", "t", b"x" * 1_000, 1.0)
    buffers.append("alice", shared)
    buffers.append("bob", shared)
    assert buffers.forget("bob", "t", lambda _frame: True) == 1
    assert buffers.byte_count == 1_000 + 2 * (USER_COST_BYTES + ENTRY_COST_BYTES)
    buffers.append("bob", _entry(2, at=2.0))
    buffers.append("bob", _entry(3, at=3.0))  # the blanked e1 leaves by count
    buffers.purge(100.0)
    assert (buffers.user_count, buffers.byte_count) == (0, 0)
