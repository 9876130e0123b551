"""Share lists that change while people watch (issue 14, findings 1-3 and the shared_with
bound): ordered changes, owner-bound lists, revocation pushed and kept out of resume."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Client, ServiceProcess, running_stack
from tests.integration.harness import inbound_retry, wait_until
from tests.integration.test_replicas import two_replicas

BASE = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(ms: int) -> str:
    return (BASE + timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")


def shares_key(owner: str, task: int | str) -> str:
    return "shares:" + orjson.dumps([owner, task]).decode()


def change(owner: str, task: int | str, eid: str, users: list[str], ms: int) -> dict[str, Any]:
    return {
        "type": "TASK_CHANGED",
        "id": eid,
        "user_id": owner,
        "task_id": task,
        "timestamp": at(ms),
        "data": {"secret": eid},
        "metadata": {"shared_with": users},
    }


def private(owner: str, task: int | str, eid: str) -> dict[str, Any]:
    return {"type": "TASK_CHANGED", "id": eid, "user_id": owner, "task_id": task}


def invoke(stack: ServiceProcess, method: str, body: dict[str, Any]) -> tuple[int, bytes]:
    reply = stack.sidecar.invoke(method, body)
    return reply.status, reply.body


async def frames_until(
    client: Client, event_id: str, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Every frame up to and including the task_update with `event_id` (a marker routed after
    everything the test asserts on, so nothing sent before it can still be in flight)."""
    got: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"no {event_id} within {timeout} s: {got[-5:]}")
        frame = await client.next(remaining)
        got.append(frame)
        if frame.get("type") == "task_update" and frame.get("event_id") == event_id:
            return got


@pytest.fixture(scope="module")
def stack() -> Iterator[ServiceProcess]:
    """Redelivery after 2 s, so a newer change published meanwhile lands first."""
    args = inbound_retry("shares", policy="constant", duration="2s", maxRetries=-1)
    with running_stack("shares", sidecar_args=args) as service:
        yield service


async def test_share_unshare_pairs_reordered_by_delivery_leak_nothing(
    stack: ServiceProcess,
) -> None:
    """300 "share with bob" / "unshare" pairs published back to back, delivered
    concurrently: every stored list ends empty and bob gets no later private update."""
    tasks = [f"pair-{i}" for i in range(300)]
    async with stack.client("pair-owner") as owner, stack.client("pair-bob") as bob:
        for i, task in enumerate(tasks):
            stack.publish(change("pair-owner", task, f"{task}-share", ["pair-bob"], 2 * i))
            stack.publish(change("pair-owner", task, f"{task}-unshare", [], 2 * i + 1))
        assert len(await owner.updates(600, timeout=60)) == 600
        for task in tasks:
            stack.publish(private("pair-owner", task, f"{task}-later"))
        assert len(await owner.updates(300, timeout=60)) == 300
        stack.publish(change("pair-owner", "pair-marker", "pair-marker", ["pair-bob"], 10**6))
        got = await frames_until(bob, "pair-marker")
    leaked = [f["event_id"] for f in got if str(f.get("event_id", "")).endswith("-later")]
    assert leaked == []
    for task in tasks:
        stored = stack.sidecar.get_state(shares_key("pair-owner", task))
        assert stored is not None
        assert orjson.loads(stored)["users"] == [], task


async def test_a_redelivered_older_share_does_not_undo_the_unshare(stack: ServiceProcess) -> None:
    async with stack.client("redo-owner") as owner, stack.client("redo-bob") as bob:
        retried_before = stack.sidecar.topic_counters("task-updates").get("retry", 0)
        stack.sidecar.set_fault("unavailable")
        try:
            stack.publish(change("redo-owner", 7, "redo-share", ["redo-bob"], 1))
            wait_until(
                lambda: (
                    stack.sidecar.topic_counters("task-updates").get("retry", 0) > retried_before
                ),
                timeout=10,
            )
        finally:
            stack.sidecar.set_fault(None)
        stack.publish(change("redo-owner", 7, "redo-unshare", [], 2))
        first, second = await owner.updates(2, timeout=15)
        # The scenario: the unshare landed first, then the share event was redelivered.
        assert [first["event_id"], second["event_id"]] == ["redo-unshare", "redo-share"]
        stack.publish(private("redo-owner", 7, "redo-later"))
        await owner.updates(1)
        stack.publish(change("redo-owner", "redo-marker", "redo-marker", ["redo-bob"], 10**6))
        got = await frames_until(bob, "redo-marker")
    assert [f["event_id"] for f in got if f.get("task_id") == 7] == []
    stored = stack.sidecar.get_state(shares_key("redo-owner", 7))
    assert stored is not None
    assert orjson.loads(stored)["users"] == []


async def test_same_task_ids_of_other_owners_or_types_never_share_a_list(
    stack: ServiceProcess,
) -> None:
    async with (
        stack.client("coll-alice") as alice,
        stack.client("coll-bob") as bob,
        stack.client("coll-dave") as dave,
        stack.client("coll-carol") as carol,
    ):
        stack.publish(change("coll-alice", 42, "coll-a1", ["coll-carol"], 1))
        await alice.updates(1)
        stack.publish(private("coll-bob", 42, "coll-b1"))
        stack.publish(private("coll-dave", "42", "coll-d1"))
        stack.publish(private("coll-alice", "42", "coll-a2"))  # alice's *string* "42"
        await bob.updates(1)
        await dave.updates(1)
        await alice.updates(1)
        stack.publish(private("coll-alice", 42, "coll-a3"))
        got = await frames_until(carol, "coll-a3")
    assert [f["event_id"] for f in got if f["type"] == "task_update"] == ["coll-a1", "coll-a3"]


