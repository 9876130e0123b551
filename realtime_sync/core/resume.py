"""Per-user buffers of recent events, and the resume that replays what a client missed.

**Why a margin.** Every replica receives every event, but in its own order (concurrent
deliveries, per-task queues, redeliveries after RETRY) and at its own pace. A client's
`since` is a position in the order of the replica it was on; on another replica an event
that came after `since` there can sit *before* `since` here. So a replay starts a reorder
margin before the anchor, and the overlap is dropped by the client by `event_id`.

**The reorder assumption.** An event the client missed (it came after `since` on the old
replica) arrived on this replica at most `margin_s` before `since` did, and was published
at most `margin_s` before `since` was. The publish time is the CloudEvent `time` the
publishing daprd stamps once on the broker message, so every replica reads the same one
(components-contrib `pubsub/envelope.go`: `NewCloudEventsEnvelope` sets
`time.Now().Format(time.RFC3339)`, whole seconds; `FromCloudEvent` keeps a publisher's own
`time`); the subscriber refines it within its second by the payload's timestamp.
The default (2 s, `RESUME_MARGIN_S`) covers the reorder of concurrent deliveries and
routing (milliseconds). Not covered unless the margin is raised: an event the old replica
answered RETRY for and had not had redelivered when it died, if that redelivery backoff
exceeded the margin. A wider margin costs more overlap, and resyncs for resumes anchored
within the first `margin_s` of a restarted replica's run (`window_ended`).

**What a replay promises.** `ResumeBuffers.replay` answers either a `Replay` or a
`Resync`. A `Replay`'s frames are, in this replica's order, oldest first, every buffered
event the subscription matches that

* came after `since` here, arrived less than `margin_s` before it, or is one of the
  `margin_events` entries up to `since` (when `since` is buffered here; `since` itself
  included), or
* was published at or after `since_time - margin_s` (when the client sent `since_time`;
  an entry without a publish time counts by its arrival),

and this replica holds every event for the user that arrived after that point (nothing was
trimmed there; this run was already receiving, or no earlier run of its consumer group
could have acknowledged events it never got: `first_run`; no hole was marked). Whatever has not
arrived yet reaches the client live: the subscription is registered in the same loop step
as the replay is taken, so there is no need to wait for a lagging replica. A `Resync` is
answered only when that cannot be promised:

* `unknown_position`: `since` is not buffered here and the client sent no `since_time`;
* `window_ended`: the span the replay must cover reaches back past this replica's history
  for the user (entries trimmed by age or count, the user's whole buffer evicted by the
  total bounds, or this run started later and an earlier run behind the same sidecar may
  have acknowledged events in that span);
* `hole`: an event for the user was acknowledged to Dapr but never buffered or written
  (`mark_hole`) at or after the start of that span.

Frames blanked by a revocation (`forget`) are never replayed; their ids still anchor.
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeGuard

import orjson

#: How far before `since` a replay reaches, in time (arrival and publish time).
REORDER_MARGIN_S: Final = 2.0
#: ... and in entries of the user's buffer (the wider of the two is replayed).
REORDER_MARGIN_EVENTS: Final = 64


@dataclass(frozen=True, slots=True)
class Buffered:
    """One event in a user's buffer.

    `at` is its arrival on this replica (Unix time); `published` its publish time (the
    CloudEvent `time`, refined within its second by the payload's timestamp), the same on
    every replica, or None when the envelope had none.
    """

    event_id: str
    task_key: str
    frame: bytes
    at: float
    published: float | None = None


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


class ResyncReason(enum.StrEnum):
    UNKNOWN_POSITION = "unknown_position"
    WINDOW_ENDED = "window_ended"
    HOLE = "hole"


@dataclass(frozen=True, slots=True)
class Resync:
    """The history this client needs is not here: it must refetch from the task API."""

    reason: ResyncReason


@dataclass(frozen=True, slots=True)
class Replay:
    """The frames to send before live events (see the module docstring for the promise)."""

    frames: list[bytes]


@dataclass(slots=True)
class _History:
    entries: deque[Buffered]
    # The newest arrival time of an entry trimmed from `entries`, and whether by count.
    lost_to: float = -math.inf
    trimmed: bool = False
    # Where the user's history begins when a snapshot reached before the replica's start.
    start: float | None = None


class ResumeBuffers:
    """A bounded buffer of encoded frames per user, in routing order.

    Kept for every recipient of an event, connected or not, so a user who was offline
    can resume within the window. Bounded per user (age and count) and in total (users and
    bytes): past a total bound the user appended to least recently loses their whole
    buffer, and their next resume from before that moment is not recovered (the client
    resyncs), even from a snapshot of an earlier run. `started_at` is when this replica
    began receiving every event: nothing that arrived before it is here.
    """

    def __init__(
        self,
        *,
        window_s: float,
        max_events: int,
        max_users: int = DEFAULT_MAX_USERS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        on_evict: Callable[[EvictionReason], None] | None = None,
        started_at: float = -math.inf,
        margin_s: float = REORDER_MARGIN_S,
        margin_events: int = REORDER_MARGIN_EVENTS,
    ) -> None:
        self._window = window_s
        self._max = max_events
        self._max_users = max_users
        self._max_bytes = max_bytes
        self._on_evict = on_evict
        self._started_at = started_at
        self._margin_s = margin_s
        self._margin_events = margin_events
        # Least recently appended first.
        self._users: OrderedDict[str, _History] = OrderedDict()
        # Distinct entries held (by identity), with how many users hold each.
        self._holders: dict[int, tuple[Buffered, int]] = {}
        self._bytes = 0
        # Users evicted lately, when (oldest first); past `max_users` of them the newest
        # forgotten moment stands for all.
        self._evicted: OrderedDict[str, float] = OrderedDict()
        self._forgotten_until = -math.inf
        # user -> the newest time an acknowledged event of theirs was lost here
        self._holes: dict[str, float] = {}

    @property
    def user_count(self) -> int:
        return len(self._users)

    @property
    def byte_count(self) -> int:
        """The memory held, as counted against `max_bytes`."""
        return self._bytes

    def event_count(self) -> int:
        return sum(len(h.entries) for h in self._users.values())

    def append(self, user_id: str, entry: Buffered) -> None:
        """Buffer `entry` for `user_id` (see `append_many`)."""
        self.append_many((user_id,), entry)

    def append_many(self, user_ids: Iterable[str], entry: Buffered) -> None:
        """Buffer one `entry` for each of `user_ids` (LRU: each now among the most recent),
        then enforce the total bounds once; an eviction is remembered at `entry.at`.

        The hot path of a fan-out to many users: per user only the deque and LRU moves;
        the byte accounting of the new entry, and of the entries trimmed by count (in a
        fan-out most users drop the same old entry), is settled once per call.
        """
        users = self._users
        limit = self._max
        held = 0
        new_users = 0
        trimmed: dict[int, list[Any]] = {}  # id(old entry) -> [entry, users that dropped it]
        last = ""
        for user_id in user_ids:
            history = users.get(user_id)
            if history is None:
                history = users[user_id] = _History(deque())
                new_users += 1
            else:
                users.move_to_end(user_id)
                entries = history.entries
                if len(entries) >= limit:
                    old = entries.popleft()
                    history.lost_to = max(history.lost_to, old.at)
                    history.trimmed = True
                    dropped = trimmed.get(id(old))
                    if dropped is None:
                        trimmed[id(old)] = dropped = [old, 0]
                    dropped[1] += 1
            history.entries.append(entry)
            held += 1
            last = user_id
        if not held:
            return
        self._bytes += new_users * USER_COST_BYTES
        for old, count in trimmed.values():
            self._release(old, count)
        self._hold(entry, held)
        self._enforce(last, entry.at)

    def first_run(self) -> None:
        """No earlier run of this replica's consumer group delivered events within the
        window: its history is not cut at `started_at` (a user's buffer that reaches
        before the start reaches before the first event)."""
        self._started_at = -math.inf

    def mark_hole(self, user_id: str, at: float) -> None:
        """An event for this user that arrived at `at` was acknowledged but never buffered
        or written: any resume whose replay must reach back to `at` answers resync."""
        self._holes[user_id] = max(at, self._holes.get(user_id, at))

    def replay(
        self,
        user_id: str,
        since: str | None,
        since_time: float | None,
        now: float,
        matches: Callable[[str], bool],
    ) -> Replay | Resync:
        """What a client resuming after `since` (published at `since_time`) must be sent."""
        history = self._users.get(user_id)
        if history is not None:
            self._trim(history, now)
        entries = list(history.entries) if history is not None else []
        floor = max(self._floor(user_id, history), now - self._window)
        anchor = _last_index(entries, since) if since is not None else None
        cutoff = None if since_time is None else since_time - self._margin_s
        hole = self._holes.get(user_id, -math.inf)
        if anchor is not None:
            # needed: what arrived after `reach`, and the count margin before the anchor
            reach = entries[anchor].at - self._margin_s
            first = max(0, anchor + 1 - self._margin_events)
            if anchor + 1 < self._margin_events and history is not None and history.trimmed:
                return Resync(ResyncReason.WINDOW_ENDED)  # the count margin was trimmed
            if floor > reach:
                return Resync(ResyncReason.WINDOW_ENDED)
        elif cutoff is not None:
            # needed: what was published at or after `cutoff` (so arrived at or after it)
            reach = cutoff
            first = len(entries)
            if floor >= reach:
                return Resync(ResyncReason.WINDOW_ENDED)
        else:
            return Resync(ResyncReason.UNKNOWN_POSITION)
        if hole >= reach:
            return Resync(ResyncReason.HOLE)
        frames = [
            e.frame
            for i, e in enumerate(entries)
            if e.frame
            and (i >= first or e.at > reach or _published_after(e, cutoff))
            and matches(e.task_key)
        ]
        return Replay(frames)

    def forget(self, user_id: str, task_key: str, belongs: Callable[[bytes], bool]) -> int:
        """Blank the user's buffered frames of a task they lost access to (those of
        `task_key` that `belongs` accepts): the ids stay, so a `since` naming one still
        resumes, but nothing of the task is replayed. Returns how many were blanked."""
        history = self._users.get(user_id)
        if history is None:
            return 0
        buf = history.entries
        blanked = 0
        for index, entry in enumerate(buf):
            if entry.task_key == task_key and entry.frame and belongs(entry.frame):
                blank = Buffered(entry.event_id, entry.task_key, b"", entry.at, entry.published)
                self._release(entry)
                self._hold(blank)
                buf[index] = blank
                blanked += 1
        return blanked

    def entries(self, user_id: str, now: float) -> list[Buffered]:
        """The user's buffered events, oldest first (for a snapshot)."""
        history = self._users.get(user_id)
        if history is None:
            return []
        self._trim(history, now)
        return list(history.entries)

    def floor(self, user_id: str) -> float:
        """Every event for the user that arrived after this is buffered (-inf: since ever);
        saved with a snapshot so the next run knows how far back the snapshot reaches."""
        return self._floor(user_id, self._users.get(user_id))

    def restore(
        self, user_id: str, older: list[Buffered], now: float, floor: float | None = None
    ) -> int:
        """Put events from a snapshot before the ones buffered since, skipping known ids
        and expired entries; the count bound keeps the newest. Returns how many were added.

        The snapshot must join this run's history without a gap (`contiguous`); then the
        user's history here reaches back to the snapshot's `floor` (without one, to its
        oldest entry), unless this run already trimmed some of its own (the snapshot would
        sit behind that hole). Nothing from before the user's eviction is restored: what
        was buffered between the snapshot and the eviction is gone.
        """
        history = self._users.get(user_id)
        if history is not None and history.lost_to > -math.inf:
            return 0  # this run lost entries of its own: the snapshot cannot join on
        current = list(history.entries) if history is not None else []
        known = {e.event_id for e in current}
        evicted = max(self._evicted.get(user_id, -math.inf), self._forgotten_until)
        cutoff = now - self._window
        added = [e for e in older if e.event_id not in known and e.at >= cutoff and e.at > evicted]
        if not added:
            return 0
        if history is None:
            history = self._users[user_id] = _History(deque())
            self._bytes += USER_COST_BYTES
        else:
            self._users.move_to_end(user_id)
        own_start = self._started_at if history.start is None else history.start
        for entry in current:
            self._release(entry)
        merged = added + current
        excess = max(0, len(merged) - self._max)
        history.entries = deque(merged[excess:])
        for entry in history.entries:
            self._hold(entry)
        reaches = _before(added[0].at) if floor is None else floor
        history.start = min(own_start, reaches)
        for entry in merged[:excess]:
            self._lose(history, entry, by_count=True)
        self._enforce(user_id, now)
        return len(added) - min(excess, len(added))

    def purge(self, now: float) -> None:
        """Drop expired entries, users whose buffers are empty, and eviction memories and
        holes older than the window (a replay reaching back that far is answered
        `window_ended` anyway)."""
        for user_id in list(self._users):
            history = self._users[user_id]
            self._trim(history, now)
            if not history.entries:
                self._drop_user(user_id)
        cutoff = now - self._window
        while self._evicted:
            user_id, at = next(iter(self._evicted.items()))
            if at >= cutoff:
                break
            del self._evicted[user_id]
        for user_id, at in list(self._holes.items()):
            if at < cutoff:
                del self._holes[user_id]

    def _trim(self, history: _History, now: float) -> None:
        cutoff = now - self._window
        entries = history.entries
        while entries and entries[0].at < cutoff:
            self._trim_oldest(history, by_count=False)

    def _trim_oldest(self, history: _History, *, by_count: bool) -> None:
        entry = history.entries.popleft()
        self._release(entry)
        self._lose(history, entry, by_count=by_count)

    def _floor(self, user_id: str, history: _History | None) -> float:
        """Every event for the user that arrived after this is buffered here."""
        start = self._started_at if history is None or history.start is None else history.start
        lost = -math.inf if history is None else history.lost_to
        evicted = self._evicted.get(user_id, -math.inf)
        return max(start, lost, evicted, self._forgotten_until)

    @staticmethod
    def _lose(history: _History, entry: Buffered, *, by_count: bool) -> None:
        history.lost_to = max(history.lost_to, entry.at)
        history.trimmed = by_count

    # -- accounting and eviction -------------------------------------------------------

    def _hold(self, entry: Buffered, users: int = 1) -> None:
        key = id(entry)
        held = self._holders.get(key)
        if held is None:
            self._holders[key] = (entry, users)
            self._bytes += len(entry.frame) + ENTRY_COST_BYTES * users
        else:
            self._holders[key] = (entry, held[1] + users)
            self._bytes += ENTRY_COST_BYTES * users

    def _release(self, entry: Buffered, users: int = 1) -> None:
        key = id(entry)
        _, count = self._holders[key]
        self._bytes -= ENTRY_COST_BYTES * users
        if count == users:
            del self._holders[key]
            self._bytes -= len(entry.frame)
        else:
            self._holders[key] = (entry, count - users)

    def _drop_user(self, user_id: str) -> None:
        for entry in self._users.pop(user_id).entries:
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
            history = self._users[current]
            if len(history.entries) <= 1:
                break  # one frame over the bound on its own: kept, the next append evicts it
            self._trim_oldest(history, by_count=True)

    def _evict(self, user_id: str, now: float, reason: EvictionReason) -> None:
        self._drop_user(user_id)
        self._evicted.pop(user_id, None)
        self._evicted[user_id] = now
        if len(self._evicted) > self._max_users:
            _, at = self._evicted.popitem(last=False)
            self._forgotten_until = max(self._forgotten_until, at)
        if self._on_evict is not None:
            self._on_evict(reason)


