"""The client-message protocol: parsing what clients send, building what the server sends."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import orjson

from realtime_sync.core.events import TaskId, is_task_id, task_key

MAX_TOKEN_LENGTH: Final = 8192
MessageId = int | str | None


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: MessageId
    all: bool
    task_id: TaskId | None
    since: str | None
    # The `published_at` of the event named by `since` (Unix seconds): lets a replica
    # that has not got (or no longer has) that id replay by publish time instead.
    since_time: float | None = None

    @property
    def task_key(self) -> str | None:
        return None if self.task_id is None else task_key(self.task_id)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: MessageId
    all: bool
    task_id: TaskId | None

    @property
    def task_key(self) -> str | None:
        return None if self.task_id is None else task_key(self.task_id)


@dataclass(frozen=True, slots=True)
class Ping:
    id: MessageId


@dataclass(frozen=True, slots=True)
class Auth:
    id: MessageId
    token: str


@dataclass(frozen=True, slots=True)
class Refresh:
    id: MessageId
    token: str


ClientMessage = Subscribe | Unsubscribe | Ping | Auth | Refresh


@dataclass(frozen=True, slots=True)
class BadMessage:
    """A client frame that is answered with an error frame."""

    id: MessageId
    code: str
    message: str


def _message_id(payload: dict[str, Any]) -> MessageId | BadMessage:
    value = payload.get("id")
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and len(value) <= 128:
        return value
    return BadMessage(None, "bad_message", "'id' must be an integer or a short string")


def _target(payload: dict[str, Any], msg_id: MessageId) -> tuple[bool, TaskId | None] | BadMessage:
    everything = payload.get("all", False)
    if not isinstance(everything, bool):
        return BadMessage(msg_id, "bad_message", "'all' must be a boolean")
    task_id = payload.get("taskId")
    if task_id is not None and not is_task_id(task_id):
        return BadMessage(msg_id, "bad_message", "'taskId' must be an integer or a string")
    if everything == (task_id is not None):
        return BadMessage(msg_id, "bad_message", "give exactly one of 'all': true or 'taskId'")
    return everything, task_id


def parse_client_message(raw: str | bytes) -> ClientMessage | BadMessage:
    """Parse one client frame. Never raises: a bad frame becomes a BadMessage."""
    if isinstance(raw, bytes):
        return BadMessage(None, "bad_frame", "binary frames are not supported; send JSON text")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return BadMessage(None, "bad_json", "frame is not valid JSON")
    if not isinstance(payload, dict):
        return BadMessage(None, "bad_message", "frame must be a JSON object")
    msg_id = _message_id(payload)
    if isinstance(msg_id, BadMessage):
        return msg_id
    kind = payload.get("type")
    if not isinstance(kind, str):
        return BadMessage(msg_id, "bad_message", "'type' must be a string")

    match kind:
        case "ping":
            return Ping(msg_id)
        case "subscribe" | "unsubscribe":
            target = _target(payload, msg_id)
            if isinstance(target, BadMessage):
                return target
            everything, task_id = target
            if kind == "unsubscribe":
                return Unsubscribe(msg_id, everything, task_id)
            since = payload.get("since")
            if since is not None:
                if isinstance(since, int) and not isinstance(since, bool):
                    since = str(since)
                if not isinstance(since, str) or not since or len(since) > 256:
                    return BadMessage(msg_id, "bad_message", "'since' must be an event id")
            since_time = payload.get("since_time")
            if since_time is not None and not _is_unix_time(since_time):
                return BadMessage(
                    msg_id, "bad_message", "'since_time' must be a Unix time in seconds"
                )
            return Subscribe(
                msg_id,
                everything,
                task_id,
                since,
                None if since_time is None else float(since_time),
            )
        case "auth" | "refresh":
            token = payload.get("token")
            if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
                return BadMessage(msg_id, "bad_message", "'token' must be a non-empty string")
            return Auth(msg_id, token) if kind == "auth" else Refresh(msg_id, token)
        case _:
            return BadMessage(msg_id, "unknown_type", "unknown message type")


def _is_unix_time(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _with_id(frame: dict[str, Any], msg_id: MessageId) -> dict[str, Any]:
    if msg_id is not None:
        frame["id"] = msg_id
    return frame


def connected_frame(
    connection_id: str, user_id: str, heartbeat_s: float, expires_at: float
) -> bytes:
    """The first frame; `exp` (the token's expiry, Unix time) tells the client when to
    send a `refresh` so the connection outlives its token."""
    return orjson.dumps(
        {
            "type": "connected",
            "connection_id": connection_id,
            "user_id": user_id,
            "heartbeat_s": heartbeat_s,
            "exp": expires_at,
        }
    )


def pong_frame(msg_id: MessageId) -> bytes:
    return orjson.dumps(_with_id({"type": "pong"}, msg_id))


def _target_fields(everything: bool, task_id: TaskId | None) -> dict[str, Any]:
    return {"all": True} if everything else {"taskId": task_id}


def subscribed_frame(msg: Subscribe, *, recovered: bool | None = None, replayed: int = 0) -> bytes:
    frame: dict[str, Any] = {"type": "subscribed", **_target_fields(msg.all, msg.task_id)}
    if recovered is not None:
        frame["recovered"] = recovered
        frame["replayed"] = replayed
    return orjson.dumps(_with_id(frame, msg.id))


def unsubscribed_frame(msg: Unsubscribe) -> bytes:
    frame = {"type": "unsubscribed", **_target_fields(msg.all, msg.task_id)}
    return orjson.dumps(_with_id(frame, msg.id))


def resync_required_frame(msg: Subscribe, reason: str | None = None) -> bytes:
    """`reason` says why the history is gone: `unknown_position`, `window_ended`, `hole`."""
    frame = {
        "type": "resync_required",
        "since": msg.since,
        **_target_fields(msg.all, msg.task_id),
    }
    if reason is not None:
        frame["reason"] = reason
    return orjson.dumps(_with_id(frame, msg.id))


def refreshed_frame(msg_id: MessageId, expires_at: float | None) -> bytes:
    return orjson.dumps(_with_id({"type": "refreshed", "exp": expires_at}, msg_id))


def error_frame(code: str, message: str, msg_id: MessageId = None) -> bytes:
    return orjson.dumps(_with_id({"type": "error", "code": code, "message": message}, msg_id))
