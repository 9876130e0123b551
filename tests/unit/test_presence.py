"""Connection records follow the hub's one registry; presence never imports the socket
shell."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import orjson

import realtime_sync.presence
from realtime_sync.core.routing import Registry, Subscriptions
from realtime_sync.metrics import Metrics
from realtime_sync.presence import ConnectionRecords


class Store:
    """The part of DaprState that ConnectionRecords uses, as a dict."""

    connected = True

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> tuple[bytes, str]:
        return self.data.get(key, b""), ""

    async def save(self, key: str, value: bytes, *, etag: str | None = None) -> None:
        self.data[key] = value

    saves = 0

    async def save_many(self, items: Sequence[tuple[str, bytes]], *, ttl_s: int) -> None:
        self.saves += 1
        self.data.update(items)

    async def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.data.pop(key, None)


class Conn:
    def __init__(self, connection_id: str, user_id: str) -> None:
        self.connection_id = connection_id
        self.user_id = user_id
        self.subscriptions = Subscriptions()
        self.connected_at = 1_700_000_000.0
        self.last_activity = 1_700_000_001.0


def make_records() -> tuple[ConnectionRecords, Registry[Conn], Store]:
    store = Store()
    registry: Registry[Conn] = Registry()
    records = ConnectionRecords(cast(Any, store), registry, replica="r1", ttl_s=60)
    return records, registry, store


def test_presence_does_not_import_the_websocket_shell() -> None:
    tree = ast.parse(Path(realtime_sync.presence.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith(("websockets", "realtime_sync.conn"))}
    assert "realtime_sync.server" not in imported


async def test_a_registered_connection_is_recorded_with_its_subscriptions() -> None:
    records, registry, store = make_records()
    conn = Conn("c1", "alice")
    registry.add(conn)
    records.opened(conn)
    await records.flush()
    conn.subscriptions.add("7")
    records.touched(conn)
    await records.flush()
    record = orjson.loads(store.data["connection:c1"])
    assert (record["id"], record["user_id"], record["replica"]) == ("c1", "alice", "r1")
    assert record["subscriptions"] == ["7"]
    assert record["last_activity"] == "2023-11-14T22:13:21.000Z"
    assert orjson.loads(store.data["presence:alice:r1"]) == ["c1"]


async def test_the_presence_list_is_the_registry_of_the_user() -> None:
    records, registry, store = make_records()
    first, second = Conn("c1", "alice"), Conn("c2", "alice")
    for conn in (first, second):
        registry.add(conn)
        records.opened(conn)
    await records.flush()
    assert orjson.loads(store.data["presence:alice:r1"]) == ["c1", "c2"]
    registry.remove(first)
    records.closed(first)
    await records.flush()
    assert "connection:c1" not in store.data
    assert orjson.loads(store.data["presence:alice:r1"]) == ["c2"]
    registry.remove(second)
    records.closed(second)
    await records.flush()
    assert store.data == {}


async def test_a_connection_gone_from_the_registry_is_not_written_again() -> None:
    records, registry, store = make_records()
    conn = Conn("c1", "alice")
    registry.add(conn)
    records.opened(conn)
    registry.remove(conn)  # closed by the hub (e.g. a slow consumer) before the flush
    await records.flush()
    assert "connection:c1" not in store.data
    assert "presence:alice:r1" not in store.data


async def test_remove_all_deletes_every_record_of_the_replica() -> None:
    records, registry, store = make_records()
    for n, user in enumerate(["alice", "bob"]):
        conn = Conn(f"c{n}", user)
        registry.add(conn)
        records.opened(conn)
    await records.flush()
    assert len(store.data) == 4
    await records.remove_all()
    assert store.data == {"replicas": b"{}"}


async def test_a_record_lists_the_first_subscriptions_and_counts_them_all() -> None:
    store = Store()
    registry: Registry[Conn] = Registry()
    metrics = Metrics()
    records = ConnectionRecords(
        cast(Any, store),
        registry,
        replica="r1",
        ttl_s=60,
        max_record_subscriptions=10,
        max_batch_bytes=4096,
        metrics=metrics,
    )
    conns = [Conn(f"c{n}", "heavy") for n in range(5)]
    for conn in conns:
        for i in range(30):
            conn.subscriptions.add(f"{i:02d}".ljust(200, "x"))
        registry.add(conn)
        records.opened(conn)
    await records.flush()
    for conn in conns:
        record = orjson.loads(store.data[f"connection:{conn.connection_id}"])
        assert record["subscriptions"] == [f"{i:02d}".ljust(200, "x") for i in range(10)]
        assert record["subscription_count"] == 30
    assert store.saves > 1  # five ~2 KB records do not fit one 4 KB save
    hits = "realtime_sync_limits_hit_total"
    sample = metrics.registry.get_sample_value
    assert sample(hits, {"limit": "record_subscriptions"}) == 5
    assert sample(hits, {"limit": "presence_batch"}) == 1


def test_bulk_saves_are_split_below_the_byte_bound() -> None:
    items = [(f"k{i}", b"x" * 100) for i in range(10)]
    chunks = list(realtime_sync.presence.batches(items, 400))
    assert [item for chunk in chunks for item in chunk] == items
    assert len(chunks) > 1
    assert all(
        sum(len(k) + len(v) + realtime_sync.presence.ITEM_OVERHEAD for k, v in chunk) <= 400
        for chunk in chunks
    )
    # One item larger than the bound goes alone.
    big = [("a", b"x" * 1000), ("b", b"y")]
    assert [len(c) for c in realtime_sync.presence.batches(big, 400)] == [1, 1]
