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
import pytest

from realtime_sync.bridge import DRAIN_ROUNDS, Bridge, Completion, Handoff, Offered, Slots
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


def test_a_hand_off_answered_just_as_the_wait_ran_out_keeps_its_verdict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The loop takes and answers the hand-off between the thread's wait running out and
    its giving up: the thread must answer the verdict, not RETRY for a delivered event."""
    h = Handoff(event(1), None)
    real_wait = Completion.wait

    def wait_then_loop_answers(self: Completion, timeout: float | None) -> bool:
        if timeout is not None:  # the bounded wait runs out as the loop answers
            assert h.take()
            h.verdict = Verdict.SUCCESS
            h.answer()
            return False
        return real_wait(self, timeout)

    monkeypatch.setattr(Completion, "wait", wait_then_loop_answers)
    assert h.outcome(0.0) is Verdict.SUCCESS


# --- one completion for a whole bulk batch --------------------------------------------------


def test_a_batch_wakes_its_thread_once_every_hand_off_is_answered() -> None:
    done = Completion(3)
    handoffs = [Handoff(event(n), None, None, done) for n in range(3)]
    for h in handoffs:
        assert h.take()
    for h in handoffs[:2]:
        h.verdict = Verdict.SUCCESS
        h.answer()
    assert done.wait(0.0) is False  # one still open
    handoffs[2].verdict = Verdict.DROP
    handoffs[2].answer()
    assert Offered(handoffs, done).verdicts(0.0) == [Verdict.SUCCESS, Verdict.SUCCESS, Verdict.DROP]


def test_a_batch_given_up_on_before_the_loop_took_any_is_all_retry_and_never_routed() -> None:
    done = Completion(2)
    handoffs = [Handoff(event(n), None, None, done) for n in range(2)]
    assert Offered(handoffs, done).verdicts(0.0) == [None, None]
    assert not any(h.take() for h in handoffs)
    for h in handoffs:  # the loop still ends them: no second wake-up (it would raise)
        h.answer()


def test_a_thread_that_gives_up_waits_out_only_the_hand_offs_the_loop_took() -> None:
    """Two of three taken when the thread's wait runs out: the third is never routed (None:
    RETRY), the thread waits for the second, and gets both verdicts of the taken ones."""
    done = Completion(3)
    first, second, third = (Handoff(event(n), None, None, done) for n in range(3))
    assert first.take() and second.take()
    first.verdict = Verdict.SUCCESS
    first.answer()
    got: list[list[Verdict | None]] = []
    thread = threading.Thread(
        target=lambda: got.append(Offered([first, second, third], done).verdicts(0.0))
    )
    thread.start()
    try:
        gave_up = threading.Event()
        while not done.abandoned:  # a condition, not a fixed sleep
            gave_up.wait(0.001)
        assert third.take() is False
        assert not got  # still waiting for the second
        second.verdict = Verdict.SUCCESS
        second.answer()
    finally:
        thread.join(timeout=30)
    assert got == [[Verdict.SUCCESS, Verdict.SUCCESS, None]]


# --- the slots -----------------------------------------------------------------------------


def test_a_batch_takes_what_is_free_in_one_call_and_the_bound_is_exact() -> None:
    slots = Slots(3)
    assert slots.take_many(5, 0.0) == 3
    assert slots.take(0.0) == 0
    assert slots.take_many(1, 0.0) == 0
    slots.free(2)
    assert slots.take_many(4, 0.0) == 2
    assert slots.taken == 3
    assert slots.take_many(0, 30.0) == 0  # nothing asked, nothing waited for


def test_a_batch_waiting_for_slots_gets_those_freed_before_its_deadline() -> None:
    slots = Slots(2)
    assert slots.take(0.0) == 1
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(slots.take_many(2, 30.0)))
    thread.start()
    slots.free(1)  # whether the thread is waiting yet or not, it gets this slot
    thread.join(timeout=30)
    assert got == [2]
    assert slots.taken == 2


def test_freeing_more_slots_than_were_taken_is_refused() -> None:
    slots = Slots(2)
    assert slots.take(0.0) == 1
    with pytest.raises(ValueError, match="freeing 2 slots"):
        slots.free(2)
    assert slots.taken == 1


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


async def test_a_batch_crosses_in_one_wake_up_in_order_and_past_a_full_bound_is_not_offered() -> (
    None
):
    """Three slots, a batch of five: the first three reach the loop in one routing round, in
    order, never acknowledged ahead; the other two find no slot and are not offered (RETRY), so no
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
    offered = await asyncio.to_thread(bridge.offer_batch, items, 0.0)
    assert len(offered.handoffs) == 3
    assert not any(h.acked for h in offered.handoffs)
    await routed.wait()
    assert rounds == [[items[n][0].event_id for n in range(3)]]
    assert offered.verdicts(1.0) == [Verdict.SUCCESS] * 3
    await bridge.wait_idle()
