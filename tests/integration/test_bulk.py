"""Bulk delivery (OnBulkTopicEvent) end to end, through real processes.

Most tests play daprd's part on the app channel with an exact batch, so the order of the
entries and each entry's status are known; the sidecar tests let the dev sidecar batch
the way daprd's default bulk subscriber does.
"""

from __future__ import annotations

import contextlib
import signal
import uuid
from collections.abc import Iterator
from typing import Any, cast

import grpc
import orjson
import pytest
from dapr.proto.runtime.v1 import appcallback_pb2
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import ServiceProcess, http_get, running_stack
from tests.integration.harness import wait_until
from tests.integration.test_lifecycle import FAST_RETRY, Empty, grpc_stub, replies

STATUS = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus


@pytest.fixture(scope="module")
def bulk_stack() -> Iterator[ServiceProcess]:
    """Share lists stay cached for the module (the state-failure test relies on it)."""
    with running_stack(
        "bulk", service_env_extra={"SHARES_CACHE_S": "60"}, sidecar_args=FAST_RETRY
    ) as service:
        yield service


def entry(data: dict[str, Any] | bytes, cloudevent_id: str = "") -> Any:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    return appcallback_pb2.TopicEventBulkRequestEntry(
        entry_id=str(uuid.uuid4()),
        cloud_event=appcallback_pb2.TopicEventCERequest(
            id=cloudevent_id or str(uuid.uuid4()),
            source="test",
            type="com.dapr.event.sent",
            spec_version="1.0",
            data_content_type="application/json",
            data=body,
        ),
        content_type="application/json",
    )


def event(user: str, task: int | str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "TASK_CHANGED", "user_id": user, "task_id": task, "id": event_id, **extra}


def send_bulk(stack: ServiceProcess, entries: list[Any]) -> list[str]:
    """One OnBulkTopicEvent call as daprd makes it; each entry's status, in entry order."""
    request = appcallback_pb2.TopicEventBulkRequest(
        id=str(uuid.uuid4()),
        entries=entries,
        metadata={"pubsubname": "pubsub"},
        topic="task-updates",
        pubsub_name="pubsub",
        type="com.dapr.event.sent.bulk",
        path="",
    )
    channel, stub = grpc_stub(stack)
    with channel:
        reply = stub.OnBulkTopicEvent(request, timeout=30)
    by_id = {s.entry_id: STATUS.Name(s.status) for s in reply.statuses}
    return [by_id.get(e.entry_id, "MISSING") for e in entries]


def test_the_subscription_asks_daprd_for_bulk_delivery(bulk_stack: ServiceProcess) -> None:
    channel, stub = grpc_stub(bulk_stack)
    with channel:
        reply = stub.ListTopicSubscriptions(Empty(), timeout=5)
    # The task topic asks for bulk; the control topic (share-list changes) stays single.
    [sub] = [s for s in reply.subscriptions if s.topic == "task-updates"]
    others = [s for s in reply.subscriptions if s.topic != "task-updates"]
    assert others and not any(s.HasField("bulk_subscribe") for s in others)
    assert sub.bulk_subscribe.enabled
    assert (sub.bulk_subscribe.max_messages_count, sub.bulk_subscribe.max_await_duration_ms) == (
        100,
        5,
    )
    [instance] = bulk_stack.sidecar.stats()["instances"].values()
    [seen] = [s for s in instance["subscriptions"] if s["topic"] == "task-updates"]
    assert seen["bulk_subscribe"] == {"max_messages_count": 100, "max_await_duration_ms": 5}


async def test_a_malformed_entry_is_dropped_and_the_rest_delivered(
    bulk_stack: ServiceProcess,
) -> None:
    async with bulk_stack.client("bulk-bad") as client:
        statuses = send_bulk(
            bulk_stack,
            [
                entry(event("bulk-bad", 1, "bad-1")),
                entry(b"not json at all"),
                entry(event("bulk-bad", 2, "bad-2")),
                entry({"type": "TASK_CHANGED", "task_id": 3}),  # no user_id
                entry(event("bulk-bad", 4, "bad-4")),
            ],
        )
        assert statuses == ["SUCCESS", "DROP", "SUCCESS", "DROP", "SUCCESS"]
        frames = await client.updates(3)
        assert [f["event_id"] for f in frames] == ["bad-1", "bad-2", "bad-4"]
        assert await client.silence(0.3) == []
    assert (
        bulk_stack.metric("realtime_sync_events_received_total", type="invalid", outcome="drop")
        >= 2
    )
    assert "event dropped" in bulk_stack.log_path.read_text(errors="replace")


