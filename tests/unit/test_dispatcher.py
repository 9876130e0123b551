"""Routing order, share-list freshness, dedupe and batched writes in the dispatcher, with
a fake state store whose calls wait until the test lets them through: a change of a
task's share list applies to every later event of that task, and a slow read never
brings back a list older than one written meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, cast

import orjson
import pytest

from realtime_sync.core.events import TaskEvent, parse_event
from realtime_sync.core.outcomes import CloseCode, Verdict
from realtime_sync.core.resume import Resync, ResyncReason
from realtime_sync.core.routing import Subscriptions
from realtime_sync.core.shares import ShareOrder, ShareRecord, share_key
from realtime_sync.core.wire import split_text_frames
from realtime_sync.state import ResumeSnapshots
from tests.unit.conftest import Delivery, MakeDelivery, know_shares

KEY7 = share_key("owner", 7)
BOB_RECORD = ShareRecord("owner", ("bob",), ShareOrder(0, 0, "seeded")).encode()


class GatedStore:
    """The part of DaprState that ShareLists uses; every call waits for `gate`."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.gate = asyncio.Event()
        self.gate.set()
        self.called = asyncio.Event()

    async def _pass(self) -> None:
        self.called.set()
        await self.gate.wait()

    async def get(self, key: str) -> tuple[bytes, str]:
        value = self.data.get(key, b"")  # read at the start, returned at the end
        await self._pass()
        return value, "1"

    async def get_bulk(self, keys: list[str]) -> dict[str, bytes]:
        values = {k: self.data.get(k, b"") for k in keys}
        await self._pass()
        return values

    async def save(
        self, key: str, value: bytes, *, etag: str | None = None, insert: bool = False
    ) -> None:
        await self._pass()
        self.data[key] = value


class Conn:
    def __init__(self, connection_id: str, user_id: str) -> None:
        self.connection_id = connection_id
        self.user_id = user_id
        self.subscriptions = Subscriptions()
        self.subscriptions.add(None)
        self.close_code = None
        self.got: list[str] = []
        self.writes = 0

    def send_encoded(self, frames: bytes) -> bool:
        self.writes += 1
        self.got += [orjson.loads(p)["event_id"] for p in split_text_frames(frames)]
        return True


def event(n: int, task_id: int = 7, **metadata: Any) -> TaskEvent:
    body: dict[str, Any] = {"type": "TASK_CHANGED", "user_id": "owner", "task_id": task_id}
    body |= {"id": f"e{n}", "metadata": metadata}
    return parse_event(orjson.dumps(body), cloudevent_id=f"ce{n}", received_at=datetime.now(UTC))


def connect(d: Delivery, connection_id: str, user_id: str) -> Conn:
    conn = Conn(connection_id, user_id)
    d.hub.register(cast(Any, conn))
    return conn


def sample(d: Delivery, name: str) -> float | None:
    return d.metrics.registry.get_sample_value(name)


@asynccontextmanager
async def workers(d: Delivery) -> AsyncIterator[None]:
    task = asyncio.create_task(d.dispatcher.run())
    try:
        yield
    finally:
        task.cancel()


async def offer_from_a_thread(d: Delivery, *events: TaskEvent) -> list[Any]:
    def offer() -> list[Any]:
        handoffs = [d.bridge.offer(e, None, 0.1) for e in events]
        assert all(h is not None for h in handoffs)
        return handoffs

    return await asyncio.to_thread(offer)


async def test_a_share_list_change_applies_to_the_events_behind_it(
    make_delivery: MakeDelivery,
) -> None:
    """e1 unshares bob (a state write); e2, right behind it, was acknowledged ahead with
    the list the handler thread saw (bob still on it): bob must not receive e2."""
    store = GatedStore()
    store.gate.clear()
    d = make_delivery(store)
    know_shares(d, "owner", 7, ("bob",))
    owner, bob = connect(d, "c1", "owner"), connect(d, "c2", "bob")
    async with workers(d):
        _, e2 = await offer_from_a_thread(d, event(1, shared_with=[]), event(2))
        assert e2.acked
        await store.called.wait()  # e1's write is under way, e2 waits behind it
        store.gate.set()
        await d.bridge.wait_idle()
    assert owner.got == ["e1", "e2"]
    assert bob.got == []
    assert d.shares.cached(KEY7, "owner") == ()


async def test_events_of_a_task_waiting_on_the_store_keep_their_order(
    make_delivery: MakeDelivery,
) -> None:
    store = GatedStore()
    store.data[KEY7] = BOB_RECORD
    store.gate.clear()
    d = make_delivery(store)
    bob = connect(d, "c2", "bob")
    async with workers(d):
        await offer_from_a_thread(
            d,
            event(1),  # reads the store
            event(2, shared_with=["bob"]),  # writes it
            event(3),
            event(4),
        )
        await store.called.wait()
        store.gate.set()
        await d.bridge.wait_idle()
    assert bob.got == ["e1", "e2", "e3", "e4"]


