"""The crossing from the gRPC handler threads into the event loop, and back with a verdict."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from realtime_sync.core.events import TaskEvent
from realtime_sync.core.outcomes import Verdict
from realtime_sync.core.shares import Applied
from realtime_sync.state import ShareLists

# One drain callback routes at most this many rounds of the inbox, and starts none after
# DRAIN_SLICE_S: sockets, timers and handshakes get the loop between slices.
DRAIN_ROUNDS = 8
DRAIN_SLICE_S = 0.05


class Completion:
    """The answer to one delivery: one hand-off (`OnTopicEvent`) or a whole bulk batch.

    The waiting handler thread is woken ONCE, when every hand-off of it has been answered,
    or, after the thread gave up (`abandon`), when the ones the loop had already taken are
    answered: those the loop had not taken it never will, so the thread answers them RETRY
    without waiting. Two plain C-level locks for the whole delivery, not two per event:
    `_done` is held until the wake-up, `_lock` guards the counts.
    """

    __slots__ = ("_abandoned", "_done", "_lock", "_open", "_taken", "_woken")

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._done = threading.Lock()
        self._done.acquire()
        self._open = count  # hand-offs not answered yet
        self._taken = 0  # taken by the loop and not answered yet
        self._abandoned = False
        self._woken = False

    def take(self) -> bool:
        """Loop side: claim one hand-off; False once the thread has given up."""
        with self._lock:
            if self._abandoned:
                return False
            self._taken += 1
            return True

    def ended(self, taken: bool) -> None:
        """Loop side: one hand-off is answered (its verdict is final)."""
        with self._lock:
            self._open -= 1
            if taken:
                self._taken -= 1
            if self._open == 0 or (self._abandoned and self._taken == 0):
                self._wake()

    def abandon(self) -> bool:
        """Thread side, after its wait ran out: the loop takes nothing more of this
        delivery. True if nothing it took is still unanswered (no wait is left)."""
        with self._lock:
            self._abandoned = True
            if self._taken == 0:
                self._wake()
                return True
            return False

    @property
    def abandoned(self) -> bool:
        """The thread has given up on what the loop had not taken."""
        return self._abandoned

    def _wake(self) -> None:  # under _lock
        if not self._woken:
            self._woken = True
            self._done.release()

    def wait(self, timeout: float | None) -> bool:
        """Thread side: False if `timeout` ran out before the wake-up."""
        return self._done.acquire(timeout=-1 if timeout is None else timeout)

    def settle(self, timeout: float) -> None:
        """Thread side: wait up to `timeout`; then give up on what the loop has not taken
        and wait out what it has (its state calls have their own deadlines, and answering
        RETRY for a delivered event would repeat it)."""
        if not self.wait(timeout) and not self.abandon():
            self.wait(None)


class Handoff:
    """One event in flight from a handler thread to the loop. Its delivery's `Completion`
    decides who gives up on it, so an event the thread answered RETRY is never routed late.
    """

    __slots__ = (
        "acked",
        "answered",
        "applied",
        "done",
        "event",
        "published_at",
        "shared",
        "taken",
        "verdict",
    )

    def __init__(
        self,
        event: TaskEvent,
        published_at: float | None,
        shared: tuple[str, ...] | None = None,
        done: Completion | None = None,
    ) -> None:
        self.event = event
        self.published_at = published_at
        # The share list, when the thread found it cached: routing then needs no state call
        # and cannot fail, so the event may be acknowledged ahead of its writes.
        self.shared = shared
        self.acked = False
        self.verdict = Verdict.RETRY
        self.taken = False
        self.answered = False  # the loop gave its verdict (see Bridge.acked_unanswered)
        # A share-list change's outcome, set by the loop (read by `set_task_shares`).
        self.applied: Applied | None = None
        self.done = done if done is not None else Completion(1)

    def take(self) -> bool:
        """Loop side: False if the thread already gave up on it."""
        self.taken = self.done.take()
        return self.taken

    def answer(self) -> None:
        """Loop side: `verdict` is final."""
        self.answered = True
        self.done.ended(self.taken)

    # The thread side of a hand-off delivered alone.

    def abandon(self) -> bool:
        """After the thread's wait ran out: True if the loop never took it."""
        return self.done.abandon() and not self.taken

    def wait(self, timeout: float | None) -> Verdict | None:
        """The verdict, or None if `timeout` ran out first."""
        return self.verdict if self.done.wait(timeout) else None

    def outcome(self, timeout: float) -> Verdict | None:
        """The verdict, or None when the loop had not taken the hand-off within `timeout`
        (it never will now). Once taken it is waited out (see `Completion.settle`)."""
        self.done.settle(timeout)
        return self.verdict if self.taken else None


