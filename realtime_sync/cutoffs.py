"""User cutoffs: `disconnect_user`'s "tokens issued before now no longer count".

A cutoff is kept in the state store under `cutoff:{user_id}` (the Unix second it starts,
as JSON) with a TTL of MAX_TOKEN_LIFETIME_S: every token issued before it has expired by
then, since longer-lived tokens are refused (`core.auth.TokenVerifier`). The replica that
gets the call stores the cutoff, then publishes a control message on CONTROL_TOPIC; every
replica (its own consumer group) learns it and closes that user's connections with 4003.

A replica that starts later or misses the message reads the cutoff at the handshake and
on `refresh`, cached per user for CACHE_S; the handshakes of one loop tick share one bulk
read (a connect storm costs one state call per tick, not one per user). A failed read
answers with what this replica last knew (fail-open): a state-store outage must not lock
every user out, and a revoked user then still needs this replica to have missed the
control message as well.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from realtime_sync.metrics import Metrics
from realtime_sync.state import DaprState, StateUnavailable, read_keys

log = logging.getLogger(__name__)
CUTOFF_PREFIX: Final = "cutoff:"
CACHE_S: Final = 2.0
MAX_CACHED_USERS: Final = 100_000
CONTROL_DISCONNECT: Final = "disconnect_user"


def cutoff_key(user_id: str) -> str:
    return CUTOFF_PREFIX + user_id


def cutoff_at(now: float) -> int:
    """The cutoff of a call made at `now`: the next whole second (tokens' `iat` is whole
    seconds, so every token issued up to the call is below it)."""
    return math.floor(now) + 1


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The control message: close `user_id`'s connections, refuse tokens before `cutoff`."""

    user_id: str
    cutoff: int

    def encode(self) -> bytes:
        return orjson.dumps(
            {"kind": CONTROL_DISCONNECT, "user_id": self.user_id, "cutoff": self.cutoff}
        )