def _last_index(entries: list[Buffered], event_id: str) -> int | None:
    for index in range(len(entries) - 1, -1, -1):
        if entries[index].event_id == event_id:
            return index
    return None


def _published_after(entry: Buffered, cutoff: float | None) -> bool:
    if cutoff is None:
        return False
    when = entry.published if entry.published is not None else entry.at
    return when >= cutoff


def _before(at: float) -> float:
    """A floor just below `at`: an entry that arrived at `at` itself is held."""
    return at - 1e-6


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A user's buffer as saved by one run of the service at its graceful shutdown.

    `generation` names that run and `saved_at` is when it saved (Unix time): a later run
    may only merge it if its own history joins on without a gap (see `contiguous`).
    `floor`: every event for the user that arrived after it is in `entries` (None: unknown,
    a snapshot of an older version; then only from the oldest entry on).
    """

    generation: str
    saved_at: float
    entries: list[Buffered]
    floor: float | None = None


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
    entries: list[Buffered],
    limit: int,
    *,
    generation: str,
    saved_at: float,
    floor: float | None = None,
) -> bytes:
    """The newest `limit` entries of a user's buffer (whose history reaches back to
    `floor`), for the state store."""
    if len(entries) > limit:
        floor = entries[-limit - 1].at  # the newest entry left out
    elif floor is not None:
        floor = max(floor, 0.0)  # JSON has no -inf: "since ever" is the epoch
    return orjson.dumps(
        {
            "generation": generation,
            "saved_at": saved_at,
            "floor": floor,
            "entries": [
                [e.event_id, e.task_key, e.frame.decode(), e.at, e.published]
                for e in entries[-limit:]
            ],
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
    floor = value.get("floor")
    return Snapshot(
        generation, float(saved_at), _entries(items), float(floor) if _is_time(floor) else None
    )


def _entries(items: list[Any]) -> list[Buffered]:
    """Entries of 4 (an older run's, without a publish time) or 5 fields; others skipped."""
    found: list[Buffered] = []
    for item in items:
        if (
            isinstance(item, list)
            and len(item) in (4, 5)
            and isinstance(item[0], str)
            and isinstance(item[1], str)
            and isinstance(item[2], str)
            and _is_time(item[3])
            and (len(item) == 4 or item[4] is None or _is_time(item[4]))
        ):
            published = float(item[4]) if len(item) == 5 and item[4] is not None else None
            found.append(Buffered(item[0], item[1], item[2].encode(), float(item[3]), published))
    return found


def _is_time(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
