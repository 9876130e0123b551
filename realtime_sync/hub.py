"""Bookkeeping of this replica: its connections, seen event ids and resume buffers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Literal

from realtime_sync.bridge import Bridge
from realtime_sync.connection import ClientConnection
from realtime_sync.core.dedupe import SeenIds
from realtime_sync.core.outcomes import CloseCode
from realtime_sync.core.protocol import Subscribe
from realtime_sync.core.resume import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_USERS,
    REORDER_MARGIN_EVENTS,
    REORDER_MARGIN_S,
    Replay,
    ResumeBuffers,
    Resync,
    ResyncReason,
)
from realtime_sync.core.routing import Registry
from realtime_sync.metrics import Metrics
from realtime_sync.state import ResumeSnapshots, StateUnavailable

log = logging.getLogger(__name__)
HOUSEKEEPING_S = 5.0
# Where an acknowledged event was lost: a routing crash, or the SIGTERM drain's deadline.
LostStage = Literal["routing", "drain"]


class Hub:
    """The open connections, the event ids delivered lately (dedupe) and every user's
    resume buffer, with the snapshots that carry the buffers across a restart."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        dedupe_window_s: float,
        dedupe_max_ids: int,
        resume_window_s: float,
        resume_max_events: int,
        resume_max_users: int = DEFAULT_MAX_USERS,
        resume_max_bytes: int = DEFAULT_MAX_BYTES,
        resume_margin_s: float = REORDER_MARGIN_S,
        resume_margin_events: int = REORDER_MARGIN_EVENTS,
        snapshots: ResumeSnapshots | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry: Registry[ClientConnection] = Registry()
        self.seen = SeenIds(window_s=dedupe_window_s, max_ids=dedupe_max_ids)
        self.buffers = ResumeBuffers(
            window_s=resume_window_s,
            max_events=resume_max_events,
            max_users=resume_max_users,
            max_bytes=resume_max_bytes,
            on_evict=lambda bound: metrics.resume_evictions.labels(bound.value).inc(),
            started_at=clock(),
            margin_s=resume_margin_s,
            margin_events=resume_margin_events,
        )
        self.snapshots = snapshots
        self.metrics = metrics
        self.clock = clock

    async def resume(
        self,
        conn: ClientConnection,
        msg: Subscribe,
        may_read_store: Callable[[], bool] = lambda: True,
    ) -> list[bytes] | Resync:
        """The frames this connection must be sent for msg.since (see `core.resume`), or
        why it must resync.

        If this run's own history does not reach back far enough, a snapshot saved by a
        previous run of the service (at its shutdown) is merged in first, so clients
        resume across a restart, if `may_read_store` allows the state read (the
        connection's rate of such reads). The last replay is taken after the last await:
        the caller registers the subscription in the same loop step, so every event routed
        later reaches the connection live.
        """
        assert msg.since is not None
        wanted = msg.task_key

        def matches(task_key: str) -> bool:
            return wanted is None or task_key == wanted

        def replay() -> Replay | Resync:
            return self.buffers.replay(
                conn.user_id, msg.since, msg.since_time, self.clock(), matches
            )

        answer = replay()
        if (
            isinstance(answer, Resync)
            and answer.reason is not ResyncReason.HOLE
            and self.snapshots is not None
        ):
            if not may_read_store():
                self.metrics.limits_hit.labels("since_lookups").inc()
                self.metrics.resume.labels("not_recovered").inc()
                return answer
            try:
                older = await self.snapshots.load(conn.user_id)
            except StateUnavailable as exc:
                log.warning("resume snapshot unreadable", extra={"reason": str(exc)})
                older = None
            if older is not None and older.entries:
                # Look again even if nothing was added: another connection of the user
                # may have restored the same snapshot while this one was reading it.
                self.buffers.restore(conn.user_id, older.entries, self.clock(), older.floor)
            answer = replay()  # after the await: what was routed meanwhile is in it
        recovered = isinstance(answer, Replay)
        self.metrics.resume.labels("recovered" if recovered else "not_recovered").inc()
        return answer.frames if isinstance(answer, Replay) else answer

    async def save_snapshots(self, *, handover: bool = True) -> int:
        """Save the resume buffers of the users connected now (called by the drain).
        Without `handover` (the drain left acknowledged events unrouted) the next run on
        this instance does not take them as its own history: it answers resync for the
        span instead of a replay with those events missing."""
        if self.snapshots is None:
            return 0
        now = self.clock()
        users = {c.user_id for c in self.registry}
        return await self.snapshots.save(
            {u: (self.buffers.entries(u, now), self.buffers.floor(u)) for u in users},
            handover=handover,
        )

    def events_lost(self, users: Iterable[str], events: int, stage: LostStage) -> int:
        """`events` events for `users` were answered SUCCESS to Dapr but never routed: the
        users' next resume here from before now answers `resync_required` (`hole`), their
        live connections close with 4010 so they resume at once, and the loss is counted.
        Returns how many connections were closed."""
        now = self.clock()
        closed = 0
        for user in dict.fromkeys(users):
            self.buffers.mark_hole(user, now)
            for conn in self.registry.of_user(user):
                conn.close(CloseCode.EVENTS_LOST, "an event was lost: resume")
                closed += 1
        self.metrics.events_lost.labels(stage).inc(events)
        return closed

    async def drain(self, bridge: Bridge, timeout_s: float) -> bool:
        """The shutdown drain of the event path: wait up to `timeout_s` for every hand-off
        to be answered. True if they all were; otherwise what was acknowledged ahead and
        not routed is lost: said in the log, counted (`stage="drain"`) and marked for its
        users (`events_lost`), and False (then the snapshots are saved without a hand-over).
        """
        try:
            async with asyncio.timeout(timeout_s):
                await bridge.wait_idle()
        except TimeoutError:
            pass
        else:
            return True
        lost = bridge.acked_unanswered()
        users = [u for h in lost for u in (h.event.user_id, *(h.shared or ()))]
        closed = self.events_lost(users, len(lost), "drain") if lost else 0
        log.error(
            "drain ran out of time; acknowledged events left unrouted are lost",
            extra={
                "in_flight": bridge.in_flight,
                "acknowledged_lost": len(lost),
                "event_ids": [h.event.event_id for h in lost][:20],
                "closed": closed,
            },
        )
        return False

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

    async def run(self) -> None:
        """Housekeeping, forever: expired resume entries and seen ids are dropped."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            now = self.clock()
            self.buffers.purge(now)
            self.seen.expire(now)
            self.metrics.resume_users.set(self.buffers.user_count)
            self.metrics.resume_bytes.set(self.buffers.byte_count)
