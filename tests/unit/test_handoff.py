"""The hand-off claim: an event the handler thread gave up on is never routed late, and
one the loop already took is waited for (never answered RETRY and delivered too)."""

from __future__ import annotations

from datetime import UTC, datetime

from realtime_sync.core.events import parse_event
from realtime_sync.hub import Handoff


def handoff() -> Handoff:
    event = parse_event(
        b'{"type":"TASK_ADDED","user_id":"u","task_id":1}',
        cloudevent_id="ce-1",
        received_at=datetime.now(UTC),
    )
    return Handoff(event, None)


def test_an_abandoned_hand_off_cannot_be_taken_by_the_loop() -> None:
    h = handoff()
    assert h.abandon() is True
    assert h.take() is False


def test_a_taken_hand_off_cannot_be_abandoned() -> None:
    h = handoff()
    assert h.take() is True
    assert h.abandon() is False


def test_the_thread_gets_the_verdict_the_loop_answered() -> None:
    from realtime_sync.core.outcomes import Verdict

    h = handoff()
    assert h.wait(0.01) is None  # not answered yet
    assert h.take()
    h.answer(Verdict.SUCCESS)
    assert h.wait(0.01) is Verdict.SUCCESS
