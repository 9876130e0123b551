"""Resuming by publish time: the replica a client lands on has not received (or no longer
holds) the client's last event, but the client says when that event was published."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from realtime_sync.client import ConnectionState, Item, ResyncRequired, SyncClient, TaskUpdate
from tests.integration.conftest import ServiceProcess, running_stack
from tests.integration.harness import until


@pytest.fixture(scope="module")
def stack() -> Iterator[ServiceProcess]:
    with running_stack("resume-by-time") as service:
        yield service


def event(user: str, event_id: str) -> dict[str, Any]:
    return {"id": event_id, "type": "TASK_CHANGED", "user_id": user, "task_id": event_id}


async def test_a_replica_without_the_since_event_replays_by_its_publish_time(
    stack: ServiceProcess,
) -> None:
    async with stack.client("rbt-u") as watcher:
        assert stack.publish(event("rbt-u", "rbt-1")) == 204
        [frame] = await watcher.updates(1)
    published_at = frame["published_at"]
    assert isinstance(published_at, float)
    assert published_at <= time.time()
    # The client's last event ("elsewhere-9") reached it through another replica and was
    # published when rbt-1 was: this replica replays from that time minus the margin.
    async with stack.client("rbt-u", subscribe_all=False) as resumed:
        await resumed.send(
            {
                "type": "subscribe",
                "all": True,
                "since": "elsewhere-9",
                "since_time": published_at,
                "id": 1,
            }
        )
        reply = await resumed.next()
        assert (reply["type"], reply["recovered"]) == ("subscribed", True)
        replayed = await resumed.updates(reply["replayed"])
        assert "rbt-1" in [f["event_id"] for f in replayed]
    # Without the publish time, the same id is an unknown position.
    async with stack.client("rbt-u", subscribe_all=False) as lost:
        await lost.send({"type": "subscribe", "all": True, "since": "elsewhere-9"})
        reply = await lost.next()
        assert (reply["type"], reply["reason"]) == ("resync_required", "unknown_position")


async def test_the_python_client_resumes_with_since_time(stack: ServiceProcess) -> None:
    items: list[Item] = []
    client = SyncClient(
        stack.ws_url, stack.token("rbt-c"), since="elsewhere-1", on_update=items.append, proxy=None
    )
    client.last_event_time = time.time()  # as if "elsewhere-1" had just been published
    async with client:
        await until(lambda: client.state == ConnectionState.CONNECTED, what="connected")
        assert stack.publish(event("rbt-c", "rbt-live")) == 204
        await until(lambda: any(isinstance(i, TaskUpdate) for i in items), what="live event")
    assert not any(isinstance(i, ResyncRequired) for i in items), items
    [update] = [i for i in items if isinstance(i, TaskUpdate)]
    assert update.event_id == "rbt-live"
    assert client.last_event_id == "rbt-live"
    assert client.last_event_time is not None
