"""The share-list ordering rule (core.shares): an older change never overwrites a newer
one, the same change seen twice is applied once, a list is bound to its owner, and keys
never collide across owners or id types."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from realtime_sync.core.events import InvalidEvent, parse_event
from realtime_sync.core.fanout import revoke
from realtime_sync.core.resume import Buffered, Replay, ResumeBuffers
from realtime_sync.core.routing import Registry
from realtime_sync.core.shares import (
    ShareOrder,
    ShareRecord,
    apply_change,
    decode_record,
    share_key,
    timestamp_us,
)


def change(users: tuple[str, ...], at: int, cid: str, version: int = 0) -> ShareRecord:
    return ShareRecord("alice", users, ShareOrder(version, at, cid))


def fold(changes: list[ShareRecord]) -> ShareRecord | None:
    stored: ShareRecord | None = None
    for c in changes:
        stored = apply_change(stored, c).current
    return stored


def test_a_newer_change_replaces_the_list_and_names_who_lost_access() -> None:
    shared = change(("bob", "carol"), 1, "e1")
    applied = apply_change(shared, change(("carol",), 2, "e2"))
    assert applied.write
    assert applied.current.users == ("carol",)
    assert applied.revoked == ("bob",)


def test_an_older_change_is_not_applied_and_revokes_nobody() -> None:
    unshared = apply_change(None, change((), 2, "unshare")).current
    late = apply_change(unshared, change(("bob",), 1, "share"))
    assert not late.write
    assert late.current.users == ()
    assert late.revoked == ()


def test_the_same_change_again_is_in_force_and_tells_the_same_users() -> None:
    """Another replica (or a redelivery) sees the change already stored: no write, and the
    users it removed are told again (each replica tells its own connections)."""
    first = apply_change(change(("bob",), 1, "e1"), change((), 2, "e2"))
    again = apply_change(first.current, change((), 2, "e2"))
    assert not again.write
    assert again.revoked == ("bob",)
    # Its time of receipt may differ on another replica when it carried no timestamp.
    other_replica = apply_change(first.current, change((), 5, "e2"))
    assert not other_replica.write
    assert other_replica.revoked == ("bob",)


def test_every_delivery_order_ends_with_the_newest_list() -> None:
    changes = [change((f"u{i}",), i, f"e{i}") for i in range(5)]
    for perm in itertools.permutations(changes):
        final = fold(list(perm))
        assert final is not None
        assert final.users == ("u4",)


def test_redeliveries_in_random_order_end_with_the_newest_list() -> None:
    rng = random.Random(7)
    changes = [change(("bob",) if i % 2 == 0 else (), i, f"e{i}") for i in range(40)]
    for _ in range(50):
        deliveries = changes * 3
        rng.shuffle(deliveries)
        final = fold(deliveries)
        assert final is not None
        assert final.users == ()
        assert final.order.change_id == "e39"


def test_a_version_wins_over_timestamps_and_ties_break_by_id() -> None:
    assert ShareOrder(2, 0, "a") > ShareOrder(1, 10**15, "z")
    assert ShareOrder(1, 5, "b") > ShareOrder(1, 5, "a")
    newer_version = change((), 1, "e1", version=3)
    assert not apply_change(newer_version, change(("bob",), 9, "e2", version=2)).write


def test_a_list_of_another_owner_is_replaced_not_used() -> None:
    foreign = ShareRecord("mallory", ("eve",), ShareOrder(99, 99, "x"))
    applied = apply_change(foreign, change(("bob",), 1, "e1"))
    assert applied.foreign
    assert applied.write
    assert applied.current.owner == "alice"
    assert applied.revoked == ()


def test_keys_differ_by_owner_and_by_id_type() -> None:
    keys = {share_key(o, t) for o in ("alice", "bob") for t in (42, "42")}
    assert len(keys) == 4
    assert share_key("a:b", 1) != share_key("a", "b:1")


def test_records_round_trip_and_bare_lists_are_not_records() -> None:
    record = ShareRecord("alice", ("bob",), ShareOrder(1, 2, "e"), ("carol",))
    assert decode_record(record.encode()) == record
    assert decode_record(b'["bob"]') is None
    assert decode_record(b"") is None
    assert decode_record(b'{"owner":"a","users":[1],"order":[0,0,"x"]}') is None


def test_timestamps_order_by_instant_whatever_the_offset() -> None:
    assert timestamp_us("2026-01-01T10:00:00+02:00") == timestamp_us("2026-01-01T08:00:00Z")
    assert timestamp_us("2026-01-01T08:00:00.000001Z") - timestamp_us("2026-01-01T08:00:00Z") == 1


def parse(
    body: dict[str, object], *, max_bytes: int | None = None, max_shared_with: int | None = None
) -> object:
    return parse_event(
        orjson.dumps(body),
        cloudevent_id="ce",
        received_at=datetime.now(UTC),
        max_bytes=max_bytes,
        max_shared_with=max_shared_with,
    )


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"shared_with": ["b"], "shares_version": -1}, "shares_version"),
        ({"shared_with": ["b"], "shares_version": "3"}, "shares_version"),
        ({"shared_with": ["b"], "shares_version": True}, "shares_version"),
    ],
)
def test_a_malformed_order_is_dropped(metadata: dict[str, object], reason: str) -> None:
    body = {"type": "TASK_CHANGED", "user_id": "a", "task_id": 1, "metadata": metadata}
    with pytest.raises(InvalidEvent, match=reason):
        parse(body)


def test_a_share_change_with_an_unreadable_timestamp_is_dropped() -> None:
    body = {
        "type": "TASK_CHANGED",
        "user_id": "a",
        "task_id": 1,
        "timestamp": "yesterday",
        "metadata": {"shared_with": ["b"]},
    }
    with pytest.raises(InvalidEvent, match="ISO 8601"):
        parse(body)


def test_bounds_drop_with_the_bound_named() -> None:
    body = {"type": "TASK_CHANGED", "user_id": "a", "task_id": 1}
    wide = body | {"metadata": {"shared_with": [f"u{i}" for i in range(11)]}}
    with pytest.raises(InvalidEvent) as info:
        parse(wide, max_shared_with=10)
    assert info.value.limit == "max_shared_with"
    big = body | {"data": {"text": "x" * 2000}}
    with pytest.raises(InvalidEvent) as info:
        parse(big, max_bytes=1024)
    assert info.value.limit == "max_event_bytes"


def test_revocation_blanks_only_that_owners_task_and_buffers_the_frame() -> None:
    buffers = ResumeBuffers(window_s=300, max_events=100)

    def frame(owner: str, task_id: object, eid: str) -> Buffered:
        payload = orjson.dumps({"event_id": eid, "task_id": task_id, "user_id": owner})
        return Buffered(eid, str(task_id), payload, 1.0)

    for entry in (frame("alice", 42, "a1"), frame("dave", "42", "d1"), frame("bob", 42, "b1")):
        buffers.append("bob", entry)
    unshare = parse_event(
        orjson.dumps(
            {
                "type": "TASK_CHANGED",
                "user_id": "alice",
                "task_id": 42,
                "id": "a2",
                "metadata": {"shared_with": []},
            }
        ),
        cloudevent_id="ce",
        received_at=datetime.now(UTC),
    )
    registry: Registry[Any] = Registry()
    _, targets = revoke(unshare, ["bob", "alice"], registry, buffers, 2.0)
    assert targets == []
    replay = buffers.replay("bob", "a1", None, 3.0, lambda _: True)
    assert isinstance(replay, Replay)
    sent = [orjson.loads(f) for f in replay.frames]
    assert [(f.get("user_id"), f["task_id"]) for f in sent[:2]] == [("dave", "42"), ("bob", 42)]
    assert sent[2] == {
        "type": "task_update",
        "action": "task_access_revoked",
        "task_id": 42,
        "event_id": "a2",
    }
    assert buffers.entries("alice", 3.0)[-1:] == []  # the owner is never revoked
