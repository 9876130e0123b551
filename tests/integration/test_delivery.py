"""Pub/sub in, WebSocket frames out: routing, shares, subscriptions, bad events."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tests.integration.conftest import ServiceProcess
from tests.integration.harness import wait_until


def task_event(user: str, task: int | str, **extra: Any) -> dict[str, Any]:
    return {"type": "TASK_CHANGED", "user_id": user, "task_id": task, **extra}


def shares_key(owner: str, task: int | str) -> str:
    """The state key of a share list: owner and typed task id (see README, State store)."""
    return "shares:" + orjson.dumps([owner, task]).decode()


def shares_record(
    owner: str, task: int | str, users: list[str], version: int = 0
) -> dict[str, Any]:
    """A share-list record as the task service's data would be stored (for seeding)."""
    value = {"owner": owner, "users": users, "order": [version, 0, "seeded"], "revoked": []}
    return {"key": shares_key(owner, task), "value": value}


async def test_owner_receives_the_frame_with_every_field(stack: ServiceProcess) -> None:
    async with stack.client("owner-a") as client:
        assert (
            stack.publish(
                task_event(
                    "owner-a",
                    101,
                    id="evt-101",
                    data={"title": "Write <docs> & tests"},
                    timestamp="2026-11-26T10:00:00Z",
                    metadata={"source": "api"},
                )
            )
            == 204
        )
        [frame] = await client.updates(1)
    assert frame == {
        "type": "task_update",
        "action": "task_updated",
        "event_type": "TASK_CHANGED",
        "event_id": "evt-101",
        "task_id": 101,
        "user_id": "owner-a",
        "data": {"title": "Write <docs> & tests"},
        "timestamp": "2026-11-26T10:00:00Z",
        "metadata": {"source": "api", "traceparent": frame["metadata"]["traceparent"]},
        "published_at": frame["published_at"],
    }
    assert frame["metadata"]["traceparent"].startswith("00-")
    # The CloudEvent `time` daprd stamped at publish (whole seconds), the same on every
    # replica: what a client echoes as `since_time` when it resumes elsewhere.
    assert isinstance(frame["published_at"], float)
    assert abs(frame["published_at"] - time.time()) < 60


async def test_every_type_maps_to_its_action(stack: ServiceProcess) -> None:
    actions = {
        "TASK_ADDED": "task_created",
        "TASK_CHANGED": "task_updated",
        "TASK_STATUS_CHANGED": "task_status_changed",
        "TASK_REMOVED": "task_deleted",
        "TASK_RESTORED": "task_restored",
        "TASK_ARCHIVED": "task_unknown_event",
    }
    async with stack.client("owner-types") as client:
        for kind in actions:
            stack.publish({"type": kind, "user_id": "owner-types", "task_id": f"t-{kind}"})
        frames = await client.updates(len(actions))
    assert {f["event_type"]: f["action"] for f in frames} == actions


