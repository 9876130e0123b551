"""The fan-out step: who receives an event, what they receive, what is kept for resume."""

from __future__ import annotations

from collections.abc import Iterable

from realtime_sync.core.events import TaskEvent, encode_update
from realtime_sync.core.resume import Buffered, ResumeBuffers
from realtime_sync.core.routing import C, Registry
from realtime_sync.core.wire import encode_text_frame


def recipients(owner: str, shares: Iterable[str]) -> list[str]:
    """The users who may see a task: its owner and its share list, each once."""
    return list(dict.fromkeys([owner, *shares]))


def fan_out(
    event: TaskEvent,
    shared: Iterable[str],
    registry: Registry[C],
    buffers: ResumeBuffers,
    now: float,
) -> tuple[bytes, bytes, list[C]]:
    """Buffer the event for every recipient's resume; return its payload (serialised
    once), the payload framed once as a server text frame (the same bytes for every
    socket), and the recipients' connections subscribed to the task.

    A plain tuple, not a record: this runs once per event on the hot path.
    """
    payload = encode_update(event)
    users = recipients(event.user_id, shared)
    entry = Buffered(event.event_id, event.task_key, payload, now)
    for user in users:
        buffers.append(user, entry)
    return payload, encode_text_frame(payload), registry.targets(users, event.task_key)