async def test_a_read_in_flight_does_not_bring_back_an_older_list(
    make_delivery: MakeDelivery,
) -> None:
    store = GatedStore()
    store.data[KEY7] = BOB_RECORD
    d = make_delivery(store)
    store.gate.clear()
    reading = asyncio.create_task(d.shares.get(KEY7, "owner"))  # sees ["bob"], answers later
    await store.called.wait()
    unshare = event(2, shared_with=[]).shares_change  # an event's shared_with, newer
    assert unshare is not None
    writing = asyncio.create_task(d.shares.apply(KEY7, unshare))
    store.gate.set()
    await writing
    assert await reading == ()
    assert d.shares.cached(KEY7, "owner") == ()


async def test_a_redelivered_event_is_sent_once_and_answered_success(
    make_delivery: MakeDelivery,
) -> None:
    """On the direct path (share list cached) and on the worker path (store read)."""
    store = GatedStore()
    d = make_delivery(store, ack_ahead=0)
    know_shares(d, "owner", 7, ())
    owner = connect(d, "c1", "owner")
    async with workers(d):
        first = await offer_from_a_thread(d, event(1), event(1))
        slow = await offer_from_a_thread(d, event(2, task_id=8), event(2, task_id=8))
        await d.bridge.wait_idle()
    assert owner.got == ["e1", "e2"]
    assert [h.wait(0) for h in first + slow] == [Verdict.SUCCESS] * 4
    assert sample(d, "realtime_sync_events_duplicate_total") == 2


@pytest.mark.parametrize("count", [3, 60])  # 60 frames pass JOIN_FROM bytes
async def test_the_events_of_one_drain_reach_a_connection_in_one_write(
    make_delivery: MakeDelivery, count: int
) -> None:
    d = make_delivery()
    numbers = range(1, count + 1)
    for task in numbers:
        know_shares(d, "owner", task, ())
    owner = connect(d, "c1", "owner")
    for n in numbers:  # on the loop: all are in the inbox before it drains
        assert d.bridge.offer(event(n, task_id=n), None, 0.0) is not None
    await d.bridge.wait_idle()
    assert owner.got == [f"e{n}" for n in numbers]
    assert owner.writes == 1


async def test_a_closing_connection_is_not_written_to(make_delivery: MakeDelivery) -> None:
    d = make_delivery()
    know_shares(d, "owner", 7, ("bob",))
    owner, bob = connect(d, "c1", "owner"), connect(d, "c2", "bob")
    bob.close_code = cast(Any, 4008)
    await offer_from_a_thread(d, event(1))
    await d.bridge.wait_idle()
    assert owner.got == ["e1"]
    assert bob.got == []
    assert sample(d, "realtime_sync_messages_sent_total") == 1


async def test_the_cache_never_goes_back_to_an_older_list(make_delivery: MakeDelivery) -> None:
    """A late older change, or a read that returns an older record, leaves a newer cached
    list in place; an older change is not even written."""
    store = GatedStore()
    d = make_delivery(store)
    newer = ShareRecord("owner", (), ShareOrder(0, 20, "e2"))
    older = ShareRecord("owner", ("bob",), ShareOrder(0, 10, "e1"))
    d.shares.remember(KEY7, newer)
    d.shares.remember(KEY7, older)
    assert d.shares.cached(KEY7, "owner") == ()
    applied = await d.shares.apply(KEY7, older)
    assert (applied.write, applied.current, applied.revoked) == (False, newer, ())
    assert KEY7 not in store.data
    assert d.shares.cached(KEY7, "owner") == ()


async def test_a_list_of_another_owner_is_not_used_and_is_counted(
    make_delivery: MakeDelivery,
) -> None:
    store = GatedStore()
    store.data[KEY7] = ShareRecord("mallory", ("bob",), ShareOrder(0, 0, "x")).encode()
    d = make_delivery(store)
    owner, bob = connect(d, "c1", "owner"), connect(d, "c2", "bob")
    async with workers(d):
        await offer_from_a_thread(d, event(1))
        await d.bridge.wait_idle()
    assert owner.got == ["e1"]
    assert bob.got == []
    assert sample(d, "realtime_sync_share_owner_mismatch_total") == 1


# --- an event acknowledged ahead that cannot be routed -----------------------------------


