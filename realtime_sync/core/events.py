"""Parsing and validating inbound task events, and encoding the outgoing frame."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from realtime_sync.core.shares import (
    InvalidOrder,
    ShareOrder,
    ShareRecord,
    order_of,
    share_key,
    share_version,
)

ACTIONS: Final[dict[str, str]] = {
    "TASK_ADDED": "task_created",
    "TASK_CHANGED": "task_updated",
    "TASK_STATUS_CHANGED": "task_status_changed",
    "TASK_REMOVED": "task_deleted",
    "TASK_RESTORED": "task_restored",
}
UNKNOWN_ACTION: Final = "task_unknown_event"
# A share-list change published by `set_task_shares` for the other replicas: applied to the
# share list (and its revocations pushed), never pushed to clients as a task update.
SHARES_CHANGED: Final = "TASK_SHARES_CHANGED"
REVOKED_ACTION: Final = "task_access_revoked"
MAX_ID_LENGTH: Final = 256

# Deepest nesting of arrays/objects inside `data` or `metadata`. orjson parses 1,024
# levels but writes at most 254, so a deeper event would parse and then fail to become a
# frame (routing crashed, RETRY forever); it is dropped at parse instead.
MAX_NESTING: Final = 128

TaskId = int | str


class InvalidEvent(ValueError):
    """Event data that can never be processed: answered DROP, with this reason logged."""

    def __init__(self, reason: str, limit: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.limit = limit  # the bound it went past, if that is why


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One validated task change, ready to route."""

    event_id: str
    event_type: str
    user_id: str
    task_id: TaskId
    data: dict[str, Any] | None
    timestamp: str
    metadata: dict[str, Any]
    shared_with: tuple[str, ...] | None
    # The order of the share-list change this event carries (None when it carries none).
    share_order: ShareOrder | None = None

    @property
    def shares_change(self) -> ShareRecord | None:
        """The share-list change this event carries, as a record to apply."""
        if self.shared_with is None or self.share_order is None:
            return None
        users = tuple(u for u in self.shared_with if u != self.user_id)
        return ShareRecord(self.user_id, users, self.share_order)

    @property
    def share_key(self) -> str:
        """The state key of this task's share list (owner and typed task id)."""
        return share_key(self.user_id, self.task_id)

    @property
    def pushed(self) -> bool:
        """Whether the event goes to clients as a task update (a bare share-list change
        from `set_task_shares` does not)."""
        return self.event_type != SHARES_CHANGED

    @property
    def action(self) -> str:
        return ACTIONS.get(self.event_type, UNKNOWN_ACTION)

    @property
    def task_key(self) -> str:
        """The string form of the task id: task ids match, and keys are built, by it."""
        return task_key(self.task_id)


def task_key(task_id: TaskId) -> str:
    return str(task_id)


def is_task_id(value: object) -> bool:
    """An integer (not a bool) or a non-empty string of bounded length."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether arrays/objects nest more than `limit` levels in `value` (no recursion).

    Runs on every event: only containers are queued, so a flat object costs one pass."""
    if not isinstance(value, dict | list):
        return False
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth >= limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                pending.append((child, depth + 1))
    return False


def _require_str(payload: dict[str, Any], name: str) -> str:
    value = payload.get(name)
    if value is None:
        raise InvalidEvent(f"missing required field {name!r}")
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise InvalidEvent(f"field {name!r} must be a non-empty string")
    return value


