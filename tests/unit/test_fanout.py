"""The fan-out step: an event and its share list, against the registry, give the
connections to write to, one payload and one frame, and an entry in each recipient's
resume buffer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_sync.core.events import TaskEvent, TaskId, parse_event, task_key
from realtime_sync.core.fanout import fan_out, recipients
from realtime_sync.core.resume import Replay, ResumeBuffers, Resync, ResyncReason
from realtime_sync.core.routing import Registry, Subscriptions
from realtime_sync.core.wire import split_text_frames


@dataclass
class Conn:
    connection_id: str
    user_id: str
    subscriptions: Subscriptions = field(default_factory=Subscriptions)


def event(owner: str, task: TaskId, event_id: str = "e1") -> TaskEvent:
    body = {"type": "TASK_CHANGED", "user_id": owner, "task_id": task, "id": event_id}
    return parse_event(orjson.dumps(body), cloudevent_id="ce", received_at=datetime.now(UTC))


def buffers() -> ResumeBuffers:
    return ResumeBuffers(window_s=60.0, max_events=10, margin_s=0, margin_events=0)


# --- recipients --------------------------------------------------------------------------


def test_recipients_are_the_owner_then_the_shares_each_once() -> None:
    assert recipients("alice", ["bob", "carol", "bob", "alice", "dave"]) == (
        "alice",
        "bob",
        "carol",
        "dave",
    )


def test_recipients_of_an_unshared_task_is_the_owner() -> None:
    assert recipients("alice", []) == ("alice",)
    assert recipients("alice", ()) == ("alice",)


# --- fan_out -----------------------------------------------------------------------------


def test_the_frame_carries_the_payload_that_is_buffered_for_every_recipient() -> None:
    reg: Registry[Conn] = Registry()
    kept = buffers()
    fan_out(event("alice", 7, "e0"), ("bob",), reg, kept, 100.0)
    payload, encoded, targets = fan_out(event("alice", 7), ("bob",), reg, kept, 101.0)
    assert targets == []  # nobody connected: buffered all the same
    assert split_text_frames(encoded) == [payload]
    assert orjson.loads(payload)["event_id"] == "e1"
    for user in ("alice", "bob"):
        assert kept.replay(user, "e0", None, 101.0, lambda _key: True) == Replay([payload])
    assert kept.replay("carol", "e0", None, 101.0, lambda _key: True) == Resync(
        ResyncReason.UNKNOWN_POSITION
    )


def test_a_connection_subscribed_twice_over_gets_the_event_once() -> None:
    reg: Registry[Conn] = Registry()
    tab = Conn("c1", "alice")
    tab.subscriptions.add(None)
    tab.subscriptions.add(task_key(7))
    reg.add(tab)
    _, _, targets = fan_out(event("alice", 7), ("alice",), reg, buffers(), 1.0)
    assert targets == [tab]


USERS = [f"u{i}" for i in range(6)]
TASKS: list[TaskId] = [0, 1, 2, 3, "1", "2", "t4", "x"]


@dataclass(frozen=True)
class ConnSpec:
    user: str
    everything: bool
    tasks: frozenset[TaskId]
    removed: bool


conn_specs = st.builds(
    ConnSpec,
    user=st.sampled_from(USERS),
    everything=st.booleans(),
    tasks=st.frozensets(st.sampled_from(TASKS), max_size=4),
    removed=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    owner=st.sampled_from(USERS),
    shares=st.lists(st.sampled_from(USERS), max_size=8),
    task=st.sampled_from(TASKS),
    specs=st.lists(conn_specs, max_size=25),
)
def test_targets_are_exactly_the_recipients_subscribed_connections(
    owner: str, shares: list[str], task: TaskId, specs: list[ConnSpec]
) -> None:
    reg: Registry[Conn] = Registry()
    for i, spec in enumerate(specs):
        conn = Conn(f"c{i}", spec.user)
        if spec.everything:
            conn.subscriptions.add(None)
        for subscribed in spec.tasks:
            conn.subscriptions.add(task_key(subscribed))
        reg.add(conn)
        if spec.removed:
            assert reg.remove(conn)

    _, _, targets = fan_out(event(owner, task), shares, reg, buffers(), 1.0)
    got = [c.connection_id for c in targets]

    audience = {owner, *shares}
    expected = {
        f"c{i}"
        for i, spec in enumerate(specs)
        if not spec.removed
        and spec.user in audience
        and (spec.everything or str(task) in {str(t) for t in spec.tasks})
    }
    assert len(got) == len(set(got)), "a connection is targeted twice"
    assert set(got) == expected
    assert len(reg) == sum(not s.removed for s in specs)
