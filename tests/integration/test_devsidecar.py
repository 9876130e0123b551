"""The dev sidecar as a process, driven by a real dapr-ext-grpc app and real Dapr clients."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from dapr.aio.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError, DaprInternalError
from dapr.clients.grpc._request import TransactionalStateOperation
from dapr.clients.grpc._state import Concurrency, StateOptions
from dapr.ext.grpc import App, InvokeMethodRequest, SubscriptionMessage, TopicEventResponse
from dapr.proto.runtime.v1 import dapr_pb2_grpc, state_pb2

from bench.common import free_port
from realtime_sync.devsidecar import main
from tests.integration.harness import (
    SidecarProcess,
    inbound_retry,
    no_resources,
    running_sidecar,
    wait_until,
)

FAST_RETRY = inbound_retry(
    "devsidecar-fast", policy="exponential", initialInterval="50ms", maxInterval="200ms"
)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- a scripted fake app --------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    message: SubscriptionMessage
    at: float


class _Tap(grpc.ServerInterceptor):
    """Counts AppCallback calls; sends chosen topics to a path the ext does not know."""

    def __init__(self, app: FakeApp) -> None:
        self._app = app

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        method = str(details.method).rsplit("/", 1)[-1]
        self._app.record_call(method, dict(details.invocation_metadata or ()))
        handler = continuation(details)
        if handler is None or method != "OnTopicEvent":
            return handler
        inner = handler.unary_unary
        unroutable = self._app.unroutable

        def behaviour(request: Any, context: Any) -> Any:
            if request.topic in unroutable:
                request.path = "/declarative-route"  # no handler: the ext answers UNIMPLEMENTED
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            behaviour,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class FakeApp:
    """A ``dapr.ext.grpc.App`` on a free port whose replies are scripted per topic.

    Replies: ``success``, ``retry``, ``drop``, ``raise`` (an exception → gRPC UNKNOWN) or
    ``block`` (wait until the app stops, then succeed); once a topic's script is used up,
    every delivery succeeds.
    """

    def __init__(
        self,
        subscriptions: Mapping[str, str | None],
        *,
        port: int | None = None,
        replies: Mapping[str, Sequence[str]] | None = None,
        unroutable: Collection[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.unroutable = frozenset(unroutable)
        self.calls: Counter[str] = Counter()
        self.call_metadata: list[dict[str, str]] = []
        self._methods: list[str] = []
        self._deliveries: list[Delivery] = []
        self._replies = {topic: deque(script) for topic, script in (replies or {}).items()}
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._app = App(
            thread_pool=futures.ThreadPoolExecutor(16, thread_name_prefix="fake-app"),
            interceptors=[_Tap(self)],
        )
        for topic, dead_letter_topic in subscriptions.items():
            self._app.subscribe("pubsub", topic, dead_letter_topic=dead_letter_topic)(
                self._handler(topic)
            )
        self._app.method("echo")(self._echo)
        self.healthy = True
        self._app.register_health_check(self._health)

    def _health(self) -> None:
        if not self.healthy:
            raise RuntimeError("scripted: unhealthy")

    def record_call(self, method: str, metadata: dict[str, str]) -> None:
        with self._lock:
            self.calls[method] += 1
            self.call_metadata.append(metadata)
            self._methods.append(method)

    def calls_with_metadata(self) -> list[tuple[str, dict[str, str]]]:
        with self._lock:
            return list(zip(self._methods, self.call_metadata, strict=True))

    def _handler(self, topic: str) -> Any:
        def on_message(message: SubscriptionMessage) -> TopicEventResponse:
            with self._lock:
                self._deliveries.append(Delivery(message, time.monotonic()))
                script = self._replies.get(topic)
                action = script.popleft() if script else "success"
            if action == "raise":
                raise RuntimeError("scripted failure")
            if action == "block":
                self._release.wait(30)
                action = "success"
            return TopicEventResponse(action)

        return on_message

    @staticmethod
    def _echo(request: InvokeMethodRequest) -> bytes:
        return b"echo:" + bytes(request.data)

    def received(self, topic: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self._deliveries if topic is None or d.message.topic() == topic]

    def ids(self, topic: str | None = None) -> list[str]:
        return [d.message.id() for d in self.received(topic)]

    def start(self) -> FakeApp:
        threading.Thread(target=self._app.run, args=(self.port, "127.0.0.1"), daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._app.stop()


@contextmanager
def fake_app(subscriptions: Mapping[str, str | None], **kwargs: Any) -> Iterator[FakeApp]:
    app = FakeApp(subscriptions, **kwargs).start()
    try:
        yield app
    finally:
        app.stop()


def code_of(error: BaseException) -> grpc.StatusCode:
    """The status code of a failed sync gRPC call."""
    assert isinstance(error, grpc.Call), error
    code: grpc.StatusCode = cast(Any, error).code()
    return code


def counters(sidecar: SidecarProcess, topic: str) -> dict[str, int]:
    return sidecar.topic_counters(topic)


def wait_settled(sidecar: SidecarProcess, topic: str, **expected: int) -> dict[str, int]:
    """Wait until the topic's counters include ``expected`` and nothing is pending."""

    def settled() -> dict[str, int] | None:
        found = counters(sidecar, topic)
        ok = found.get("pending") == 0 and all(found.get(k) == v for k, v in expected.items())
        return found if ok else None

    return wait_until(settled, 10, message=lambda: f"{topic}: {counters(sidecar, topic)}")


