"""Failures and lifecycle: state outage → RETRY, SIGTERM drain, the gRPC app surface."""

from __future__ import annotations

import signal
import time
from typing import Any, cast

import grpc
import orjson
import pytest
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc
from google.protobuf import any_pb2, empty_pb2
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import ServiceProcess, running_stack
from tests.integration.harness import inbound_retry, wait_until

Empty: Any = empty_pb2.Empty  # type: ignore[attr-defined] # generated at import time
AnyMessage: Any = any_pb2.Any  # type: ignore[attr-defined] # generated at import time

FAST_RETRY = inbound_retry(
    "lifecycle-fast",
    policy="exponential",
    initialInterval="200ms",
    maxInterval="500ms",
    maxRetries=-1,
)


def replies(stack: ServiceProcess, outcome: str) -> int:
    counters: dict[str, Any] = stack.sidecar.stats()["topics"].get("task-updates", {})
    return int(counters.get(outcome, 0))


async def test_state_store_failure_answers_retry_then_delivers_once() -> None:
    with running_stack("state-failure", sidecar_args=FAST_RETRY) as stack:
        async with stack.client("owner-f") as client:
            stack.sidecar.set_fault("unavailable")
            stack.publish({"type": "TASK_ADDED", "user_id": "owner-f", "task_id": 999, "id": "f-1"})
            wait_until(lambda: replies(stack, "retry") >= 2, 10, message="no RETRY seen")
            assert await client.silence(0.3) == []
            stack.sidecar.set_fault(None)
            [frame] = await client.updates(1, timeout=10)
            assert frame["event_id"] == "f-1"
            assert await client.silence(1.0) == []
        assert (
            stack.metric("realtime_sync_events_received_total", type="TASK_ADDED", outcome="retry")
            >= 2
        )
        assert stack.metric("realtime_sync_state_errors_total", op="get") >= 1


async def test_a_hung_state_store_answers_retry_within_the_deadline() -> None:
    with running_stack(
        "state-hang", sidecar_args=FAST_RETRY, service_env_extra={"DAPR_TIMEOUT_S": "0.5"}
    ) as stack:
        async with stack.client("owner-h") as client:
            stack.sidecar.set_fault("hang")
            stack.publish({"type": "TASK_ADDED", "user_id": "owner-h", "task_id": 998, "id": "h-1"})
            wait_until(lambda: replies(stack, "retry") >= 2, 10, message="no RETRY seen")
            stack.sidecar.set_fault(None)
            [frame] = await client.updates(1, timeout=15)
            assert frame["event_id"] == "h-1"


@pytest.mark.parametrize("tasks", [50, 1], ids=["distinct-tasks", "one-cached-task"])
async def test_sigterm_closes_clients_1001_and_acks_nothing_undelivered(tasks: int) -> None:
    """With one task, its share list is cached after the first event and the rest are
    acknowledged ahead of their writes: the drain must still deliver each of them."""
    with running_stack(
        "sigterm", sidecar_args=FAST_RETRY, service_env_extra={"DRAIN_S": "0.5"}
    ) as stack:
        received: list[str] = []
        async with stack.client("owner-t") as client:
            for i in range(50):
                stack.publish(
                    {
                        "type": "TASK_CHANGED",
                        "user_id": "owner-t",
                        "task_id": i % tasks,
                        "id": f"t-{i}",
                    }
                )
            [first] = await client.updates(1)  # events are flowing: stop mid-stream
            received.append(first["event_id"])
            assert stack.proc is not None
            stack.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as info:
                while True:
                    frame = await client.next(timeout=15)
                    if frame["type"] == "task_update":
                        received.append(frame["event_id"])
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001
        assert stack.proc.wait(timeout=25) == 0
        assert time.monotonic() - started < 25
        acked = replies(stack, "success")
        assert acked <= len(set(received)), f"acked {acked}, delivered {len(set(received))}"
        assert len(received) == len(set(received))


def grpc_stub(stack: ServiceProcess) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.app_port}")
    return channel, appcallback_pb2_grpc.AppCallbackStub(channel)


def topic_event(data: bytes, event_id: str = "grpc-1") -> Any:
    return appcallback_pb2.TopicEventRequest(
        id=event_id,
        source="test",
        type="com.dapr.event.sent",
        spec_version="1.0",
        data_content_type="application/json",
        data=data,
        topic="task-updates",
        pubsub_name="pubsub",
    )