async def test_a_resume_after_revocation_replays_nothing_of_the_task(
    stack: ServiceProcess,
) -> None:
    async with stack.client("res-bob") as bob:
        # One at a time: the sidecar delivers concurrently, the buffer keeps routing order.
        for event in (
            change("res-alice", 50, "res-share", ["res-bob"], 1),
            private("res-alice", 50, "res-u1"),
            private("res-bob", 51, "res-own"),  # bob's own task: still replayed
        ):
            stack.publish(event)
            assert [f["event_id"] for f in await bob.updates(1)] == [event["id"]]
    async with stack.client("res-alice") as alice:
        stack.publish(change("res-alice", 50, "res-unshare", [], 2))
        stack.publish(private("res-alice", 50, "res-u2"))
        await alice.updates(2)
    async with stack.client("res-bob", subscribe_all=False) as bob:
        await bob.send({"type": "subscribe", "all": True, "since": "res-share", "id": "r"})
        reply = await bob.next()
        assert reply["type"] == "subscribed" and reply["recovered"] is True, reply
        replayed = [await bob.next() for _ in range(reply["replayed"])]
    assert [f["event_id"] for f in replayed if f.get("task_id") == 51] == ["res-own"]
    assert [f for f in replayed if f.get("task_id") == 50] == [
        {
            "type": "task_update",
            "action": "task_access_revoked",
            "task_id": 50,
            "event_id": "res-unshare",
        }
    ]


async def test_the_unshared_user_gets_one_revocation_frame(stack: ServiceProcess) -> None:
    async with (
        stack.client("rv-bob") as all_tasks,
        stack.client("rv-bob", subscribe_all=False) as one_task,
        stack.client("rv-bob", subscribe_all=False) as other_task,
    ):
        await one_task.send({"type": "subscribe", "taskId": 60})
        await other_task.send({"type": "subscribe", "taskId": 61})
        assert (await one_task.next())["type"] == "subscribed"
        assert (await other_task.next())["type"] == "subscribed"
        stack.publish(change("rv-alice", 60, "rv-share", ["rv-bob"], 1))
        await all_tasks.updates(1)
        await one_task.updates(1)
        stack.publish(change("rv-alice", 60, "rv-unshare", ["rv-carol"], 2))
        want = {
            "type": "task_update",
            "action": "task_access_revoked",
            "task_id": 60,
            "event_id": "rv-unshare",
        }
        assert await all_tasks.updates(1) == [want]
        assert await one_task.updates(1) == [want]
        stack.publish(change("rv-alice", 61, "rv-marker", ["rv-bob"], 3))
        assert [f["event_id"] for f in await other_task.updates(1)] == ["rv-marker"]
        got = await frames_until(all_tasks, "rv-marker")
    assert [f["event_id"] for f in got] == ["rv-marker"]  # the revocation came once


async def test_set_task_shares_revokes_on_every_replica() -> None:
    """set_task_shares reaches one replica; the user it removes is connected to both."""
    with two_replicas("broadcast") as (sidecar, a, b):
        async with a.client("x-bob") as on_a, b.client("x-bob") as on_b:
            sidecar.publish("task-updates", change("x-alice", 70, "x-share", ["x-bob"], 1))
            await on_a.updates(1)
            await on_b.updates(1)
            status, body = invoke(
                a, "set_task_shares", {"task_id": 70, "user_id": "x-alice", "user_ids": []}
            )
            assert status == 200, body
            assert orjson.loads(body)["applied"] is True
            [revoked_a] = await on_a.updates(1)
            [revoked_b] = await on_b.updates(1)
            assert revoked_a["action"] == revoked_b["action"] == "task_access_revoked"
            assert revoked_a["event_id"] == revoked_b["event_id"]
            assert set(revoked_a) == {"type", "action", "task_id", "event_id"}
            sidecar.publish("task-updates", private("x-alice", 70, "x-later"))
            sidecar.publish("task-updates", private("x-bob", 71, "x-marker"))
            for conn in (on_a, on_b):
                got = await frames_until(conn, "x-marker")
                assert [f["event_id"] for f in got] == ["x-marker"]


async def test_an_event_naming_too_many_users_is_dropped() -> None:
    with running_stack(
        "shares-bounds", service_env_extra={"MAX_EVENT_BYTES": str(4 << 20)}
    ) as stack:
        async with stack.client("big-owner") as owner:
            crowd = [f"u{i}" for i in range(50_000)]
            stack.publish(change("big-owner", 1, "big-1", crowd, 1))
            stack.publish(private("big-owner", 1, "big-after"))
            got = await frames_until(owner, "big-after")
        assert [f["event_id"] for f in got] == ["big-after"]
        wait_until(
            lambda: (
                stack.metric("realtime_sync_events_over_limit_total", limit="max_shared_with") == 1
            ),
            timeout=5,
        )
        # Dapr saw DROP (the sidecar counts the answer once it has read it).
        wait_until(lambda: stack.sidecar.topic_counters("task-updates").get("drop", 0) == 1, 5)
        assert stack.sidecar.get_state(shares_key("big-owner", 1)) is None
