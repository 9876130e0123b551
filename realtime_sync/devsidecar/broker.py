"""Topics, consumer groups and deliveries: an in-memory stand-in for Redis Streams.

* A topic retains its last 10,000 CloudEvents (inspectable through ``/dev/topics``), acked
  or not; a consumer group created later reads every retained message it has not acked, as a
  new Redis Streams group reads from ``0``.
* Each consumer group has ``concurrency`` worker threads. A worker takes the next ready
  delivery, asks a member (round-robin) to deliver it, and applies daprd's reply mapping:

  ==========================  =============================================================
  outcome                     what happens
  ==========================  =============================================================
  SUCCESS                     ack
  RETRY / ERROR               redeliver as the inbound retry policy of the loaded
                              resiliency says; with no policy, or once it is exhausted: to
                              the dead-letter topic if the subscription has one, else
                              logged and dropped; ack
  DROP                        to the dead-letter topic if any; ack
  UNIMPLEMENTED               "non-retriable error" warning; ack (the message is lost)
  expired (``expiration``)    not delivered; to the dead-letter topic if any; ack
  no routing rule matches     not delivered; to the dead-letter topic if any; ack
  ==========================  =============================================================

* The dead-letter topic is an ordinary topic: the same CloudEvent is published to it.
* An app instance whose health probe fails is *paused*: nothing is delivered to it (retries
  wait too) until it is healthy again, as daprd stops and restarts its app subscriptions.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from .config import RetryPolicy
from .envelope import is_expired
from .journal import Journal, Record
from .routing import Subscription

log = logging.getLogger(__name__)

RETAINED_PER_TOPIC = 10_000
REPLY_COUNTERS = (
    "success",
    "retry",
    "drop",
    "error",
    "unimplemented",
    "dead_lettered",
    "expired",
)


class Outcome(StrEnum):
    """What came back from one ``OnTopicEvent`` call."""

    SUCCESS = "success"
    RETRY = "retry"
    DROP = "drop"
    ERROR = "error"  # any gRPC error but UNIMPLEMENTED, an unknown status, a bad envelope
    UNIMPLEMENTED = "unimplemented"


Deliver = Callable[[Mapping[str, object], str, str], Outcome]
"""Deliver a CloudEvent to one app instance: ``(event, subscribed topic, path)``."""


@dataclass(frozen=True, slots=True)
class Member:
    """One app instance consuming a topic within a consumer group."""

    instance: str
    subscription: Subscription
    deliver: Deliver


@dataclass(eq=False, slots=True)
class Message:
    seq: int
    topic: str
    event: dict[str, object]


@dataclass(eq=False, slots=True)
class _Delivery:
    message: Message
    failures: int = 0


def _event_id(message: Message) -> str:
    return str(message.event.get("id", ""))


class _ConsumerGroup:
    def __init__(
        self,
        name: str,
        topic: str,
        concurrency: int,
        process: Callable[[_ConsumerGroup, _Delivery, Member], None],
    ) -> None:
        self.name = name
        self.topic = topic
        self._process = process
        self._cond = threading.Condition()
        self._members: list[Member] = []
        self._paused: set[str] = set()
        self._turn = 0
        self._ready: deque[_Delivery] = deque()
        self._delayed: list[tuple[float, int, _Delivery]] = []
        self._order = itertools.count()
        self._outstanding: dict[int, Message] = {}
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"devsidecar-{topic}-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def add_member(self, member: Member) -> None:
        with self._cond:
            self._members = [m for m in self._members if m.instance != member.instance]
            self._members.append(member)

    def members(self) -> list[str]:
        with self._cond:
            return [m.instance for m in self._members]

    def set_paused(self, instance: str, paused: bool) -> None:
        with self._cond:
            if paused:
                self._paused.add(instance)
            else:
                self._paused.discard(instance)
            self._cond.notify_all()

    def _pick_member(self) -> Member | None:
        """The next active member, round-robin (called with the lock held)."""
        active = [m for m in self._members if m.instance not in self._paused]
        if not active:
            return None
        member = active[self._turn % len(active)]
        self._turn += 1
        return member

    def enqueue(self, message: Message) -> None:
        with self._cond:
            self._outstanding[message.seq] = message
            self._ready.append(_Delivery(message))
            self._cond.notify()

    def retry_later(self, delivery: _Delivery, delay_s: float) -> None:
        with self._cond:
            due = time.monotonic() + delay_s
            heapq.heappush(self._delayed, (due, next(self._order), delivery))
            self._cond.notify()

    def done(self, seq: int) -> None:
        with self._cond:
            self._outstanding.pop(seq, None)

    def outstanding(self) -> list[Message]:
        with self._cond:
            return list(self._outstanding.values())

    def pending(self) -> int:
        with self._cond:
            return len(self._outstanding)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def join(self, deadline: float) -> None:
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _next(self) -> tuple[_Delivery, Member] | None:
        with self._cond:
            while True:
                if self._stopping:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self._ready.append(heapq.heappop(self._delayed)[2])
                if self._ready:
                    member = self._pick_member()
                    if member is not None:
                        return self._ready.popleft(), member
                    self._cond.wait()  # every member paused: wait for set_paused
                    continue
                timeout = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(timeout)

    def _work(self) -> None:
        while (taken := self._next()) is not None:
            delivery, member = taken
            try:
                self._process(self, delivery, member)
            except Exception:
                # A bug here must not kill the worker silently: log it and retry later.
                log.exception("delivery of a message on topic %s failed unexpectedly", self.topic)
                self.retry_later(delivery, 1.0)


class Broker:
    """Retains published CloudEvents per topic and delivers them to consumer groups."""

    def __init__(
        self,
        *,
        retry: RetryPolicy | None,
        concurrency: int,
        journal: Journal | None = None,
        retained_per_topic: int = RETAINED_PER_TOPIC,
    ) -> None:
        self._retry = retry
        self._concurrency = concurrency
        self._journal = journal
        self._retained_per_topic = retained_per_topic
        self._lock = threading.Lock()
        self._topics: dict[str, deque[Message]] = {}
        self._groups: dict[tuple[str, str], _ConsumerGroup] = {}
        self._acked: dict[str, set[int]] = {}
        self._published: Counter[str] = Counter()
        self._replies: dict[str, dict[str, Counter[str]]] = {}
        self._next_seq = 1
        self._stopped = False
        self._no_new_groups = False
        self._jitter = random.Random()  # noqa: S311 - backoff jitter, not cryptography

    # --- publishing -------------------------------------------------------------------

    def publish(self, topic: str, event: dict[str, object]) -> Message:
        with self._lock:
            message = Message(self._next_seq, topic, event)
            self._next_seq += 1
            if self._journal is not None:
                self._journal.append(
                    {"op": "publish", "seq": message.seq, "topic": topic, "event": event}
                )
            self._retain(message)
            self._published[topic] += 1
            groups = [g for (_, t), g in self._groups.items() if t == topic]
        for group in groups:
            group.enqueue(message)
        return message

    def _retain(self, message: Message) -> None:
        retained = self._topics.setdefault(message.topic, deque())
        if len(retained) >= self._retained_per_topic:
            evicted = retained.popleft()
            for seqs in self._acked.values():
                seqs.discard(evicted.seq)
        retained.append(message)

    # --- subscribing ------------------------------------------------------------------

    def subscribe(self, group_name: str, member: Member) -> None:
        """Add ``member`` to the group; a new group starts with every unacked retained message."""
        topic = member.subscription.topic
        with self._lock:
            if self._stopped or self._no_new_groups:
                return
            group = self._groups.get((group_name, topic))
            if group is not None:
                group.add_member(member)
                return
            group = _ConsumerGroup(group_name, topic, self._concurrency, self._process)
            group.add_member(member)
            self._groups[(group_name, topic)] = group
            acked = self._acked.setdefault(group_name, set())
            backlog = [m for m in self._topics.get(topic, ()) if m.seq not in acked]
            for message in backlog:
                group.enqueue(message)
            group.start()
        if backlog:
            log.info(
                "consumer group %s on topic %s starts with %d retained message(s)",
                group_name,
                topic,
                len(backlog),
            )

    # --- delivering -------------------------------------------------------------------

    def _process(self, group: _ConsumerGroup, delivery: _Delivery, member: Member) -> None:
        event = delivery.message.event
        topic = group.topic
        if is_expired(event):
            log.info(
                "message %s on topic %s expired: not delivered", _event_id(delivery.message), topic
            )
            self._count(member.instance, topic, "expired")
            self._finish(group, delivery, member, dead_letter=True)
            return
        path = member.subscription.route(event)
        if path is None:
            log.info(
                "message %s on topic %s matches no routing rule", _event_id(delivery.message), topic
            )
            self._finish(group, delivery, member, dead_letter=True)
            return
        outcome = member.deliver(event, topic, path)
        with self._lock:
            if self._stopped:
                return  # left unacked: redelivered after a restart with a journal
        self._count(member.instance, topic, outcome.value)
        message_id = _event_id(delivery.message)
        match outcome:
            case Outcome.SUCCESS:
                self._finish(group, delivery, member, dead_letter=False)
            case Outcome.UNIMPLEMENTED:
                log.warning(
                    "non-retriable error from app %s for message %s on topic %s: the app "
                    "answered UNIMPLEMENTED (no handler for this topic/path); acked, the "
                    "message is lost",
                    member.instance,
                    message_id,
                    topic,
                )
                self._finish(group, delivery, member, dead_letter=False)
            case Outcome.DROP:
                log.warning(
                    "app %s dropped message %s on topic %s", member.instance, message_id, topic
                )
                self._finish(group, delivery, member, dead_letter=True)
            case _:
                delivery.failures += 1
                retry = self._retry
                if retry is not None and not retry.exhausted(delivery.failures):
                    group.retry_later(delivery, retry.delay(delivery.failures, self._jitter))
                    return
                log.warning(
                    "message %s on topic %s failed %d time(s): %s",
                    message_id,
                    topic,
                    delivery.failures,
                    "retries exhausted" if retry is not None else "no inbound retry policy",
                )
                if member.subscription.dead_letter_topic is None:
                    log.warning(
                        "message %s on topic %s dropped: no dead-letter topic", message_id, topic
                    )
                self._finish(group, delivery, member, dead_letter=True)

    def _finish(
        self, group: _ConsumerGroup, delivery: _Delivery, member: Member, *, dead_letter: bool
    ) -> None:
        message = delivery.message
        dead_letter_topic = member.subscription.dead_letter_topic if dead_letter else None
        if dead_letter_topic:
            with self._lock:
                if self._stopped:
                    return
            self.publish(dead_letter_topic, dict(message.event))
            self._count(member.instance, group.topic, "dead_lettered")
            log.warning(
                "message %s from topic %s dead-lettered to %s",
                _event_id(message),
                group.topic,
                dead_letter_topic,
            )
        with self._lock:
            if self._stopped:
                return
            if self._journal is not None:
                self._journal.append({"op": "ack", "group": group.name, "seq": message.seq})
            self._acked.setdefault(group.name, set()).add(message.seq)
        group.done(message.seq)

    def _count(self, instance: str, topic: str, counter: str) -> None:
        with self._lock:
            self._replies.setdefault(instance, {}).setdefault(topic, Counter())[counter] += 1

    def set_paused(self, instance: str, paused: bool) -> None:
        """Stop (or resume) delivering to one app instance, in every group it is in."""
        with self._lock:
            groups = list(self._groups.values())
        for group in groups:
            group.set_paused(instance, paused)

    # --- inspection, persistence, lifecycle -------------------------------------------

    def topic_messages(self, topic: str) -> list[dict[str, object]]:
        with self._lock:
            return [dict(m.event) for m in self._topics.get(topic, ())]

    def stats(self) -> dict[str, object]:
        with self._lock:
            groups = list(self._groups.values())
            published = dict(self._published)
            replies = {
                instance: {topic: dict(counts) for topic, counts in by_topic.items()}
                for instance, by_topic in self._replies.items()
            }
        pending: Counter[str] = Counter()
        for group in groups:
            pending[group.topic] += group.pending()
        totals: dict[str, dict[str, int]] = {}
        for by_topic in replies.values():
            for topic, counts in by_topic.items():
                total = totals.setdefault(topic, dict.fromkeys(REPLY_COUNTERS, 0))
                for name, value in counts.items():
                    total[name] += value
        topics = sorted(set(published) | set(totals) | set(pending))
        return {
            "published": published,
            "pending": {topic: pending[topic] for topic in topics},
            "topics": {
                topic: {
                    **totals.get(topic, dict.fromkeys(REPLY_COUNTERS, 0)),
                    "published": published.get(topic, 0),
                    "pending": pending[topic],
                }
                for topic in topics
            },
            "replies_by_instance": {
                instance: {
                    topic: {name: counts.get(name, 0) for name in REPLY_COUNTERS}
                    for topic, counts in by_topic.items()
                }
                for instance, by_topic in replies.items()
            },
            "groups": [
                {
                    "group": group.name,
                    "topic": group.topic,
                    "members": group.members(),
                    "pending": group.pending(),
                }
                for group in groups
            ],
        }

    def restore(self, record: Record) -> None:
        """Replay one journalled ``publish`` or ``ack`` record."""
        seq = record.get("seq")
        if not isinstance(seq, int):
            return
        with self._lock:
            if record.get("op") == "publish":
                topic, event = record.get("topic"), record.get("event")
                if isinstance(topic, str) and isinstance(event, dict):
                    self._retain(Message(seq, topic, event))
                    self._next_seq = max(self._next_seq, seq + 1)
            elif record.get("op") == "ack" and isinstance(record.get("group"), str):
                self._acked.setdefault(str(record["group"]), set()).add(seq)

    def snapshot_records(self) -> list[Record]:
        """Journal records for everything still live: retained or pending messages, acks."""
        with self._lock:
            messages = {m.seq: m for retained in self._topics.values() for m in retained}
            for group in self._groups.values():
                for message in group.outstanding():
                    messages.setdefault(message.seq, message)
            records: list[Record] = [
                {"op": "publish", "seq": seq, "topic": m.topic, "event": m.event}
                for seq, m in sorted(messages.items())
            ]
            for group_name, seqs in sorted(self._acked.items()):
                records.extend(
                    {"op": "ack", "group": group_name, "seq": seq}
                    for seq in sorted(seqs & messages.keys())
                )
            return records

    def stop_delivering(self, grace_s: float) -> None:
        """daprd's ``StopAllSubscriptionsForever`` at the start of block-shutdown: nothing new
        is delivered; deliveries in flight finish (up to ``grace_s``) and their replies count."""
        deadline = time.monotonic() + grace_s
        with self._lock:
            self._no_new_groups = True
            groups = list(self._groups.values())
        for group in groups:
            group.stop()
        for group in groups:
            group.join(deadline)

    def stop(self, grace_s: float) -> None:
        """Stop the workers; unacked messages stay unacked (and journalled)."""
        deadline = time.monotonic() + grace_s
        with self._lock:
            self._stopped = True
            groups = list(self._groups.values())
        for group in groups:
            group.stop()
        for group in groups:
            group.join(deadline)
