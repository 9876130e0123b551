"""The crossing from handler threads into the loop: the hand-off claim, the bound on
hand-offs in flight, and acknowledging ahead (SUCCESS before the loop writes the event)
only when the recipients are known and few hand-offs are in flight."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from realtime_sync.bridge import DRAIN_ROUNDS, Bridge, Handoff, Slots
from realtime_sync.core.events import TaskEvent, parse_event
from realtime_sync.core.outcomes import Verdict
from realtime_sync.core.routing import Subscriptions
from realtime_sync.core.wire import split_text_frames
from realtime_sync.state import ShareLists
from tests.unit.conftest import Delivery, MakeDelivery, know_shares


def event(n: int) -> TaskEvent:
    return parse_event(
        b'{"type":"TASK_ADDED","user_id":"u","task_id":%d}' % n,
        cloudevent_id=f"ce-{n}",
        received_at=datetime.now(UTC),
    )


# --- the claim ---------------------------------------------------------------------------


def test_an_abandoned_hand_off_cannot_be_taken_by_the_loop() -> None:
    h = Handoff(event(1), None)
    assert h.abandon() is True
    assert h.take() is False


def test_a_taken_hand_off_cannot_be_abandoned() -> None:
    h = Handoff(event(1), None)
    assert h.take() is True
    assert h.abandon() is False


def test_the_thread_gets_the_verdict_the_loop_answered() -> None:
    h = Handoff(event(1), None)
    assert h.wait(0.01) is None  # not answered yet
    assert h.take()
    h.verdict = Verdict.SUCCESS
    h.answer()
    assert h.wait(0.01) is Verdict.SUCCESS


def test_a_thread_that_gives_up_first_gets_no_verdict_and_the_event_is_never_routed() -> None:
    h = Handoff(event(1), None)
    assert h.outcome(0.0) is None
    assert h.take() is False


def test_a_thread_waits_out_a_hand_off_the_loop_took() -> None:
    """Taken just as the thread's wait ran out: the thread must not answer RETRY for an
    event the loop goes on to deliver."""
    h = Handoff(event(1), None)
    assert h.take()

    def answer() -> None:
        h.verdict = Verdict.SUCCESS
        h.answer()

    answered = threading.Timer(0.05, answer)
    answered.start()
    try:
        assert h.outcome(0.0) is Verdict.SUCCESS
    finally:
        answered.join()


# --- the bound and acknowledging ahead ---------------------------------------------------


async def test_known_recipients_are_acked_ahead_up_to_the_window(
    make_delivery: MakeDelivery,
) -> None:
    d = make_delivery(ack_ahead=2, capacity=10)
    for n in range(4):
        know_shares(d, "u", n, ())
    offered = [d.bridge.offer(event(n), None, 0.0) for n in range(3)]
    assert [h is not None and h.acked for h in offered] == [True, True, False]
    await d.bridge.wait_idle()  # the loop routes all three and frees their slots
    again = d.bridge.offer(event(3), None, 0.0)
    assert again is not None and again.acked


async def test_an_unknown_share_list_always_waits_for_the_verdict(
    make_delivery: MakeDelivery,
) -> None:
    d = make_delivery(ack_ahead=2)
    h = d.bridge.offer(event(1), None, 0.0)  # routing reads the store, which may fail
    assert h is not None and not h.acked


async def test_ack_ahead_zero_never_acks_before_the_writes(make_delivery: MakeDelivery) -> None:
    d = make_delivery(ack_ahead=0)
    know_shares(d, "u", 1, ("v",))
    h = d.bridge.offer(event(1), None, 0.0)
    assert h is not None and not h.acked
    await d.bridge.wait_idle()
    assert h.wait(0) is Verdict.SUCCESS


async def test_the_drain_waits_for_hand_offs_not_yet_taken_by_the_loop(
    make_delivery: MakeDelivery,
) -> None:
    d = make_delivery(ack_ahead=4)
    know_shares(d, "u", 1, ())
    h = d.bridge.offer(event(1), None, 0.0)
    assert h is not None and h.acked
    await d.bridge.wait_idle()  # directly: no task switch before it looks
    assert h.wait(0) is Verdict.SUCCESS  # routed (and answered) before the drain went on


class OfferingConn:
    """A connection of user "u" subscribed to everything. Each time the dispatcher looks
    at it to queue a frame (mid routing round, before the round's writes), a handler
    thread offers the next event, as concurrent deliveries do."""

    def __init__(self, d: Delivery, total: int) -> None:
        self.connection_id, self.user_id = "c1", "u"
        self.subscriptions = Subscriptions()
        self.subscriptions.add(None)
        self.written: set[str] = set()
        self.acked: set[str] = set()
        self.most_unwritten = 0
        self._d, self._next, self._total = d, 1, total

    @property
    def close_code(self) -> None:
        if self._next < self._total:
            self.offer(self._next)

    def offer(self, n: int) -> None:
        self._next = n + 1
        know_shares(self._d, "u", n, ())
        handoff = self._d.bridge.offer(event(n), None, 0.0)
        assert handoff is not None
        if handoff.acked:
            self.acked.add(handoff.event.event_id)
        self.most_unwritten = max(self.most_unwritten, len(self.acked - self.written))

    def send_encoded(self, frames: bytes) -> bool:
        self.written |= {orjson.loads(p)["event_id"] for p in split_text_frames(frames)}
        return True


async def test_never_more_than_ack_ahead_events_are_acknowledged_and_unwritten(
    make_delivery: MakeDelivery,
) -> None:
    """The in-flight bound is exact: a slot is freed only after its event's frames are
    written, so events offered while a round is routed are not acknowledged ahead past
    ACK_AHEAD (before, a slot was freed as its event was routed, before the round's write,
    and the next offers were acknowledged over the bound)."""
    d = make_delivery(ack_ahead=3, capacity=100)
    conn = OfferingConn(d, total=40)
    d.hub.register(cast(Any, conn))
    conn.offer(0)
    await d.bridge.wait_idle()  # each offer takes its slot before the one before is freed
    assert len(conn.written) == 40  # every event was delivered
    assert len(conn.acked) >= 3  # the path acknowledging ahead was taken
    assert conn.most_unwritten <= 3


class BlockedStore:
    """A state store whose reads wait until the test lets them through."""

    def __init__(self) -> None:
        self.reading = asyncio.Event()
        self.go = asyncio.Event()

    async def get(self, key: str) -> tuple[bytes, str]:
        self.reading.set()
        await self.go.wait()
        return b"", ""


async def test_a_full_bound_answers_retry_until_a_slot_is_freed(
    make_delivery: MakeDelivery,
) -> None:
    store = BlockedStore()
    d = make_delivery(store, capacity=1)
    workers = asyncio.create_task(d.dispatcher.run())
    try:
        first = await asyncio.to_thread(d.bridge.offer, event(1), None, 0.0)
        assert first is not None
        await store.reading.wait()  # the one slot is held by a hand-off at a worker
        assert await asyncio.to_thread(d.bridge.offer, event(2), None, 0.0) is None
        # A thread waiting for a slot gets the one freed when the first is answered.
        second = asyncio.create_task(asyncio.to_thread(d.bridge.offer, event(2), None, 30.0))
        store.go.set()
        assert await second is not None
        assert await asyncio.to_thread(first.outcome, 30.0) is Verdict.SUCCESS
        await d.bridge.wait_idle()
    finally:
        workers.cancel()


# --- draining the inbox ------------------------------------------------------------------


async def test_a_steady_stream_of_hand_offs_leaves_the_loop_to_other_callbacks() -> None:
    """Hand-offs that keep arriving while the inbox is routed are taken in the same
    callback, but for DRAIN_ROUNDS rounds at most: then the loop runs what else is due."""
    slots = Slots(10)
    shares = ShareLists(cast(Any, None), cache_s=60.0, clock=time.monotonic)
    seen: list[str] = []
    stream = iter(range(1, 3 * DRAIN_ROUNDS))

    def route(inbox: deque[Handoff]) -> None:
        while inbox:
            seen.append(inbox.popleft().event.event_id)
            slots.free(1)
        arriving = next(stream, None)  # a handler thread offers while the loop routes
        if arriving is not None:
            assert bridge.offer(event(arriving), None, 0.0) is not None

    bridge = Bridge(slots=slots, shares=shares, ack_ahead=0, route=route)
    assert bridge.offer(event(0), None, 0.0) is not None
    asyncio.get_running_loop().call_soon(seen.append, "other")
    await bridge.wait_idle()
    assert len(seen) == 3 * DRAIN_ROUNDS + 1
    # After DRAIN_ROUNDS rounds (or sooner, once a slice took DRAIN_SLICE_S).
    assert 1 <= seen.index("other") <= DRAIN_ROUNDS


# --- a bulk delivery: one crossing per batch ----------------------------------------------


async def test_a_batch_crosses_in_one_wake_up_in_order_and_past_a_full_bound_gets_none() -> None:
    """Three slots, a batch of five: the first three reach the loop in one routing round, in
    order, never acknowledged ahead; the other two find no slot and get None (RETRY), so no
    later event of the batch overtakes one sent back to daprd."""
    slots = Slots(3)
    shares = ShareLists(cast(Any, None), cache_s=60.0, clock=time.monotonic)
    rounds: list[list[str]] = []
    routed = asyncio.Event()

    def route(inbox: deque[Handoff]) -> None:
        batch = []
        while inbox:
            handoff = inbox.popleft()
            batch.append(handoff.event.event_id)
            assert handoff.take()
            handoff.verdict = Verdict.SUCCESS
            handoff.answer()
        slots.free(len(batch))
        rounds.append(batch)
        routed.set()

    bridge = Bridge(slots=slots, shares=shares, ack_ahead=128, route=route)
    items = [(event(n), None) for n in range(5)]
    handoffs = await asyncio.to_thread(bridge.offer_batch, items, 0.0)
    assert [h is not None for h in handoffs] == [True, True, True, False, False]
    assert not any(h.acked for h in handoffs if h is not None)
    await routed.wait()
    assert rounds == [[items[n][0].event_id for n in range(3)]]
    assert [h.outcome(1.0) for h in handoffs if h is not None] == [Verdict.SUCCESS] * 3
    await bridge.wait_idle()
