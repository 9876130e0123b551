"""The calls daprd makes toward one app instance over gRPC ``AppCallback``.

* :meth:`AppChannel.wait_until_listening`: dial the app port every 100 ms until it accepts
  TCP (daprd's ``blockUntilAppIsReady``).
* :meth:`AppChannel.list_subscriptions`: ``ListTopicSubscriptions(Empty)``, called once,
  **unsigned**; ``UNIMPLEMENTED`` means no subscriptions.
* :meth:`AppChannel.probe_health`: ``AppCallbackHealthCheck/HealthCheck``, **unsigned**,
  with the probe timeout (daprd's ``HealthProbe``).
* :meth:`AppChannel.deliver`: one unary ``OnTopicEvent`` per message, with the metadata
  daprd sends (``pubsubname``, ``traceparent``, ``dapr-api-token`` when ``APP_API_TOKEN`` is
  set) and the reply mapped to an :class:`~.broker.Outcome`; a deadline only when the
  inbound resiliency policy has a timeout.
* :meth:`AppChannel.deliver_bulk`: one ``OnBulkTopicEvent`` per batch for a subscription
  that asked for bulk (see :mod:`.bulk`), per-entry statuses mapped like single replies.
* :meth:`AppChannel.invoke`: ``OnInvoke`` for service invocation (signed).

daprd signs only the calls that carry work (``AddAppTokenToContext`` in dapr/dapr
``pkg/runtime/subscription/postman/grpc/grpc.go`` and ``pkg/channel/grpc/grpc_channel.go``),
never ``ListTopicSubscriptions`` (``pkg/runtime/pubsub/subscriptions.go``
``GetSubscriptionsGRPC``) nor the health probe (``grpc_channel.go`` ``HealthProbe``).
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence

import grpc
from dapr.proto.common.v1 import common_pb2
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc

from .broker import Outcome
from .envelope import EnvelopeError, bulk_entry, topic_event_request
from .wellknown import AnyMessage, Empty, status_code

log = logging.getLogger(__name__)

LIST_SUBSCRIPTIONS_ATTEMPTS = 4  # daprd's BuiltInInitializationRetries: 1 + 3 retries
HEALTH_CHECK = "/dapr.proto.runtime.v1.AppCallbackHealthCheck/HealthCheck"
_CHANNEL_OPTIONS = [
    # Reconnect quickly after an app restart instead of grpc's default backoff (up to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]
_STATUS = appcallback_pb2.TopicEventResponse.TopicEventResponseStatus
_OUTCOMES = {
    _STATUS.SUCCESS: Outcome.SUCCESS,
    _STATUS.RETRY: Outcome.RETRY,
    _STATUS.DROP: Outcome.DROP,
}
# components-contrib pubsub/envelope.go DefaultBulkEventType
BULK_EVENT_TYPE = "com.dapr.event.sent.bulk"
_VERBS = {
    name: common_pb2.HTTPExtension.Verb.Value(name)
    for name in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
}


class AppChannel:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        pubsub_name: str,
        app_api_token: str | None,
        delivery_timeout_s: float | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        self._pubsub_name = pubsub_name
        self._token = app_api_token
        self._timeout = delivery_timeout_s
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = appcallback_pb2_grpc.AppCallbackStub(self._channel)
        self._alpha = appcallback_pb2_grpc.AppCallbackAlphaStub(self._channel)
        self._health = self._channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=Empty.SerializeToString,
            response_deserializer=appcallback_pb2.HealthCheckResponse.FromString,
        )
        self._reachable = True
        self._state_lock = threading.Lock()
        self._bulk_calls = 0
        self._bulk_entries = 0
        self._largest_bulk = 0

    def _signed(self, **extra: str) -> list[tuple[str, str]]:
        """Metadata for a call daprd signs: ``extra`` plus ``dapr-api-token`` when set."""
        pairs = [(key, value) for key, value in extra.items() if value]
        if self._token:
            pairs.append(("dapr-api-token", self._token))
        return pairs

    def probe_health(self, timeout_s: float) -> bool:
        """One app health probe: True if ``HealthCheck`` answered OK within ``timeout_s``."""
        try:
            self._health(Empty(), timeout=timeout_s)
        except grpc.RpcError:
            return False
        return True

    def wait_until_listening(self, stop: threading.Event) -> bool:
        """Block until the app port accepts TCP (True) or ``stop`` is set (False)."""
        logged = False
        while not stop.is_set():
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return True
            except OSError:
                if not logged:
                    log.info("waiting for the app to listen on %s", self.label)
                    logged = True
            stop.wait(0.1)
        return False

    def list_subscriptions(
        self, stop: threading.Event
    ) -> list[appcallback_pb2.TopicSubscription] | None:
        """The app's subscriptions; None if it could not be asked."""
        for attempt in range(1, LIST_SUBSCRIPTIONS_ATTEMPTS + 1):
            try:
                reply = self._stub.ListTopicSubscriptions(Empty(), timeout=10.0)
            except grpc.RpcError as exc:
                code = status_code(exc)
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return []
                log.warning(
                    "ListTopicSubscriptions on %s failed (attempt %d): %s",
                    self.label,
                    attempt,
                    code.name if code else "unknown",
                )
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return None
                if stop.wait(0.5 * attempt):
                    return None
                continue
            return list(reply.subscriptions)
        return None

    def deliver(self, event: Mapping[str, object], topic: str, path: str) -> Outcome:
        """One ``OnTopicEvent`` call, its reply mapped the way daprd maps it."""
        try:
            request = topic_event_request(
                event, topic=topic, pubsub_name=self._pubsub_name, path=path
            )
        except EnvelopeError as exc:
            log.warning(
                "message %s on topic %s cannot be delivered: %s", event.get("id"), topic, exc
            )
            return Outcome.ERROR
        traceparent = event.get("traceparent")
        metadata = self._signed(
            pubsubname=self._pubsub_name,
            traceparent=traceparent if isinstance(traceparent, str) else "",
        )
        try:
            reply = self._stub.OnTopicEvent(request, metadata=metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            code = status_code(exc)
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return Outcome.UNIMPLEMENTED
            if code == grpc.StatusCode.UNAVAILABLE:
                self._set_reachable(False)
            else:
                log.info(
                    "app %s answered %s for message %s on topic %s",
                    self.label,
                    code.name if code else "an unknown error",
                    request.id,
                    topic,
                )
            return Outcome.ERROR
        self._set_reachable(True)
        match reply.status:
            case _STATUS.SUCCESS:
                return Outcome.SUCCESS
            case _STATUS.RETRY:
                return Outcome.RETRY
            case _STATUS.DROP:
                return Outcome.DROP
            case unknown:
                log.warning("app %s answered unknown status %s: retrying", self.label, unknown)
                return Outcome.ERROR

    def deliver_bulk(
        self, events: Sequence[Mapping[str, object]], topic: str, path: str
    ) -> list[Outcome]:
        """One ``OnBulkTopicEvent`` call (``OnBulkTopicEventAlpha1`` if that is
        UNIMPLEMENTED), built and mapped the way daprd's ``DeliverBulk`` does: a fresh
        entry id per entry, each entry's own status; an entry left unanswered is retried;
        a gRPC error is every entry's; UNIMPLEMENTED from both acks them all (lost)."""
        outcomes = [Outcome.ERROR] * len(events)
        entries: list[appcallback_pb2.TopicEventBulkRequestEntry] = []
        index: dict[str, int] = {}
        for position, event in enumerate(events):
            try:
                single = topic_event_request(
                    event, topic=topic, pubsub_name=self._pubsub_name, path=path
                )
            except EnvelopeError as exc:  # daprd: FetchEntry failed, the entry is retried
                log.warning(
                    "message %s on topic %s cannot be delivered: %s", event.get("id"), topic, exc
                )
                continue
            entry_id = str(uuid.uuid4())
            index[entry_id] = position
            entries.append(bulk_entry(entry_id, single))
        if not entries:
            return outcomes
        request = appcallback_pb2.TopicEventBulkRequest(
            id=str(uuid.uuid4()),
            entries=entries,
            metadata={"pubsubname": self._pubsub_name},
            topic=topic,
            pubsub_name=self._pubsub_name,
            type=BULK_EVENT_TYPE,
            path=path,
        )
        metadata = self._signed(pubsubname=self._pubsub_name)
        with self._state_lock:
            self._bulk_calls += 1
            self._bulk_entries += len(entries)
            self._largest_bulk = max(self._largest_bulk, len(entries))
        try:
            try:
                reply = self._stub.OnBulkTopicEvent(
                    request, metadata=metadata, timeout=self._timeout
                )
            except grpc.RpcError as exc:
                if status_code(exc) != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                log.warning("app %s: falling back to OnBulkTopicEventAlpha1", self.label)
                reply = self._alpha.OnBulkTopicEventAlpha1(
                    request, metadata=metadata, timeout=self._timeout
                )
        except grpc.RpcError as exc:
            code = status_code(exc)
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return [Outcome.UNIMPLEMENTED] * len(events)
            if code == grpc.StatusCode.UNAVAILABLE:
                self._set_reachable(False)
            else:
                log.info(
                    "app %s answered %s for a bulk of %d on topic %s",
                    self.label,
                    code.name if code else "an unknown error",
                    len(entries),
                    topic,
                )
            return outcomes
        self._set_reachable(True)
        for status in reply.statuses:
            position = index.pop(status.entry_id, -1)
            if position < 0:
                log.warning("app %s answered an unknown entry id %s", self.label, status.entry_id)
                continue
            outcomes[position] = _OUTCOMES.get(status.status, Outcome.ERROR)
        if index:
            log.warning(
                "app %s left %d bulk entr(ies) unanswered: retrying them", self.label, len(index)
            )
        return outcomes

    def bulk_stats(self) -> dict[str, int]:
        """Bulk calls made so far, the entries they carried, the largest batch."""
        with self._state_lock:
            return {
                "calls": self._bulk_calls,
                "entries": self._bulk_entries,
                "largest": self._largest_bulk,
            }

    def invoke(
        self, method: str, *, data: bytes, content_type: str, verb: str, query: str
    ) -> tuple[bytes, str]:
        """``OnInvoke``; raises ``grpc.RpcError`` as the app answered."""
        request = common_pb2.InvokeRequest(
            method=method,
            data=AnyMessage(value=data),
            content_type=content_type,
            http_extension=common_pb2.HTTPExtension(
                verb=_VERBS.get(verb.upper(), _VERBS["POST"]), querystring=query
            ),
        )
        reply = self._stub.OnInvoke(request, metadata=self._signed(), timeout=60.0)
        return bytes(reply.data.value), str(reply.content_type)

    def _set_reachable(self, reachable: bool) -> None:
        with self._state_lock:
            changed = reachable != self._reachable
            self._reachable = reachable
        if changed and not reachable:
            log.warning("app %s is unreachable: deliveries will be retried", self.label)
        elif changed:
            log.info("app %s is reachable again", self.label)

    def close(self) -> None:
        self._channel.close()
