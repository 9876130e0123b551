"""The daprd stand-in of the benchmark: concurrent OnTopicEvent callers on the app port.

Events enter as daprd sends them: a TopicEventRequest (CloudEvent envelope built by the
dev sidecar's envelope code, JSON data re-serialised with sorted keys) on the
`AppCallback` gRPC service, with `pubsubname`/`traceparent` call metadata, from
`--concurrency` concurrent callers on one HTTP/2 channel. `--rate 0` keeps every caller
busy (closed loop: ingest, fan-out); `--rate R` paces R events/s (probe latency).

`--batch N` (N > 1) sends `OnBulkTopicEvent` calls of N entries instead, as daprd does for
a bulk subscription: closed loop, each caller sends full batches back to back; paced, ONE
caller sends whatever is due every `--await-ms` (at most N), one call at a time, as daprd's
default bulk subscriber flushes on count or its await window. Outcomes count per entry.

Prints one JSON object: outcomes within the measured window, rate, CPU used.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import grpc
import orjson
from dapr.proto.runtime.v1 import appcallback_pb2, appcallback_pb2_grpc

from bench import shapes
from realtime_sync.devsidecar.envelope import (
    Publication,
    build_cloud_event,
    bulk_entry,
    topic_event_request,
)
from realtime_sync.devsidecar.wellknown import Empty

PUBSUB = "pubsub"
TOPIC = "task-updates"
METADATA = (("pubsubname", PUBSUB),)
OUTCOMES = {0: "success", 1: "retry", 2: "drop"}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Callers:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        tasks = (
            shapes.team_tasks(args.connections)
            if args.shape == "team"
            else shapes.personal_tasks(args.connections)
        )
        probes = shapes.probe_tasks(args.probes) if args.probes else None
        self.source = shapes.EventSource(tasks, args.run_id, probes, args.probe_every)
        self.path = ""
        self.template = appcallback_pb2.TopicEventRequest()
        self.template_at = 0.0
        self.counts: dict[str, int] = {"success": 0, "retry": 0, "drop": 0, "error": 0}
        self.window_counts: dict[str, int] = dict(self.counts)
        self.max_lag_s = 0.0
        self.latencies: list[float] = []

    def _refresh_template(self) -> None:
        """The daprd envelope for this second (its `time` is the publish time)."""
        now = time.time()
        if now - self.template_at < 1.0:
            return
        event = build_cloud_event(
            Publication(PUBSUB, TOPIC, b"{}", "application/json"),
            source="bench-publisher",
            now=datetime.fromtimestamp(now, UTC),
        )
        self.template = topic_event_request(event, topic=TOPIC, pubsub_name=PUBSUB, path=self.path)
        self.template_at = now

    def request(self) -> appcallback_pb2.TopicEventRequest:
        self._refresh_template()
        req = appcallback_pb2.TopicEventRequest()
        req.CopyFrom(self.template)
        req.id = f"{self.args.run_id}-ce-{self.source.seq}"
        req.data = self.source.next_data()
        return req

    def bulk_request(self, size: int) -> appcallback_pb2.TopicEventBulkRequest:
        """A daprd bulk envelope of `size` entries (each one `request()`'s CloudEvent)."""
        entries = []
        for _ in range(size):
            single = self.request()
            entries.append(bulk_entry(f"e-{self.source.seq}", single))
        return appcallback_pb2.TopicEventBulkRequest(
            id=f"{self.args.run_id}-bulk-{self.source.seq}",
            entries=entries,
            metadata={"pubsubname": PUBSUB},
            topic=TOPIC,
            pubsub_name=PUBSUB,
            type="com.dapr.event.sent.bulk",
            path=self.path,
        )

    def _count(self, outcomes: list[str]) -> None:
        done = time.monotonic()
        in_window = self.window[0] <= done < self.window[1]
        for outcome in outcomes:
            self.counts[outcome] += 1
            if in_window:
                self.window_counts[outcome] += 1

    async def _send_bulk(self, stub: Any, size: int) -> None:
        req = self.bulk_request(size)
        try:
            reply = await stub.OnBulkTopicEvent(req, metadata=METADATA, timeout=30)
            outcomes = [OUTCOMES.get(s.status, "error") for s in reply.statuses]
            outcomes += ["error"] * (size - len(outcomes))
        except grpc.aio.AioRpcError:
            outcomes = ["error"] * size
        self._count(outcomes)

    async def _bulk_closed(self, stub: Any, start: float) -> None:
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        while time.monotonic() < self.window[1]:
            await self._send_bulk(stub, self.args.batch)

    async def _bulk_paced(self, stub: Any, start: float) -> None:
        """Every await window, the events due so far (at most a batch) in one call."""
        a = self.args
        tick = a.await_ms / 1000
        sent = 0
        while True:
            now = time.monotonic()
            if now >= self.window[1]:
                return
            due = int((now - start) * a.rate) - sent
            if due > 0:
                size = min(due, a.batch)
                self.max_lag_s = max(self.max_lag_s, (due - size) / a.rate)
                sent += size
                await self._send_bulk(stub, size)
            else:
                await asyncio.sleep(tick)

    def _slot(self, start: float, index: int, k: int) -> float | None:
        """Seconds caller `index` waits before its k-th call (paced at the target rate,
        unpaced when the rate is 0), or None once the window is over."""
        a = self.args
        now = time.monotonic()
        if now >= self.window[1]:
            return None
        if a.rate <= 0:
            return 0.0
        due: float = start + (index + k * a.concurrency) / a.rate
        if due >= self.window[1]:
            return None
        if due <= now:
            self.max_lag_s = max(self.max_lag_s, now - due)
            return 0.0
        return due - now

    def _begin(self, listed: Any) -> float:
        """As daprd does first: take the route from ListTopicSubscriptions; then fix the
        measuring window. Returns when the callers start."""
        for sub in listed.subscriptions:
            if sub.pubsub_name == PUBSUB and sub.topic == TOPIC:
                self.path = sub.routes.default or ""
        start = time.monotonic() + 0.05
        self.window = (start + self.args.warmup, start + self.args.warmup + self.args.duration)
        return start

    def run_threads(self) -> dict[str, Any]:
        """The same callers as threads on the sync stub (cheaper per call than grpc.aio)."""
        a = self.args
        options = [("grpc.max_send_message_length", 4 << 20)]
        lock = threading.Lock()
        with grpc.insecure_channel(f"127.0.0.1:{a.port}", options=options) as channel:
            stub = appcallback_pb2_grpc.AppCallbackStub(channel)
            start = self._begin(stub.ListTopicSubscriptions(Empty(), timeout=10))

            def caller(index: int) -> None:
                for k in itertools.count():
                    wait = self._slot(start, index, k)
                    if wait is None:
                        return
                    time.sleep(wait)
                    with lock:
                        req = self.request()
                    try:
                        reply = stub.OnTopicEvent(req, metadata=METADATA, timeout=10)
                        outcome = OUTCOMES.get(reply.status, "error")
                    except grpc.RpcError:
                        outcome = "error"
                    done = time.monotonic()
                    with lock:
                        self.counts[outcome] += 1
                        if self.window[0] <= done < self.window[1]:
                            self.window_counts[outcome] += 1

            threads = [threading.Thread(target=caller, args=(i,)) for i in range(a.concurrency)]
            for t in threads:
                t.start()
            time.sleep(max(0.0, self.window[0] - time.monotonic()))
            cpu0 = _cpu_s()
            time.sleep(max(0.0, self.window[1] - time.monotonic()))
            cpu1 = _cpu_s()
            for t in threads:
                t.join(a.duration + 30)
        return self._result((cpu1 - cpu0) / a.duration)

    async def run(self) -> dict[str, Any]:
        a = self.args
        options = [("grpc.max_send_message_length", 4 << 20)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}", options=options) as channel:
            stub = appcallback_pb2_grpc.AppCallbackStub(channel)
            start = self._begin(await stub.ListTopicSubscriptions(Empty(), timeout=10))
            cpu: list[float] = []

            async def mark_window() -> None:
                await asyncio.sleep(max(0.0, self.window[0] - time.monotonic()))
                cpu.append(_cpu_s())
                await asyncio.sleep(max(0.0, self.window[1] - time.monotonic()))
                cpu.append(_cpu_s())

            async def caller(index: int) -> None:
                for k in itertools.count():
                    wait = self._slot(start, index, k)
                    if wait is None:
                        return
                    await asyncio.sleep(wait)
                    req = self.request()
                    try:
                        reply = await stub.OnTopicEvent(req, metadata=METADATA, timeout=10)
                        outcome = OUTCOMES.get(reply.status, "error")
                    except grpc.aio.AioRpcError:
                        outcome = "error"
                    done = time.monotonic()
                    self.counts[outcome] += 1
                    if self.window[0] <= done < self.window[1]:
                        self.window_counts[outcome] += 1

            if a.batch > 1 and a.rate > 0:
                await asyncio.gather(mark_window(), self._bulk_paced(stub, start))
            elif a.batch > 1:
                await asyncio.gather(
                    mark_window(), *(self._bulk_closed(stub, start) for _ in range(a.concurrency))
                )
            else:
                await asyncio.gather(mark_window(), *(caller(i) for i in range(a.concurrency)))
        return self._result((cpu[1] - cpu[0]) / a.duration if len(cpu) == 2 else 0.0)

    def _result(self, busy: float) -> dict[str, Any]:
        a = self.args
        return {
            "impl": a.impl,
            "concurrency": a.concurrency,
            "batch": a.batch,
            "rate_target": a.rate,
            "window_s": a.duration,
            "window": self.window_counts,
            "total": self.counts,
            "accepted_per_s": self.window_counts["success"] / a.duration,
            "caller_cpu_share": round(busy, 3),
            "max_lag_ms": round(self.max_lag_s * 1e3, 1),
            "events_sent": self.source.seq,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--shape", choices=("team", "personal"), default="personal")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--probes", type=int, default=0)
    p.add_argument("--probe-every", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--run-id", default="bench")
    p.add_argument("--impl", choices=("threads", "aio"), default="aio")
    p.add_argument("--batch", type=int, default=1, help="entries per OnBulkTopicEvent call")
    p.add_argument("--await-ms", type=float, default=5.0, help="paced bulk: flush interval")
    args = p.parse_args(argv)
    if not 1 <= args.concurrency <= 64 or not 0 < args.duration <= 300:
        p.error("concurrency 1..64 and duration 0..300 s")
    if not 1 <= args.batch <= 10_000 or not 0 < args.await_ms <= 10_000:
        p.error("batch 1..10000 and await-ms 0..10000")
    if args.batch > 1 and args.impl == "threads":
        p.error("--batch needs --impl aio")
    callers = Callers(args)
    result = callers.run_threads() if args.impl == "threads" else asyncio.run(callers.run())
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