# --- delivery toward the app ----------------------------------------------------------


def test_envelopes_match_what_daprd_sends() -> None:
    with fake_app({"orders": None}) as app, running_sidecar(app_ports=[app.port]) as sidecar:
        json_body = b'{"b": "<tag> & more", "a": 1, "big": 12345678901234567890, "u": "\xc3\xa9"}'
        assert sidecar.publish("orders", json_body, headers={"traceparent": TRACEPARENT}) == 204
        assert sidecar.publish("orders", b"raw \xff bytes <x>", content_type="") == 204
        cloud_event = {
            "id": "my-ce-id",
            "source": "elsewhere",
            "type": "thing.happened",
            "specversion": "1.0",
            "time": "2020-01-02T03:04:05Z",
            "tenant": "acme",
            "datacontenttype": "application/json",
            "data": {"z": [1, 2], "y": None},
        }
        status = sidecar.publish("orders", cloud_event, content_type="application/cloudevents+json")
        assert status == 204
        wait_until(lambda: len(app.received("orders")) == 3, 10)
        messages = [d.message for d in app.received()]
        [ce] = [m for m in messages if m.id() == "my-ce-id"]
        [text] = [m for m in messages if m.data_content_type() == "text/plain"]
        [parsed] = [m for m in messages if m not in (ce, text)]
        assert parsed.data_content_type() == "application/json"
        assert parsed.raw_data() == (
            b'{"a":1,"b":"\\u003ctag\\u003e \\u0026 more","big":12345678901234567000,'
            b'"u":"\xc3\xa9"}'
        )
        assert (parsed.topic(), parsed.pubsub_name()) == ("orders", "pubsub")
        assert (parsed.source(), parsed.type(), parsed.spec_version()) == (
            "realtime-sync",
            "com.dapr.event.sent",
            "1.0",
        )
        assert len(parsed.id()) == 36
        ext = parsed.extensions()
        assert ext["topic"] == "orders" and ext["pubsubname"] == "pubsub"
        assert ext["traceparent"] == ext["traceid"] == TRACEPARENT
        assert ext["time"].endswith("Z") and len(ext["time"]) == 20
        assert parsed.metadata()["pubsubname"] == "pubsub"
        assert parsed.metadata()["traceparent"] == TRACEPARENT

        assert text.raw_data() == b"raw \xff bytes <x>"
        assert text.extensions()["traceparent"].startswith("00-")  # generated

        assert (ce.source(), ce.type()) == ("elsewhere", "thing.happened")
        assert ce.extensions()["time"] == "2020-01-02T03:04:05Z"
        assert ce.extensions()["tenant"] == "acme"
        assert ce.raw_data() == b'{"y":null,"z":[1,2]}'

        assert sidecar.publish("orders", b"{not json") == 400
        assert sidecar.publish("orders", {"a": 1}, pubsub="nope") == 404
        wait_settled(sidecar, "orders", success=3)
        assert app.calls["ListTopicSubscriptions"] == 1
        instance = sidecar.stats()["instances"][f"127.0.0.1:{app.port}"]
        assert instance["list_subscriptions_calls"] == 1
        assert [s["topic"] for s in instance["subscriptions"]] == ["orders"]