def parse_event(
    raw: bytes,
    *,
    cloudevent_id: str,
    received_at: datetime,
    traceparent: str | None = None,
    max_bytes: int | None = None,
    max_shared_with: int | None = None,
) -> TaskEvent:
    """Validate the CloudEvent's data bytes (JSON whatever the content type says).

    Raises InvalidEvent with a short reason for anything that can never be processed,
    including data past `max_bytes` or a share list longer than `max_shared_with`.
    """
    if not raw:
        raise InvalidEvent("empty data")
    if max_bytes is not None and len(raw) > max_bytes:
        raise InvalidEvent(
            f"event data is {len(raw)} bytes, more than the {max_bytes} allowed",
            "max_event_bytes",
        )
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson also refuses JSON nested deeper than 1,024 levels this way.
        raise InvalidEvent("data is not JSON (or nests deeper than 1024 levels)") from None
    if not isinstance(payload, dict):
        raise InvalidEvent("data is not a JSON object")

    event_type = _require_str(payload, "type")
    user_id = _require_str(payload, "user_id")
    if "task_id" not in payload or payload["task_id"] is None:
        raise InvalidEvent("missing required field 'task_id'")
    task_id = payload["task_id"]
    if not is_task_id(task_id):
        raise InvalidEvent("field 'task_id' must be an integer or a non-empty string")

    event_id = payload.get("id")
    if event_id is None:
        event_id = cloudevent_id
    elif isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_ID_LENGTH:
        raise InvalidEvent("field 'id' must be a non-empty string (or absent)")

    data = payload.get("data")
    if data is not None and not isinstance(data, dict):
        raise InvalidEvent("field 'data' must be an object")

    timestamp = payload.get("timestamp")
    if timestamp is None:
        timestamp = received_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    elif not isinstance(timestamp, str):
        raise InvalidEvent("field 'timestamp' must be an ISO 8601 string")

    metadata = payload.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise InvalidEvent("field 'metadata' must be an object")

    # A field nests no deeper than the brackets the whole document opens (those inside
    # strings only add to the count): when they are few, neither field needs the walk.
    if raw.count(b"{") + raw.count(b"[") > MAX_NESTING + 1:
        for name, value in (("data", data), ("metadata", metadata)):
            if nested_deeper_than(value, MAX_NESTING):
                raise InvalidEvent(f"field {name!r} is nested deeper than {MAX_NESTING} levels")

    shared_with: tuple[str, ...] | None = None
    share_order: ShareOrder | None = None
    if "shared_with" in metadata:
        shares = metadata["shared_with"]
        if not isinstance(shares, list) or not all(
            isinstance(u, str) and u and len(u) <= MAX_ID_LENGTH for u in shares
        ):
            raise InvalidEvent("field 'metadata.shared_with' must be a list of user id strings")
        if max_shared_with is not None and len(shares) > max_shared_with:
            raise InvalidEvent(
                f"metadata.shared_with names {len(shares)} users, "
                f"more than the {max_shared_with} allowed",
                "max_shared_with",
            )
        shared_with = tuple(dict.fromkeys(shares))
        try:
            share_order = order_of(timestamp, share_version(metadata), event_id)
        except InvalidOrder as exc:
            raise InvalidEvent(str(exc)) from None
    elif event_type == SHARES_CHANGED:
        raise InvalidEvent(f"a {SHARES_CHANGED} event needs metadata.shared_with")

    if traceparent and "traceparent" not in metadata:
        metadata = {**metadata, "traceparent": traceparent}

    return TaskEvent(
        event_id=event_id,
        event_type=event_type,
        user_id=user_id,
        task_id=task_id,
        data=data,
        timestamp=timestamp,
        metadata=metadata,
        shared_with=shared_with,
        share_order=share_order,
    )


def encode_revoked(task_id: TaskId, event_id: str) -> bytes:
    """The frame telling a user they lost access to a task (no task data)."""
    return orjson.dumps(
        {"type": "task_update", "action": REVOKED_ACTION, "task_id": task_id, "event_id": event_id}
    )


def encode_update(event: TaskEvent, published_at: float | None = None) -> bytes:
    """The one serialisation of an event, written as-is to every target connection.

    `published_at` (Unix seconds; the CloudEvent `time` daprd stamped at publish, refined
    within its second by the payload's timestamp) is the same on every replica; a client
    echoes its last one as `since_time` when it resumes. Absent when the envelope had none.

    orjson returns its bytes with the capacity of its 4 KiB working buffer; the frame is
    kept in resume buffers for minutes, so it is copied once to its exact size.
    """
    frame: dict[str, Any] = {
        "type": "task_update",
        "action": event.action,
        "event_type": event.event_type,
        "event_id": event.event_id,
        "task_id": event.task_id,
        "user_id": event.user_id,
        "data": event.data,
        "timestamp": event.timestamp,
        "metadata": event.metadata,
    }
    if published_at is not None:
        frame["published_at"] = published_at
    return memoryview(orjson.dumps(frame)).tobytes()


def parse_cloudevent_time(value: object) -> datetime | None:
    """The envelope's `time` (RFC 3339, stamped by daprd at publish), or None if unusable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
