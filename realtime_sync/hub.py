"""The event loop side of delivery: hand-off queue → route → fan-out.

gRPC handler threads hand each parsed event over as a Handoff. One crossing into the
loop, and one back (a lock released with the verdict) unless the thread may answer
SUCCESS ahead: its share list was cached, so routing cannot fail, and fewer than
ACK_AHEAD hand-offs are in flight. Hand-offs land in an inbox that one
loop callback drains (call_soon_threadsafe only when no drain is pending, so a burst
costs one wake-up). An event whose share list is cached is routed right there, with no
task switch; one that needs the state store goes to the routing workers, and later
events of the same task wait behind it (one at a time per task), so per-task order is
kept and a share-list change applies to every event after it. A capacity
semaphore, taken in the thread with a short wait, keeps the hand-offs bounded; a
hand-off the thread gave up on is never routed late (its claim is checked under a lock).

Fan-out: the event is serialised once and framed once (`encode_text_frame`); the same
bytes are written to every target socket that can take them directly.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from realtime_sync.connection import ClientConnection
from realtime_sync.core.dedupe import SeenIds
from realtime_sync.core.events import TaskEvent, encode_update
from realtime_sync.core.outcomes import CloseCode, Verdict
from realtime_sync.core.protocol import Subscribe
from realtime_sync.core.resume import Buffered, ResumeBuffers
from realtime_sync.core.routing import Registry, recipients
from realtime_sync.core.wire import encode_text_frame
from realtime_sync.metrics import Metrics
from realtime_sync.state import ResumeSnapshots, ShareLists, StateUnavailable

log = logging.getLogger(__name__)
ROUTE_WORKERS = 32
# Per connection, the encoded frames routed to it during one drain of the inbox.
Batch = dict[ClientConnection, bytes]
DRAIN_ROUNDS = 8
# A drain callback starts no further round after this long: sockets, timers and
# handshakes get the loop between slices even when events keep coming.
DRAIN_SLICE_S = 0.05


def _held_lock() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


class Claim(enum.Enum):
    PENDING = "pending"
    TAKEN = "taken"
    ABANDONED = "abandoned"


@dataclass(slots=True, eq=False)
class Handoff:
    """One event crossing from a gRPC thread into the loop.

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

    def abandon(self) -> bool:
        """Called by the thread after its wait ran out: True if the loop never took it."""
        with self.lock:
            if self.claim is Claim.PENDING:
                self.claim = Claim.ABANDONED
                return True
            return False

    def take(self) -> bool:
        with self.lock:
            if self.claim is Claim.ABANDONED:
                return False
            self.claim = Claim.TAKEN
            return True

    def answer(self, verdict: Verdict) -> None:
        """Loop side: the verdict for Dapr; wakes the waiting handler thread."""
        self.verdict = verdict
        self.done.release()

    def wait(self, timeout: float | None) -> Verdict | None:
        """Thread side: the verdict, or None if `timeout` ran out first."""
        if self.done.acquire(timeout=-1 if timeout is None else timeout):
            return self.verdict
        return None