def test_retry_is_redelivered_with_backoff_until_success() -> None:
    args = inbound_retry(
        "devsidecar-backoff",
        policy="exponential",
        initialInterval="100ms",
        maxInterval="1s",
        multiplier=2,
        randomizationFactor=0.25,
    )
    with (
        fake_app({"jobs": None}, replies={"jobs": ["retry", "raise", "success"]}) as app,
        running_sidecar(app_ports=[app.port], extra_args=args) as sidecar,
    ):
        assert sidecar.publish("jobs", {"n": 1}) == 204
        found = wait_settled(sidecar, "jobs", success=1)
        assert (found["retry"], found["error"], found["dead_lettered"]) == (1, 1, 0)
        deliveries = app.received("jobs")
        assert len({d.message.id() for d in deliveries}) == 1 and len(deliveries) == 3
        first_gap = deliveries[1].at - deliveries[0].at
        second_gap = deliveries[2].at - deliveries[1].at
        assert 0.07 <= first_gap < 2.0  # 0.1 s ± 25 % jitter
        assert 0.14 <= second_gap < 2.0  # doubled


def test_drop_and_exhausted_retries_go_to_the_dead_letter_topic() -> None:
    subscriptions = {"orders": "orders-dlq", "flaky": "flaky-dlq", "lossy": None}
    replies = {"orders": ["drop"], "flaky": ["retry"] * 10, "lossy": ["retry"] * 10}
    with (
        fake_app(subscriptions, replies=replies) as app,
        running_sidecar(
            app_ports=[app.port],
            extra_args=inbound_retry(
                "devsidecar-two", policy="constant", duration="50ms", maxRetries=2
            ),
        ) as sidecar,
    ):
        wait_until(lambda: app.calls["ListTopicSubscriptions"] == 1, 10)
        for topic in subscriptions:
            assert sidecar.publish(topic, {"topic": topic}) == 204
        dropped = wait_settled(sidecar, "orders", drop=1, dead_lettered=1)
        assert dropped["success"] == 0
        wait_settled(sidecar, "flaky", retry=3, dead_lettered=1)
        wait_settled(sidecar, "lossy", retry=3, dead_lettered=0)
        [dead] = sidecar.topic_messages("orders-dlq")
        assert dead["id"] == app.ids("orders")[0]
        assert dead["data"] == {"topic": "orders"}
        assert len(sidecar.topic_messages("flaky-dlq")) == 1
        assert len(app.received("flaky")) == 3  # the first attempt and 2 retries
    assert "dead-lettered to orders-dlq" in sidecar.logs()
    assert "no dead-letter topic" in sidecar.logs()


def test_unimplemented_is_acked_and_the_message_lost() -> None:
    with (
        fake_app({"lost": "lost-dlq"}, unroutable={"lost"}) as app,
        running_sidecar(app_ports=[app.port], extra_args=FAST_RETRY) as sidecar,
    ):
        assert sidecar.publish("lost", {"n": 1}) == 204
        found = wait_settled(sidecar, "lost", unimplemented=1)
        assert (found["retry"], found["error"], found["dead_lettered"]) == (0, 0, 0)
        assert sidecar.topic_messages("lost-dlq") == []
        assert app.received("lost") == []
    assert "non-retriable error" in sidecar.logs()


