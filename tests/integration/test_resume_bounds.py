"""Resume memory an attacker cannot push: events sharing with many new users keep the
service's memory flat, and a user evicted that way resumes with `resync_required`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ServiceProcess, running_stack
from tests.integration.harness import wait_until

MAX_USERS = 1_000
SHARES_PER_EVENT = 200  # small lists: many events, each naming new users
EVENTS = 250  # 50,000 new users: ~50 MB of resume buffers if nothing bounded them
RSS_GROWTH_BOUND_KB = 20_000  # measured: +7 MB bounded, +45 MB unbounded


@pytest.fixture(scope="module")
def bounded() -> Iterator[ServiceProcess]:
    extra = {"RESUME_MAX_USERS": str(MAX_USERS)}
    with running_stack("resume-bounds", service_env_extra=extra) as service:
        yield service


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def share_event(n: int) -> dict[str, Any]:
    users = [f"flood-{n}-{k}" for k in range(SHARES_PER_EVENT)]
    return {
        "type": "TASK_CHANGED",
        "user_id": "flooder",
        "task_id": f"flood-{n}",
        "id": f"flood-{n}",
        "metadata": {"shared_with": users},
    }


def routed(service: ServiceProcess) -> float:
    return service.metric(
        "realtime_sync_events_received_total", type="TASK_CHANGED", outcome="success"
    )


async def test_sharing_with_many_new_users_keeps_memory_flat_and_evicts_to_resync(
    bounded: ServiceProcess,
) -> None:
    service = bounded
    assert service.proc is not None
    async with service.client("victim") as victim:
        assert (
            service.publish(
                {"type": "TASK_CHANGED", "user_id": "victim", "task_id": 1, "id": "victim-1"}
            )
            == 204
        )
        [update] = await victim.updates(1)
        assert update["event_id"] == "victim-1"

    # Warm up: fill the buffers to their bound once, so allocator pools exist before the
    # measurement starts.
    for n in range(10):
        assert service.publish(share_event(n)) == 204
    wait_until(lambda: routed(service) >= 11, 30, message="warm-up events not routed")
    before = rss_kb(service.proc.pid)

    for n in range(10, EVENTS):
        assert service.publish(share_event(n)) == 204
    wait_until(
        lambda: routed(service) >= EVENTS + 1,
        60,
        message=lambda: f"routed {routed(service)} of {EVENTS + 1}",
    )
    after = rss_kb(service.proc.pid)

    assert after - before < RSS_GROWTH_BOUND_KB, (before, after)
    evicted = service.metric("realtime_sync_resume_evictions_total", bound="users")
    assert evicted >= EVENTS * SHARES_PER_EVENT - MAX_USERS
    # The gauge is refreshed by the hub's housekeeping (every few seconds).
    users = wait_until(lambda: service.metric("realtime_sync_resume_users") or None, 15)
    assert users <= MAX_USERS

    # The victim was appended to least recently: evicted. Its resume is not recovered.
    async with service.client("victim", subscribe_all=False) as victim:
        await victim.send({"type": "subscribe", "all": True, "since": "victim-1", "id": "r"})
        assert await victim.next() == {
            "type": "resync_required",
            "since": "victim-1",
            "all": True,
            "id": "r",
            "reason": "unknown_position",
        }
        reply = await victim.next()
        assert (reply["type"], reply["recovered"]) == ("subscribed", False)
