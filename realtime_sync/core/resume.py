"""Per-user buffers of recent events, so a reconnecting client can catch up with `since`."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Buffered:
    event_id: str
    task_key: str
    frame: bytes
    at: float


class ResumeBuffers:
    """A bounded (count and age) buffer of encoded frames per user, in routing order.

    Kept for every recipient of an event, connected or not, so a user who was offline
    can resume within the window.
    """

    def __init__(self, *, window_s: float, max_events: int) -> None:
        self._window = window_s
        self._max = max_events
        self._users: dict[str, deque[Buffered]] = {}

    @property
    def user_count(self) -> int:
        return len(self._users)

    def event_count(self) -> int:
        return sum(len(d) for d in self._users.values())

    def append(self, user_id: str, entry: Buffered) -> None:
        buf = self._users.get(user_id)
        if buf is None:
            buf = self._users[user_id] = deque(maxlen=self._max)
        buf.append(entry)

    def since(
        self, user_id: str, event_id: str, now: float, matches: Callable[[str], bool]
    ) -> list[bytes] | None:
        """The frames after `event_id` that `matches` accepts, oldest first.

        None when `event_id` is not (or no longer) buffered for this user: the client must
        resync from the task API.
        """
        buf = self._users.get(user_id)
        if not buf:
            return None
        self._trim(buf, now)
        for index in range(len(buf) - 1, -1, -1):
            if buf[index].event_id == event_id:
                return [e.frame for e in list(buf)[index + 1 :] if matches(e.task_key)]
        return None

    def entries(self, user_id: str, now: float) -> list[Buffered]:
        """The user's buffered events, oldest first (for a snapshot)."""
        buf = self._users.get(user_id)
        if not buf:
            return []
        self._trim(buf, now)
        return list(buf)

    def restore(self, user_id: str, older: list[Buffered], now: float) -> int:
        """Put events from a snapshot before the ones buffered since, skipping known ids
        and expired entries; the count bound keeps the newest. Returns how many were added."""
        buf = self._users.get(user_id)
        current = list(buf) if buf else []
        known = {e.event_id for e in current}
        cutoff = now - self._window
        added = [e for e in older if e.event_id not in known and e.at >= cutoff]
        if not added:
            return 0
        merged = deque(added + current, maxlen=self._max)
        self._users[user_id] = merged
        return len(added)

    def purge(self, now: float) -> None:
        """Drop expired entries and users whose buffers are empty."""
        for user_id in list(self._users):
            buf = self._users[user_id]
            self._trim(buf, now)
            if not buf:
                del self._users[user_id]

    def _trim(self, buf: deque[Buffered], now: float) -> None:
        cutoff = now - self._window
        while buf and buf[0].at < cutoff:
            buf.popleft()


def encode_snapshot(entries: list[Buffered], limit: int) -> bytes:
    """The newest `limit` entries of a user's buffer, for the state store."""
    return orjson.dumps(
        [[e.event_id, e.task_key, e.frame.decode(), e.at] for e in entries[-limit:]]
    )


def decode_snapshot(raw: bytes) -> list[Buffered]:
    """Entries of a stored snapshot; anything malformed is skipped."""
    if not raw:
        return []
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(value, list):
        return []
    found: list[Buffered] = []
    for item in value:
        if (
            isinstance(item, list)
            and len(item) == 4
            and isinstance(item[0], str)
            and isinstance(item[1], str)
            and isinstance(item[2], str)
            and isinstance(item[3], int | float)
            and not isinstance(item[3], bool)
        ):
            found.append(Buffered(item[0], item[1], item[2].encode(), float(item[3])))
    return found