def test_messages_published_before_the_app_listens_are_delivered_unless_expired() -> None:
    port = free_port()
    with running_sidecar(app_ports=[port]) as sidecar:
        for n in range(3):
            assert sidecar.publish("early", {"n": n}) == 204
        assert sidecar.publish("early", {"n": "ttl"}, metadata={"ttlInSeconds": "1"}) == 204
        [instance] = sidecar.stats()["instances"].values()
        assert instance["state"] == "waiting"
        [*_, short_lived] = sidecar.topic_messages("early")
        assert "expiration" in short_lived
        time.sleep(1.1)  # the expiration has second precision, as daprd's
        with fake_app({"early": "early-dlq"}, port=port) as app:
            found = wait_settled(sidecar, "early", success=3, expired=1, dead_lettered=1)
            assert found["published"] == 4
            assert sorted(json.loads(d.message.raw_data())["n"] for d in app.received()) == [
                0,
                1,
                2,
            ]
            [expired] = sidecar.topic_messages("early-dlq")
            assert expired["id"] == short_lived["id"]


def test_broadcast_gives_every_instance_every_message() -> None:
    with (
        fake_app({"fan": None}) as first,
        fake_app({"fan": None}) as second,
        running_sidecar(app_ports=[first.port, second.port]) as sidecar,
    ):
        for n in range(4):
            assert sidecar.publish("fan", {"n": n}) == 204
        wait_until(lambda: len(first.received()) == 4 and len(second.received()) == 4, 10)
        assert sorted(first.ids()) == sorted(second.ids())
        wait_settled(sidecar, "fan", success=8)


def test_competing_consumers_share_the_messages_round_robin() -> None:
    with (
        fake_app({"work": None}) as first,
        fake_app({"work": None}) as second,
        running_sidecar(
            app_ports=[first.port, second.port], extra_args=["--delivery", "competing"]
        ) as sidecar,
    ):

        def one_group_with_two_members() -> bool:
            groups = sidecar.stats()["groups"]
            return len(groups) == 1 and len(groups[0]["members"]) == 2

        wait_until(one_group_with_two_members, 10)
        for n in range(4):
            assert sidecar.publish("work", {"n": n}) == 204
        wait_settled(sidecar, "work", success=4)
        assert len(first.received()) == len(second.received()) == 2
        assert len(set(first.ids()) | set(second.ids())) == 4


def test_service_invocation_reaches_the_app() -> None:
    with fake_app({}) as app, running_sidecar(app_ports=[app.port]) as sidecar:
        reply = sidecar.request(
            "POST", "/v1.0/invoke/realtime-sync/method/echo", b"hi", headers={"X": "y"}
        )
        assert (reply.status, reply.body) == (200, b"echo:hi")
        missing = sidecar.request("POST", "/v1.0/invoke/realtime-sync/method/nope", b"")
        assert missing.status == 404
        assert missing.json()["errorCode"] == "ERR_DIRECT_INVOKE"


# --- daprd's lifecycle: resiliency, app health, readiness, block-shutdown ------------


def test_a_retry_without_a_resiliency_policy_is_dead_lettered_at_once() -> None:
    """daprd retries inbound only as a Resiliency policy says: with none, a RETRY goes
    straight to the dead-letter topic (pkg/runtime/subscription/subscription.go)."""
    replies = {"once": ["retry"] * 5, "nodlq": ["retry"] * 5}
    with (
        fake_app({"once": "once-dlq", "nodlq": None}, replies=replies) as app,
        running_sidecar(app_ports=[app.port], extra_args=no_resources()) as sidecar,
    ):
        wait_until(lambda: app.calls["ListTopicSubscriptions"] == 1, 10)
        assert sidecar.publish("once", {"n": 1}) == 204
        assert sidecar.publish("nodlq", {"n": 2}) == 204
        wait_settled(sidecar, "once", retry=1, dead_lettered=1)
        wait_settled(sidecar, "nodlq", retry=1, dead_lettered=0)
        assert len(app.received("once")) == 1
        assert len(app.received("nodlq")) == 1
        assert len(sidecar.topic_messages("once-dlq")) == 1
    assert "no inbound retry policy" in sidecar.logs()


