"""User cutoffs: stored with a TTL, learnt from control messages, read through a short
cache; a failed read answers with what the replica knows."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import orjson
import pytest

from realtime_sync.cutoffs import (
    Disconnect,
    UserCutoffs,
    cutoff_at,
    cutoff_key,
    parse_control,
)
from realtime_sync.metrics import Metrics
from realtime_sync.state import StateUnavailable

T0 = 1_800_000_000.0


class Store:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.ttls: dict[str, int] = {}
        self.reads = 0
        self.bulk_reads: list[list[str]] = []
        self.failing = False

    async def get(self, key: str) -> tuple[bytes, str]:
        self.reads += 1
        if self.failing:
            raise StateUnavailable("down")
        return self.data.get(key, b""), ""

    async def get_bulk(self, keys: Sequence[str]) -> dict[str, bytes]:
        self.bulk_reads.append(list(keys))
        await asyncio.sleep(0)  # a real call: other handshakes run meanwhile
        if self.failing:
            raise StateUnavailable("down")
        return {k: self.data[k] for k in keys if k in self.data}

    async def save_many(self, items: Sequence[tuple[str, bytes]], *, ttl_s: int) -> None:
        for key, value in items:
            self.data[key] = value
            self.ttls[key] = ttl_s


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[UserCutoffs, Store, Clock]:
    store, clock = Store(), Clock()
    cutoffs = UserCutoffs(cast(Any, store), ttl_s=600, metrics=Metrics(), clock=clock, cache_s=2)
    return cutoffs, store, clock


def test_a_cutoff_is_the_calls_second_rounded_up() -> None:
    assert cutoff_at(100.0) == 101
    assert cutoff_at(100.2) == 101


async def test_a_stored_cutoff_has_the_token_lifetime_as_ttl_and_holds_here_at_once() -> None:
    cutoffs, store, _ = make()
    await cutoffs.store(Disconnect("alice", int(T0)))
    assert orjson.loads(store.data[cutoff_key("alice")]) == int(T0)
    assert store.ttls[cutoff_key("alice")] == 600
    assert cutoffs.known("alice") == int(T0)


async def test_a_replica_that_missed_the_message_reads_the_cutoff_from_the_store() -> None:
    cutoffs, store, clock = make()
    assert await cutoffs.lookup("bob") is None
    store.data[cutoff_key("bob")] = b"1800000001"
    assert await cutoffs.lookup("bob") is None  # a miss is cached for a moment
    clock.now += 2
    assert await cutoffs.lookup("bob") == 1_800_000_001
    assert store.reads == 2


async def test_a_failed_read_answers_what_the_replica_knows() -> None:
    cutoffs, store, clock = make()
    cutoffs.learn(Disconnect("carol", 1_800_000_000))
    store.failing = True
    clock.now += 5
    assert await cutoffs.lookup("carol") == 1_800_000_000
    assert await cutoffs.lookup("dave") is None  # fail-open for a user it knows nothing of


async def test_a_learnt_cutoff_wins_over_a_stale_read_and_lapses_after_the_ttl() -> None:
    cutoffs, _, clock = make()
    assert await cutoffs.lookup("erin") is None
    cutoffs.learn(Disconnect("erin", int(T0)))
    assert await cutoffs.lookup("erin") == int(T0)
    clock.now += 601
    assert cutoffs.known("erin") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"kind":"other","user_id":"a","cutoff":1}',
        b'{"kind":"disconnect_user","user_id":"","cutoff":1}',
        b'{"kind":"disconnect_user","user_id":"a","cutoff":true}',
        b'{"kind":"disconnect_user","user_id":"a","cutoff":"1"}',
    ],
)
def test_a_control_message_it_does_not_understand_is_none(raw: bytes) -> None:
    assert parse_control(raw) is None


def test_a_control_message_round_trips() -> None:
    message = Disconnect("alice", 1234)
    assert parse_control(message.encode()) == message


async def test_a_connect_storm_reads_every_users_cutoff_in_one_bulk_read() -> None:
    cutoffs, store, _ = make()
    store.data[cutoff_key("u3")] = b"1800000001"
    users = [f"u{i}" for i in range(50)]
    # Each user twice, as two tabs opening at once: one read per user in flight.
    found = await asyncio.gather(*(cutoffs.lookup(u) for u in users + users))
    assert store.bulk_reads == [[cutoff_key(u) for u in users]]
    assert store.reads == 0
    assert found[3] == found[53] == 1_800_000_001
    assert found.count(None) == 98
    assert await cutoffs.lookup("u7") is None  # cached: no further read
    assert len(store.bulk_reads) == 1


async def test_a_failed_bulk_read_answers_what_the_replica_knows_to_every_waiter() -> None:
    cutoffs, store, _ = make()
    cutoffs.learn(Disconnect("carol", 1_800_000_000))
    store.failing = True
    found = await asyncio.gather(cutoffs.lookup("carol"), cutoffs.lookup("dave"))
    assert list(found) == [1_800_000_000, None]
    store.failing = False
    store.data[cutoff_key("dave")] = b"1800000002"
    assert await cutoffs.lookup("dave") == 1_800_000_002  # a failure is not cached


async def test_a_handshake_that_gives_up_leaves_the_shared_read_to_the_others() -> None:
    cutoffs, store, _ = make()
    store.data[cutoff_key("erin")] = b"1800000003"
    quitter = asyncio.ensure_future(cutoffs.lookup("erin"))
    stayer = asyncio.ensure_future(cutoffs.lookup("erin"))
    await asyncio.sleep(0)
    quitter.cancel()
    assert await stayer == 1_800_000_003
    assert quitter.cancelled()