def test_the_app_lists_its_subscription_with_the_dead_letter_topic(stack: ServiceProcess) -> None:
    """The task topic (with its dead-letter topic), and the control topic between replicas
    (`disconnect_user`) on the same component."""
    channel, stub = grpc_stub(stack)
    with channel:
        reply = stub.ListTopicSubscriptions(Empty(), timeout=5)
    assert sorted(
        (sub.pubsub_name, sub.topic, sub.dead_letter_topic) for sub in reply.subscriptions
    ) == [
        ("pubsub", "realtime-sync-control", ""),
        ("pubsub", "task-updates", "task-updates-deadletter"),
    ]


def test_on_topic_event_answers_drop_for_bad_data_and_success_for_good(
    stack: ServiceProcess,
) -> None:
    status = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
    channel, stub = grpc_stub(stack)
    with channel:
        bad = stub.OnTopicEvent(topic_event(b"{oops"), timeout=5)
        good = stub.OnTopicEvent(
            topic_event(orjson.dumps({"type": "TASK_ADDED", "user_id": "g", "task_id": 1})),
            timeout=5,
        )
        other_topic = topic_event(b"{}")
        other_topic.topic = "not-ours"
        with pytest.raises(grpc.RpcError) as info:
            stub.OnTopicEvent(other_topic, timeout=5)
    assert bad.status == status.DROP
    assert good.status == status.SUCCESS
    assert cast(Any, info.value).code() == grpc.StatusCode.UNIMPLEMENTED


def invoke(stack: ServiceProcess, method: str, body: bytes) -> tuple[int, bytes]:
    reply = stack.sidecar.invoke(method, body)
    return reply.status, reply.body


async def test_set_task_shares_stores_the_list_and_routes_at_once(stack: ServiceProcess) -> None:
    status, body = invoke(
        stack,
        "set_task_shares",
        orjson.dumps({"task_id": 555, "user_id": "inv-a", "user_ids": ["inv-b", "inv-b"]}),
    )
    assert status == 200, body
    assert orjson.loads(body) == {
        "task_id": 555,
        "user_id": "inv-a",
        "user_ids": ["inv-b"],
        "applied": True,
    }
    stored = stack.sidecar.get_state('shares:["inv-a",555]')
    assert stored is not None
    assert orjson.loads(stored)["users"] == ["inv-b"]
    async with stack.client("inv-b") as client:
        stack.publish({"type": "TASK_CHANGED", "user_id": "inv-a", "task_id": 555})
        assert len(await client.updates(1)) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"[]",
        b'{"task_id": 1}',
        b'{"task_id": true, "user_ids": []}',
        b'{"task_id": 1, "user_ids": [1]}',
        b'{"task_id": 1, "user_ids": ["b"]}',  # no owner: a list is kept per owner
        b'{"task_id": 1, "user_id": "a", "user_ids": ["b"], "shares_version": -2}',
        b'{"task_id": 1, "user_id": "a", "user_ids": ["b"], "timestamp": "soon"}',
    ],
)
def test_set_task_shares_refuses_a_malformed_request(stack: ServiceProcess, body: bytes) -> None:
    status, _ = invoke(stack, "set_task_shares", body)
    assert status == 400


def test_invoking_an_unknown_method_is_not_found(stack: ServiceProcess) -> None:
    status, _ = invoke(stack, "no_such_method", b"{}")
    assert status == 404


HEALTH_CHECK = "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck"


def health_probe(channel: grpc.Channel, timeout: float = 5.0) -> Any:
    """One call of daprd's app health probe (unsigned, as daprd sends it)."""
    probe = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=Empty.SerializeToString,
        response_deserializer=appcallback_pb2.HealthCheckResponse.FromString,
    )
    return probe(Empty(), timeout=timeout)