def test_the_shipped_resiliency_policy_retries_a_retry() -> None:
    """components/resiliency.yaml (read by default, as `dapr run -f dapr.yaml` does) gives
    the pub/sub component inbound retries: a RETRY is delivered again, not dead-lettered."""
    with (
        fake_app({"jobs": "jobs-dlq"}, replies={"jobs": ["retry"]}) as app,
        running_sidecar(app_ports=[app.port]) as sidecar,
    ):
        assert sidecar.publish("jobs", {"n": 1}) == 204
        found = wait_settled(sidecar, "jobs", success=1)
        assert (found["retry"], found["dead_lettered"]) == (1, 0)
        assert len(app.received("jobs")) == 2
        assert sidecar.topic_messages("jobs-dlq") == []
    assert "pubsubRetry" in sidecar.logs()


HEALTH_ARGS = ["--enable-app-health-check", "--app-health-probe-interval", "1"]


def instance_of(sidecar: SidecarProcess) -> dict[str, Any]:
    [instance] = sidecar.stats()["instances"].values()
    assert isinstance(instance, dict)
    return instance


def test_an_unhealthy_app_gets_no_events_until_it_recovers() -> None:
    with (
        fake_app({"work": None}) as app,
        running_sidecar(app_ports=[app.port], extra_args=HEALTH_ARGS) as sidecar,
    ):
        assert sidecar.publish("work", {"n": 1}) == 204
        wait_until(lambda: len(app.received("work")) == 1, 10)
        app.healthy = False
        # daprd: three failed probes in a row (--app-health-threshold 3) = unhealthy.
        wait_until(lambda: instance_of(sidecar)["healthy"] is False, 10)
        assert sidecar.publish("work", {"n": 2}) == 204
        probes = app.calls["HealthCheck"]
        wait_until(lambda: app.calls["HealthCheck"] >= probes + 2, 10)
        assert len(app.received("work")) == 1  # nothing while unhealthy
        assert counters(sidecar, "work")["pending"] == 1
        app.healthy = True
        wait_until(lambda: len(app.received("work")) == 2, 10)
        assert app.received("work")[1].message.data() == {"n": 2}
        assert app.calls["ListTopicSubscriptions"] == 1  # resumed with the cached list
    logs = sidecar.logs()
    assert "unhealthy: deliveries stop" in logs
    assert "healthy: deliveries resume" in logs


def test_healthz_is_ready_only_once_the_app_is_subscribed() -> None:
    port = free_port()
    with running_sidecar(app_ports=[port]) as sidecar:
        assert sidecar.request("GET", "/v1.0/healthz/outbound").status == 204
        not_ready = sidecar.request("GET", "/v1.0/healthz")
        assert not_ready.status == 500
        assert not_ready.json()["errorCode"] == "ERR_HEALTH_NOT_READY"
        with fake_app({"orders": None}, port=port) as app:
            wait_until(lambda: sidecar.request("GET", "/v1.0/healthz").status == 204, 10)
            assert app.calls["ListTopicSubscriptions"] == 1
            assert instance_of(sidecar)["state"] == "subscribed"


def test_block_shutdown_keeps_the_apis_up_until_the_app_reports_unhealthy() -> None:
    """SIGTERM with --dapr-block-shutdown-duration: deliveries stop, the Dapr APIs stay up
    for the draining app, and the sidecar exits once the app's health probe fails
    (dapr/dapr pkg/runtime/runtime.go Run), long before the block duration."""
    with (
        fake_app({"work": None}) as app,
        running_sidecar(
            app_ports=[app.port],
            extra_args=[*HEALTH_ARGS, "--dapr-block-shutdown-duration", "120s"],
        ) as sidecar,
    ):
        wait_until(lambda: instance_of(sidecar)["state"] == "subscribed", 10)
        sidecar.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "Blocking graceful shutdown" in sidecar.logs(), 10)
        assert sidecar.publish("work", {"n": 1}) == 204  # the APIs still answer
        assert sidecar.save_state([{"key": "last-write", "value": 1}]) == 204
        assert sidecar.get_state("last-write") == b"1"
        assert sidecar.proc.poll() is None  # still blocking while the app is healthy
        assert app.received("work") == []  # no delivery after SIGTERM
        app.healthy = False
        wait_until(lambda: sidecar.proc.poll() is not None, 20)
        assert sidecar.proc.returncode == 0
    assert "App reported unhealthy, entering shutdown" in sidecar.logs()


