"""Two service replicas behind ONE sidecar: why each replica needs its own consumer group.

The dev sidecar attaches both instances (two app ports) to one topic, either with a
consumer group per instance (``--delivery broadcast``, what ``consumerID: "{podName}"``
gives on Dapr) or with one shared group (``--delivery competing``, daprd's default, the
app id as the group). Users are connected to either replica, as a load balancer would
spread them. The counts are printed (run with ``-s``) and written to
``test-artifacts/replica-counts-*.json``.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.common import free_port
from tests.integration.conftest import ARTIFACTS, ServiceProcess, service_env
from tests.integration.harness import SidecarProcess, running_sidecar, until

TOPIC = "task-updates"
# Each replica hosts two users; a1 shares some tasks with b1 (so one event goes to both
# replicas), and "roamer" has a connection on each replica.
USERS_A = ("rep-a1", "rep-a2")
USERS_B = ("rep-b1", "rep-b2")


@dataclass
class Watcher:
    """One WebSocket client subscribed to everything, recording every frame it gets."""

    user: str
    replica: str
    ws: ClientConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    def ids(self) -> list[str]:
        return [f["event_id"] for f in self.frames if f["type"] == "task_update"]

    async def read_forever(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(orjson.loads(raw))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()


async def watch(
    stack: AsyncExitStack, service: ServiceProcess, user: str, since: str | None = None
) -> Watcher:
    headers = {"Authorization": f"Bearer {service.token(user)}"}
    ws = await stack.enter_async_context(connect(service.ws_url, additional_headers=headers))
    hello = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert hello["type"] == "connected", hello
    subscribe: dict[str, Any] = {"type": "subscribe", "all": True, "id": "sub"}
    if since is not None:
        subscribe["since"] = since
    await ws.send(orjson.dumps(subscribe).decode())
    watcher = Watcher(user, service.env["REPLICA_ID"], ws)
    watcher.reader = asyncio.create_task(watcher.read_forever())
    await until(lambda: any(f["type"] == "subscribed" for f in watcher.frames), 5)
    return watcher


@contextmanager
def two_replicas(delivery: str) -> Iterator[tuple[SidecarProcess, ServiceProcess, ServiceProcess]]:
    ARTIFACTS.mkdir(exist_ok=True)
    app_ports = [free_port(), free_port()]
    with running_sidecar(app_ports=app_ports, extra_args=["--delivery", delivery]) as sidecar:
        replicas = []
        for name, app_port in zip("ab", app_ports, strict=True):
            ws_port = free_port()
            service = ServiceProcess(
                sidecar=sidecar,
                ws_port=ws_port,
                app_port=app_port,
                # Both replicas run on one host (one instance name), so each may take the
                # other for an earlier run of itself, and resumes here come within a
                # second or two of the start: a time margin would reach back before it
                # (`window_ended`). The count margin covers the reorder between them.
                env=service_env(
                    sidecar,
                    ws_port,
                    app_port,
                    REPLICA_ID=f"replica-{name}-{delivery}",
                    RESUME_MARGIN_S="0",
                ),
                log_path=ARTIFACTS / f"service-replica-{name}-{delivery}.log",
            )
            service.log_path.write_bytes(b"")
            replicas.append(service)
        try:
            for service in replicas:
                service.start()
            yield sidecar, replicas[0], replicas[1]
        finally:
            for service in replicas:
                if service.proc is not None and service.proc.poll() is None:
                    service.stop(signal.SIGKILL)


def has_at_least(watcher: Watcher, count: int) -> Any:
    return lambda: len(watcher.ids()) >= count


def events(prefix: str, count: int) -> list[dict[str, Any]]:
    """Events owned two at a time by each user in turn (so a round-robin split does not
    line up with the owners); every third one of a1's is shared with b1."""
    owners = [*USERS_A, *USERS_B]
    out = []
    for i in range(count):
        owner = owners[(i // 2) % len(owners)]
        event: dict[str, Any] = {
            "type": "TASK_CHANGED",
            "id": f"{prefix}-{i:03d}",
            "user_id": owner,
            "task_id": f"{prefix}-task-{i}",
            "data": {"n": i},
        }
        if owner == "rep-a1" and i % 3 == 0:
            event["metadata"] = {"shared_with": ["rep-b1"]}
        out.append(event)
    return out


def expected_for(user: str, published: list[dict[str, Any]]) -> list[str]:
    return [
        e["id"]
        for e in published
        if e["user_id"] == user or user in e.get("metadata", {}).get("shared_with", [])
    ]


def report(name: str, counts: dict[str, Any]) -> None:
    print(f"\n{name}: {json.dumps(counts, indent=1, sort_keys=True)}")
    (ARTIFACTS / f"replica-counts-{name}.json").write_text(
        json.dumps(counts, indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )


def routed_success(service: ServiceProcess) -> float:
    total = 0.0
    for line in service.metrics().splitlines():
        if line.startswith("realtime_sync_events_received_total{") and 'outcome="success"' in line:
            total += float(line.rpartition(" ")[2])
    return total


async def test_group_per_replica_delivers_every_event_once_and_survives_a_replica_kill() -> None:
    with two_replicas("broadcast") as (sidecar, a, b):
        async with AsyncExitStack() as stack:
            watchers = [await watch(stack, a, u) for u in USERS_A]
            watchers += [await watch(stack, b, u) for u in USERS_B]
            watchers += [await watch(stack, a, "rep-b1")]  # b1's second tab, on replica a
            phase1 = events("bc1", 40)
            for event in phase1:
                assert sidecar.publish(TOPIC, event) == 204
            for w in watchers:
                want = expected_for(w.user, phase1)
                await until(has_at_least(w, len(want)), 10, w.user)
            await asyncio.sleep(0.5)  # room for any duplicate to show up
            counts: dict[str, Any] = {"published": len(phase1), "connections": {}}
            for w in watchers:
                want = expected_for(w.user, phase1)
                counts["connections"][f"{w.user}@{w.replica}"] = {
                    "expected": len(want),
                    "received": len(w.ids()),
                }
                # Every event for the user, once each, and nobody else's.
                assert sorted(w.ids()) == sorted(want), (w.user, w.replica)
                assert len(set(w.ids())) == len(w.ids())

            # --- replica b dies: its clients reconnect to a and resume with `since` ---
            b_watchers = [w for w in watchers if w.replica == b.env["REPLICA_ID"]]
            last_seen = {w.user: w.ids()[-1] for w in b_watchers}
            before_kill = {w.user: w.ids() for w in b_watchers}
            assert b.proc is not None
            b.proc.send_signal(signal.SIGKILL)
            b.proc.wait(10)
            for w in b_watchers:
                await asyncio.wait_for(w.closed.wait(), 5)
            # Events published while b's users are disconnected: only a has them.
            outage = events("bc2", 16)
            a_routed = routed_success(a)
            for event in outage:
                assert sidecar.publish(TOPIC, event) == 204
            await until(lambda: routed_success(a) >= a_routed + len(outage), 10, "a routes")
            resumed = [await watch(stack, a, u, since=last_seen[u]) for u in USERS_B]
            live = events("bc3", 8)
            for event in live:
                assert sidecar.publish(TOPIC, event) == 204
            resume_counts: dict[str, Any] = {}
            for w in resumed:
                missed = expected_for(w.user, outage)
                fresh = missed + expected_for(w.user, live)
                await until(lambda w=w, f=fresh: set(f) <= set(w.ids()), 10, w.user)
                await asyncio.sleep(0.3)
                [subscribed] = [f for f in w.frames if f["type"] == "subscribed"]
                assert subscribed["recovered"] is True, subscribed
                after = w.ids()
                # No gap: everything the user was sent before the kill plus everything
                # after it covers every event for the user.
                everything = expected_for(w.user, phase1 + outage + live)
                assert set(before_kill[w.user]) | set(after) == set(everything)
                # Every event published after the kill arrives exactly once.
                assert sorted(i for i in after if i in set(fresh)) == sorted(fresh)
                # Replicas route concurrently, so a's buffer may order the last events
                # before the kill differently from b: those few can be replayed again
                # (an at-least-once duplicate the client drops by event_id), never lost.
                again = [i for i in after if i in set(before_kill[w.user])]
                assert len(again) == len(set(again))
                assert len(after) == len(fresh) + len(again)
                assert subscribed["replayed"] == len(missed) + len(again)
                resume_counts[w.user] = {
                    "last_seen_before_kill": last_seen[w.user],
                    "seen_before_kill": len(before_kill[w.user]),
                    "missed_during_outage": len(missed),
                    "replayed": subscribed["replayed"],
                    "replayed_again_already_seen": len(again),
                    "live_after_resume": len(fresh) - len(missed),
                    "gap": len(set(everything) - set(before_kill[w.user]) - set(after)),
                }
            counts["after_sigkill_of_b"] = resume_counts
            counts["resume_recovered_metric_on_a"] = a.metric(
                "realtime_sync_resume_total", result="recovered"
            )
            assert counts["resume_recovered_metric_on_a"] >= len(USERS_B)
            report("broadcast", counts)


async def test_one_shared_group_loses_events_for_users_on_the_other_replica() -> None:
    """The documented failure mode: daprd's default consumer group is the app id."""
    with two_replicas("competing") as (sidecar, a, b):
        async with AsyncExitStack() as stack:
            watchers = [await watch(stack, a, u) for u in USERS_A]
            watchers += [await watch(stack, b, u) for u in USERS_B]
            published = events("cc", 40)
            for event in published:
                assert sidecar.publish(TOPIC, event) == 204
            routed = 0.0
            for _ in range(200):
                routed = routed_success(a) + routed_success(b)
                if routed >= len(published):
                    break
                await asyncio.sleep(0.05)
            # Every event was routed (acked) exactly once, by ONE of the replicas ...
            assert routed == len(published)
            await asyncio.sleep(0.5)
            counts: dict[str, Any] = {
                "published": len(published),
                "routed_by_a": routed_success(a),
                "routed_by_b": routed_success(b),
                "connections": {},
            }
            missed_total = 0
            expected_total = 0
            for w in watchers:
                want = expected_for(w.user, published)
                got = w.ids()
                assert set(got) <= set(want), "nobody gets another user's events"
                assert len(set(got)) == len(got)
                missed = len(want) - len(got)
                missed_total += missed
                expected_total += len(want)
                counts["connections"][f"{w.user}@{w.replica}"] = {
                    "expected": len(want),
                    "received": len(got),
                    "missed": missed,
                }
            counts["missed_total"] = missed_total
            counts["expected_total"] = expected_total
            report("competing", counts)
            # ... so each user misses the events that the other replica happened to take.
            assert counts["routed_by_a"] > 0
            assert counts["routed_by_b"] > 0
            for replica in (a, b):
                missed_here = [
                    c["missed"]
                    for key, c in counts["connections"].items()
                    if key.endswith("@" + replica.env["REPLICA_ID"])
                ]
                assert sum(missed_here) > 0, f"users on {replica.env['REPLICA_ID']} missed none"
            assert missed_total == expected_total - sum(len(w.ids()) for w in watchers)
