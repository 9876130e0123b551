"""Share lists as ordered, owner-bound records, and the rule that applies a change.

A share-list change (an event's `metadata.shared_with`, or `set_task_shares`) carries an
order: `(shares_version, timestamp, change id)`, compared left to right. `shares_version` is
the integer the task service may increment per task (absent: 0, so a versioned change wins
over an unversioned one); the timestamp is the change's ISO 8601 `timestamp` in
microseconds; the change id (the event id) breaks ties deterministically. A change is
applied only if its order is higher than the stored one, so an older change never
overwrites a newer one, whatever the delivery order, the redeliveries or the replica.

A list is stored under a key built from its owner AND its typed task id (task 42 and task
"42", or alice's 42 and bob's 42, are different keys), and the record names its owner: a
record whose owner is not the event's owner is never used for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

SHARES_PREFIX: Final = "shares:"
TaskId = int | str


class InvalidOrder(ValueError):
    """A share-list change whose order cannot be read (a malformed timestamp or version)."""


@dataclass(frozen=True, slots=True, order=True)
class ShareOrder:
    """Where a change stands among the changes of one task's share list."""

    version: int
    at_us: int
    change_id: str

    def encode(self) -> list[Any]:
        return [self.version, self.at_us, self.change_id]


def share_key(owner: str, task_id: TaskId) -> str:
    """The state key of a task's share list: owner and typed id, JSON-encoded so no two
    (owner, id) pairs share a key (`shares:["alice",42]` vs `shares:["alice","42"]`)."""
    return SHARES_PREFIX + orjson.dumps([owner, task_id]).decode()


def timestamp_us(value: str) -> int:
    """An ISO 8601 timestamp as microseconds since the epoch (naive means UTC)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidOrder("timestamp must be ISO 8601 to order a share-list change") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def share_version(metadata: dict[str, Any]) -> int:
    """`metadata.shares_version`: a non-negative integer, 0 when absent."""
    version = metadata.get("shares_version")
    if version is None:
        return 0
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**63:
        raise InvalidOrder("metadata.shares_version must be a non-negative integer")
    return version


def order_of(timestamp: str, version: int, change_id: str) -> ShareOrder:
    return ShareOrder(version, timestamp_us(timestamp), change_id)


@dataclass(frozen=True, slots=True)
class ShareRecord:
    """A stored share list: its owner, users, order, and the users its change removed
    (so every replica that sees the same change tells the same users they lost access)."""

    owner: str
    users: tuple[str, ...]
    order: ShareOrder
    revoked: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "owner": self.owner,
                "users": list(self.users),
                "order": self.order.encode(),
                "revoked": list(self.revoked),
            }
        )


def _strings(value: object) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return None
    return tuple(dict.fromkeys(value))


def decode_record(raw: bytes) -> ShareRecord | None:
    """A stored record, or None when absent or not a record (a bare list written by an older
    version has no owner and no order: it is never used)."""
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    owner, order = value.get("owner"), value.get("order")
    users, revoked = _strings(value.get("users")), _strings(value.get("revoked", []))
    if not isinstance(owner, str) or users is None or revoked is None:
        return None
    if (
        not isinstance(order, list)
        or len(order) != 3
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in order[:2])
        or not isinstance(order[2], str)
    ):
        return None
    return ShareRecord(owner, users, ShareOrder(order[0], order[1], order[2]), revoked)


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one change against the stored record.

    `current`: the list in force afterwards (route by it); `write`: whether it must be
    stored; `revoked`: the users to tell they lost access, when this change is the one in
    force (re-seen on another replica or redelivered: the same users again, deduplicated per
    connection by the event id); `foreign`: the stored record named another owner.
    """

    current: ShareRecord
    write: bool
    revoked: tuple[str, ...]
    foreign: bool = False


def apply_change(stored: ShareRecord | None, change: ShareRecord) -> Applied:
    """Apply `change` over `stored` by the ordering rule (pure)."""
    foreign = stored is not None and stored.owner != change.owner
    if stored is None or foreign:
        return Applied(change, True, (), foreign)
    if change.order.change_id != stored.order.change_id and change.order > stored.order:
        kept = set(change.users)
        revoked = tuple(u for u in stored.users if u not in kept and u != change.owner)
        return Applied(
            ShareRecord(change.owner, change.users, change.order, revoked), True, revoked
        )
    if change.order.change_id == stored.order.change_id:
        # The same change again (redelivered, or seen by another replica, whose time of
        # receipt may differ when the change had no timestamp): already in force.
        return Applied(stored, False, stored.revoked)
    return Applied(stored, False, ())


def newest(a: ShareRecord | None, b: ShareRecord | None) -> ShareRecord | None:
    """The newer of two records of the same key (None counts as oldest)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b.order > a.order else a