# --- tokens ---------------------------------------------------------------------------


def test_api_token_is_enforced_and_app_token_sent() -> None:
    env = {"DAPR_API_TOKEN": "api-secret", "APP_API_TOKEN": "app-secret"}
    with (
        fake_app({"secure": None}) as app,
        running_sidecar(app_ports=[app.port], env=env) as sidecar,
    ):
        wrong = {"dapr-api-token": "wrong"}
        # The health endpoints need no token; /v1.0/healthz turns ready once the app is
        # subscribed (it may not be yet), so it is waited on rather than read once.
        wait_until(lambda: sidecar.request("GET", "/v1.0/healthz", headers=wrong).status == 204, 10)
        assert sidecar.request("GET", "/v1.0/state/statestore/k", headers=wrong).status == 401
        assert sidecar.publish("secure", {"n": 1}, headers=wrong) == 401
        assert sidecar.publish("secure", {"n": 1}) == 204  # the harness sends the token

        with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
            stub = dapr_pb2_grpc.DaprStub(channel)
            request = state_pb2.GetStateRequest(store_name="statestore", key="k")
            for metadata in ((), (("dapr-api-token", "wrong"),)):
                with pytest.raises(grpc.RpcError) as info:
                    stub.GetState(request, metadata=metadata, timeout=5)
                assert code_of(info.value) == grpc.StatusCode.UNAUTHENTICATED
            reply = stub.GetState(request, metadata=(("dapr-api-token", "api-secret"),), timeout=5)
            assert reply.etag == ""

        wait_until(lambda: app.received("secure"), 10)
        [delivery] = app.received("secure")
        assert delivery.message.metadata()["dapr-api-token"] == "app-secret"
        # As daprd: OnTopicEvent is signed, ListTopicSubscriptions is not
        # (dapr/dapr pkg/runtime/pubsub/subscriptions.go GetSubscriptionsGRPC).
        by_method = {m: md.get("dapr-api-token") for m, md in app.calls_with_metadata()}
        assert by_method == {"ListTopicSubscriptions": None, "OnTopicEvent": "app-secret"}


# --- state, through the SDK's aio client ----------------------------------------------


@pytest.fixture
def idle_sidecar() -> Iterator[SidecarProcess]:
    """A sidecar whose app never comes up: for the state API."""
    with running_sidecar(app_ports=[free_port()]) as sidecar:
        yield sidecar