class ClosableConn(Conn):
    def __init__(self, connection_id: str, user_id: str, d: Delivery) -> None:
        super().__init__(connection_id, user_id)
        self.closed_with: int | None = None
        self._hub = d.hub

    def close(self, code: int, reason: str) -> None:
        self.closed_with = code
        self.close_code = cast(Any, code)
        self._hub.unregister(cast(Any, self))


async def test_an_acked_event_whose_routing_crashes_is_never_silently_lost(
    make_delivery: MakeDelivery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dapr already has SUCCESS for it, so the RETRY is not heard: its users' next resume
    from before it answers resync_required (hole), their live connections close with 4010
    so they resume now, and the loss is counted. A user it was not for is untouched."""
    d = make_delivery(ack_ahead=4)
    d.hub.buffers.first_run()
    know_shares(d, "owner", 7, ("bob",))
    bob = ClosableConn("c-bob", "bob", d)
    carol = ClosableConn("c-carol", "carol", d)
    for conn in (bob, carol):
        d.hub.register(cast(Any, conn))
    [first] = await offer_from_a_thread(d, event(1))
    await d.bridge.wait_idle()
    assert first.acked and bob.got == ["e1"]

    def crash(*_: object, **__: object) -> None:
        raise RuntimeError("routing bug")

    monkeypatch.setattr("realtime_sync.dispatcher.fan_out", crash)
    [lost] = await offer_from_a_thread(d, event(2))
    await d.bridge.wait_idle()
    assert lost.acked  # the thread answered SUCCESS before the crash
    now = d.hub.clock()
    for user in ("owner", "bob"):
        answer = d.hub.buffers.replay(user, "e1", None, now, lambda _: True)
        assert answer == Resync(ResyncReason.HOLE), user
    assert bob.closed_with == CloseCode.EVENTS_LOST
    assert carol.closed_with is None
    lost_total = d.metrics.registry.get_sample_value(
        "realtime_sync_events_lost_total", {"stage": "routing"}
    )
    assert lost_total == 1.0


# --- the shutdown drain -------------------------------------------------------------------


class SnapshotStore:
    """The part of DaprState that ResumeSnapshots uses, in memory."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> tuple[bytes, str]:
        return self.data.get(key, b""), "1"

    async def save_many(self, items: list[tuple[str, bytes]], *, ttl_s: int) -> None:
        self.data.update(items)

    async def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.data.pop(key, None)


async def test_a_drain_that_cannot_finish_says_what_it_left_and_hands_over_no_history(
    make_delivery: MakeDelivery, caplog: pytest.LogCaptureFixture
) -> None:
    """An event acknowledged ahead waits behind an event of its task whose state read
    never returns, and SIGTERM's drain runs out: the loss is logged and counted, its users
    get a hole here (their connections close with 4010, so they resume on a replica that
    has the event), and the snapshots are saved without a hand-over, so the next run on
    this instance answers resync for that span instead of a replay missing the event."""
    store = GatedStore()
    store.data[KEY7] = BOB_RECORD
    d = make_delivery(store, ack_ahead=4)
    d.hub.buffers.first_run()
    know_shares(d, "owner", 7, ("bob",))
    bob = ClosableConn("c-bob", "bob", d)
    d.hub.register(cast(Any, bob))
    kv = SnapshotStore()

    def snapshots(generation: str) -> ResumeSnapshots:
        return ResumeSnapshots(
            cast(Any, kv), ttl_s=300, instance="pod-a", generation=generation, started_at=0.0
        )

    d.hub.snapshots = snapshots("run-1")
    async with workers(d):
        await offer_from_a_thread(d, event(1))
        await d.bridge.wait_idle()
        assert bob.got == ["e1"]
        store.gate.clear()  # the state store stops answering
        waiting, acked = await offer_from_a_thread(d, event(2, shared_with=["bob"]), event(3))
        await store.called.wait()
        assert acked.acked and not waiting.acked
        drained = await d.hub.drain(d.bridge, 0.05)
        await d.hub.save_snapshots(handover=drained)  # as the service's drain does
    assert drained is False
    assert d.bridge.acked_unanswered() == [acked]
    assert "drain ran out of time" in caplog.text
    lost = d.metrics.registry.get_sample_value(
        "realtime_sync_events_lost_total", {"stage": "drain"}
    )
    assert lost == 1.0
    now = d.hub.clock()
    for user in ("owner", "bob"):
        assert d.hub.buffers.replay(user, "e1", None, now, bool) == Resync(ResyncReason.HOLE)
    assert bob.closed_with == CloseCode.EVENTS_LOST
    # The next run on this pod takes over no history of this one.
    assert "resume-handover:pod-a" not in kv.data
    next_run = snapshots("run-2")
    assert await next_run.claim_handover() is None
