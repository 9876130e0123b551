"""The event path on the loop, wired as the service wires it, for the bridge and
dispatcher tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest

from realtime_sync.bridge import Bridge, Slots
from realtime_sync.core.events import TaskId
from realtime_sync.core.shares import ShareOrder, ShareRecord, share_key
from realtime_sync.dispatcher import Dispatcher
from realtime_sync.hub import Hub
from realtime_sync.metrics import Metrics
from realtime_sync.state import ShareLists


@dataclass
class Delivery:
    hub: Hub
    shares: ShareLists
    metrics: Metrics
    dispatcher: Dispatcher
    bridge: Bridge


MakeDelivery = Callable[..., Delivery]


@pytest.fixture
def make_delivery() -> MakeDelivery:
    """`make_delivery(store=None, capacity=100, ack_ahead=128)`: call it on the loop."""

    def make(store: object = None, *, capacity: int = 100, ack_ahead: int = 128) -> Delivery:
        metrics = Metrics()
        shares = ShareLists(cast(Any, store), cache_s=60.0, clock=time.monotonic, metrics=metrics)
        hub = Hub(
            metrics=metrics,
            dedupe_window_s=60,
            dedupe_max_ids=1000,
            resume_window_s=300,
            resume_max_events=100,
        )
        slots = Slots(capacity)
        dispatcher = Dispatcher(hub=hub, shares=shares, metrics=metrics, slots=slots)
        bridge = Bridge(
            slots=slots, shares=shares, ack_ahead=ack_ahead, route=dispatcher.route_round
        )
        return Delivery(hub, shares, metrics, dispatcher, bridge)

    return make


def know_shares(d: Delivery, owner: str, task_id: TaskId, users: tuple[str, ...]) -> None:
    """Put a share list in the replica's cache, as if read from the store."""
    record = ShareRecord(owner, users, ShareOrder(0, 0, "seeded"))
    d.shares.remember(share_key(owner, task_id), record)