async def test_a_duplicate_id_inside_one_batch_is_sent_once(bulk_stack: ServiceProcess) -> None:
    async with bulk_stack.client("bulk-dup") as client:
        statuses = send_bulk(
            bulk_stack,
            [
                entry(event("bulk-dup", 5, "dup-a")),
                entry(event("bulk-dup", 5, "dup-a")),
                entry(event("bulk-dup", 6, "dup-b")),
                entry(event("bulk-dup", 6, "dup-a")),
            ],
        )
        assert statuses == ["SUCCESS"] * 4
        frames = await client.updates(2)
        assert [f["event_id"] for f in frames] == ["dup-a", "dup-b"]
        assert await client.silence(0.5) == []


async def test_per_task_order_is_kept_inside_and_across_batches(
    bulk_stack: ServiceProcess,
) -> None:
    """A task's first event reads its share list from the store, a later one writes a new
    list (metadata.shared_with): every event of the task waits behind the one before it,
    within a batch and into the next, and the friend sees exactly the events after the
    share."""
    async with (
        bulk_stack.client("order-owner") as owner,
        bulk_stack.client("order-friend") as friend,
    ):
        first = [entry(event("order-owner", "ord", f"o-{i}")) for i in range(10)]
        first[4] = entry(
            event("order-owner", "ord", "o-4", metadata={"shared_with": ["order-friend"]})
        )
        others = [entry(event("order-other", f"x-{i}", f"x-{i}")) for i in range(5)]
        mixed = [e for pair in zip(first, others + others, strict=True) for e in pair]
        assert send_bulk(bulk_stack, mixed) == ["SUCCESS"] * len(mixed)
        second = [entry(event("order-owner", "ord", f"o-{i}")) for i in range(10, 20)]
        assert send_bulk(bulk_stack, second) == ["SUCCESS"] * 10
        frames = await owner.updates(20)
        assert [f["event_id"] for f in frames] == [f"o-{i}" for i in range(20)]
        shared = await friend.updates(16)
        assert [f["event_id"] for f in shared] == [f"o-{i}" for i in range(4, 20)]
        assert await owner.silence(0.3) == []


async def test_a_failing_state_store_retries_only_the_entries_that_need_it(
    bulk_stack: ServiceProcess,
) -> None:
    """Entries of a task whose share list is cached are delivered; the entry that must read
    the store is answered RETRY. daprd's redelivery of the whole batch then sends only that
    entry: nothing is delivered twice."""
    async with bulk_stack.client("fail-owner") as client:
        assert send_bulk(bulk_stack, [entry(event("fail-owner", "warm", "w-0"))]) == ["SUCCESS"]
        assert [f["event_id"] for f in await client.updates(1)] == ["w-0"]
        batch = [
            entry(event("fail-owner", "warm", "w-1")),
            entry(event("fail-owner", "cold", "c-1")),
            entry(event("fail-owner", "warm", "w-2")),
        ]
        bulk_stack.sidecar.set_fault("unavailable")
        try:
            assert send_bulk(bulk_stack, batch) == ["SUCCESS", "RETRY", "SUCCESS"]
            frames = await client.updates(2)
            assert [f["event_id"] for f in frames] == ["w-1", "w-2"]
        finally:
            bulk_stack.sidecar.set_fault(None)
        assert send_bulk(bulk_stack, batch) == ["SUCCESS"] * 3
        assert [f["event_id"] for f in await client.updates(1)] == ["c-1"]
        assert await client.silence(0.5) == []


