"""Connection records and presence in the state store.

Keys (all written with `ttlInSeconds`, so a crashed replica's entries expire):
- `connection:{id}`: one record per open connection (id, user_id, replica, connected_at,
  last_activity, subscriptions);
- `presence:{user_id}:{replica}`: the ids of that user's connections on that replica
  (each replica writes only its own keys: no cross-replica write contention);
- `replicas`: the live replicas and when each entry lapses (ETag-guarded).

Writes are batched: changes mark entries dirty and one bulk save per flush interval
writes them, so the write rate follows the number of connections, not the traffic.
Every live entry is rewritten at a third of its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from realtime_sync.core.routing import Routable
from realtime_sync.metrics import Metrics
from realtime_sync.state import (
    CONNECTION_PREFIX,
    ConflictError,
    DaprState,
    StateUnavailable,
)

log = logging.getLogger(__name__)
FLUSH_INTERVAL_S = 1.0
MAX_BATCH = 500
PRESENCE_PREFIX = "presence:"
REPLICAS_KEY = "replicas"
ITEM_OVERHEAD = 64  # protobuf framing and the ttlInSeconds metadata of one saved item


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Recorded(Routable, Protocol):
    """What a connection's record is made of: a routable connection and its times."""

    @property
    def connected_at(self) -> float: ...
    @property
    def last_activity(self) -> float: ...


class OpenConnections(Protocol):
    """The hub's registry of this replica's open connections, read-only."""

    def __iter__(self) -> Iterator[Recorded]: ...
    def get(self, connection_id: str) -> Recorded | None: ...
    def count_for(self, user_id: str) -> int: ...
    def of_user(self, user_id: str) -> Sequence[Recorded]: ...


def record_of(conn: Recorded, replica: str, max_subscriptions: int = 100) -> bytes:
    """A connection's record. Its subscriptions are summarised past `max_subscriptions`:
    the first that many (sorted, `*` first) and `subscription_count`, the total."""
    subscriptions = conn.subscriptions.describe()
    return orjson.dumps(
        {
            "id": conn.connection_id,
            "user_id": conn.user_id,
            "replica": replica,
            "connected_at": _iso(conn.connected_at),
            "last_activity": _iso(conn.last_activity),
            "subscriptions": subscriptions[:max_subscriptions],
            "subscription_count": len(subscriptions),
        }
    )


def batches(
    items: Sequence[tuple[str, bytes]], max_bytes: int
) -> Iterator[Sequence[tuple[str, bytes]]]:
    """Consecutive runs of items whose keys and values add up to at most `max_bytes` (an
    item larger than that alone): one bulk save each stays under gRPC's message limit."""
    start, size = 0, 0
    for i, (key, value) in enumerate(items):
        cost = len(key) + len(value) + ITEM_OVERHEAD
        if i > start and size + cost > max_bytes:
            yield items[start:i]
            start, size = i, 0
        size += cost
    if start < len(items):
        yield items[start:]