async def test_the_app_token_is_checked_on_exactly_the_calls_daprd_signs() -> None:
    """daprd signs OnTopicEvent and OnInvoke (AddAppTokenToContext) but calls
    ListTopicSubscriptions and the health probe WITHOUT the token (dapr/dapr
    GetSubscriptionsGRPC, HealthProbe): those must answer, the signed ones must refuse a
    missing or wrong token and deliver nothing."""
    token = "app-token-for-tests-0123456789"
    with running_stack(
        "app-token",
        service_env_extra={"APP_API_TOKEN": token},
        sidecar_env={"APP_API_TOKEN": token},
    ) as stack:
        async with stack.client("owner-tok") as client:
            stack.publish({"type": "TASK_ADDED", "user_id": "owner-tok", "task_id": 1})
            assert len(await client.updates(1)) == 1
            channel, stub = grpc_stub(stack)
            with channel:
                listed = stub.ListTopicSubscriptions(Empty(), timeout=5)
                assert sorted(s.topic for s in listed.subscriptions) == [
                    "realtime-sync-control",
                    "task-updates",
                ]  # the task topic and the control topic
                health_probe(channel)
                stub.ListInputBindings(Empty(), timeout=5)  # unsigned too (bindings)
                refused = orjson.dumps({"type": "TASK_ADDED", "user_id": "owner-tok", "task_id": 2})
                shares = common_pb2.InvokeRequest(
                    method="set_task_shares",
                    data=AnyMessage(value=b'{"task_id": 2, "user_ids": ["intruder"]}'),
                    content_type="application/json",
                )
                bulk = appcallback_pb2.TopicEventBulkRequest(
                    id="tok-bulk",
                    entries=[
                        appcallback_pb2.TopicEventBulkRequestEntry(
                            entry_id="1", bytes=refused, content_type="application/json"
                        )
                    ],
                    topic="task-updates",
                    pubsub_name="pubsub",
                )
                alpha = appcallback_pb2_grpc.AppCallbackAlphaStub(channel)
                for metadata in ((), (("dapr-api-token", "wrong"),)):
                    for call, request in (
                        (stub.OnTopicEvent, topic_event(refused, "tok-refused")),
                        (stub.OnBulkTopicEvent, bulk),
                        (alpha.OnBulkTopicEventAlpha1, bulk),
                        (stub.OnInvoke, shares),
                    ):
                        with pytest.raises(grpc.RpcError) as info:
                            call(request, metadata=metadata, timeout=5)
                        assert cast(Any, info.value).code() == grpc.StatusCode.UNAUTHENTICATED
                assert stack.sidecar.get_state("shares:2") is None
                signed = orjson.dumps({"type": "TASK_ADDED", "user_id": "owner-tok", "task_id": 3})
                reply = stub.OnTopicEvent(
                    topic_event(signed, "tok-signed"),
                    metadata=(("dapr-api-token", token),),
                    timeout=5,
                )
                assert reply.status == appcallback_pb2.TopicEventResponse.SUCCESS
            # The refused event never arrived: the next update is the signed one.
            [update] = await client.updates(1)
            assert update["event_id"] == "tok-signed"


def test_concurrent_set_task_shares_all_succeed_and_one_list_wins(stack: ServiceProcess) -> None:
    """ETag-guarded writes retried on conflict: every caller is answered with the list in
    force, and the stored list is exactly the newest change (never a mix, never lost)."""
    from concurrent.futures import ThreadPoolExecutor

    lists = [[f"cc-{i}-a", f"cc-{i}-b"] for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        results = list(
            pool.map(
                lambda i: invoke(
                    stack,
                    "set_task_shares",
                    orjson.dumps(
                        {"task_id": 777, "user_id": "cc", "user_ids": lists[i], "shares_version": i}
                    ),
                ),
                range(len(lists)),
            )
        )
    for status, body in results:
        assert status == 200, body
        assert orjson.loads(body)["user_ids"] in lists
    stored = stack.sidecar.get_state('shares:["cc",777]')
    assert stored is not None
    assert orjson.loads(stored)["users"] == lists[-1]


@pytest.mark.parametrize(("bulk", "answered_within_s"), [("false", 2.5), ("true", 10.0)])
async def test_a_full_hand_off_queue_answers_retry_after_a_short_wait(
    bulk: str, answered_within_s: float
) -> None:
    """HANDOFF_QUEUE=1 and a hung state store: the one slot stays taken, so the next
    event waits HANDOFF_WAIT_S and is answered RETRY; once the store is back both are
    delivered, once each. In one OnTopicEvent per event the RETRY comes at once; in bulk
    both events share a call, answered (each entry its own status) once the first one's
    state call gives up after DAPR_TIMEOUT_S."""
    with running_stack(
        f"full-queue-bulk-{bulk}",
        sidecar_args=FAST_RETRY,
        service_env_extra={
            "HANDOFF_QUEUE": "1",
            "HANDOFF_WAIT_S": "0.2",
            "DAPR_TIMEOUT_S": "3",
            "BULK_SUBSCRIBE": bulk,
        },
    ) as stack:
        async with stack.client("owner-q") as client:
            stack.sidecar.set_fault("hang")
            for i in range(2):
                stack.publish(
                    {"type": "TASK_ADDED", "user_id": "owner-q", "task_id": 900 + i, "id": f"q-{i}"}
                )
            wait_until(
                lambda: (
                    stack.metric(
                        "realtime_sync_events_received_total", type="TASK_ADDED", outcome="retry"
                    )
                    >= 1
                ),
                answered_within_s,
                message="no RETRY while the only slot was taken",
            )
            stack.sidecar.set_fault(None)
            frames = await client.updates(2, timeout=20)
            assert sorted(f["event_id"] for f in frames) == ["q-0", "q-1"]
            assert await client.silence(0.5) == []
