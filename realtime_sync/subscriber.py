"""The gRPC shell toward daprd: a dapr.ext.grpc App subscribed to the task topic.

Handlers run on the App's worker threads. Each event of the task topic is read straight
from daprd's request (topic.TaskTopic), parsed here (pure), then handed to the event loop (see
bridge.Bridge) and answered with the verdict. Nothing a handler does escapes as a gRPC
error: daprd would treat UNKNOWN as retry, and UNIMPLEMENTED as acked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import grpc
import orjson
from dapr.ext.grpc import App, InvokeMethodRequest, SubscriptionMessage, TopicEventResponse

from realtime_sync.bridge import Bridge
from realtime_sync.config import Settings
from realtime_sync.core.events import (
    SHARES_CHANGED,
    InvalidEvent,
    TaskEvent,
    is_task_id,
    parse_cloudevent_time,
    parse_event,
)
from realtime_sync.core.outcomes import Verdict
from realtime_sync.cutoffs import UserDisconnects, parse_control
from realtime_sync.metrics import Metrics
from realtime_sync.state import ShareLists, StateUnavailable
from realtime_sync.topic import (
    BULK_METHODS,
    LIST_SUBSCRIPTIONS,
    ON_TOPIC_EVENT,
    BulkIngest,
    TaskTopic,
    replace_behaviour,
)

log = logging.getLogger(__name__)
APP_CALLBACK: Final = "/dapr.proto.runtime.v1.AppCallback/"
ON_INVOKE: Final = APP_CALLBACK + "OnInvoke"
HEALTH_CHECK: Final = "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck"
UNSIGNED_METHODS: Final = frozenset(
    {LIST_SUBSCRIPTIONS, APP_CALLBACK + "ListInputBindings", HEALTH_CHECK}
)
"""The calls daprd makes WITHOUT `dapr-api-token`, even when APP_API_TOKEN is set
(dapr/dapr pkg/runtime/pubsub/subscriptions.go GetSubscriptionsGRPC,
pkg/runtime/processor/binding/send.go getSubscribedBindingsGRPC,
pkg/channel/grpc/grpc_channel.go HealthProbe). Every other call must carry the token:
daprd signs OnTopicEvent, OnBulkTopicEvent(Alpha1), OnInvoke, OnBindingEvent and
OnJobEvent(Alpha1) (AddAppTokenToContext; since daprd 1.16.2), and proxied calls."""
EVENT_METHODS: Final = frozenset({ON_TOPIC_EVENT, *BULK_METHODS})
HEALTH_WORKERS: Final = 2
MAX_GRPC_MESSAGE: Final = 4 * 1024 * 1024


def publish_time(
    envelope: datetime | None, payload_timestamp: str, received: datetime
) -> float | None:
    """When the event was published, for the latency histogram.

    daprd stamps the envelope's `time` with whole seconds (RFC 3339); the payload's
    `timestamp`, when the publisher set one within that second, refines it (an absent
    timestamp defaults to the time of receipt, which says nothing about publishing).
    """
    if envelope is None:
        return None
    base = envelope.timestamp()
    refined = parse_cloudevent_time(payload_timestamp)
    if refined is not None and refined != received and 0.0 <= refined.timestamp() - base < 1.0:
        return refined.timestamp()
    return base


@dataclass(frozen=True, slots=True)
class Admission:
    """What the checks before routing decided for one event: a verdict to answer at once,
    or (verdict None) the event to route and when it was published."""

    label: str  # the event type, for the metrics
    verdict: Verdict | None
    event: TaskEvent | None = None
    published_at: float | None = None


def _extension(extensions: Mapping[str, Any], key: str) -> Any:
    """One CloudEvent extension, None when absent: the extensions are a dict (single
    delivery) or a protobuf Struct (bulk entry), which is a Mapping without `.get`."""
    return extensions[key] if key in extensions else None  # noqa: SIM401 - no .get


class InvalidRequest(ValueError):
    """A malformed service-invocation request: answered INVALID_ARGUMENT."""


def _json_object(request: InvokeMethodRequest) -> dict[str, Any]:
    """The body of a service invocation, which must be a JSON object."""
    try:
        body = orjson.loads(request.data or b"")
    except orjson.JSONDecodeError:
        raise InvalidRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return body


class Unavailable(RuntimeError):
    """A dependency failed during a service invocation: answered UNAVAILABLE."""


def _abort(code: grpc.StatusCode, details: str) -> Any:
    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, details)

    return grpc.unary_unary_rpc_method_handler(refuse)


class InFlight:
    """Counts the event deliveries being handled, so a drain can wait for them to end."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def __enter__(self) -> None:
        with self._cond:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._count -= 1
            if not self._count:
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once no delivery is being handled; False if that took over timeout_s."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._count, timeout_s)