def presence_key(user_id: str, replica: str) -> str:
    return f"{PRESENCE_PREFIX}{user_id}:{replica}"


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class ConnectionRecords:
    """Writes the records of the connections in the hub's registry: `opened`, `touched`
    and `closed` mark what changed; each flush writes it (the registry is read then)."""

    def __init__(
        self,
        state: DaprState,
        connections: OpenConnections,
        *,
        replica: str,
        ttl_s: int,
        max_record_subscriptions: int = 100,
        max_batch_bytes: int = 1 << 20,
        metrics: Metrics | None = None,
    ) -> None:
        self._max_record_subscriptions = max_record_subscriptions
        self._max_batch_bytes = max_batch_bytes
        self._metrics = metrics
        self._state = state
        self._connections = connections
        self._replica = replica
        self._ttl = ttl_s
        self._leaving = False  # set by remove_all: every record goes
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._dirty_users: set[str] = set()
        self._last_refresh = time.monotonic()

    @property
    def replica(self) -> str:
        return self._replica

    def opened(self, conn: Recorded) -> None:
        self._dirty.add(conn.connection_id)
        self._deleted.discard(conn.connection_id)
        self._dirty_users.add(conn.user_id)

    def touched(self, conn: Recorded) -> None:
        self._dirty.add(conn.connection_id)

    def closed(self, conn: Recorded) -> None:
        self._dirty.discard(conn.connection_id)
        self._deleted.add(conn.connection_id)
        self._dirty_users.add(conn.user_id)

    def _is_open(self, connection_id: str) -> bool:
        return self._connections.get(connection_id) is not None

    def _has_open(self, user_id: str) -> bool:
        return not self._leaving and self._connections.count_for(user_id) > 0

    def _ids_of(self, user_id: str) -> list[str]:
        return sorted(c.connection_id for c in self._connections.of_user(user_id))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            if not self._state.connected:
                continue
            if time.monotonic() - self._last_refresh >= self._ttl / 3:
                self._last_refresh = time.monotonic()
                for conn in self._connections:
                    self._dirty.add(conn.connection_id)
                    self._dirty_users.add(conn.user_id)
                await self._announce()
            await self.flush()

    async def start(self) -> None:
        """Announce this replica (best effort; retried at every refresh)."""
        await self._announce()

    async def flush(self) -> None:
        deleted = list(self._deleted)[:MAX_BATCH]
        empty_users = [u for u in self._dirty_users if not self._has_open(u)][:MAX_BATCH]
        gone = [CONNECTION_PREFIX + c for c in deleted]
        gone += [presence_key(u, self._replica) for u in empty_users]
        if gone:
            try:
                await self._state.delete_many(gone)
                self._deleted.difference_update(deleted)
                self._dirty_users.difference_update(empty_users)
            except StateUnavailable as exc:
                log.warning("deleting connection records failed", extra={"reason": str(exc)})
        while self._dirty or self._dirty_users:
            batch = [self._dirty.pop() for _ in range(min(MAX_BATCH, len(self._dirty)))]
            users = [
                u
                for u in [
                    self._dirty_users.pop()
                    for _ in range(min(MAX_BATCH - len(batch), len(self._dirty_users)))
                ]
                if self._has_open(u)
            ]
            items = [
                (CONNECTION_PREFIX + cid, self._record(conn))
                for cid in batch
                if (conn := self._connections.get(cid)) is not None
            ]
            items += [
                (presence_key(u, self._replica), orjson.dumps(self._ids_of(u))) for u in users
            ]
            chunks = list(batches(items, self._max_batch_bytes))
            if len(chunks) > 1:
                self._hit("presence_batch")
            try:
                for chunk in chunks:
                    await self._state.save_many(chunk, ttl_s=self._ttl)
            except StateUnavailable as exc:
                self._dirty.update(c for c in batch if self._is_open(c))
                self._dirty_users.update(users)
                log.warning("saving connection records failed", extra={"reason": str(exc)})
                return

    def _record(self, conn: Recorded) -> bytes:
        if len(conn.subscriptions) > self._max_record_subscriptions:
            self._hit("record_subscriptions")
        return record_of(conn, self._replica, self._max_record_subscriptions)

    def _hit(self, limit: str) -> None:
        if self._metrics is not None:
            self._metrics.limits_hit.labels(limit).inc()

    async def _announce(self, *, leaving: bool = False) -> None:
        """Add (or remove) this replica in the `replicas` map, pruning lapsed entries."""
        for _ in range(5):
            try:
                raw, etag = await self._state.get(REPLICAS_KEY)
                current = _json(raw)
                replicas: dict[str, float] = current if isinstance(current, dict) else {}
                now = time.time()
                replicas = {
                    r: float(t)
                    for r, t in replicas.items()
                    if isinstance(t, int | float) and t > now
                }
                if leaving:
                    replicas.pop(self._replica, None)
                else:
                    replicas[self._replica] = now + self._ttl
                await self._state.save(REPLICAS_KEY, orjson.dumps(replicas), etag=etag or None)
                return
            except ConflictError:
                await asyncio.sleep(0.02)
            except StateUnavailable as exc:
                log.warning("announcing the replica failed", extra={"reason": str(exc)})
                return

    async def remove_all(self) -> None:
        """On shutdown: delete every record of this replica (best effort)."""
        self._leaving = True
        for conn in self._connections:
            self.closed(conn)
        while (self._deleted or self._dirty_users) and self._state.connected:
            before = len(self._deleted) + len(self._dirty_users)
            await self.flush()
            if len(self._deleted) + len(self._dirty_users) >= before:
                break
        if self._state.connected:
            await self._announce(leaving=True)


async def lookup_presence(state: DaprState, user_id: str) -> dict[str, Any]:
    """A user's open connections on every live replica, from the state store."""
    raw, _ = await state.get(REPLICAS_KEY)
    replicas = _json(raw)
    now = time.time()
    live = (
        sorted(r for r, t in replicas.items() if isinstance(t, int | float) and t > now)
        if isinstance(replicas, dict)
        else []
    )
    ids: list[str] = []
    if live:
        found = await state.get_bulk([presence_key(user_id, r) for r in live])
        for value in found.values():
            listed = _json(value)
            if isinstance(listed, list):
                ids.extend(i for i in listed if isinstance(i, str))
    records: list[Any] = []
    if ids:
        found = await state.get_bulk([CONNECTION_PREFIX + i for i in sorted(set(ids))])
        for value in found.values():
            record = _json(value)
            if isinstance(record, dict) and record.get("user_id") == user_id:
                records.append(record)
    records.sort(key=lambda r: (str(r.get("replica")), str(r.get("connected_at"))))
    return {"user_id": user_id, "online": bool(records), "connections": records}
