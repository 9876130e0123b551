"""The dev sidecar's bulk layer, as daprd's default bulk subscriber: a batch goes out when
full or when its await window ends, one call per route path, each worker gets its own
entry's outcome."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from dapr.proto.runtime.v1 import appcallback_pb2

from realtime_sync.devsidecar.broker import Outcome
from realtime_sync.devsidecar.bulk import BatchingDelivery
from realtime_sync.devsidecar.routing import BulkConfig, Subscription


class App:
    """Answers each bulk call: DROP for an event whose id starts with "bad", else SUCCESS."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()

    def send(self, events: Sequence[Mapping[str, object]], topic: str, path: str) -> list[Outcome]:
        with self.lock:
            self.calls.append((path, [str(e["id"]) for e in events]))
        return [Outcome.DROP if str(e["id"]).startswith("bad") else Outcome.SUCCESS for e in events]


def deliver_all(batcher: BatchingDelivery, events: list[tuple[str, str]]) -> dict[str, Outcome]:
    """Each (id, path) delivered from its own worker thread, as the broker's workers do."""
    with ThreadPoolExecutor(len(events)) as pool:
        futures = {
            event_id: pool.submit(batcher.deliver, {"id": event_id}, "topic", path)
            for event_id, path in events
        }
        return {event_id: f.result(timeout=30) for event_id, f in futures.items()}


def test_a_full_batch_goes_out_at_once_with_each_entry_its_own_outcome() -> None:
    app, stop = App(), threading.Event()
    # A window far longer than the test: only the count can send the batch.
    batcher = BatchingDelivery(app.send, "topic", BulkConfig(4, 600.0), stop)
    try:
        outcomes = deliver_all(batcher, [("a", ""), ("bad-b", ""), ("c", ""), ("d", "")])
    finally:
        stop.set()
    assert outcomes == {
        "a": Outcome.SUCCESS,
        "bad-b": Outcome.DROP,
        "c": Outcome.SUCCESS,
        "d": Outcome.SUCCESS,
    }
    [(path, ids)] = app.calls
    assert path == ""
    assert sorted(ids) == ["a", "bad-b", "c", "d"]


def test_a_partial_batch_goes_out_when_its_window_ends_one_call_per_path() -> None:
    app, stop = App(), threading.Event()
    batcher = BatchingDelivery(app.send, "topic", BulkConfig(100, 0.05), stop)
    try:
        outcomes = deliver_all(batcher, [("a", "/one"), ("b", "/two"), ("c", "/one")])
    finally:
        stop.set()
    assert set(outcomes.values()) == {Outcome.SUCCESS}
    by_path: dict[str, list[str]] = {}
    for path, ids in app.calls:
        by_path.setdefault(path, []).extend(ids)
    assert sorted(by_path) == ["/one", "/two"]
    assert sorted(by_path["/one"]) == ["a", "c"]


def test_the_subscription_reads_bulk_subscribe_with_daprd_defaults() -> None:
    asked = appcallback_pb2.TopicSubscription(pubsub_name="pubsub", topic="t")
    asked.bulk_subscribe.enabled = True
    assert Subscription.from_proto(asked).bulk == BulkConfig(100, 1.0)
    asked.bulk_subscribe.max_messages_count = 10
    asked.bulk_subscribe.max_await_duration_ms = 5
    assert Subscription.from_proto(asked).bulk == BulkConfig(10, 0.005)
    plain = appcallback_pb2.TopicSubscription(pubsub_name="pubsub", topic="t")
    assert Subscription.from_proto(plain).bulk is None