class _OnPool:
    """A method behaviour that grpc runs on its own thread pool, not the server's.

    grpc's sync server picks the pool per call (grpc/_server.py
    `_select_thread_pool_for_behavior`): a behaviour with an `experimental_thread_pool`
    attribute holding a ThreadPoolExecutor runs there. The health probe uses it so it is
    never queued behind event handlers that all wait on a slow state store: daprd gives the
    probe 500 ms, and three misses stop every subscription
    (tests/integration/test_app_channel.py pins this with grpcio's installed version).
    """

    def __init__(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Any], pool: ThreadPoolExecutor
    ) -> None:
        self._behaviour = behaviour
        self.experimental_thread_pool = pool

    def __call__(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._behaviour(request, context)


class AppChannelInterceptor(grpc.ServerInterceptor):
    """The app channel's gatekeeper: checks daprd's `dapr-api-token` (constant time) on
    every call daprd signs, lets the unsigned ones through, answers the health probe on its
    own pool, counts event deliveries in flight, notes ListTopicSubscriptions, and maps
    service-invocation errors to gRPC status codes."""

    def __init__(
        self,
        app_api_token: str,
        on_subscriptions_listed: Callable[[], None],
        *,
        health_pool: ThreadPoolExecutor,
        in_flight: InFlight,
    ) -> None:
        self._token = app_api_token.encode()
        self._on_listed = on_subscriptions_listed
        self._health_pool = health_pool
        self._in_flight = in_flight
        self._handlers: dict[str, Any] = {}

    def _signed(self, details: grpc.HandlerCallDetails) -> bool:
        sent = ""
        for key, value in details.invocation_metadata or ():
            if key == "dapr-api-token":
                sent = value if isinstance(value, str) else value.decode(errors="replace")
        return hmac.compare_digest(sent.encode(), self._token)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        method = details.method
        if self._token and method not in UNSIGNED_METHODS and not self._signed(details):
            return _abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong dapr-api-token")
        # grpc's server thread runs this for every call, before any handler thread: the
        # handler of a method is built once (the App's methods are fixed once it serves).
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._wrap(method, continuation(details))
            if handler is not None:
                self._handlers[method] = handler
        return handler

    def _wrap(self, method: str, handler: Any) -> Any:
        if handler is None or handler.unary_unary is None:
            return handler
        if method == HEALTH_CHECK:
            return replace_behaviour(handler, _OnPool(handler.unary_unary, self._health_pool))
        if method in EVENT_METHODS:
            return replace_behaviour(handler, self._counted(handler.unary_unary))
        if method == LIST_SUBSCRIPTIONS:
            return replace_behaviour(
                handler, self._mapped(handler.unary_unary, after=self._on_listed)
            )
        if method == ON_INVOKE:
            return replace_behaviour(handler, self._mapped(handler.unary_unary))
        return handler

    def _counted(self, inner: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with self._in_flight:
                return inner(request, context)

        return call

    @staticmethod
    def _mapped(
        inner: Callable[[Any, grpc.ServicerContext], Any], after: Callable[[], None] | None = None
    ) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                response = inner(request, context)
            except InvalidRequest as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except Unavailable as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            if after is not None:
                after()
            return response

        return call


class Subscriber:
    """Owns the App: registers the topic handler and the invocation methods."""

    def __init__(
        self,
        *,
        settings: Settings,
        bridge: Bridge,
        shares: ShareLists,
        metrics: Metrics,
        loop: asyncio.AbstractEventLoop,
        on_subscriptions_listed: Callable[[], None],
        presence: Callable[[str], Coroutine[Any, Any, dict[str, Any]]],
        disconnects: UserDisconnects,
        publish_task: Callable[[bytes], Coroutine[Any, Any, None]],
    ) -> None:
        self._s = settings
        self._disconnects = disconnects
        self._presence = presence
        self._bridge = bridge
        self._shares = shares
        self._metrics = metrics
        self._loop = loop
        # Share-list changes made here reach the other replicas through the task topic,
        # in order with the task's own events (publish_task: the sidecar's publish API).
        self._publish_task = publish_task
        self.draining = False
        self.serving = True
        self.in_flight = InFlight()
        self._health_pool = ThreadPoolExecutor(HEALTH_WORKERS, thread_name_prefix="dapr-health")
        self.app = App(
            thread_pool=ThreadPoolExecutor(
                max_workers=settings.app_workers, thread_name_prefix="dapr-app"
            ),
            interceptors=[
                AppChannelInterceptor(
                    settings.app_api_token,
                    on_subscriptions_listed,
                    health_pool=self._health_pool,
                    in_flight=self.in_flight,
                ),
                self._task_topic(),
            ],
            options=[
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
            ],
        )
        self.app.subscribe(
            settings.pubsub_name,
            settings.topic_name,
            dead_letter_topic=settings.dead_letter_topic,
        )(self.on_event)
        self.app.method("set_task_shares")(self.set_task_shares)
        self.app.method("get_presence")(self.get_presence)
        # Control messages between replicas: their own topic, never routed to clients.
        self.app.subscribe(settings.pubsub_name, settings.control_topic)(self.on_control)
        self.app.method("disconnect_user")(self.disconnect_user)
        self.app.register_health_check(self._health)
        self.port = 0

    def _task_topic(self) -> TaskTopic:
        """Our topic's deliveries, served straight from daprd's requests (realtime_sync.topic);
        with BULK_SUBSCRIBE, asked for and served in bulk too."""
        bulk = (
            BulkIngest(
                settings=self._s, bridge=self._bridge, metrics=self._metrics, admit=self.admit
            )
            if self._s.bulk_subscribe
            else None
        )
        return TaskTopic(settings=self._s, handle=self.handle_event, bulk=bulk)

    def start(self) -> int:
        """Bind and start serving (non-blocking); returns the bound port."""
        server = self.app._server  # noqa: SLF001 - the App exposes no non-blocking run
        self.port = server.add_insecure_port(f"{self._s.app_host}:{self._s.app_port}")
        if not self.port:
            raise OSError(f"cannot bind the gRPC app port {self._s.app_port}")
        server.start()
        return self.port

    def stop(self, grace_s: float) -> None:
        """Report unhealthy, stop accepting calls; let in-flight calls finish within grace_s."""
        self.serving = False
        self.app._server.stop(grace_s).wait()  # noqa: SLF001 - App.stop() is stop(0)
        self._health_pool.shutdown(wait=False)

    def _health(self) -> None:
        """daprd's app health probe: healthy while the service can serve, draining included.

        daprd's block-shutdown wait ends as soon as the app reports unhealthy (dapr/dapr
        pkg/runtime/runtime.go Run), so a draining service stays healthy until its last
        state write (see Service._drain); unhealthy only once it stopped serving or its
        event loop is gone. Never waits on anything: it runs on its own pool.
        """
        if not self.serving:
            raise RuntimeError("stopped serving")
        if self._loop.is_closed() or not self._loop.is_running():
            raise RuntimeError("the event loop is not running")

    # -- pub/sub -------------------------------------------------------------------------

    def on_event(self, message: SubscriptionMessage) -> TopicEventResponse:
        """The App's handler of the task topic, which declares the subscription. Its
        deliveries are answered by `topic.TaskTopic` before the App's servicer sees them;
        this runs only for an App built without that interceptor."""
        verdict = self.handle_event(
            str(message.id() or ""), message.raw_data() or b"", message.extensions() or {}
        )
        return TopicEventResponse(verdict.value)

    def handle_event(
        self, cloudevent_id: str, data: bytes, extensions: Mapping[str, Any]
    ) -> Verdict:
        """One delivered event, answered with its verdict (counted in the metrics). Nothing
        escapes: a handler that failed answers RETRY."""
        try:
            verdict, event_type = self._handle(cloudevent_id, data, extensions)
        except Exception:
            log.exception("event handler failed; answering RETRY")
            verdict, event_type = Verdict.RETRY, "unknown"
        self._metrics.events.labels(event_type, verdict.value).inc()
        return verdict

    def admit(self, cloudevent_id: str, data: bytes, extensions: Mapping[str, Any]) -> Admission:
        """The checks before routing, for one event of either delivery path: parse it (a
        malformed one is DROP, logged with its reason), RETRY while draining, the stale-event
        guard (SUCCESS without a push). Otherwise the event to route."""
        received = datetime.now(UTC)
        traceparent = _extension(extensions, "traceparent")
        try:
            event = parse_event(
                data,
                cloudevent_id=cloudevent_id,
                received_at=received,
                traceparent=traceparent if isinstance(traceparent, str) else None,
                max_bytes=self._s.max_event_bytes,
                max_shared_with=self._s.max_shared_with,
            )
        except InvalidEvent as exc:
            if exc.limit is not None:
                self._metrics.events_over_limit.labels(exc.limit).inc()
            log.warning(
                "event dropped", extra={"cloudevent_id": cloudevent_id, "reason": exc.reason}
            )
            return Admission("invalid", Verdict.DROP)
        label = event.event_type if event.action != "task_unknown_event" else "other"
        if self.draining:
            return Admission(label, Verdict.RETRY)
        published = parse_cloudevent_time(_extension(extensions, "time"))
        if published is not None:
            age = (received - published).total_seconds()
            if age > self._s.resume_window_s:
                self._metrics.events_stale.inc()
                log.info(
                    "stale event acknowledged without push",
                    extra={"event_id": event.event_id, "age_s": round(age, 1)},
                )
                return Admission(label, Verdict.SUCCESS)
        return Admission(label, None, event, publish_time(published, event.timestamp, received))

    def _handle(
        self, cloudevent_id: str, data: bytes, extensions: Mapping[str, Any]
    ) -> tuple[Verdict, str]:
        admission = self.admit(cloudevent_id, data, extensions)
        if admission.event is None:
            return admission.verdict or Verdict.RETRY, admission.label
        event, label, published_at = admission.event, admission.label, admission.published_at
        handoff = self._bridge.offer(event, published_at, self._s.handoff_wait_s)
        if handoff is None:
            log.warning("hand-off queue full; answering RETRY", extra={"event_id": event.event_id})
            return Verdict.RETRY, label
        if handoff.acked:  # recipients known: the loop writes the frames next
            self._metrics.events_acked_ahead.inc()
            return Verdict.SUCCESS, label
        verdict = handoff.outcome(self._s.handler_timeout_s)
        if verdict is None:
            log.warning("routing timed out; answering RETRY", extra={"event_id": event.event_id})
            return Verdict.RETRY, label
        return verdict, label

    # -- service invocation --------------------------------------------------------------

    def _run_on_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=self._s.handler_timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise Unavailable("timed out") from None

    def set_task_shares(self, request: InvokeMethodRequest) -> str:
        """`{"task_id": …, "user_id": owner, "user_ids": [...]}`, optionally with the change's
        order (`timestamp`, `shares_version`) and id (`id`; a redelivered call with the same
        id is applied once). Applied here by the ordering rule (revocations pushed to this
        replica's connections), then published on the topic as a TASK_SHARES_CHANGED event
        so every other replica applies the same change. Answers the list in force and
        whether this change is it."""
        body = _json_object(request)
        change = self._shares_change(body)
        started = time.perf_counter()
        handoff = self._bridge.offer(change, None, self._s.handoff_wait_s)
        verdict = handoff.outcome(self._s.handler_timeout_s) if handoff is not None else None
        if handoff is None or verdict is not Verdict.SUCCESS:
            raise Unavailable("could not store the share list; try again")
        published = orjson.dumps(
            {
                "type": SHARES_CHANGED,
                "id": change.event_id,
                "user_id": change.user_id,
                "task_id": change.task_id,
                "timestamp": change.timestamp,  # the order every replica applies
                "metadata": change.metadata,
            }
        )
        try:
            self._run_on_loop(self._publish_task(published))
        except (StateUnavailable, Unavailable) as exc:
            # Applied here, not yet on the others: the caller retries (same id: applied once).
            raise Unavailable(f"share list stored, not published to the replicas: {exc}") from None
        applied = handoff.applied
        current = applied.current.users if applied is not None else change.shared_with or ()
        log.info(
            "share list changed",
            extra={
                "task_id": str(change.task_id),
                "ms": round((time.perf_counter() - started) * 1e3),
            },
        )
        return orjson.dumps(
            {
                "task_id": change.task_id,
                "user_id": change.user_id,
                "user_ids": list(current),
                "applied": applied is not None and applied.current.order == change.share_order,
            }
        ).decode()

    def _shares_change(self, body: dict[str, Any]) -> TaskEvent:
        """The request as a TASK_SHARES_CHANGED event, validated like any event."""
        task_id, owner, users = body.get("task_id"), body.get("user_id"), body.get("user_ids")
        if not is_task_id(task_id):
            raise InvalidRequest("task_id must be an integer or a non-empty string")
        if not isinstance(owner, str) or not owner:
            raise InvalidRequest(
                "user_id (the task's owner) is required: share lists are kept per owner"
            )
        if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
            raise InvalidRequest("user_ids must be a list of user id strings")
        metadata: dict[str, Any] = {"shared_with": users}
        if "shares_version" in body:
            metadata["shares_version"] = body["shares_version"]
        event_id = body.get("id")
        if event_id is None:
            event_id = f"shares-{uuid.uuid4()}"
        received = datetime.now(UTC)
        payload = {
            "type": SHARES_CHANGED,
            "id": event_id,
            "user_id": owner,
            "task_id": task_id,
            "timestamp": body.get("timestamp"),
            "metadata": metadata,
        }
        try:
            return parse_event(
                orjson.dumps(payload),
                cloudevent_id=str(event_id),
                received_at=received,
                max_shared_with=self._s.max_shared_with,
            )
        except InvalidEvent as exc:
            raise InvalidRequest(exc.reason) from None

    def disconnect_user(self, request: InvokeMethodRequest) -> str:
        """`{"user_id": …}` → every replica closes that user's connections with 4003 and
        refuses tokens issued before the answer's `cutoff` (Unix seconds)."""
        user = _json_object(request).get("user_id")
        if not isinstance(user, str) or not user or len(user) > 256:
            raise InvalidRequest("user_id must be a non-empty string of at most 256 characters")
        try:
            done = self._run_on_loop(self._disconnects.call(user))
        except StateUnavailable as exc:
            raise Unavailable(f"could not disconnect the user: {exc}") from None
        return orjson.dumps(done).decode()

    def on_control(self, message: SubscriptionMessage) -> TopicEventResponse:
        """A control message from the replica that took a `disconnect_user` call."""
        parsed = parse_control(message.raw_data() or b"")
        if parsed is None:
            log.warning("control message dropped", extra={"cloudevent_id": message.id()})
            return TopicEventResponse(Verdict.DROP.value)
        self._loop.call_soon_threadsafe(self._disconnects.apply, parsed)
        return TopicEventResponse(Verdict.SUCCESS.value)

    def get_presence(self, request: InvokeMethodRequest) -> str:
        """`{"user_id": …}` → that user's open connections across replicas."""
        user = _json_object(request).get("user_id")
        if not isinstance(user, str) or not user or len(user) > 256:
            raise InvalidRequest("user_id must be a non-empty string")
        try:
            found = self._run_on_loop(self._presence(user))
        except StateUnavailable as exc:
            raise Unavailable(f"could not read presence: {exc}") from None
        return orjson.dumps(found).decode()
