"""Routing order and share-list freshness in the hub, with a fake state store whose calls
take time: a change of a task's share list applies to every later event of that task,
and a slow read never brings back a list older than one written meanwhile."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, cast

import orjson

from realtime_sync.core.events import parse_event
from realtime_sync.core.protocol import Subscribe
from realtime_sync.core.resume import Buffered
from realtime_sync.core.routing import Subscriptions
from realtime_sync.core.wire import split_text_frames
from realtime_sync.hub import Handoff, Hub
from realtime_sync.metrics import Metrics
from realtime_sync.state import ShareLists


class SlowStore:
    """The part of DaprState that ShareLists uses; every call takes `delay_s`."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> tuple[bytes, str]:
        value = self.data.get(key, b"")  # read at the start, returned at the end
        await asyncio.sleep(self.delay_s)
        return value, "1"

    async def get_bulk(self, keys: list[str]) -> dict[str, bytes]:
        values = {k: self.data.get(k, b"") for k in keys}
        await asyncio.sleep(self.delay_s)
        return values

    async def save(self, key: str, value: bytes, *, etag: str | None = None) -> None:
        await asyncio.sleep(self.delay_s)
        self.data[key] = value


class Conn:
    def __init__(self, connection_id: str, user_id: str) -> None:
        self.connection_id = connection_id
        self.user_id = user_id
        self.subscriptions = Subscriptions()
        self.subscriptions.add(None)
        self.close_code = None
        self.got: list[str] = []

    def send_encoded(self, wire: bytes) -> bool:
        self.got += [orjson.loads(frame)["event_id"] for frame in split_text_frames(wire)]
        return True


def event(n: int, **metadata: Any) -> Any:
    body: dict[str, Any] = {"type": "TASK_CHANGED", "user_id": "owner", "task_id": 7}
    body |= {"id": f"e{n}", "metadata": metadata}
    return parse_event(orjson.dumps(body), cloudevent_id=f"ce{n}", received_at=datetime.now(UTC))


def make_hub(store: SlowStore, **kwargs: Any) -> tuple[Hub, ShareLists]:
    shares = ShareLists(cast(Any, store), cache_s=60.0, clock=time.monotonic)
    hub = Hub(
        shares=shares,
        metrics=Metrics(),
        queue_size=100,
        ack_ahead=128,
        dedupe_window_s=60,
        dedupe_max_ids=1000,
        resume_window_s=300,
        resume_max_events=100,
        **kwargs,
    )
    return hub, shares


async def offer_from_a_thread(hub: Hub, *handoffs: Handoff) -> None:
    def offer() -> None:
        for handoff in handoffs:
            assert hub.offer(handoff, 0.1)

    await asyncio.to_thread(offer)


async def test_a_share_list_change_applies_to_the_events_behind_it() -> None:
    """e1 unshares bob (a state write); e2, right behind it, was acknowledged ahead with
    the list the handler thread saw (bob still on it): bob must not receive e2."""
    hub, shares = make_hub(SlowStore())
    shares.remember("7", ("bob",))
    owner, bob = Conn("c1", "owner"), Conn("c2", "bob")
    hub.register(cast(Any, owner))
    hub.register(cast(Any, bob))
    runner = asyncio.create_task(hub.run())
    try:
        e1 = Handoff(event(1, shared_with=[]), None)
        e2 = Handoff(event(2), None, shares.cached("7"))
        await offer_from_a_thread(hub, e1, e2)
        assert e2.acked
        await asyncio.sleep(0.3)
        assert owner.got == ["e1", "e2"]
        assert bob.got == []
        assert shares.cached("7") == ()
    finally:
        runner.cancel()


async def test_events_of_a_task_waiting_on_the_store_keep_their_order() -> None:
    store = SlowStore()
    store.data["shares:7"] = b'["bob"]'
    hub, _ = make_hub(store)
    bob = Conn("c2", "bob")
    hub.register(cast(Any, bob))
    runner = asyncio.create_task(hub.run())
    try:
        await offer_from_a_thread(
            hub,
            Handoff(event(1), None),  # reads the store
            Handoff(event(2, shared_with=["bob"]), None),  # writes it
            Handoff(event(3), None),
            Handoff(event(4), None),
        )
        await asyncio.sleep(0.5)
        assert bob.got == ["e1", "e2", "e3", "e4"]
    finally:
        runner.cancel()


async def test_a_read_in_flight_does_not_bring_back_an_older_list() -> None:
    store = SlowStore(delay_s=0.2)
    store.data["shares:7"] = b'["bob"]'
    _, shares = make_hub(store)
    reading = asyncio.create_task(shares.get("7"))  # sees ["bob"], answers 200 ms later
    await asyncio.sleep(0.01)
    store.delay_s = 0.01
    await shares.put("7", [])  # an event's shared_with, saved and cached meanwhile
    assert await reading == ()
    assert shares.cached("7") == ()


async def test_two_connections_resuming_from_one_snapshot_both_recover() -> None:
    class Snapshots:
        async def load(self, user_id: str) -> list[Buffered]:
            await asyncio.sleep(0.01)
            now = time.time()
            return [Buffered(f"e{i}", "1", b'{"n":%d}' % i, now - 10) for i in range(5)]

    hub, _ = make_hub(SlowStore(), snapshots=cast(Any, Snapshots()))
    tab = Conn("c1", "u")
    since = Subscribe(None, True, None, "e2")
    first, second = await asyncio.gather(
        hub.resume(cast(Any, tab), since), hub.resume(cast(Any, tab), since)
    )
    assert first == second == [b'{"n":3}', b'{"n":4}']
