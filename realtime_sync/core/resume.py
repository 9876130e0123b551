"""Per-user buffers of recent events, so a reconnecting client can catch up with `since`."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Buffered:
    event_id: str
    task_key: str
    frame: bytes
    at: float


# What memory a user's buffer costs beyond its frames, measured with tracemalloc on
# CPython 3.11: ~860 bytes for the first entry (deque, dict slot, user id), ~8 bytes per
# further entry. A frame shared by many recipients is one object: counted once.
USER_COST_BYTES = 900
ENTRY_COST_BYTES = 16
# The total bounds' defaults (RESUME_MAX_USERS, RESUME_MAX_BYTES): ~45 MB of users at most,
# 128 MiB in all.
DEFAULT_MAX_USERS = 50_000
DEFAULT_MAX_BYTES = 128 << 20


class EvictionReason(StrEnum):
    """Why a user's buffer was dropped before its entries expired (the metric's label)."""

    USERS = "users"  # more users than `max_users`
    BYTES = "bytes"  # more than `max_bytes` held


class ResumeBuffers:
    """A bounded buffer of encoded frames per user, in routing order.

    Kept for every recipient of an event, connected or not, so a user who was offline
    can resume within the window. Bounded per user (age and count) and in total (users and
    bytes): past a total bound the user appended to least recently loses their whole
    buffer, and their next resume from before that moment is not recovered (the client
    resyncs), even from a snapshot of an earlier run.
    """

    def __init__(
        self,
        *,
        window_s: float,
        max_events: int,
        max_users: int = DEFAULT_MAX_USERS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_evict: Callable[[EvictionReason], None] | None = None,
    ) -> None:
        self._window = window_s
        self._max = max_events
        self._max_users = max_users
        self._max_bytes = max_bytes
        self._on_evict = on_evict
        # Least recently appended first.
        self._users: OrderedDict[str, deque[Buffered]] = OrderedDict()
        # Distinct entries held (by identity), with how many users hold each.
        self._holders: dict[int, tuple[Buffered, int]] = {}
        self._bytes = 0
        # Users evicted lately, when (oldest first); past `max_users` of them the newest
        # forgotten moment stands for all (see `restore`).
        self._evicted: OrderedDict[str, float] = OrderedDict()
        self._forgotten_until = -math.inf

    @property
    def user_count(self) -> int:
        return len(self._users)

    @property
    def byte_count(self) -> int:
        """The memory held, as counted against `max_bytes`."""
        return self._bytes

    def event_count(self) -> int:
        return sum(len(d) for d in self._users.values())

    def append(self, user_id: str, entry: Buffered) -> None:
        """Buffer `entry` for `user_id` (LRU: now the most recent), then enforce the total
        bounds; an eviction is remembered at `entry.at`."""
        buf = self._users.get(user_id)
        if buf is None:
            buf = self._users[user_id] = deque(maxlen=self._max)
            self._bytes += USER_COST_BYTES
        else:
            self._users.move_to_end(user_id)
            if len(buf) == self._max:
                self._release(buf.popleft())
        buf.append(entry)
        self._hold(entry)
        self._enforce(user_id, entry.at)

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
        and expired entries; the count bound keeps the newest. Returns how many were added.

        Nothing from before the user's eviction is restored: what was buffered between
        the snapshot and the eviction is gone, so joining the two would hide a gap.
        """
        buf = self._users.get(user_id)
        current = list(buf) if buf else []
        known = {e.event_id for e in current}
        floor = max(now - self._window, self._evicted.get(user_id, -math.inf))
        floor = max(floor, self._forgotten_until)
        added = [
            e
            for e in older
            if e.event_id not in known and e.at >= now - self._window and e.at > floor
        ]
        if not added:
            return 0
        if buf is not None:
            self._drop_user(user_id)
        merged = deque(added + current, maxlen=self._max)
        self._users[user_id] = merged
        self._bytes += USER_COST_BYTES
        for entry in merged:
            self._hold(entry)
        self._enforce(user_id, now)
        return len(added)

    def purge(self, now: float) -> None:
        """Drop expired entries, users whose buffers are empty, and eviction memories
        older than the window (nothing that old could be resumed anyway)."""
        for user_id in list(self._users):
            buf = self._users[user_id]
            self._trim(buf, now)
            if not buf:
                self._drop_user(user_id)
        cutoff = now - self._window
        while self._evicted:
            user_id, at = next(iter(self._evicted.items()))
            if at >= cutoff:
                break
            del self._evicted[user_id]

    def _trim(self, buf: deque[Buffered], now: float) -> None:
        cutoff = now - self._window
        while buf and buf[0].at < cutoff:
            self._release(buf.popleft())

    # -- accounting and eviction -------------------------------------------------------

    def _hold(self, entry: Buffered) -> None:
        key = id(entry)
        held = self._holders.get(key)
        if held is None:
            self._holders[key] = (entry, 1)
            self._bytes += len(entry.frame) + ENTRY_COST_BYTES
        else:
            self._holders[key] = (entry, held[1] + 1)
            self._bytes += ENTRY_COST_BYTES

    def _release(self, entry: Buffered) -> None:
        key = id(entry)
        _, count = self._holders[key]
        self._bytes -= ENTRY_COST_BYTES
        if count == 1:
            del self._holders[key]
            self._bytes -= len(entry.frame)
        else:
            self._holders[key] = (entry, count - 1)

    def _drop_user(self, user_id: str) -> None:
        for entry in self._users.pop(user_id):
            self._release(entry)
        self._bytes -= USER_COST_BYTES

    def _enforce(self, current: str, now: float) -> None:
        """Evict least recently appended users (never `current`) past the total bounds;
        if `current` alone is over the byte bound, drop its own oldest entries."""
        while len(self._users) > self._max_users:
            self._evict(next(iter(self._users)), now, EvictionReason.USERS)
        while self._bytes > self._max_bytes:
            oldest = next(iter(self._users))
            if oldest != current:
                self._evict(oldest, now, EvictionReason.BYTES)
                continue
            buf = self._users[current]
            if len(buf) <= 1:
                break  # one frame over the bound on its own: kept, the next append evicts it
            self._release(buf.popleft())

    def _evict(self, user_id: str, now: float, reason: EvictionReason) -> None:
        self._drop_user(user_id)
        self._evicted.pop(user_id, None)
        self._evicted[user_id] = now
        if len(self._evicted) > self._max_users:
            _, at = self._evicted.popitem(last=False)
            self._forgotten_until = max(self._forgotten_until, at)
        if self._on_evict is not None:
            self._on_evict(reason)


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
