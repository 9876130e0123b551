"""The task topic's deliveries from daprd, served at a gRPC interceptor (`TaskTopic`).

Why an interceptor. dapr-ext-grpc's App hands each event to the topic handler as a
`SubscriptionMessage`, which decodes the data with the stdlib `json` (the subscriber decodes
it again with orjson) and the extensions with `MessageToDict`, and wants a
`TopicEventResponse` that validates its status against an enum: ~10 us of a handler thread
per event (bench/RESULTS.md, session 5). Its `App.subscribe()` cannot ask for bulk delivery
(dapr/python-sdk#464), and its `OnBulkTopicEvent` calls the topic handler one entry at a
time, which would cost one thread-to-loop crossing and one wait per event. All of it is
fixed at a public seam, a `grpc.ServerInterceptor` passed to the App
(`App(interceptors=...)`), without touching the App's private attributes:

* `OnTopicEvent` for our pubsub and topic: the request's `id`, `data` and the two
  extensions read (`read_extensions`) go to the subscriber's handler as they are, and one
  prebuilt answer per verdict goes back.
* With bulk on, `ListTopicSubscriptions`: the App's own answer is kept (it stays the one
  place the subscription is declared) and our topic's entry gets `bulk_subscribe`
  (enabled, `max_messages_count`, `max_await_duration_ms`), which daprd reads in dapr/dapr
  `pkg/runtime/pubsub/subscriptions.go` `GetSubscriptionsGRPC`.
* With bulk on, `OnBulkTopicEvent` and `OnBulkTopicEventAlpha1` (daprd falls back to the
  latter on UNIMPLEMENTED, `pkg/runtime/subscription/postman/grpc/grpc.go` `DeliverBulk`):
  served by `BulkIngest` for our pubsub and topic.

Any other topic (the control topic) goes to the App's servicer as before. A second servicer
for `AppCallback` could not do the subscription part (the App registers its own at
construction and answers `ListTopicSubscriptions` from its private table), so rewriting the
answer in flight is the smallest seam that keeps the SDK the source of the subscription.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import grpc
from dapr.proto.runtime.v1 import appcallback_pb2

from realtime_sync.bridge import Bridge
from realtime_sync.config import Settings
from realtime_sync.core.outcomes import Verdict
from realtime_sync.metrics import Metrics

if TYPE_CHECKING:  # the subscriber builds this module's interceptor
    from realtime_sync.subscriber import Admission

log = logging.getLogger(__name__)

LIST_SUBSCRIPTIONS: Final = "/dapr.proto.runtime.v1.AppCallback/ListTopicSubscriptions"
ON_TOPIC_EVENT: Final = "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent"
BULK_METHODS: Final = frozenset(
    {
        "/dapr.proto.runtime.v1.AppCallback/OnBulkTopicEvent",
        "/dapr.proto.runtime.v1.AppCallbackAlpha/OnBulkTopicEventAlpha1",
    }
)
_STATUS: Final = {
    Verdict.SUCCESS: appcallback_pb2.TopicEventResponse.SUCCESS,
    Verdict.RETRY: appcallback_pb2.TopicEventResponse.RETRY,
    Verdict.DROP: appcallback_pb2.TopicEventResponse.DROP,
}

# One answer per verdict, built once: never changed after, only serialised.
_ANSWERS: Final = {
    verdict: appcallback_pb2.TopicEventResponse(status=status)
    for verdict, status in _STATUS.items()
}

_READ: Final = ("traceparent", "time")  # the CloudEvent extensions the subscriber reads
Admit = Callable[[str, bytes, Mapping[str, Any]], "Admission"]
"""The subscriber's checks before routing: (CloudEvent id, data, extensions) -> Admission."""
Handle = Callable[[str, bytes, Mapping[str, Any]], Verdict]
"""The subscriber's answer to one event: (CloudEvent id, data, extensions) -> verdict."""


def read_extensions(extensions: Any) -> dict[str, str]:
    """The CloudEvent extensions the subscriber reads, from a delivery's `extensions` (a
    protobuf Struct, untyped: protobuf ships no stubs).

    Only these are read; the Struct's own map is ~5x cheaper to read than the Struct as a
    Mapping (measured: 0.6 vs 3.3 us an event), one `get` a key cheaper than a test then
    a read.
    """
    fields = extensions.fields
    wanted = {}
    for key in _READ:
        value = fields.get(key)
        if value is not None:
            wanted[key] = value.string_value
    return wanted


