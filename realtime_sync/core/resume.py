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
                return [e.frame for e in list(buf)[index + 1 :] if e.frame and matches(e.task_key)]
        return None

    def forget(self, user_id: str, task_key: str, belongs: Callable[[bytes], bool]) -> int:
        """Blank the user's buffered frames of a task they lost access to (those of
        `task_key` that `belongs` accepts): the ids stay, so a `since` naming one still
        resumes, but nothing of the task is replayed. Returns how many were blanked."""
        buf = self._users.get(user_id)
        if not buf:
            return 0
        blanked = 0
        for index, entry in enumerate(buf):
            if entry.task_key == task_key and entry.frame and belongs(entry.frame):
                buf[index] = Buffered(entry.event_id, entry.task_key, b"", entry.at)
                blanked += 1
        return blanked

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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A user's buffer as saved by one run of the service at its graceful shutdown.

    `generation` names that run and `saved_at` is when it saved (Unix time): a later run
    may only merge it if its own history joins on without a gap (see `contiguous`).
    """

    generation: str
    saved_at: float
    entries: list[Buffered]


def contiguous(
    snapshot: Snapshot, *, claimed: str | None, history_since: float, margin_s: float
) -> bool:
    """Whether this run's buffers continue `snapshot` with no event missing in between.

    Either this run took over from the run that saved it (it claimed that generation's
    hand-over: same sidecar, so what was published meanwhile waited for this run), or this
    run was already receiving every event when the snapshot was saved (`history_since`,
    with `margin_s` for clock skew between replicas). Otherwise a run in between may have
    delivered events it never saved (it crashed, or the user was offline at its shutdown),
    and merging would claim a recovery with a hole in it.
    """
    if claimed is not None and snapshot.generation == claimed:
        return True
    return snapshot.saved_at >= history_since + margin_s


def encode_snapshot(
    entries: list[Buffered], limit: int, *, generation: str, saved_at: float
) -> bytes:
    """The newest `limit` entries of a user's buffer, for the state store."""
    return orjson.dumps(
        {
            "generation": generation,
            "saved_at": saved_at,
            "entries": [[e.event_id, e.task_key, e.frame.decode(), e.at] for e in entries[-limit:]],
        }
    )


def decode_snapshot(raw: bytes) -> Snapshot | None:
    """A stored snapshot, or None if it is missing or malformed (malformed entries are
    skipped)."""
    if not raw:
        return None
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    generation, saved_at, items = (
        value.get("generation"),
        value.get("saved_at"),
        value.get("entries"),
    )
    if (
        not isinstance(generation, str)
        or not isinstance(saved_at, int | float)
        or isinstance(saved_at, bool)
        or not isinstance(items, list)
    ):
        return None
    return Snapshot(generation, float(saved_at), _entries(items))


def _entries(items: list[Any]) -> list[Buffered]:
    found: list[Buffered] = []
    for item in items:
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
