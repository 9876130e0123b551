"""Bulk delivery, as daprd does it for a component without native bulk subscribe.

daprd's ``defaultBulkSubscriber`` (dapr/dapr ``pkg/runtime/pubsub/default_bulksub.go``
``BulkSubscribe``, ``processBulkMessagesBatch``) sits between the component's ordinary
per-message handler and the app: each of the component's ``concurrency`` handler calls puts
its message in the pending batch and *blocks* until the batch is answered; the batch is sent
when it holds ``maxMessagesCount`` messages or ``maxAwaitDurationMs`` after its first
message, one batch at a time. A batch therefore never holds more messages than the
component's ``concurrency``. :class:`BatchingDelivery` is that layer: the broker's workers
call :meth:`BatchingDelivery.deliver` exactly as they call a single delivery, so the
resiliency retries, dead-lettering and acks of ``broker`` apply to each entry unchanged.

Entries are grouped by route ``path``, one call per path (``bulksubscription.go``
``routePathBulkMessageMap``). Each entry's status maps like a single reply; an entry the
app did not answer is retried (``postman/grpc/grpc.go`` ``DeliverBulk``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .broker import Outcome
from .routing import BulkConfig

log = logging.getLogger(__name__)

SendBulk = Callable[[Sequence[Mapping[str, object]], str, str], list[Outcome]]
"""One bulk call to the app: ``(events, subscribed topic, path)`` -> one outcome per event."""


@dataclass(eq=False, slots=True)
class _Entry:
    event: Mapping[str, object]
    path: str
    outcome: Outcome = Outcome.ERROR
    done: threading.Event = field(default_factory=threading.Event)


class BatchingDelivery:
    """Collects the workers' deliveries into batches for one app instance and topic."""

    def __init__(
        self, send: SendBulk, topic: str, config: BulkConfig, stop: threading.Event
    ) -> None:
        self._send = send
        self._topic = topic
        self.config = config
        self._stop = stop
        self._cond = threading.Condition()
        self._pending: list[_Entry] = []
        self._first_at = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"devsidecar-bulk-{topic}", daemon=True
        )
        self._thread.start()

    def deliver(self, event: Mapping[str, object], topic: str, path: str) -> Outcome:
        """A worker's delivery: joins the pending batch, returns its entry's outcome."""
        entry = _Entry(event, path)
        with self._cond:
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append(entry)
            self._cond.notify()
        while not entry.done.wait(0.5):
            if self._stop.is_set():
                return Outcome.ERROR  # shutting down: left unacked
        return entry.outcome

    def _take(self) -> list[_Entry] | None:
        """The next batch: full, or its await window over since its first entry."""
        with self._cond:
            while not self._stop.is_set():
                if len(self._pending) >= self.config.max_messages:
                    break
                if self._pending:
                    left = self._first_at + self.config.max_await_s - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(min(left, 0.5))
                else:
                    self._cond.wait(0.5)
            else:
                return None
            batch = self._pending[: self.config.max_messages]
            del self._pending[: len(batch)]
            # A leftover tail gets a full window of its own (daprd restarts its ticker).
            self._first_at = time.monotonic()
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            by_path: dict[str, list[_Entry]] = {}
            for entry in batch:
                by_path.setdefault(entry.path, []).append(entry)
            for path, entries in by_path.items():
                try:
                    outcomes = self._send([e.event for e in entries], self._topic, path)
                except Exception:
                    log.exception("bulk delivery on topic %s failed unexpectedly", self._topic)
                    outcomes = [Outcome.ERROR] * len(entries)
                for entry, outcome in zip(entries, outcomes, strict=True):
                    entry.outcome = outcome
                    entry.done.set()