@pytest.fixture
async def client(idle_sidecar: SidecarProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DAPR_GRPC_PORT", str(idle_sidecar.grpc_port))
    monkeypatch.setenv("DAPR_HTTP_PORT", str(idle_sidecar.http_port))
    monkeypatch.delenv("DAPR_API_TOKEN", raising=False)
    dapr = DaprClient()
    try:
        yield dapr
    finally:
        await dapr.close()


async def test_etags_guard_writes(client: Any) -> None:
    await client.save_state("statestore", "doc", b"v1")
    first = await client.get_state("statestore", "doc")
    assert (first.data, first.etag) == (b"v1", "1")
    await client.save_state("statestore", "doc", b"v2", etag="1")
    assert (await client.get_state("statestore", "doc")).etag == "2"

    with pytest.raises(DaprInternalError) as stale:
        await client.save_state("statestore", "doc", b"v3", etag="1")
    assert "possible etag mismatch" in str(stale.value.message)
    cause = stale.value.__cause__
    assert isinstance(cause, grpc.aio.AioRpcError) and cause.code() == grpc.StatusCode.ABORTED

    with pytest.raises(DaprGrpcError) as delete:
        await client.delete_state("statestore", "doc", etag="1")
    assert delete.value.code() == grpc.StatusCode.ABORTED
    assert delete.value.error_code() == "ERR_STATE_DELETE"

    with pytest.raises(DaprInternalError):  # malformed etag: INVALID_ARGUMENT
        await client.save_state("statestore", "doc", b"x", etag="not-a-number")
    first_write = StateOptions(concurrency=Concurrency.first_write)
    with pytest.raises(DaprInternalError):
        await client.save_state("statestore", "doc", b"x", options=first_write)
    await client.save_state("statestore", "fresh", b"x", options=first_write)
    await client.save_state(
        "statestore",
        "doc",
        b"v4",
        etag="99",
        options=StateOptions(concurrency=Concurrency.last_write),
    )
    assert (await client.get_state("statestore", "doc")).data == b"v4"

    with pytest.raises(DaprGrpcError) as unknown:
        await client.get_state("nostore", "doc")
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.value.error_code() == "DAPR_STATE_NOT_FOUND"
    with pytest.raises(DaprGrpcError) as bad_key:
        await client.get_state("statestore", "a||b")
    assert bad_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_ttl_expires_keys(client: Any) -> None:
    await client.save_state("statestore", "short", b"x", state_metadata={"ttlInSeconds": "1"})
    await client.save_state("statestore", "long", b"y", state_metadata={"ttlInSeconds": "60"})
    live = await client.get_state("statestore", "short")
    assert live.data == b"x"
    await asyncio.sleep(1.1)
    gone = await client.get_state("statestore", "short")
    assert (gone.data, gone.etag) == (b"", "")
    assert (await client.get_state("statestore", "long")).data == b"y"


async def test_transactions_are_atomic_and_bulk_get_answers_every_key(client: Any) -> None:
    await client.save_state("statestore", "a", b"a1")
    stale = [
        TransactionalStateOperation(key="b", data=b"b1"),
        TransactionalStateOperation(key="a", data=b"a2", etag="7"),
    ]
    with pytest.raises(DaprGrpcError) as failed:
        await client.execute_state_transaction("statestore", stale)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert failed.value.error_code() == "ERR_STATE_TRANSACTION"
    assert (await client.get_state("statestore", "b")).data == b""  # nothing applied

    await client.execute_state_transaction(
        "statestore",
        [
            TransactionalStateOperation(key="b", data=b"b1"),
            TransactionalStateOperation(key="a", data=b"a2", etag="1"),
        ],
    )
    bulk = await client.get_bulk_state("statestore", ["a", "b", "missing"])
    assert [(i.key, i.data, i.etag) for i in bulk.items] == [
        ("a", b"a2", "2"),
        ("b", b"b1", "1"),
        ("missing", b"", ""),
    ]


async def test_grpc_publish_without_content_type_is_text(
    client: Any, idle_sidecar: SidecarProcess
) -> None:
    await client.publish_event("pubsub", "notes", "plain <text>")
    [event] = idle_sidecar.topic_messages("notes")
    assert (event["datacontenttype"], event["data"]) == ("text/plain", "plain <text>")
    with pytest.raises(DaprGrpcError) as unknown:
        await client.publish_event("nope", "notes", "x")
    assert unknown.value.error_code() == "DAPR_PUBSUB_NOT_FOUND"


def test_state_fault_switch(idle_sidecar: SidecarProcess) -> None:
    sidecar = idle_sidecar
    assert sidecar.save_state([{"key": "k", "value": {"v": 1}}]) == 204
    with grpc.insecure_channel(f"127.0.0.1:{sidecar.grpc_port}") as channel:
        stub = dapr_pb2_grpc.DaprStub(channel)
        request = state_pb2.GetStateRequest(store_name="statestore", key="k")

        sidecar.set_fault("unavailable")
        assert sidecar.request("GET", "/v1.0/state/statestore/k").status == 500
        with pytest.raises(grpc.RpcError) as down:
            stub.GetState(request, timeout=5)
        assert code_of(down.value) == grpc.StatusCode.UNAVAILABLE

        sidecar.set_fault("hang")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as hung:
            stub.GetState(request, timeout=0.5)
        assert code_of(hung.value) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started >= 0.45

        sidecar.set_fault(None)
        assert stub.GetState(request, timeout=5).data == b'{"v":1}'
        assert sidecar.get_state("k") == b'{"v":1}'


# --- persistence ----------------------------------------------------------------------


def test_journal_keeps_state_and_unacked_messages_across_kill_9(tmp_path: Path) -> None:
    journal = tmp_path / "sidecar.journal"
    with (
        fake_app({"jobs": None}, replies={"jobs": ["success", "block"]}) as app,
        running_sidecar(app_ports=[app.port], extra_args=["--journal", str(journal)]) as sidecar,
    ):
        assert sidecar.save_state([{"key": "kept", "value": "yes"}]) == 204
        assert sidecar.publish("jobs", {"n": "acked"}) == 204
        wait_settled(sidecar, "jobs", success=1)
        assert sidecar.publish("jobs", {"n": "in-flight"}) == 204
        wait_until(lambda: len(app.received("jobs")) == 2, 10)  # the app is holding it

        sidecar.kill()
        sidecar.restart()

        assert sidecar.get_state("kept") == b'"yes"'
        wait_settled(sidecar, "jobs", success=1)
        payloads = [json.loads(d.message.raw_data())["n"] for d in app.received("jobs")]
        assert payloads == ["acked", "in-flight", "in-flight"]
        assert app.calls["ListTopicSubscriptions"] == 2  # once per sidecar lifetime

        assert sidecar.terminate() == 0  # a clean stop compacts the journal
        records = [json.loads(line) for line in journal.read_text().splitlines()]
        assert [r["op"] for r in records] == ["state", "publish", "publish", "ack", "ack"]
        sidecar.restart()
        assert sidecar.get_state("kept") == b'"yes"'
        wait_until(lambda: app.calls["ListTopicSubscriptions"] == 3, 10)
        time.sleep(0.3)
        assert len(app.received("jobs")) == 3  # everything was acked: nothing redelivered


# --- the command line -----------------------------------------------------------------


def test_cli_help_and_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--delivery" in capsys.readouterr().out
    assert main(["--concurrency", "0"]) == 2
    assert "concurrency" in capsys.readouterr().err
    assert main(["--grpc-port", "http"]) == 2
    assert main(["--delivery", "fanout"]) == 2
    assert main(["--dapr-block-shutdown-duration", "10"]) == 2  # a Go duration: 10s
    assert "duration" in capsys.readouterr().err
    assert main(["--app-health-probe-timeout", "6000"]) == 2  # > the 5 s interval
    assert "probe timeout" in capsys.readouterr().err


def test_a_resources_folder_daprd_would_refuse_stops_the_sidecar_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "resiliency.yaml").write_text(
        "kind: Resiliency\nmetadata: {name: r}\nspec:\n  targets:\n    components:\n"
        "      pubsub: {inbound: {retry: nowhere}}\n"
    )
    assert main(["--resources-path", str(tmp_path)]) == 2
    assert "unknown retry policy nowhere" in capsys.readouterr().err
    assert main(["--resources-path", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_the_inbound_timeout_cuts_a_delivery_and_dead_letters_it() -> None:
    """A resiliency inbound timeout is the only deadline daprd puts on OnTopicEvent."""
    args = inbound_retry("devsidecar-timeout", policy="constant", maxRetries=0, timeout="300ms")
    with (
        fake_app({"slow": "slow-dlq"}, replies={"slow": ["block"]}) as app,
        running_sidecar(app_ports=[app.port], extra_args=args) as sidecar,
    ):
        assert sidecar.publish("slow", {"n": 1}) == 204
        wait_settled(sidecar, "slow", error=1, dead_lettered=1)
        assert len(app.received("slow")) == 1