async def test_the_sidecar_batches_and_applies_each_entry_status() -> None:
    """The dev sidecar delivers in bulk: ten events published in a row arrive as one call
    (BULK_MAX_MESSAGES=10 within the await window, the sidecar's 10 workers each holding one);
    the malformed one is DROP and dead-lettered, the rest delivered; entries answered RETRY
    while the store fails are redelivered under the resiliency policy and arrive once."""
    with running_stack(
        "bulk-sidecar",
        service_env_extra={"BULK_MAX_MESSAGES": "10", "BULK_MAX_AWAIT_MS": "2000"},
        sidecar_args=FAST_RETRY,
    ) as stack:
        async with stack.client("side-owner") as client:
            for i in range(9):
                stack.publish(event("side-owner", f"s-{i}", f"s-{i}"))
            stack.sidecar.publish("task-updates", b"not json", content_type="text/plain")
            frames = await client.updates(9)
            assert sorted(f["event_id"] for f in frames) == sorted(f"s-{i}" for i in range(9))
            [instance] = stack.sidecar.stats()["instances"].values()
            assert instance["bulk_deliveries"] == {"calls": 1, "entries": 10, "largest": 10}
            wait_until(lambda: replies(stack, "dead_lettered") == 1, 10)
            assert replies(stack, "drop") == 1
            [dead] = stack.sidecar.topic_messages("task-updates-deadletter")
            assert dead["data"] == "not json"

            stack.sidecar.set_fault("unavailable")
            for i in range(10):
                stack.publish(event("side-owner", f"r-{i}", f"r-{i}"))
            wait_until(lambda: replies(stack, "retry") >= 10, 15, message="no RETRY seen")
            stack.sidecar.set_fault(None)
            frames = await client.updates(10, timeout=15)
            assert sorted(f["event_id"] for f in frames) == sorted(f"r-{i}" for i in range(10))
            assert await client.silence(1.0) == []


async def test_bulk_off_keeps_one_call_per_event(single_stack: ServiceProcess) -> None:
    channel, stub = grpc_stub(single_stack)
    with channel:
        reply = stub.ListTopicSubscriptions(Empty(), timeout=5)
    assert not any(s.HasField("bulk_subscribe") for s in reply.subscriptions)
    async with single_stack.client("single-owner") as client:
        for i in range(5):
            single_stack.publish(event("single-owner", i, f"one-{i}"))
        frames = await client.updates(5)
        assert sorted(f["event_id"] for f in frames) == [f"one-{i}" for i in range(5)]
    [instance] = single_stack.sidecar.stats()["instances"].values()
    assert instance["bulk_deliveries"]["calls"] == 0
    assert replies(single_stack, "success") >= 5


async def test_a_batch_during_sigterm_is_answered_retry_and_nothing_is_sent() -> None:
    with running_stack("bulk-sigterm", service_env_extra={"DRAIN_S": "2"}) as stack:
        async with stack.client("term-owner") as client:
            assert stack.proc is not None
            stack.proc.send_signal(signal.SIGTERM)
            wait_until(
                lambda: http_get(f"http://127.0.0.1:{stack.ws_port}/readyz")[0] == 503,
                10,
                message="not draining",
            )
            batch = [entry(event("term-owner", i, f"term-{i}")) for i in range(5)]
            assert send_bulk(stack, batch) == ["RETRY"] * 5
            received: list[dict[str, Any]] = []
            with contextlib.suppress(TimeoutError, ConnectionClosed):
                while True:  # until quiet for 0.5 s, or closed 1001 by the drain
                    received.append(await client.next(0.5))
            assert [f for f in received if f["type"] == "task_update"] == []
        assert stack.proc.wait(timeout=25) == 0


def test_an_unknown_topic_in_a_bulk_call_goes_to_the_sdk(bulk_stack: ServiceProcess) -> None:
    """Only our topic is served by the batch path; any other is the App's answer
    (UNIMPLEMENTED: daprd acks it), as before."""
    request = appcallback_pb2.TopicEventBulkRequest(
        id="x", entries=[entry(event("u", 1, "u-1"))], topic="other", pubsub_name="pubsub"
    )
    channel, stub = grpc_stub(bulk_stack)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.OnBulkTopicEvent(request, timeout=5)
    assert cast(Any, info.value).code() == grpc.StatusCode.UNIMPLEMENTED
