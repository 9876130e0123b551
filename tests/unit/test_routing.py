"""Subscriptions and the registry: which open connections are subscribed to a task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from realtime_sync.core.events import task_key
from realtime_sync.core.routing import CACHE_MIN_USERS, Registry, Subscriptions


@dataclass
class Conn:
    connection_id: str
    user_id: str
    subscriptions: Subscriptions = field(default_factory=Subscriptions)


def _conn(connection_id: str, user_id: str, *keys: str | None) -> Conn:
    conn = Conn(connection_id, user_id)
    for key in keys:
        conn.subscriptions.add(key)
    return conn


def _ids(conns: Sequence[Conn]) -> list[str]:
    return [c.connection_id for c in conns]


# --- Subscriptions -----------------------------------------------------------------------


def test_a_fresh_subscription_set_matches_nothing() -> None:
    subs = Subscriptions()
    assert not subs.matches("1")
    assert not subs.all
    assert len(subs) == 0
    assert subs.describe() == []


def test_subscribing_to_a_task_matches_only_that_task() -> None:
    subs = Subscriptions()
    subs.add("7")
    assert subs.matches("7")
    assert not subs.matches("8")
    assert not subs.matches("77")
    assert len(subs) == 1


def test_subscribing_to_all_matches_every_task() -> None:
    subs = Subscriptions()
    subs.add(None)
    assert subs.all
    assert all(subs.matches(k) for k in ("1", "x", ""))
    assert len(subs) == 1
    assert subs.describe() == ["*"]


def test_unsubscribing_stops_matching() -> None:
    subs = Subscriptions()
    subs.add("1")
    subs.add("2")
    subs.add(None)
    subs.remove(None)
    assert not subs.matches("3")
    assert subs.matches("1")
    subs.remove("1")
    assert not subs.matches("1")
    assert subs.matches("2")
    subs.remove("never-added")
    assert subs.describe() == ["2"]


def test_clear_drops_every_subscription() -> None:
    subs = Subscriptions()
    subs.add(None)
    subs.add("1")
    subs.clear()
    assert not subs.matches("1")
    assert len(subs) == 0


def test_describe_lists_all_first_then_sorted_task_keys() -> None:
    subs = Subscriptions()
    for key in ("b", "a", None, "c"):
        subs.add(key)
    assert subs.describe() == ["*", "a", "b", "c"]
    assert len(subs) == 4


def test_a_task_subscribed_with_an_int_id_matches_the_string_id() -> None:
    subs = Subscriptions()
    subs.add(task_key(1))
    assert subs.matches(task_key("1"))
    assert subs.matches(task_key(1))


# --- Registry ----------------------------------------------------------------------------


def test_registry_indexes_connections_by_id_and_user() -> None:
    reg: Registry[Conn] = Registry()
    a1, a2, b1 = _conn("a1", "alice"), _conn("a2", "alice"), _conn("b1", "bob")
    for conn in (a1, a2, b1):
        reg.add(conn)
    assert len(reg) == 3
    assert reg.user_count == 2
    assert reg.get("a2") is a2
    assert reg.get("zz") is None
    assert reg.count_for("alice") == 2
    assert reg.count_for("bob") == 1
    assert reg.count_for("nobody") == 0
    assert _ids(reg.of_user("alice")) == ["a1", "a2"]
    assert reg.of_user("nobody") == []
    assert sorted(_ids(list(reg))) == ["a1", "a2", "b1"]


def test_removing_a_connection_forgets_it_and_an_empty_user() -> None:
    reg: Registry[Conn] = Registry()
    a1, a2 = _conn("a1", "alice"), _conn("a2", "alice")
    reg.add(a1)
    reg.add(a2)
    assert reg.remove(a1) is True
    assert reg.get("a1") is None
    assert reg.count_for("alice") == 1
    assert reg.remove(a1) is False
    assert reg.remove(a2) is True
    assert reg.count_for("alice") == 0
    assert reg.user_count == 0
    assert len(reg) == 0


def test_iterating_the_registry_is_a_snapshot_safe_against_removal() -> None:
    reg: Registry[Conn] = Registry()
    for i in range(5):
        reg.add(_conn(f"c{i}", "u"))
    removed = [reg.remove(conn) for conn in reg]
    assert removed == [True] * 5
    assert len(reg) == 0


def test_targets_are_the_subscribed_connections_of_the_given_users_only() -> None:
    reg: Registry[Conn] = Registry()
    conns = [
        _conn("a-all", "alice", None),
        _conn("a-7", "alice", "7"),
        _conn("a-8", "alice", "8"),
        _conn("a-none", "alice"),
        _conn("b-7", "bob", "7"),
        _conn("c-all", "carol", None),
    ]
    for conn in conns:
        reg.add(conn)
    assert sorted(_ids(reg.targets(["alice", "bob"], "7"))) == ["a-7", "a-all", "b-7"]
    assert sorted(_ids(reg.targets(["alice"], "8"))) == ["a-8", "a-all"]
    assert _ids(reg.targets(["dave"], "7")) == []
    assert _ids(reg.targets([], "7")) == []


def test_a_fresh_connection_receives_nothing() -> None:
    reg: Registry[Conn] = Registry()
    reg.add(_conn("fresh", "alice"))
    assert reg.targets(["alice"], "1") == []


def test_a_removed_connection_is_no_longer_a_target() -> None:
    reg: Registry[Conn] = Registry()
    conn = _conn("a", "alice", None)
    reg.add(conn)
    reg.remove(conn)
    assert reg.targets(["alice"], "1") == []


def test_an_int_task_id_event_reaches_a_subscription_made_with_the_string_form() -> None:
    reg: Registry[Conn] = Registry()
    reg.add(_conn("by-str", "alice", task_key("5")))
    reg.add(_conn("by-int", "alice", task_key(5)))
    assert sorted(_ids(reg.targets(["alice"], task_key(5)))) == ["by-int", "by-str"]
    assert sorted(_ids(reg.targets(["alice"], task_key("5")))) == ["by-int", "by-str"]


def test_subscription_count_sums_every_connection() -> None:
    reg: Registry[Conn] = Registry()
    reg.add(_conn("a", "alice", None, "1", "2"))
    reg.add(_conn("b", "bob", "1"))
    assert reg.subscription_count() == 4


def test_kept_targets_of_a_large_fan_out_follow_every_change() -> None:
    """A large fan-out's targets are kept for the next event of the task: a connection
    that comes, goes, subscribes or unsubscribes is seen by the very next call."""
    users = tuple(f"u{i}" for i in range(CACHE_MIN_USERS))
    reg: Registry[Conn] = Registry()
    first = _conn("c0", users[0], "7")
    reg.add(first)
    assert _ids(reg.targets(users, "7")) == ["c0"]
    late = _conn("c1", users[1])
    reg.add(late)
    assert _ids(reg.targets(users, "7")) == ["c0"]
    late.subscriptions.add("7")
    assert _ids(reg.targets(users, "7")) == ["c0", "c1"]
    first.subscriptions.remove("7")
    assert _ids(reg.targets(users, "7")) == ["c1"]
    late.subscriptions.clear()
    assert _ids(reg.targets(users, "7")) == []
    late.subscriptions.add(None)
    assert _ids(reg.targets(users, "7")) == ["c1"]
    assert _ids(reg.targets(users, "8")) == ["c1"]
    reg.remove(late)
    assert _ids(reg.targets(users, "7")) == []
    assert _ids(reg.targets(users[1:], "7")) == []  # other recipients: another entry
