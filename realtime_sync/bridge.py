"""The crossing from the gRPC handler threads into the event loop, and back with a verdict."""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from realtime_sync.core.events import TaskEvent
from realtime_sync.core.outcomes import Verdict
from realtime_sync.core.shares import Applied
from realtime_sync.state import ShareLists

# One drain callback routes at most this many rounds of the inbox, and starts none after
# DRAIN_SLICE_S: sockets, timers and handshakes get the loop between slices.
DRAIN_ROUNDS = 8
DRAIN_SLICE_S = 0.05


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class Claim(enum.Enum):
    """Who has a hand-off: nobody yet, the loop, or the thread that gave up on it."""

    PENDING = "pending"
    TAKEN = "taken"
    ABANDONED = "abandoned"


@dataclass(slots=True, eq=False)
class Handoff:
    """One event in flight from a handler thread to the loop; its claim decides who gives
    up on it, so an event the thread answered RETRY is never routed late.

    Plain C-level locks, not a concurrent Future: `done` is held until the loop answers,
    `lock` guards the claim (taken by the loop or abandoned by the thread).
    """

    event: TaskEvent
    published_at: float | None
    # The share list, when the thread found it cached: routing then needs no state call
    # and cannot fail, so the event may be acknowledged ahead of its writes.
    shared: tuple[str, ...] | None = None
    acked: bool = False
    verdict: Verdict = Verdict.RETRY
    done: threading.Lock = field(default_factory=_held_lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    claim: Claim = Claim.PENDING
    # A share-list change's outcome, set by the loop (read by `set_task_shares`).
    applied: Applied | None = None
    answered: bool = False

    def abandon(self) -> bool:
        """Thread side, after its wait ran out: True if the loop never took it."""
        with self.lock:
            if self.claim is Claim.PENDING:
                self.claim = Claim.ABANDONED
                return True
            return False

    def take(self) -> bool:
        """Loop side: False if the thread already gave up on it."""
        with self.lock:
            if self.claim is Claim.ABANDONED:
                return False
            self.claim = Claim.TAKEN
            return True

    def answer(self) -> None:
        """Loop side: `verdict` is final; wakes the waiting handler thread."""
        self.answered = True
        self.done.release()

    def wait(self, timeout: float | None) -> Verdict | None:
        """Thread side: the verdict, or None if `timeout` ran out first."""
        if self.done.acquire(timeout=-1 if timeout is None else timeout):
            return self.verdict
        return None

    def outcome(self, timeout: float) -> Verdict | None:
        """Thread side: the verdict, or None when the loop had not taken the hand-off
        within `timeout` (it never will now). Once taken it is waited out: its state calls
        have their own deadlines, and answering RETRY for a delivered event would repeat it.
        """
        verdict = self.wait(timeout)
        if verdict is not None or self.abandon():
            return verdict
        return self.wait(None) or Verdict.RETRY


class Slots:
    """The bound on hand-offs in flight (offered and not yet answered or dropped).

    A handler thread takes a slot, waiting up to a deadline (a full bound answers RETRY,
    which passes backpressure on to daprd); the loop frees slots as their hand-offs end.
    """

    def __init__(self, capacity: int) -> None:
        self._free = threading.BoundedSemaphore(capacity)
        self._count_lock = threading.Lock()
        self._taken = 0
        self._none_taken = asyncio.Event()
        self._none_taken.set()

    def take(self, wait_s: float) -> int:
        """Thread side: the hand-offs in flight with this one, or 0 if no slot came free."""
        if not self._free.acquire(timeout=wait_s):
            return 0
        with self._count_lock:
            self._taken += 1
            return self._taken

    def free(self, count: int) -> None:
        """Loop side: `count` hand-offs have ended."""
        if not count:
            return
        with self._count_lock:
            self._taken -= count
            none_taken = self._taken == 0
        self._free.release(count)
        if none_taken:
            self._none_taken.set()

    @property
    def taken(self) -> int:
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
        self._acked: list[Handoff] = []
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
                self._acked = [h for h in self._acked if not h.answered]
                self._acked.append(handoff)
        self._inbox.append(handoff)
        if not self._wake():
            return None if handoff.abandon() else handoff
        return handoff

    def offer_batch(
        self, items: Sequence[tuple[TaskEvent, float | None]], wait_s: float
    ) -> list[Handoff | None]:
        """Thread side: hand a whole batch (a bulk delivery) to the loop in one crossing,
        in order; one slot per event, all taken within wait_s. Past the first event that
        found no slot the rest get None too (answer RETRY), so a task's later events never
        overtake one sent back to daprd. Never acknowledged ahead: the caller waits for
        every verdict, which the loop gives after the batch's writes.
        """
        deadline = time.monotonic() + wait_s
        handoffs: list[Handoff | None] = []
        for event, published_at in items:
            if not self._slots.take(max(0.0, deadline - time.monotonic())):
                break
            handoffs.append(Handoff(event, published_at, self._known_shares(event)))
        taken = [h for h in handoffs if h is not None]
        handoffs.extend([None] * (len(items) - len(handoffs)))
        if taken:
            self._inbox.extend(taken)
            if not self._wake():
                return [None if h is None or h.abandon() else h for h in handoffs]
        return handoffs

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
