"""Routing the hand-offs on the loop: per-task order, share-list reads, batched writes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence

from realtime_sync.bridge import Handoff, Slots
from realtime_sync.connection import ClientConnection
from realtime_sync.core.fanout import fan_out, recipients, revoke
from realtime_sync.core.outcomes import Verdict
from realtime_sync.hub import Hub
from realtime_sync.metrics import Metrics
from realtime_sync.state import ConflictError, ShareLists, StateUnavailable

log = logging.getLogger(__name__)
# Concurrent share-list reads: events of different tasks overlap their state calls.
ROUTE_WORKERS = 32
# A connection's frames of one routing pass are kept as one bytes object (copied on each
# append) below this size, then as a list (see Batch).
JOIN_FROM = 2048


class Batch:
    """What one pass of routing produced: the frames for each connection, written in one
    socket write per connection, then the hand-offs that ended, answered after the writes.
    The frames and bytes it sends are counted once for the whole pass."""

    __slots__ = ("bytes", "encoded", "ended", "frames")

    def __init__(self) -> None:
        # Each connection's frames in order, as bytes while they are few and small (a
        # copy per frame, cheap up to JOIN_FROM bytes), then as a list joined once at the
        # flush (copying per frame would be quadratic in a bulk call's frames). Bytes are
        # not a container the cyclic GC tracks: the common fan-out of one or a few events
        # allocates no tracked object per socket, which would set off young collections
        # and, through the survivors they promote, full ones that walk every live
        # connection (bench/RESULTS.md, issue #13).
        self.encoded: dict[ClientConnection, bytes | list[bytes]] = {}
        self.ended: list[Handoff] = []
        self.frames = 0
        self.bytes = 0

    def flush(self, slots: Slots, metrics: Metrics) -> None:
        try:
            for conn, frames in self.encoded.items():
                conn.send_encoded(frames if isinstance(frames, bytes) else b"".join(frames))
        finally:  # a handler thread waiting on a taken hand-off must always be answered
            for handoff in self.ended:
                handoff.answer()
            slots.free(len(self.ended))
            if self.frames:
                metrics.messages_sent.inc(self.frames)
                metrics.bytes_sent.inc(self.bytes)


class Dispatcher:
    """Routes each hand-off once, in order per task.

    An event whose share list is known is routed at once, on the loop. One that needs the
    state store goes to the workers, and the later events of its task wait behind it, so
    a share-list change applies to every event after it.
    """

    def __init__(self, *, hub: Hub, shares: ShareLists, metrics: Metrics, slots: Slots) -> None:
        self._hub = hub
        self._shares = shares
        self._metrics = metrics
        self._slots = slots
        self._queue: asyncio.Queue[Handoff] = asyncio.Queue()  # bounded by the slots
        # Tasks with an event at the workers -> their later events, in order.
        self._behind: dict[str, deque[Handoff]] = {}

    def route_round(self, inbox: deque[Handoff]) -> None:
        """Route every hand-off in `inbox`, including those appended meanwhile."""
        batch = Batch()
        behind = self._behind
        try:
            while inbox:
                handoff = inbox.popleft()
                waiting = behind.get(handoff.event.task_key)
                if waiting is not None:
                    waiting.append(handoff)
                else:
                    self._route_or_queue(handoff, batch)
        finally:
            batch.flush(self._slots, self._metrics)
            self._metrics.handoff_depth.set(self._queue.qsize())

    def _route_or_queue(self, handoff: Handoff, batch: Batch) -> bool:
        """Route into `batch` now when the share list is known without a state call (True);
        otherwise queue the hand-off for the workers, and its task's later events wait."""
        event = handoff.event
        shared = None if event.shared_with is not None else self._known(handoff)
        if shared is None:
            if event.task_key not in self._behind:
                self._behind[event.task_key] = deque()
            self._queue.put_nowait(handoff)
            return False
        now = self._hub.clock()
        if self._claim(handoff, now):
            self._deliver(handoff, shared, now, batch)
        batch.ended.append(handoff)
        return True

    def _known(self, handoff: Handoff) -> tuple[str, ...] | None:
        """The cache as it is now (a change made since the handler thread looked wins),
        else the thread's copy (an event acknowledged ahead must not need the store)."""
        event = handoff.event
        cached = self._shares.cached(event.share_key, event.user_id)
        return cached if cached is not None else handoff.shared

    def _claim(self, handoff: Handoff, now: float) -> bool:
        """Take the hand-off for delivery: False if its thread gave up on it, or if its event
        id was delivered before (a redelivery: answered SUCCESS, sent to nobody)."""
        if not handoff.take():
            return False
        if self._hub.seen.seen(handoff.event.event_id, now):
            self._metrics.events_duplicate.inc()
            handoff.verdict = Verdict.SUCCESS
            return False
        return True

    def _deliver(
        self,
        handoff: Handoff,
        shared: tuple[str, ...],
        now: float,
        batch: Batch,
        revoked: tuple[str, ...] = (),
    ) -> None:
        """Fan the event out into `batch` (and the `task_access_revoked` frame to the users
        who lost access), and remember its id; a crash answers RETRY."""
        event = handoff.event
        hub = self._hub
        published_at = handoff.published_at
        try:
            sent = sent_bytes = 0
            if event.pushed:
                payload, encoded, targets = fan_out(
                    event, shared, hub.registry, hub.buffers, now, published_at=published_at
                )
                sent = self._queue_frames(batch, encoded, targets)
                sent_bytes = sent * len(payload)
            if revoked:
                encoded, targets = revoke(
                    event, revoked, hub.registry, hub.buffers, now, published_at=published_at
                )
                told = self._queue_frames(batch, encoded, targets)
                self._metrics.revocations_sent.inc(told)
                log.info(
                    "access revoked",
                    extra={"event_id": event.event_id, "users": len(revoked), "told": told},
                )
            hub.seen.add(event.event_id, now)
        except Exception:
            if not handoff.acked:
                log.exception(
                    "routing crashed; answering RETRY", extra={"event_id": event.event_id}
                )
                return
            log.exception("routing crashed after SUCCESS", extra={"event_id": event.event_id})
            self._lost(handoff, (*recipients(event.user_id, shared), *revoked))
            return
        handoff.verdict = Verdict.SUCCESS
        if sent:
            batch.frames += sent
            batch.bytes += sent_bytes
            if handoff.published_at is not None:
                latency = max(0.0, time.time() - handoff.published_at)
                self._metrics.delivery_latency.observe(latency)

    def _lost(self, handoff: Handoff, users: tuple[str, ...]) -> None:
        """Dapr already has SUCCESS for this event (acknowledged ahead), so the RETRY is
        not heard and the event is gone: its users are told (`Hub.events_lost`)."""
        closed = self._hub.events_lost(users, 1, "routing")
        log.error(
            "acknowledged event lost; its users resync on their next resume",
            extra={"event_id": handoff.event.event_id, "users": len(users), "closed": closed},
        )

    @staticmethod
    def _queue_frames(batch: Batch, encoded: bytes, targets: Sequence[ClientConnection]) -> int:
        frames = batch.encoded
        sent = 0
        for conn in targets:
            if conn.close_code is None:
                queued = frames.get(conn)
                if queued is None:
                    frames[conn] = encoded
                elif isinstance(queued, list):
                    queued.append(encoded)
                elif len(queued) < JOIN_FROM:
                    frames[conn] = queued + encoded
                else:
                    frames[conn] = [queued, encoded]
                sent += 1
        return sent

    async def run(self) -> None:
        """The workers, forever."""
        async with asyncio.TaskGroup() as tg:
            for _ in range(ROUTE_WORKERS):
                tg.create_task(self._work())

    async def _work(self) -> None:
        queue = self._queue
        while True:
            handoff = await queue.get()
            batch = Batch()
            try:
                await self._route_with_state(handoff, batch)
            finally:
                batch.ended.append(handoff)
                self._route_behind(handoff.event.task_key, batch)
                batch.flush(self._slots, self._metrics)
                queue.task_done()
                self._metrics.handoff_depth.set(queue.qsize())

    async def _route_with_state(self, handoff: Handoff, batch: Batch) -> None:
        """Store the event's share list, or read it, then deliver. State is read and written
        before anything is sent, so a state failure answers RETRY having sent nothing."""
        event = handoff.event
        if not self._claim(handoff, self._hub.clock()):
            return
        revoked: tuple[str, ...] = ()
        try:
            change = event.shares_change
            if change is not None:
                applied = await self._shares.apply(event.share_key, change)
                handoff.applied = applied
                # Route by the list in force: a late older change is routed by the newer one.
                shared = applied.current.users
                revoked = applied.revoked
                result = "applied" if applied.write else "older"
                if not applied.write and applied.current.order.change_id == event.event_id:
                    result = "already_applied"
                self._metrics.shares_changes.labels(result).inc()
            else:
                known = self._known(handoff)
                shared = (
                    known
                    if known is not None
                    else await self._shares.get(event.share_key, event.user_id)
                )
        except (StateUnavailable, ConflictError) as exc:
            log.warning(
                "routing failed; answering RETRY",
                extra={"event_id": event.event_id, "reason": str(exc)},
            )
            return
        except Exception:
            log.exception("routing crashed; answering RETRY", extra={"event_id": event.event_id})
            return
        self._deliver(handoff, shared, self._hub.clock(), batch, revoked)

    def _route_behind(self, task_key: str, batch: Batch) -> None:
        """A task's event has left the workers: route the events that waited behind it, in
        order, until one needs the state store again (it goes to the workers)."""
        waiting = self._behind[task_key]
        while waiting:
            if not self._route_or_queue(waiting.popleft(), batch):
                return
        del self._behind[task_key]
