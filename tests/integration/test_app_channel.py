"""The app channel as daprd uses it: the health probe under load, and through the drain.

daprd probes `AppCallbackHealthCheck/HealthCheck` with a 500 ms timeout; three misses stop
every subscription (dapr/dapr pkg/apphealth/health.go), and during shutdown its
block-shutdown wait ends as soon as the app reports unhealthy (pkg/runtime/runtime.go Run).
"""

from __future__ import annotations

import signal
import time
import uuid
from concurrent.futures import Future
from typing import Any

import grpc
import orjson
from dapr.proto.runtime.v1 import appcallback_pb2

from tests.integration.conftest import running_stack
from tests.integration.harness import wait_until
from tests.integration.test_lifecycle import grpc_stub, health_probe, topic_event

PROBE_TIMEOUT_S = 0.5  # daprd's default --app-health-probe-timeout
APP_WORKERS = 16  # the service's default handler pool


async def test_health_probes_answer_fast_while_every_handler_waits_on_a_slow_store() -> None:
    """32 OnTopicEvent calls wait on a state store that takes 3 s per read (twice the
    handler pool): 10 health probes in a row each answer within daprd's 500 ms."""
    with running_stack("health-under-load", service_env_extra={"DAPR_TIMEOUT_S": "5"}) as stack:
        stack.sidecar.set_fault("slow", delay_s=3.0)
        channel, stub = grpc_stub(stack)
        with channel:
            calls: list[Future[Any]] = [
                stub.OnTopicEvent.future(
                    topic_event(
                        orjson.dumps(
                            {"type": "TASK_ADDED", "user_id": f"load-{n}", "task_id": 7000 + n}
                        ),
                        f"load-{n}",
                    ),
                    timeout=60,
                )
                for n in range(32)
            ]
            # The handlers are waiting on the store (each read takes 3 s).
            wait_until(lambda: stack.sidecar.stats()["state_calls_slowed"] > 0, 10)
            latencies = []
            for _ in range(10):
                in_flight = sum(not call.done() for call in calls)
                started = time.perf_counter()
                health_probe(channel, timeout=PROBE_TIMEOUT_S)
                latencies.append(time.perf_counter() - started)
                # Every probe ran while the handler pool was saturated.
                assert in_flight >= APP_WORKERS, in_flight
            print(f"health probe latency under load: max {max(latencies) * 1e3:.1f} ms")
            assert max(latencies) < PROBE_TIMEOUT_S
            # A failing store is not "cannot serve": events get RETRY, sockets stay up, and
            # an unhealthy verdict would only make daprd stop every subscription.
            stack.sidecar.set_fault("unavailable")
            health_probe(channel, timeout=PROBE_TIMEOUT_S)
            stack.sidecar.set_fault(None)
            for call in calls:
                call.result(timeout=60)


async def test_the_app_stays_healthy_until_its_last_state_write() -> None:
    """On SIGTERM the service drains while its health probe keeps answering: by the time
    the probe fails (daprd may then shut down), its connection records are deleted."""
    with running_stack("health-drain", service_env_extra={"DRAIN_S": "0.5"}) as stack:
        async with stack.client("drain-owner") as client:
            key = f"connection:{client.connection_id}"
            wait_until(lambda: stack.sidecar.get_state(key) is not None, 10)
            channel, _ = grpc_stub(stack)
            with channel:
                assert stack.proc is not None
                stack.proc.send_signal(signal.SIGTERM)
                probes = 0

                def probe_fails() -> bool:
                    nonlocal probes
                    probes += 1
                    try:
                        health_probe(channel, timeout=PROBE_TIMEOUT_S)
                    except grpc.RpcError:
                        return True
                    return False

                wait_until(probe_fails, 30, interval=0.02)
                assert stack.sidecar.get_state(key) is None  # written before unhealthy
                assert probes > 1  # it answered healthy while draining
        assert stack.proc.wait(timeout=30) == 0


async def test_readyz_recovers_after_an_app_restart_when_the_sidecar_wants_a_token() -> None:
    """daprd calls ListTopicSubscriptions once per sidecar life, so a restarted app learns
    that it is subscribed from GET /v1.0/metadata, which daprd refuses without
    `dapr-api-token` (only the healthz endpoints are exempt: dapr/dapr
    pkg/api/http/middlewares.go isRouteExcludedFromAPITokenAuth)."""
    token = "dapr-api-token-for-tests-0123456789"
    with running_stack(
        "readyz-token",
        service_env_extra={"DAPR_API_TOKEN": token},
        sidecar_env={"DAPR_API_TOKEN": token},
    ) as stack:
        assert stack.stop() == 0
        assert stack.sidecar.stats()["instances"]  # the sidecar lives on, listed once
        stack.start()  # waits until /readyz answers 200
        [instance] = stack.sidecar.stats()["instances"].values()
        assert instance["list_subscriptions_calls"] == 1
        async with stack.client("token-user") as client:
            stack.publish({"type": "TASK_ADDED", "user_id": "token-user", "task_id": 1})
            assert len(await client.updates(1)) == 1


async def test_health_probes_answer_within_100_ms_under_bulk_load() -> None:
    """32 OnBulkTopicEvent calls of 8 entries each (twice the handler pool) wait on a state
    store that takes 2 s per read: 20 health probes in a row each answer within 100 ms."""
    with running_stack("health-under-bulk", service_env_extra={"DAPR_TIMEOUT_S": "5"}) as stack:
        stack.sidecar.set_fault("slow", delay_s=2.0)
        channel, stub = grpc_stub(stack)
        with channel:
            calls: list[Future[Any]] = [
                stub.OnBulkTopicEvent.future(
                    bulk_request(
                        [
                            orjson.dumps(
                                {
                                    "type": "TASK_ADDED",
                                    "user_id": f"bulk-load-{n}",
                                    "task_id": 8000 + 8 * n + i,
                                }
                            )
                            for i in range(8)
                        ]
                    ),
                    timeout=120,
                )
                for n in range(32)
            ]
            wait_until(lambda: stack.sidecar.stats()["state_calls_slowed"] > 0, 10)
            latencies = []
            for _ in range(20):
                in_flight = sum(not call.done() for call in calls)
                started = time.perf_counter()
                health_probe(channel, timeout=PROBE_TIMEOUT_S)
                latencies.append(time.perf_counter() - started)
                assert in_flight >= APP_WORKERS, in_flight
            print(f"health probe latency under bulk load: max {max(latencies) * 1e3:.1f} ms")
            assert max(latencies) < 0.1
            stack.sidecar.set_fault(None)
            for call in calls:
                assert len(call.result(timeout=120).statuses) == 8


def bulk_request(bodies: list[bytes]) -> Any:
    return appcallback_pb2.TopicEventBulkRequest(
        id=str(uuid.uuid4()),
        entries=[
            appcallback_pb2.TopicEventBulkRequestEntry(
                entry_id=str(uuid.uuid4()),
                cloud_event=appcallback_pb2.TopicEventCERequest(
                    id=str(uuid.uuid4()),
                    data_content_type="application/json",
                    data=body,
                ),
            )
            for body in bodies
        ],
        topic="task-updates",
        pubsub_name="pubsub",
    )