class Hub:
    """Routing state of this replica: connections, seen event ids, resume buffers."""

    def __init__(
        self,
        *,
        shares: ShareLists,
        metrics: Metrics,
        queue_size: int,
        ack_ahead: int = 0,
        dedupe_window_s: float,
        dedupe_max_ids: int,
        resume_window_s: float,
        resume_max_events: int,
        snapshots: ResumeSnapshots | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.snapshots = snapshots
        self.registry: Registry[ClientConnection] = Registry()
        self.shares = shares
        self.metrics = metrics
        self.seen = SeenIds(window_s=dedupe_window_s, max_ids=dedupe_max_ids)
        self.buffers = ResumeBuffers(window_s=resume_window_s, max_events=resume_max_events)
        self.clock = clock
        self.queue: asyncio.Queue[Handoff] = asyncio.Queue(maxsize=queue_size)
        self._capacity = queue_size
        self._ack_ahead = ack_ahead
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self.loop = asyncio.get_running_loop()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._inbox: deque[Handoff] = deque()
        self._wake_pending = False
        # Tasks with an event at the routing workers -> their later events, in order.
        self._slow_keys: dict[str, deque[Handoff]] = {}

    # -- from gRPC threads -------------------------------------------------------------

    def offer(self, handoff: Handoff, wait_s: float) -> bool:
        """Thread side: enqueue, waiting up to wait_s for room. False = full (RETRY).

        Sets `handoff.acked` when the thread may answer SUCCESS at once: its recipients
        are known (share list cached) and fewer than `ack_ahead` hand-offs are in flight.
        Otherwise the thread waits for the verdict, which bounds what is acknowledged
        but not yet written and passes backpressure on to daprd.
        """
        in_flight = self._reserve(wait_s)
        if not in_flight:
            return False
        handoff.acked = handoff.shared is not None and in_flight <= self._ack_ahead
        self._inbox.append(handoff)
        if not self._wake_pending:
            # The loop clears the flag after a round and then looks at the inbox again, so
            # an append it may miss always finds the flag cleared and wakes it.
            self._wake_pending = True
            try:
                self.loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:  # loop closed: shutting down
                self._wake_pending = False
                try:
                    self._inbox.remove(handoff)
                except ValueError:
                    return True  # a drain took it after all
                self._release()
                return False
        return True

    def _reserve(self, wait_s: float) -> int:
        """Thread side: take one slot of the bounded hand-off, waiting up to wait_s.
        Returns the hand-offs in flight with this one, 0 when there was no room."""
        deadline: float | None = None
        while True:
            with self._inflight_lock:
                if self._inflight < self._capacity:
                    self._inflight += 1
                    return self._inflight
            now = time.monotonic()
            if deadline is None:
                deadline = now + wait_s
            if now >= deadline:
                return 0
            time.sleep(min(0.005, deadline - now))

    def _release(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1

    def _drain_inbox(self) -> None:
        """On the loop: route what can be routed now, queue the rest for the workers.

        Hand-offs that arrive while a batch is routed are taken in the same callback (the
        wake-up flag stays set meanwhile, so the threads skip the self-pipe write), a few
        rounds and DRAIN_SLICE_S at most so sockets and timers are not starved.
        """
        inbox = self._inbox
        if inbox:
            self._idle.clear()
        started = time.monotonic()
        for _ in range(DRAIN_ROUNDS):
            self._route_batch()
            self._wake_pending = False
            if not inbox:
                break
            self._wake_pending = True  # taken by the next round (or the next callback)
            if time.monotonic() - started > DRAIN_SLICE_S:
                self.loop.call_soon(self._drain_inbox)
                break
        else:
            self.loop.call_soon(self._drain_inbox)
        self.metrics.handoff_depth.set(self.queue.qsize())
        if not inbox and self.queue.empty() and self._busy == 0:
            self._idle.set()

    def _route_batch(self) -> None:
        """Route every hand-off in the inbox now. Frames for one connection go out in one
        socket write, and the handler threads are answered after the writes."""
        inbox = self._inbox
        batch: Batch = {}
        answered: list[tuple[Handoff, Verdict]] = []
        while inbox:
            handoff = inbox.popleft()
            event = handoff.event
            key = event.task_key
            waiting = self._slow_keys.get(key)
            if waiting is not None:  # an earlier event of this task is with the workers
                waiting.append(handoff)
                continue
            shared = None if event.shared_with is not None else self._known(key, handoff.shared)
            if shared is None:
                self._slow_keys[key] = deque()
                self.queue.put_nowait(handoff)  # never full: the semaphore holds the bound
                continue
            self._route_now(handoff, shared, batch, answered)
        self._write(batch, answered)

    def _route_now(
        self,
        handoff: Handoff,
        shared: tuple[str, ...],
        batch: Batch,
        answered: list[tuple[Handoff, Verdict]],
    ) -> None:
        """Route a hand-off whose share list is known into `batch` (no state call)."""
        try:
            if handoff.take():
                event = handoff.event
                try:
                    verdict = self._route_cached(event, handoff.published_at, shared, batch)
                except Exception:
                    log.exception(
                        "routing crashed; answering RETRY", extra={"event_id": event.event_id}
                    )
                    verdict = Verdict.RETRY
                answered.append((handoff, verdict))
        finally:
            self._release()

    @staticmethod
    def _write(batch: Batch, answered: list[tuple[Handoff, Verdict]]) -> None:
        """One socket write per connection, then the waiting handler threads' verdicts."""
        try:
            for conn, wire in batch.items():
                conn.send_encoded(wire)
        finally:  # a handler thread waiting on a taken hand-off must always be answered
            for handoff, verdict in answered:
                handoff.answer(verdict)

    def _next_of_task(self, key: str) -> None:
        """A task's event has left the workers: route the events that waited behind it, in
        order, while none needs the state store; the first that does goes to the workers
        (so a task does not stay on the slow path once its share list is cached)."""
        waiting = self._slow_keys.get(key)
        batch: Batch = {}
        answered: list[tuple[Handoff, Verdict]] = []
        while waiting:
            handoff = waiting.popleft()
            event = handoff.event
            shared = None if event.shared_with is not None else self._known(key, handoff.shared)
            if shared is None:
                self.queue.put_nowait(handoff)
                break
            self._route_now(handoff, shared, batch, answered)
        else:
            self._slow_keys.pop(key, None)
        self._write(batch, answered)

    # -- on the loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Route hand-offs forever with a few concurrent workers (state lookups overlap)."""
        async with asyncio.TaskGroup() as tg:
            for _ in range(ROUTE_WORKERS):
                tg.create_task(self._worker())
            tg.create_task(self._housekeeping())

    async def _worker(self) -> None:
        while True:
            handoff = await self.queue.get()
            self._busy += 1
            key = handoff.event.task_key
            try:
                if not handoff.take():
                    continue
                try:
                    verdict = await self.route(handoff.event, handoff.published_at, handoff.shared)
                except StateUnavailable as exc:
                    log.warning(
                        "routing failed; answering RETRY",
                        extra={"event_id": handoff.event.event_id, "reason": str(exc)},
                    )
                    verdict = Verdict.RETRY
                except Exception:
                    log.exception(
                        "routing crashed; answering RETRY",
                        extra={"event_id": handoff.event.event_id},
                    )
                    verdict = Verdict.RETRY
                handoff.answer(verdict)
            finally:
                self._busy -= 1
                self._release()
                self._next_of_task(key)
                self.queue.task_done()
                self.metrics.handoff_depth.set(self.queue.qsize())
                if self.queue.empty() and self._busy == 0:
                    self._idle.set()

    async def wait_idle(self) -> None:
        """Until every queued hand-off has been routed (used by the drain)."""
        if self._inbox:  # its drain callback has not run yet
            self._idle.clear()
        await self._idle.wait()

    async def route(
        self,
        event: TaskEvent,
        published_at: float | None,
        known: tuple[str, ...] | None = None,
    ) -> Verdict:
        """Route one event to every subscribed connection of its owner and shares.

        State is read (and written) before anything is delivered, so a state failure
        answers RETRY having sent nothing; the id is remembered only once delivered.
        `known` is a share list the handler thread already found cached.
        """
        now = self.clock()
        if self.seen.seen(event.event_id, now):
            self.metrics.events_duplicate.inc()
            return Verdict.SUCCESS
        key = event.task_key
        if event.shared_with is not None:
            await self.shares.put(key, event.shared_with)
            shared: tuple[str, ...] = event.shared_with
        else:
            cached = self._known(key, known)
            shared = cached if cached is not None else await self.shares.get(key)
        # checks the id again: another worker may have routed it during the await
        return self._route_cached(event, published_at, shared)

    def _known(self, key: str, captured: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """The share list to route with without a state call: the cache as it is now (a
        change made since the handler thread looked wins), else the thread's copy (an
        event acknowledged ahead must not need the store after all)."""
        cached = self.shares.cached(key)
        return cached if cached is not None else captured

    def _route_cached(
        self,
        event: TaskEvent,
        published_at: float | None,
        shared: tuple[str, ...],
        batch: Batch | None = None,
    ) -> Verdict:
        """Route with the share list known (cached, or just read): synchronous."""
        now = self.clock()
        if self.seen.seen(event.event_id, now):
            self.metrics.events_duplicate.inc()
            return Verdict.SUCCESS
        return self._deliver(event, published_at, shared, now, batch)

    def _deliver(
        self,
        event: TaskEvent,
        published_at: float | None,
        shared: tuple[str, ...],
        now: float,
        batch: Batch | None = None,
    ) -> Verdict:
        """Buffer the frame for every recipient and send it to every subscribed connection
        (or add it to `batch`, written by the caller in one write per connection)."""
        key = event.task_key
        frame = encode_update(event)
        users = recipients(event.user_id, shared)
        entry = Buffered(event.event_id, key, frame, now)
        for user in users:
            self.buffers.append(user, entry)
        sent = 0
        wire = encode_text_frame(frame)
        for conn in self.registry.targets(users, key):
            if conn.close_code is not None:
                continue
            if batch is None:
                if conn.send_encoded(wire):
                    sent += 1
            else:
                # b"" + wire is wire itself: no copy for a connection's first frame.
                batch[conn] = batch.get(conn, b"") + wire
                sent += 1
        self.seen.add(event.event_id, now)
        if sent:
            self.metrics.messages_sent.inc(sent)
            self.metrics.bytes_sent.inc(sent * len(frame))
            if published_at is not None:
                self.metrics.delivery_latency.observe(max(0.0, time.time() - published_at))
        return Verdict.SUCCESS

    async def resume(self, conn: ClientConnection, msg: Subscribe) -> list[bytes] | None:
        """Frames this connection missed after msg.since for this subscription, or None.

        On a miss, a snapshot saved by a previous run of the service (at its shutdown) is
        merged in first, so clients resume across a restart.
        """
        assert msg.since is not None
        wanted = msg.task_key

        def matches(task_key: str) -> bool:
            return wanted is None or task_key == wanted

        frames = self.buffers.since(conn.user_id, msg.since, self.clock(), matches)
        if frames is None and self.snapshots is not None:
            try:
                older = await self.snapshots.load(conn.user_id)
            except StateUnavailable as exc:
                log.warning("resume snapshot unreadable", extra={"reason": str(exc)})
                older = []
            if older:
                # Look again even if nothing was added: another connection of the user
                # may have restored the same snapshot while this one was reading it.
                self.buffers.restore(conn.user_id, older, self.clock())
                frames = self.buffers.since(conn.user_id, msg.since, self.clock(), matches)
        self.metrics.resume.labels("recovered" if frames is not None else "not_recovered").inc()
        return frames

    async def save_snapshots(self) -> int:
        """Save the resume buffers of the users connected now (called by the drain)."""
        if self.snapshots is None:
            return 0
        now = self.clock()
        users = {c.user_id for c in self.registry}
        return await self.snapshots.save({u: self.buffers.entries(u, now) for u in users})

    # -- connections -------------------------------------------------------------------

    def register(self, conn: ClientConnection) -> None:
        self.registry.add(conn)
        self._update_gauges()

    def unregister(self, conn: ClientConnection) -> None:
        if self.registry.remove(conn):
            self._update_gauges()

    def on_close(self, conn: ClientConnection, code: CloseCode) -> None:
        self.metrics.closes.labels(str(int(code))).inc()
        self.unregister(conn)

    def _update_gauges(self) -> None:
        self.metrics.connections.set(len(self.registry))
        self.metrics.users.set(self.registry.user_count)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            now = self.clock()
            self.buffers.purge(now)
            self.seen.expire(now)
