"""An in-memory state store with the semantics of Dapr's Redis state component.

* ETag = the key's integer version as a string, bumped on every write.
* A stale ETag fails the write; a non-integer ETag is malformed; an ETag on a missing key is
  accepted; ``first-write`` without an ETag fails when the key exists; ``last-write`` ignores
  ETags.
* ``ttlInSeconds`` in an item's metadata expires the key (``-1`` persists it); a write
  without it keeps the key's current expiry, as Redis does.
* Every change goes through :meth:`InMemoryStateStore.apply`, which is atomic: either every
  write of the batch is applied or none is. One lock guards the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum


class Concurrency(StrEnum):
    UNSPECIFIED = ""
    FIRST_WRITE = "first-write"
    LAST_WRITE = "last-write"


class StateErrorKind(Enum):
    ETAG_MISMATCH = "etag mismatch"
    INVALID_ETAG = "invalid etag"
    INVALID_REQUEST = "invalid request"


class StateError(Exception):
    def __init__(self, kind: StateErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class StateWrite:
    """One upsert (``value`` is bytes) or delete (``value`` is None)."""

    key: str
    value: bytes | None
    etag: str | None = None
    concurrency: Concurrency = Concurrency.UNSPECIFIED
    ttl_s: int | None = None  # None keeps the current expiry; -1 persists


@dataclass(frozen=True, slots=True)
class StoredValue:
    data: bytes
    etag: str
    expires_at: float | None  # wall-clock seconds


@dataclass(frozen=True, slots=True)
class CommittedWrite:
    """What a write left behind: enough to replay it from a journal."""

    key: str
    value: bytes | None
    version: int
    expires_at: float | None


@dataclass(slots=True)
class _Entry:
    value: bytes
    version: int
    expires_at: float | None


CommitListener = Callable[[str, Sequence[CommittedWrite]], None]


def parse_ttl(metadata: Mapping[str, str]) -> int | None:
    """``ttlInSeconds`` from item metadata: a positive integer or -1, else StateError."""
    raw = metadata.get("ttlInSeconds")
    if raw is None or raw == "":
        return None
    try:
        ttl = int(raw)
    except ValueError:
        raise StateError(
            StateErrorKind.INVALID_REQUEST, f"ttlInSeconds {raw!r} is not an integer"
        ) from None
    if ttl == 0 or ttl < -1:
        raise StateError(
            StateErrorKind.INVALID_REQUEST, f"ttlInSeconds must be -1 or positive, got {ttl}"
        )
    return ttl


def check_key(key: str) -> None:
    if not key:
        raise StateError(StateErrorKind.INVALID_REQUEST, "state key cannot be empty")
    if "||" in key:
        raise StateError(
            StateErrorKind.INVALID_REQUEST, f"input key/keyPrefix '{key}' can't contain '||'"
        )


class InMemoryStateStore:
    """A thread-safe key/value store with versions, ETags and TTLs."""

    def __init__(self, name: str, *, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self.on_commit: CommitListener | None = None

    def get(self, key: str) -> StoredValue | None:
        check_key(key)
        with self._lock:
            entry = self._live(key, self._clock())
            if entry is None:
                return None
            return StoredValue(entry.value, str(entry.version), entry.expires_at)

    def get_many(self, keys: Iterable[str]) -> list[tuple[str, StoredValue | None]]:
        return [(key, self.get(key)) for key in keys]

    def apply(self, writes: Sequence[StateWrite]) -> None:
        """Apply every write or none; raise StateError for the first that cannot apply."""
        with self._lock:
            now = self._clock()
            staged: dict[str, _Entry | None] = {}
            for write in writes:
                check_key(write.key)
                current = staged[write.key] if write.key in staged else self._live(write.key, now)
                self._check_etag(write, current)
                if write.value is None:
                    staged[write.key] = None
                    continue
                if write.ttl_s is None:
                    expires_at = current.expires_at if current else None
                elif write.ttl_s == -1:
                    expires_at = None
                else:
                    expires_at = now + write.ttl_s
                version = current.version + 1 if current else 1
                staged[write.key] = _Entry(write.value, version, expires_at)
            commits = [
                CommittedWrite(key, entry.value, entry.version, entry.expires_at)
                if entry
                else CommittedWrite(key, None, 0, None)
                for key, entry in staged.items()
            ]
            if self.on_commit is not None and commits:
                self.on_commit(self.name, commits)  # durable before visible
            for key, entry in staged.items():
                if entry is None:
                    self._entries.pop(key, None)
                else:
                    self._entries[key] = entry

    def restore(self, write: CommittedWrite) -> None:
        """Replay a journalled write (no checks)."""
        with self._lock:
            if write.value is None:
                self._entries.pop(write.key, None)
            else:
                self._entries[write.key] = _Entry(write.value, write.version, write.expires_at)

    def snapshot(self) -> list[CommittedWrite]:
        with self._lock:
            now = self._clock()
            return [
                CommittedWrite(key, entry.value, entry.version, entry.expires_at)
                for key in list(self._entries)
                if (entry := self._live(key, now)) is not None
            ]

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at is not None and entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    @staticmethod
    def _check_etag(write: StateWrite, current: _Entry | None) -> None:
        if write.concurrency is Concurrency.LAST_WRITE:
            return
        if write.etag:
            try:
                int(write.etag)
            except ValueError:
                raise StateError(
                    StateErrorKind.INVALID_ETAG, f"invalid etag value: {write.etag}"
                ) from None
            if current is not None and str(current.version) != write.etag:
                raise StateError(
                    StateErrorKind.ETAG_MISMATCH,
                    f"etag {write.etag} does not match version {current.version} "
                    f"of key {write.key}",
                )
        elif write.concurrency is Concurrency.FIRST_WRITE and current is not None:
            raise StateError(
                StateErrorKind.ETAG_MISMATCH,
                f"first-write without an etag on existing key {write.key}",
            )