async def test_event_without_id_uses_the_cloudevent_id_and_receipt_time(
    stack: ServiceProcess,
) -> None:
    async with stack.client("owner-ceid") as client:
        stack.publish(task_event("owner-ceid", 7))
        [frame] = await client.updates(1)
    published = stack.sidecar.topic_messages("task-updates")
    ids = [m["id"] for m in published if orjson.loads(_data(m)).get("user_id") == "owner-ceid"]
    assert frame["event_id"] == ids[-1]
    stamped = datetime.fromisoformat(frame["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - stamped).total_seconds()) < 30


def _data(message: dict[str, Any]) -> bytes:
    data = message.get("data")
    return orjson.dumps(data) if not isinstance(data, str) else data.encode()


async def test_shared_users_receive_and_nobody_else_does(stack: ServiceProcess) -> None:
    async with (
        stack.client("owner-s") as owner,
        stack.client("friend-s") as friend,
        stack.client("stranger-s") as stranger,
    ):
        stack.publish(task_event("owner-s", 201, metadata={"shared_with": ["friend-s"]}))
        [a] = await owner.updates(1)
        [b] = await friend.updates(1)
        assert a["event_id"] == b["event_id"]
        assert await stranger.silence(0.5) == []


async def test_metadata_shared_with_is_stored_as_the_share_list(stack: ServiceProcess) -> None:
    async with stack.client("owner-w") as owner:
        stack.publish(task_event("owner-w", 301, metadata={"shared_with": ["x-w", "y-w"]}))
        await owner.updates(1)
    stored = stack.sidecar.get_state(shares_key("owner-w", 301))
    assert stored is not None
    assert orjson.loads(stored)["users"] == ["x-w", "y-w"]
    assert orjson.loads(stored)["owner"] == "owner-w"


async def test_share_list_in_the_state_store_routes_the_event(stack: ServiceProcess) -> None:
    stack.sidecar.save_state([shares_record("owner-r", 401, ["reader-r"])])
    async with stack.client("reader-r") as reader, stack.client("other-r") as other:
        stack.publish(task_event("owner-r", 401))
        [frame] = await reader.updates(1)
        assert frame["task_id"] == 401
        assert await other.silence(0.4) == []


async def test_share_list_change_takes_effect_for_later_events(stack: ServiceProcess) -> None:
    stack.sidecar.save_state([shares_record("owner-c", 402, ["first-c"])])
    async with stack.client("first-c") as first, stack.client("second-c") as second:
        stack.publish(task_event("owner-c", 402, id="c-1"))
        await first.updates(1)
        stack.sidecar.save_state([shares_record("owner-c", 402, ["second-c"], version=1)])
        await asyncio.sleep(0.5)  # SHARES_CACHE_S is 0.2 s in these tests
        stack.publish(task_event("owner-c", 402, id="c-2"))
        [frame] = await second.updates(1)
        assert frame["event_id"] == "c-2"
        assert await first.silence(0.4) == []


async def test_only_subscribed_connections_receive(stack: ServiceProcess) -> None:
    async with (
        stack.client("owner-sub", subscribe_all=False) as fresh,
        stack.client("owner-sub", subscribe_all=False) as one_task,
    ):
        await one_task.send({"type": "subscribe", "taskId": 1, "id": 9})
        assert await one_task.next() == {"type": "subscribed", "taskId": 1, "id": 9}
        stack.publish(task_event("owner-sub", "1", id="sub-1"))
        stack.publish(task_event("owner-sub", 2, id="sub-2"))
        [frame] = await one_task.updates(1)
        assert frame["event_id"] == "sub-1"  # taskId 1 matches task_id "1"
        assert await one_task.silence(0.4) == []
        assert await fresh.silence(0.1) == []

        await one_task.send({"type": "unsubscribe", "taskId": 1})
        assert (await one_task.next())["type"] == "unsubscribed"
        stack.publish(task_event("owner-sub", 1, id="sub-3"))
        assert await one_task.silence(0.5) == []


async def test_every_connection_of_a_user_receives(stack: ServiceProcess) -> None:
    async with stack.client("owner-tabs") as tab1, stack.client("owner-tabs") as tab2:
        stack.publish(task_event("owner-tabs", 5))
        assert len(await tab1.updates(1)) == 1
        assert len(await tab2.updates(1)) == 1


async def test_a_redelivered_event_id_is_sent_once(stack: ServiceProcess) -> None:
    async with stack.client("owner-dup") as client:
        for _ in range(3):
            stack.publish(task_event("owner-dup", 9, id="dup-1"))
        stack.publish(task_event("owner-dup", 9, id="dup-2"))
        frames = await client.updates(2)
        assert [f["event_id"] for f in frames] == ["dup-1", "dup-2"]
        assert await client.silence(0.5) == []
    assert stack.metric("realtime_sync_events_duplicate_total") >= 2


async def test_events_of_a_cached_task_are_acked_ahead_and_all_arrive_once(
    single_stack: ServiceProcess,
) -> None:
    """With BULK_SUBSCRIBE=false (one OnTopicEvent per event): the first event of a task
    reads its share list (the thread waits for the verdict); later ones find it cached and
    are answered SUCCESS before the loop writes them. (The sidecar delivers with 10
    workers, as Redis Streams does, so the order is Dapr's.)"""
    stack = single_stack
    async with stack.client("owner-ahead") as owner, stack.client("friend-ahead") as friend:
        stack.sidecar.save_state([shares_record("owner-ahead", 77, ["friend-ahead"])])
        stack.publish(task_event("owner-ahead", 77, id="ahead-first"))
        await owner.updates(1)
        await friend.updates(1)
        before = stack.metric("realtime_sync_events_acked_ahead_total")
        ids = [f"ahead-{i}" for i in range(20)]
        for event_id in ids:
            stack.publish(task_event("owner-ahead", 77, id=event_id))
        assert sorted(f["event_id"] for f in await owner.updates(20)) == sorted(ids)
        assert sorted(f["event_id"] for f in await friend.updates(20)) == sorted(ids)
        assert await owner.silence(0.3) == []
        assert await friend.silence(0.1) == []
    assert stack.metric("realtime_sync_events_acked_ahead_total") - before == 20


async def test_text_plain_publish_is_parsed_as_json(stack: ServiceProcess) -> None:
    async with stack.client("owner-txt") as client:
        body = orjson.dumps(task_event("owner-txt", 11, id="txt-1"))
        assert stack.sidecar.publish("task-updates", body, content_type="") == 204
        [frame] = await client.updates(1)
        assert frame["event_id"] == "txt-1"


BAD_EVENTS: list[tuple[bytes, str]] = [
    (b"not json at all", "text/plain"),
    (b"[1, 2, 3]", "application/json"),
    (b'"a string"', "application/json"),
    (orjson.dumps({"user_id": "u", "task_id": 1}), "application/json"),
    (orjson.dumps({"type": "TASK_ADDED", "task_id": 1}), "application/json"),
    (orjson.dumps({"type": "TASK_ADDED", "user_id": "u"}), "application/json"),
    (orjson.dumps({"type": "TASK_ADDED", "user_id": "u", "task_id": True}), "application/json"),
    (orjson.dumps({"type": "TASK_ADDED", "user_id": "u", "task_id": 1.5}), "application/json"),
    (orjson.dumps({"type": 5, "user_id": "u", "task_id": 1}), "application/json"),
    (orjson.dumps({"type": "TASK_ADDED", "user_id": 3, "task_id": 1}), "application/json"),
    (
        orjson.dumps({"type": "TASK_ADDED", "user_id": "u", "task_id": 1, "data": [1]}),
        "application/json",
    ),
    (
        orjson.dumps(
            {"type": "TASK_ADDED", "user_id": "u", "task_id": 1, "metadata": {"shared_with": 1}}
        ),
        "application/json",
    ),
]


async def test_bad_events_are_dropped_to_the_dead_letter_topic(stack: ServiceProcess) -> None:
    before = len(stack.sidecar.topic_messages("task-updates-deadletter"))
    for body, content_type in BAD_EVENTS:
        assert stack.sidecar.publish("task-updates", body, content_type=content_type) == 204
    wait_until(
        lambda: (
            len(stack.sidecar.topic_messages("task-updates-deadletter")) >= before + len(BAD_EVENTS)
        ),
        10,
        message="bad events did not reach the dead-letter topic",
    )
    assert stack.metric("realtime_sync_events_received_total", type="invalid", outcome="drop") >= (
        len(BAD_EVENTS)
    )
    # The service keeps serving.
    async with stack.client("owner-after-bad") as client:
        stack.publish(task_event("owner-after-bad", 1))
        assert len(await client.updates(1)) == 1


async def test_an_event_older_than_the_resume_window_is_acked_not_pushed(
    stack: ServiceProcess,
) -> None:
    old = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    cloud_event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "publisher",
        "type": "com.dapr.event.sent",
        "time": old,
        "datacontenttype": "application/json",
        "data": task_event("owner-old", 1, id="old-1"),
    }
    async with stack.client("owner-old") as client:
        stale_before = stack.metric("realtime_sync_events_stale_total")
        stack.sidecar.publish(
            "task-updates",
            orjson.dumps(cloud_event),
            content_type="application/cloudevents+json",
        )
        # The payload's own old timestamp does not matter, only the envelope's time.
        stack.publish(task_event("owner-old", 1, id="fresh-1", timestamp="2001-01-01T00:00:00Z"))
        [frame] = await client.updates(1)
        assert frame["event_id"] == "fresh-1"
        assert await client.silence(0.3) == []
    wait_until(
        lambda: stack.metric("realtime_sync_events_stale_total") == stale_before + 1,
        5,
        message="stale event not counted",
    )


async def test_many_events_arrive_in_full(stack: ServiceProcess) -> None:
    async with stack.client("owner-many") as client:
        started = time.monotonic()
        for i in range(200):
            stack.publish(task_event("owner-many", i % 7, id=f"many-{i}"))
        frames = await client.updates(200, timeout=20)
        assert sorted(f["event_id"] for f in frames) == sorted(f"many-{i}" for i in range(200))
        assert time.monotonic() - started < 20
