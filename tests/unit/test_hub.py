"""The hub's bookkeeping: resume from the buffers, or from a snapshot of a previous run."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from realtime_sync.core.protocol import Subscribe
from realtime_sync.core.resume import Buffered, Snapshot
from realtime_sync.core.routing import Subscriptions
from realtime_sync.hub import Hub
from realtime_sync.metrics import Metrics


class Conn:
    def __init__(self, connection_id: str, user_id: str) -> None:
        self.connection_id = connection_id
        self.user_id = user_id
        self.subscriptions = Subscriptions()


async def test_two_connections_resuming_from_one_snapshot_both_recover() -> None:
    class Snapshots:
        """Both tabs read the snapshot before either restores it."""

        def __init__(self) -> None:
            self.reads = 0
            self.both_reading = asyncio.Event()

        async def load(self, user_id: str) -> Snapshot:
            self.reads += 1
            if self.reads == 2:
                self.both_reading.set()
            await self.both_reading.wait()
            now = time.time()
            entries = [Buffered(f"e{i}", "1", b'{"n":%d}' % i, now - 10) for i in range(5)]
            return Snapshot("earlier-run", now - 5, entries)

    hub = Hub(
        metrics=Metrics(),
        dedupe_window_s=60,
        dedupe_max_ids=1000,
        resume_window_s=300,
        resume_max_events=100,
        resume_margin_s=0,
        resume_margin_events=0,
        snapshots=cast(Any, Snapshots()),
    )
    tab = Conn("c1", "u")
    since = Subscribe(None, True, None, "e2")
    first, second = await asyncio.gather(
        hub.resume(cast(Any, tab), since), hub.resume(cast(Any, tab), since)
    )
    assert first == second == [b'{"n":3}', b'{"n":4}']