class BulkIngest:
    """Answers one bulk call: every entry checked (parse, draining, stale guard), the routable
    ones handed to the loop in ONE crossing, in order, then every verdict waited for. The loop
    routes the batch in one round (per-task order kept, each event framed once and buffered
    for resume, the frames of the whole batch coalesced per connection) and answers after
    the writes. Each entry gets its own status: SUCCESS, RETRY (share list unreadable, bound
    full, timed out, draining) or DROP (malformed, logged with its reason).
    """

    def __init__(self, *, settings: Settings, bridge: Bridge, metrics: Metrics, admit: Admit):
        self._s = settings
        self._bridge = bridge
        self._metrics = metrics
        self._admit = admit

    def handle(
        self, request: appcallback_pb2.TopicEventBulkRequest
    ) -> appcallback_pb2.TopicEventBulkResponse:
        entries = request.entries
        verdicts: list[Verdict] = [Verdict.RETRY] * len(entries)
        labels: list[str] = ["unknown"] * len(entries)
        routed: list[tuple[int, Admission]] = []
        for index, entry in enumerate(entries):
            try:
                admission = self._admit_entry(entry)
            except Exception:
                log.exception("bulk entry check failed; answering RETRY")
                continue
            labels[index] = admission.label
            if admission.event is None:
                verdicts[index] = admission.verdict or Verdict.RETRY
            else:
                routed.append((index, admission))
        if routed:
            self._route(routed, verdicts)
        counted = Counter(zip(labels, verdicts, strict=True))
        for (label, verdict), count in counted.items():
            self._metrics.events.labels(label, verdict.value).inc(count)
        response = appcallback_pb2.TopicEventBulkResponse()
        add = response.statuses.add  # ~2x cheaper than building each entry, then the list
        for entry, verdict in zip(entries, verdicts, strict=True):
            add(entry_id=entry.entry_id, status=_STATUS[verdict])
        return response

    def _admit_entry(self, entry: appcallback_pb2.TopicEventBulkRequestEntry) -> Admission:
        if entry.HasField("cloud_event"):
            event = entry.cloud_event
            # Only these extensions are read; the Struct's own map is ~5x cheaper to read
            # than the Struct as a Mapping (measured: 0.6 vs 3.3 us an entry), one `get`
            # a key cheaper than a test then a read.
            fields = event.extensions.fields
            wanted = {}
            for key in _READ:
                value = fields.get(key)
                if value is not None:
                    wanted[key] = value.string_value
            return self._admit(event.id, event.data, wanted)
        # A raw-payload entry (not what we subscribe with): its bytes are the data.
        return self._admit(entry.entry_id, entry.bytes, {})

    def _route(self, routed: list[tuple[int, Admission]], verdicts: list[Verdict]) -> None:
        items = [(a.event, a.published_at) for _, a in routed if a.event is not None]
        offered = self._bridge.offer_batch(items, self._s.handoff_wait_s)
        outcomes = offered.verdicts(self._s.handler_timeout_s)
        for position, (index, admission) in enumerate(routed):
            verdict = outcomes[position] if position < len(outcomes) else None
            if verdict is not None:
                verdicts[index] = verdict
                continue
            event_id = admission.event.event_id if admission.event is not None else ""
            if position >= len(outcomes):
                log.warning("hand-off queue full; answering RETRY", extra={"event_id": event_id})
            else:
                log.warning("routing timed out; answering RETRY", extra={"event_id": event_id})


class TaskTopic(grpc.ServerInterceptor):
    """Serves our topic's deliveries: single events always, bulk ones (and the subscription's
    request for them) when `bulk` is given.

    Placed after the app channel's gatekeeper in the App's interceptors, so the token check,
    the in-flight count and the draining wait apply to these calls as to any other.
    """

    def __init__(self, *, settings: Settings, handle: Handle, bulk: BulkIngest | None) -> None:
        self._pubsub = settings.pubsub_name
        self._topic = settings.topic_name
        self._handle = handle
        self._ingest = bulk
        self._config = appcallback_pb2.BulkSubscribeConfig(
            enabled=True,
            max_messages_count=settings.bulk_max_messages,
            max_await_duration_ms=settings.bulk_max_await_ms,
        )

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method
        if method == ON_TOPIC_EVENT:
            return replace_behaviour(handler, self._single(handler.unary_unary))
        if self._ingest is None:
            return handler
        if method == LIST_SUBSCRIPTIONS:
            return replace_behaviour(handler, self._with_bulk(handler.unary_unary))
        if method in BULK_METHODS:
            return grpc.unary_unary_rpc_method_handler(
                self._bulk(handler.unary_unary, self._ingest),
                request_deserializer=appcallback_pb2.TopicEventBulkRequest.FromString,
                response_serializer=appcallback_pb2.TopicEventBulkResponse.SerializeToString,
            )
        return handler

    def _ours(self, request: Any) -> bool:
        return bool(request.pubsub_name == self._pubsub and request.topic == self._topic)

    def _single(self, sdk: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        def call(request: appcallback_pb2.TopicEventRequest, context: grpc.ServicerContext) -> Any:
            if self._ours(request):
                extensions = read_extensions(request.extensions)
                return _ANSWERS[self._handle(request.id, request.data, extensions)]
            return sdk(request, context)

        return call

    def _with_bulk(self, inner: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            response = inner(request, context)
            for subscription in response.subscriptions:
                if self._ours(subscription):
                    subscription.bulk_subscribe.CopyFrom(self._config)
            return response

        return call

    def _bulk(self, sdk: Callable[[Any, grpc.ServicerContext], Any], ingest: BulkIngest) -> Any:
        def call(
            request: appcallback_pb2.TopicEventBulkRequest, context: grpc.ServicerContext
        ) -> Any:
            if self._ours(request):
                return ingest.handle(request)
            return sdk(request, context)

        return call


def replace_behaviour(handler: Any, behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Any:
    """`handler` (a unary-unary method handler) with `behaviour` in place of its own, and the
    same (de)serialisers."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
