"""Connection records in the state store: `connection:{id}`, written with a TTL.

Writes are batched: changes mark a record dirty and one bulk save per flush interval
writes them, so the write rate follows the number of connections, not the traffic.
Every live record is rewritten at a third of its TTL; a crashed replica's records expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import orjson

from realtime_sync.connection import ClientConnection
from realtime_sync.state import CONNECTION_PREFIX, DaprState, StateUnavailable

log = logging.getLogger(__name__)
FLUSH_INTERVAL_S = 1.0
MAX_BATCH = 500


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_of(conn: ClientConnection, replica: str) -> bytes:
    return orjson.dumps(
        {
            "id": conn.connection_id,
            "user_id": conn.user_id,
            "replica": replica,
            "connected_at": _iso(conn.connected_at),
            "last_activity": _iso(conn.last_activity),
            "subscriptions": conn.subscriptions.describe(),
        }
    )


class ConnectionRecords:
    def __init__(self, state: DaprState, *, replica: str, ttl_s: int) -> None:
        self._state = state
        self._replica = replica
        self._ttl = ttl_s
        self._live: dict[str, ClientConnection] = {}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._last_refresh = time.monotonic()

    def opened(self, conn: ClientConnection) -> None:
        self._live[conn.connection_id] = conn
        self._dirty.add(conn.connection_id)
        self._deleted.discard(conn.connection_id)

    def touched(self, conn: ClientConnection) -> None:
        if conn.connection_id in self._live:
            self._dirty.add(conn.connection_id)

    def closed(self, conn: ClientConnection) -> None:
        if self._live.pop(conn.connection_id, None) is not None:
            self._dirty.discard(conn.connection_id)
            self._deleted.add(conn.connection_id)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            if not self._state.connected:
                continue
            if time.monotonic() - self._last_refresh >= self._ttl / 3:
                self._last_refresh = time.monotonic()
                self._dirty.update(self._live)
            await self.flush()

    async def flush(self) -> None:
        deleted = list(self._deleted)[:MAX_BATCH]
        if deleted:
            try:
                await self._state.delete_many([CONNECTION_PREFIX + c for c in deleted])
                self._deleted.difference_update(deleted)
            except StateUnavailable as exc:
                log.warning("deleting connection records failed", extra={"reason": str(exc)})
        while self._dirty:
            batch = [self._dirty.pop() for _ in range(min(MAX_BATCH, len(self._dirty)))]
            items = [
                (CONNECTION_PREFIX + cid, record_of(self._live[cid], self._replica))
                for cid in batch
                if cid in self._live
            ]
            try:
                await self._state.save_many(items, ttl_s=self._ttl)
            except StateUnavailable as exc:
                self._dirty.update(c for c in batch if c in self._live)
                log.warning("saving connection records failed", extra={"reason": str(exc)})
                return

    async def remove_all(self) -> None:
        """On shutdown: delete every record of this replica (best effort)."""
        for conn in list(self._live.values()):
            self.closed(conn)
        while self._deleted and self._state.connected:
            before = len(self._deleted)
            await self.flush()
            if len(self._deleted) >= before:
                break
