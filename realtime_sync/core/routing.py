"""The open connections of this replica and what each is subscribed to."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import ClassVar, Generic, Protocol, TypeVar

# A fan-out to at least this many users keeps its targets for the next event of the task.
CACHE_MIN_USERS = 16
CACHE_MAX_ENTRIES = 1024


class Subscriptions:
    """What one connection is subscribed to: everything, and/or a set of task keys."""

    __slots__ = ("all", "tasks")
    # Every change to any connection's subscriptions, counted: a registry's kept targets
    # are stale once this moves.
    changes: ClassVar[int] = 0

    def __init__(self) -> None:
        self.all = False
        self.tasks: set[str] = set()

    def __len__(self) -> int:
        return len(self.tasks) + (1 if self.all else 0)

    def matches(self, task_key: str) -> bool:
        return self.all or task_key in self.tasks

    def add(self, task_key: str | None) -> None:
        Subscriptions.changes += 1
        if task_key is None:
            self.all = True
        else:
            self.tasks.add(task_key)

    def remove(self, task_key: str | None) -> None:
        Subscriptions.changes += 1
        if task_key is None:
            self.all = False
        else:
            self.tasks.discard(task_key)

    def clear(self) -> None:
        Subscriptions.changes += 1
        self.all = False
        self.tasks.clear()

    def describe(self) -> list[str]:
        return (["*"] if self.all else []) + sorted(self.tasks)


class Routable(Protocol):
    @property
    def connection_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def subscriptions(self) -> Subscriptions: ...


C = TypeVar("C", bound=Routable)


class Registry(Generic[C]):
    """The open connections of this replica, indexed by id and by user.

    The targets of a large fan-out are kept per task and recipients, until a connection
    comes or goes or any subscription changes: the next event of the task (a team board
    gets many) skips the walk over every recipient's connections.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, C] = {}
        self.by_user: dict[str, dict[str, C]] = {}
        self._kept: dict[tuple[str, tuple[str, ...]], list[C]] = {}
        self._kept_at = Subscriptions.changes

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[C]:
        return iter(list(self._by_id.values()))

    @property
    def user_count(self) -> int:
        return len(self.by_user)

    def get(self, connection_id: str) -> C | None:
        return self._by_id.get(connection_id)

    def add(self, conn: C) -> None:
        self._kept.clear()
        self._by_id[conn.connection_id] = conn
        self.by_user.setdefault(conn.user_id, {})[conn.connection_id] = conn

    def remove(self, conn: C) -> bool:
        if self._by_id.pop(conn.connection_id, None) is None:
            return False
        self._kept.clear()  # and no kept list holds on to the connection
        conns = self.by_user.get(conn.user_id)
        if conns is not None:
            conns.pop(conn.connection_id, None)
            if not conns:
                del self.by_user[conn.user_id]
        return True

    def count_for(self, user_id: str) -> int:
        return len(self.by_user.get(user_id, ()))

    def of_user(self, user_id: str) -> list[C]:
        return list(self.by_user.get(user_id, {}).values())

    def targets(self, users: Sequence[str], task_key: str) -> Sequence[C]:
        """Connections of these users that are subscribed to this task (or to all). The
        sequence may be kept for the next call: read it, never change it."""
        if len(users) < CACHE_MIN_USERS:
            return self._find(users, task_key)
        kept = self._kept
        if self._kept_at != Subscriptions.changes:
            kept.clear()
            self._kept_at = Subscriptions.changes
        key = (task_key, tuple(users))  # no copy: fan-outs pass a tuple
        found = kept.get(key)
        if found is None:
            if len(kept) >= CACHE_MAX_ENTRIES:
                del kept[next(iter(kept))]
            found = kept[key] = self._find(users, task_key)
        return found

    def _find(self, users: Sequence[str], task_key: str) -> list[C]:
        """The hot loop of every fan-out: `Subscriptions.matches` is inlined on purpose."""
        found: list[C] = []
        by_user = self.by_user
        for user in users:
            conns = by_user.get(user)
            if conns:
                for conn in conns.values():
                    subs = conn.subscriptions
                    if subs.all or task_key in subs.tasks:
                        found.append(conn)
        return found

    def subscription_count(self) -> int:
        return sum(len(c.subscriptions) for c in self._by_id.values())
