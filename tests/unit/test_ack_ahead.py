"""Acknowledging ahead: a handler thread may answer SUCCESS before the loop writes the
event only when its recipients are known and few hand-offs are in flight."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

from realtime_sync.core.events import parse_event
from realtime_sync.hub import Handoff, Hub
from realtime_sync.metrics import Metrics
from realtime_sync.state import ShareLists


def make_hub(ack_ahead: int) -> Hub:
    shares = ShareLists(cast(Any, None), cache_s=60.0, clock=time.monotonic)
    return Hub(
        shares=shares,
        metrics=Metrics(),
        queue_size=10,
        ack_ahead=ack_ahead,
        dedupe_window_s=60.0,
        dedupe_max_ids=100,
        resume_window_s=60.0,
        resume_max_events=10,
    )


def handoff(n: int, shared: tuple[str, ...] | None) -> Handoff:
    event = parse_event(
        b'{"type":"TASK_ADDED","user_id":"u","task_id":%d}' % n,
        cloudevent_id=f"ce-{n}",
        received_at=datetime.now(UTC),
    )
    return Handoff(event, None, shared)


async def test_known_recipients_are_acked_ahead_up_to_the_window() -> None:
    hub = make_hub(ack_ahead=2)
    offered = [handoff(n, ()) for n in range(3)]
    assert all(hub.offer(h, 0.0) for h in offered)
    assert [h.acked for h in offered] == [True, True, False]  # the third waits its verdict
    await hub.wait_idle()  # the loop routes all three and frees their slots
    again = handoff(3, ("v",))
    assert hub.offer(again, 0.0)
    assert again.acked


async def test_an_unknown_share_list_always_waits_for_the_verdict() -> None:
    hub = make_hub(ack_ahead=2)
    h = handoff(1, None)  # routing will read the state store, which may fail: RETRY
    assert hub.offer(h, 0.0)
    assert not h.acked


async def test_ack_ahead_zero_never_acks_before_the_writes() -> None:
    hub = make_hub(ack_ahead=0)
    h = handoff(1, ("v",))
    assert hub.offer(h, 0.0)
    assert not h.acked
    await hub.wait_idle()


async def test_the_drain_waits_for_hand_offs_not_yet_taken_by_the_loop() -> None:
    hub = make_hub(ack_ahead=4)
    h = handoff(1, ())
    assert hub.offer(h, 0.0) and h.acked
    await hub.wait_idle()  # directly: no task switch before it looks
    assert h.wait(0) is not None  # routed (and answered) before the drain went on