class Offered:
    """A bulk batch handed to the loop: the hand-offs that got a slot (a prefix of the
    batch, in order), all answered through one `Completion`."""

    __slots__ = ("_done", "handoffs")

    def __init__(self, handoffs: list[Handoff], done: Completion) -> None:
        self.handoffs = handoffs
        self._done = done

    def verdicts(self, timeout: float) -> list[Verdict | None]:
        """Thread side: each hand-off's verdict, in order; None for one the loop had not
        taken within `timeout` (it never will now: answer RETRY)."""
        if self.handoffs:
            self._done.settle(timeout)
        return [h.verdict if h.taken else None for h in self.handoffs]


class Slots:
    """The bound on hand-offs in flight (offered and not yet answered or dropped).

    A handler thread takes slots, waiting up to a deadline (a full bound answers RETRY,
    which passes backpressure on to daprd); the loop frees slots as their hand-offs end.
    One condition for the count, so a bulk batch takes its slots in one call.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._changed = threading.Condition(threading.Lock())
        self._taken = 0
        self._none_taken = asyncio.Event()
        self._none_taken.set()

    def take(self, wait_s: float) -> int:
        """Thread side: the hand-offs in flight with this one, or 0 if no slot came free."""
        with self._changed:
            if self._take(1, time.monotonic() + wait_s):
                return self._taken
            return 0

    def take_many(self, count: int, wait_s: float) -> int:
        """Thread side: up to `count` slots, taken as they come free within wait_s; how many."""
        with self._changed:
            return self._take(count, time.monotonic() + wait_s)

    def _take(self, count: int, deadline: float) -> int:  # under _changed
        got = 0
        while True:
            grab = min(count - got, self._capacity - self._taken)
            if grab > 0:
                self._taken += grab
                got += grab
            if got == count:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got
            self._changed.wait(remaining)

    def free(self, count: int) -> None:
        """Loop side: `count` hand-offs have ended."""
        if not count:
            return
        with self._changed:
            if count > self._taken:
                raise ValueError(f"freeing {count} slots, {self._taken} taken")
            self._taken -= count
            none_taken = self._taken == 0
            self._changed.notify(count)
        if none_taken:
            self._none_taken.set()

    @property
    def taken(self) -> int:
        """Hand-offs in flight now."""
        return self._taken

    async def wait_none_taken(self) -> None:
        """Loop side: until every slot is free (the shutdown drain)."""
        while self._taken:
            self._none_taken.clear()
            await self._none_taken.wait()


class Bridge:
    """Hands events from handler threads to the loop through one inbox.

    The first hand-off of a burst wakes the loop (`call_soon_threadsafe`); the rest find
    a drain pending and only append, so a burst costs one wake-up.
    """

    def __init__(
        self,
        *,
        slots: Slots,
        shares: ShareLists,
        ack_ahead: int,
        route: Callable[[deque[Handoff]], None],
    ) -> None:
        self._slots = slots
        self._shares = shares
        self._ack_ahead = ack_ahead
        self._route = route
        self._loop = asyncio.get_running_loop()
        self._inbox: deque[Handoff] = deque()
        self._wake_pending = False
        # Hand-offs acknowledged ahead, until seen answered (at most `ack_ahead` are not).
        self._acked: deque[Handoff] = deque()
        self._acked_lock = threading.Lock()

    def offer(self, event: TaskEvent, published_at: float | None, wait_s: float) -> Handoff | None:
        """Thread side: hand the event to the loop, waiting up to wait_s for a slot.
        None when there was none (or the loop is gone): answer RETRY.

        The hand-off is `acked` when the thread may answer SUCCESS at once: its share list
        was cached (routing needs no state call, so it cannot fail) and at most
        `ack_ahead` hand-offs are in flight. Otherwise the thread waits for the verdict.
        """
        in_flight = self._slots.take(wait_s)
        if not in_flight:
            return None
        shared = self._known_shares(event)
        handoff = Handoff(event, published_at, shared)
        handoff.acked = shared is not None and in_flight <= self._ack_ahead
        if handoff.acked:
            with self._acked_lock:
                acked = self._acked
                # Answers come mostly in order: drop the answered head, and only rebuild
                # when answered ones pile up behind a slow one (O(1) per event otherwise).
                while acked and acked[0].answered:
                    acked.popleft()
                if len(acked) > 2 * self._ack_ahead:
                    self._acked = acked = deque(h for h in acked if not h.answered)
                acked.append(handoff)
        self._inbox.append(handoff)
        if not self._wake():
            return None if handoff.abandon() else handoff
        return handoff

    def offer_batch(
        self, items: Sequence[tuple[TaskEvent, float | None]], wait_s: float
    ) -> Offered:
        """Thread side: hand a whole batch (a bulk delivery) to the loop in one crossing,
        in order; one slot per event, taken in one call within wait_s. Past the first event
        that found no slot the rest are not offered (answer RETRY), so a task's later events
        never overtake one sent back to daprd. Never acknowledged ahead: the caller waits
        once for the whole batch, which the loop answers after the batch's writes.
        """
        got = self._slots.take_many(len(items), wait_s)
        done = Completion(got)
        # No share list looked up here: it only serves to acknowledge ahead, and the loop
        # reads the cache as it is when it routes.
        handoffs = [Handoff(event, published_at, None, done) for event, published_at in items[:got]]
        if handoffs:
            self._inbox.extend(handoffs)
            if not self._wake():
                # The loop is gone: nothing was taken, nothing will be.
                done.abandon()
        return Offered(handoffs, done)

    def _known_shares(self, event: TaskEvent) -> tuple[str, ...] | None:
        """The share list the event routes with, if it is cached and the event does not
        change it: then routing needs no state call."""
        if event.shared_with is not None:
            return None
        return self._shares.cached(event.share_key, event.user_id)

    def _wake(self) -> bool:
        """Thread side, after appending: wake the loop unless a drain is already pending.
        False when the loop is closed (shutting down)."""
        if not self._wake_pending:
            # The loop clears the flag after a round and then looks at the inbox again, so
            # an append it may miss always finds the flag cleared and wakes it.
            self._wake_pending = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                self._wake_pending = False
                return False
        return True

    def _drain(self) -> None:
        """On the loop: route the inbox in rounds, taking what arrives meanwhile (the
        wake-up flag stays set, so the threads skip the self-pipe write), within
        DRAIN_ROUNDS and DRAIN_SLICE_S."""
        inbox = self._inbox
        started = time.monotonic()
        for _ in range(DRAIN_ROUNDS):
            self._route(inbox)
            self._wake_pending = False
            if not inbox:
                return
            self._wake_pending = True  # taken by the next round (or the next callback)
            if time.monotonic() - started > DRAIN_SLICE_S:
                break
        self._loop.call_soon(self._drain)

    async def wait_idle(self) -> None:
        """Until every hand-off offered so far has been answered (the shutdown drain)."""
        await self._slots.wait_none_taken()

    @property
    def in_flight(self) -> int:
        """Hand-offs offered and not yet answered or dropped."""
        return self._slots.taken

    def acked_unanswered(self) -> list[Handoff]:
        """Hand-offs acknowledged ahead (Dapr has SUCCESS) that the loop has not answered
        yet: if the process stopped now, these events would be lost."""
        with self._acked_lock:
            return [h for h in self._acked if not h.answered]
