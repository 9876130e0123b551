"""The fan-out step: who receives an event, what they receive, what is kept for resume."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import orjson

from realtime_sync.core.events import TaskEvent, encode_revoked, encode_update
from realtime_sync.core.resume import Buffered, ResumeBuffers
from realtime_sync.core.routing import C, Registry
from realtime_sync.core.wire import encode_text_frame


def recipients(owner: str, shares: Iterable[str]) -> tuple[str, ...]:
    """The users who may see a task: its owner and its share list, each once."""
    return tuple(dict.fromkeys((owner, *shares)))


def fan_out(
    event: TaskEvent,
    shared: Iterable[str],
    registry: Registry[C],
    buffers: ResumeBuffers,
    now: float,
    *,
    published_at: float | None = None,
) -> tuple[bytes, bytes, Sequence[C]]:
    """Buffer the event for every recipient's resume; return its payload (serialised
    once), the payload framed once as a server text frame (the same bytes for every
    socket), and the recipients' connections subscribed to the task. `published_at` (the
    CloudEvent time) goes in the frame and the buffer entry: a resume on another replica
    may replay by it.

    A plain tuple, not a record: this runs once per event on the hot path.
    """
    payload = encode_update(event, published_at)
    users = recipients(event.user_id, shared)
    entry = Buffered(event.event_id, event.task_key, payload, now, published_at)
    buffers.append_many(users, entry)
    return payload, encode_text_frame(payload), registry.targets(users, event.task_key)


def revoke(
    event: TaskEvent,
    users: Iterable[str],
    registry: Registry[C],
    buffers: ResumeBuffers,
    now: float,
    *,
    published_at: float | None = None,
) -> tuple[bytes, Sequence[C]]:
    """Users lost access to the event's task: blank what their resume buffers hold of it
    (that owner's task of that typed id only), buffer the `task_access_revoked` frame in
    its place, and return the frame (framed once) and their connections subscribed to the
    task (or to all)."""
    users = tuple(u for u in dict.fromkeys(users) if u != event.user_id)
    payload = encode_revoked(event.task_id, event.event_id)
    entry = Buffered(event.event_id, event.task_key, payload, now, published_at)

    def belongs(frame: bytes) -> bool:
        try:
            sent = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return True  # unreadable: not kept for a user who lost access
        task_id = sent.get("task_id") if isinstance(sent, dict) else None
        return (
            isinstance(sent, dict)
            and type(task_id) is type(event.task_id)
            and task_id == event.task_id
            and sent.get("user_id", event.user_id) == event.user_id
        )

    for user in users:
        buffers.forget(user, event.task_key, belongs)
        buffers.append(user, entry)
    return encode_text_frame(payload), registry.targets(users, event.task_key)