def parse_control(raw: bytes) -> Disconnect | None:
    """A control message, or None for anything this version does not understand."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("kind") != CONTROL_DISCONNECT:
        return None
    user, cutoff = body.get("user_id"), body.get("cutoff")
    if not isinstance(user, str) or not user or len(user) > 256:
        return None
    if not isinstance(cutoff, int) or isinstance(cutoff, bool) or cutoff <= 0:
        return None
    return Disconnect(user, cutoff)


def _parse_cutoff(raw: bytes) -> int | None:
    if not raw:
        return None
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _later(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


class UserCutoffs:
    """Each user's cutoff: stored with a TTL, learnt from control messages (kept for the
    TTL), read through a short per-user cache (misses included)."""

    def __init__(
        self,
        state: DaprState,
        *,
        ttl_s: int,
        metrics: Metrics,
        clock: Callable[[], float],
        cache_s: float = CACHE_S,
    ) -> None:
        """`clock`: Unix time in seconds (cutoffs are Unix seconds)."""
        self._state = state
        self._ttl = ttl_s
        self._metrics = metrics
        self._clock = clock
        self._cache_s = cache_s
        self._read: OrderedDict[str, tuple[int | None, float]] = (
            OrderedDict()
        )  # → (cutoff, read at)
        self._learnt: OrderedDict[str, int] = OrderedDict()  # from control messages
        # Users whose read is under way or due this tick -> done when it has ended.
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._read_scheduled = False
        self._reads: set[asyncio.Task[None]] = set()

    def learn(self, message: Disconnect) -> None:
        """A control message (or this replica's own call): the cutoff holds here at once.
        A replayed old one (a new consumer group reads a retained stream from its start)
        lapses after the TTL like any other."""
        user = message.user_id
        self._learnt[user] = _later(self._learnt.get(user), message.cutoff) or message.cutoff
        self._learnt.move_to_end(user)
        while len(self._learnt) > MAX_CACHED_USERS:
            self._learnt.popitem(last=False)

    def known(self, user_id: str) -> int | None:
        """The cutoff this replica knows without a read (a lapsed one is forgotten)."""
        read = self._read.get(user_id)
        cutoff = _later(self._learnt.get(user_id), read[0] if read is not None else None)
        if cutoff is not None and cutoff + self._ttl < self._clock():
            return None
        return cutoff

    async def store(self, message: Disconnect) -> None:
        """Keep the cutoff in the state store for the longest token lifetime. Raises
        StateUnavailable."""
        await self._state.save_many(
            [(cutoff_key(message.user_id), orjson.dumps(message.cutoff))], ttl_s=self._ttl
        )
        self.learn(message)

    async def lookup(self, user_id: str) -> int | None:
        """The user's cutoff, if one holds: read from the state store (cached for a
        moment; the misses of one loop tick in one bulk read, one read per user in
        flight); on a failed read, what this replica knows."""
        read = self._read.get(user_id)
        if read is None or self._clock() - read[1] >= self._cache_s:
            done = self._pending.get(user_id)
            if done is None:
                loop = asyncio.get_running_loop()
                done = self._pending[user_id] = loop.create_future()
                if not self._read_scheduled:
                    self._read_scheduled = True
                    loop.call_soon(self._start_read)
            await asyncio.shield(done)  # a handshake that gives up leaves the read to others
        return self.known(user_id)

    def _start_read(self) -> None:
        self._read_scheduled = False
        batch, self._pending = self._pending, {}
        if batch:
            task = asyncio.get_running_loop().create_task(self._read_batch(batch))
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)

    async def _read_batch(self, batch: dict[str, asyncio.Future[None]]) -> None:
        users = list(batch)
        try:
            keys = [cutoff_key(u) for u in users]
            found = await read_keys(self._state, keys)
        except StateUnavailable as exc:
            self._metrics.cutoff_lookups.labels("error").inc(len(users))
            log.warning(
                "cutoffs unreadable; using what this replica knows",
                extra={"users": len(users), "user_id": users[0], "reason": str(exc)},
            )
        else:
            now = self._clock()
            for user, key in zip(users, keys, strict=True):
                stored = _parse_cutoff(found.get(key, b""))
                self._metrics.cutoff_lookups.labels("found" if stored is not None else "none").inc()
                self._read[user] = (stored, now)
                self._read.move_to_end(user)
            while len(self._read) > MAX_CACHED_USERS:
                self._read.popitem(last=False)
        finally:  # every waiting handshake goes on, whatever happened to the read
            for done in batch.values():
                if not done.done():
                    done.set_result(None)


class UserDisconnects:
    """`disconnect_user` on this replica: the call (store, close here, tell the others)
    and the control message (learn, close here)."""

    def __init__(
        self,
        cutoffs: UserCutoffs,
        *,
        close_local: Callable[[str, int], int],
        publish: Callable[[bytes], Awaitable[None]],
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._cutoffs = cutoffs
        self._close_local = close_local
        self._publish = publish
        self._metrics = metrics
        self._clock = clock

    async def call(self, user_id: str) -> dict[str, Any]:
        """Store the cutoff, close the user's connections here, publish the control
        message. Raises StateUnavailable (the caller retries: a later cutoff is as good)."""
        message = Disconnect(user_id, cutoff_at(self._clock()))
        await self._cutoffs.store(message)
        closed = self._close_local(user_id, message.cutoff)
        await self._publish(message.encode())
        log.info("disconnect_user", extra={"user_id": user_id, "cutoff": message.cutoff})
        return {"user_id": user_id, "cutoff": message.cutoff, "closed_here": closed}

    def apply(self, message: Disconnect) -> None:
        """A control message, on every replica (the caller's too)."""
        self._cutoffs.learn(message)
        self._metrics.users_disconnected.inc()
        self._close_local(message.user_id, message.cutoff)
