"""What the Dapr API front ends (gRPC and HTTP) call: publish, state, invoke, dev tools.

Both front ends only translate wire formats; every rule (unknown components, the state
fault switch, daprd's error codes and messages) lives here, once.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from .app_channel import AppChannel
from .broker import Broker
from .config import SidecarConfig
from .envelope import Publication, PublishError, build_cloud_event
from .errors import ApiError, bad_request, pubsub_not_found, state_store_not_found
from .faults import StateFault, StateFaults
from .routing import Subscription
from .state import InMemoryStateStore, StateError, StateErrorKind, StateWrite, StoredValue
from .wellknown import status_code, status_details

log = logging.getLogger(__name__)

_HTTP_FOR_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNIMPLEMENTED: 404,
}


@dataclass(eq=False)
class AppInstance:
    """One attached app instance and what the sidecar learnt from it."""

    channel: AppChannel
    state: str = "waiting"  # waiting -> subscribed | failed
    healthy: bool = False  # the last app health verdict (always True without health checks)
    list_subscriptions_calls: int = 0
    subscriptions: list[Subscription] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def describe(self, replies: dict[str, object]) -> dict[str, object]:
        return {
            "state": self.state,
            "healthy": self.healthy,
            "list_subscriptions_calls": self.list_subscriptions_calls,
            "subscriptions": [s.describe() for s in self.subscriptions],
            "ignored_subscriptions": list(self.ignored),
            "bulk_deliveries": self.channel.bulk_stats(),
            "topics": replies,
        }


def _state_error(exc: StateError, operation: str, store: str) -> ApiError:
    reason = {
        "save": "ERR_STATE_SAVE",
        "delete": "ERR_STATE_DELETE",
        "transaction": "ERR_STATE_TRANSACTION",
    }.get(operation, "ERR_STATE_GET")
    if exc.kind is StateErrorKind.INVALID_REQUEST:
        return bad_request(reason, exc.message)
    if operation == "transaction":
        return ApiError(
            grpc.StatusCode.INTERNAL,
            500,
            reason,
            f"error while executing state transaction: {exc.message}",
        )
    verb = "saving state in" if operation == "save" else "deleting state from"
    if exc.kind is StateErrorKind.INVALID_ETAG:
        return bad_request(reason, f"failed {verb} state store {store}: {exc.message}")
    return ApiError(
        grpc.StatusCode.ABORTED,
        409,
        reason,
        f"failed {verb} state store {store}: possible etag mismatch. "
        f"error from state store: {exc.message}",
    )


class SidecarRuntime:
    def __init__(
        self,
        config: SidecarConfig,
        *,
        broker: Broker,
        stores: dict[str, InMemoryStateStore],
        faults: StateFaults,
        instances: Sequence[AppInstance],
    ) -> None:
        self.config = config
        self.broker = broker
        self.stores = stores
        self.faults = faults
        self.instances = list(instances)
        self._invoke_turn = itertools.count()
        self._lock = threading.Lock()

    # --- pub/sub ----------------------------------------------------------------------

    def publish(self, publication: Publication) -> None:
        if publication.pubsub_name != self.config.pubsub_name:
            raise pubsub_not_found(publication.pubsub_name)
        if not publication.topic:
            raise bad_request("ERR_TOPIC_NAME_EMPTY", "topic is empty")
        try:
            event = build_cloud_event(publication, source=self.config.app_id)
        except PublishError as exc:
            log.warning("publish to %s refused: %s", publication.topic, exc)
            raise ApiError(
                grpc.StatusCode.INVALID_ARGUMENT, 400, "ERR_PUBSUB_CLOUD_EVENTS_SER", str(exc)
            ) from None
        self.broker.publish(publication.topic, event)

    # --- state ------------------------------------------------------------------------

    def _store(self, name: str, reason: str, timeout_s: float | None) -> InMemoryStateStore:
        store = self.stores.get(name)
        if store is None:
            raise state_store_not_found(name)
        self.faults.check(reason, timeout_s)
        return store

    def get_state(self, store: str, key: str, timeout_s: float | None) -> StoredValue | None:
        target = self._store(store, "ERR_STATE_GET", timeout_s)
        try:
            return target.get(key)
        except StateError as exc:
            raise _state_error(exc, "get", store) from None

    def get_bulk_state(
        self, store: str, keys: Sequence[str], timeout_s: float | None
    ) -> list[tuple[str, StoredValue | None]]:
        target = self._store(store, "ERR_STATE_BULK_GET", timeout_s)
        try:
            return target.get_many(keys)
        except StateError as exc:
            raise _state_error(exc, "get", store) from None

    def write_state(
        self, store: str, writes: Sequence[StateWrite], operation: str, timeout_s: float | None
    ) -> None:
        """Apply writes atomically; ``operation`` is save, delete or transaction."""
        reason = {"save": "ERR_STATE_SAVE", "delete": "ERR_STATE_DELETE"}.get(
            operation, "ERR_STATE_TRANSACTION"
        )
        target = self._store(store, reason, timeout_s)
        try:
            target.apply(writes)
        except StateError as exc:
            raise _state_error(exc, operation, store) from None

    # --- service invocation -----------------------------------------------------------

    def invoke(
        self, app_id: str, method: str, *, data: bytes, content_type: str, verb: str, query: str
    ) -> tuple[bytes, str]:
        if app_id != self.config.app_id:
            raise ApiError(
                grpc.StatusCode.INTERNAL,
                500,
                "ERR_DIRECT_INVOKE",
                f"failed to invoke, id: {app_id}, err: app id not found",
            )
        instance = self.instances[next(self._invoke_turn) % len(self.instances)]
        try:
            return instance.channel.invoke(
                method, data=data, content_type=content_type, verb=verb, query=query
            )
        except grpc.RpcError as exc:
            code = status_code(exc)
            raise ApiError(
                code or grpc.StatusCode.UNKNOWN,
                _HTTP_FOR_GRPC.get(code, 500) if code else 500,
                "ERR_DIRECT_INVOKE",
                f"{code.name if code else 'UNKNOWN'}: {status_details(exc)}",
            ) from None

    # --- dev endpoints ----------------------------------------------------------------

    def stats(self) -> dict[str, object]:
        stats = self.broker.stats()
        replies = stats.pop("replies_by_instance")
        assert isinstance(replies, dict)
        fault = self.faults.current
        return {
            "app_id": self.config.app_id,
            "delivery": self.config.delivery.value,
            "state_fault": fault.value if fault else None,
            "state_calls_slowed": self.faults.waiting,
            **stats,
            "instances": {
                instance.channel.label: instance.describe(replies.get(instance.channel.label, {}))
                for instance in self.instances
            },
        }

    def ready(self) -> bool:
        """``/v1.0/healthz``: the app answered on its port and had its subscriptions loaded
        (or failed to). With several app instances (several daprd in one), the first one
        attached makes it ready, so the instances can start one after another."""
        return any(instance.state != "waiting" for instance in self.instances)

    def topic_messages(self, topic: str) -> list[dict[str, object]]:
        return self.broker.topic_messages(topic)

    def set_fault(self, fault: StateFault | None, delay_s: float) -> None:
        self.faults.set(fault, delay_s)

    def metadata(self) -> dict[str, object]:
        return {
            "id": self.config.app_id,
            "runtimeVersion": "devsidecar",
            "components": [
                {"name": self.config.pubsub_name, "type": "pubsub.in-memory", "version": "v1"},
                {
                    "name": self.config.state_store_name,
                    "type": "state.in-memory",
                    "version": "v1",
                    "capabilities": ["ETAG", "TRANSACTIONAL", "TTL"],
                },
            ],
            # daprd's field names (GET /v1.0/metadata): a restarted app reads from here that
            # it is subscribed, since ListTopicSubscriptions is called once per sidecar life.
            "subscriptions": [
                {
                    "pubsubname": s.pubsub_name,
                    "topic": s.topic,
                    "deadLetterTopic": s.dead_letter_topic,
                    "metadata": dict(s.metadata),
                    "rules": [{"match": r.match, "path": r.path} for r in s.rules],
                    "type": "PROGRAMMATIC",
                }
                for instance in self.instances
                for s in instance.subscriptions
            ],
        }
