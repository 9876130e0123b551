"""The Dapr state shell: share lists (cached, read in bulk, ordered) and connection records.

Every call has a deadline (DAPR_TIMEOUT_S). A failure is a typed error decided by the gRPC
status daprd answered with, never by its text: ABORTED on an ETag-guarded write is a
ConflictError (the write lost to a concurrent one), anything else StateUnavailable,
which the hub turns into RETRY.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import grpc
import orjson
from dapr.clients.exceptions import DaprInternalError

from realtime_sync.core.resume import (
    Buffered,
    Snapshot,
    contiguous,
    decode_snapshot,
    encode_snapshot,
)
from realtime_sync.core.shares import Applied, ShareRecord, apply_change, decode_record, newest
from realtime_sync.metrics import Metrics

log = logging.getLogger(__name__)
CONNECTION_PREFIX = "connection:"
MAX_CACHED_SHARE_LISTS = 100_000
ETAG_ATTEMPTS = 10


class StateUnavailable(Exception):
    """The state store (or the sidecar in front of it) failed or timed out. `code` is
    the gRPC status daprd answered with; None when no answer came (a time-out, no client)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ConflictError(Exception):
    """An ETag-guarded write lost to a concurrent writer. daprd answers a stale etag
    ABORTED, a malformed one INVALID_ARGUMENT, any other store error INTERNAL
    (dapr/dapr pkg/api/grpc/grpc.go, `api.stateErrorResponse`)."""


@runtime_checkable
class RpcStatus(Protocol):
    """What `grpc.RpcError`s raised by the SDK have: daprd's status code and message."""

    def code(self) -> grpc.StatusCode: ...
    def details(self) -> str | None: ...


def status_of(exc: BaseException) -> RpcStatus | None:
    """The gRPC error carrying daprd's status in an error of the Dapr SDK: the error
    itself (`DaprGrpcError`, grpc's `AioRpcError`: both `grpc.RpcError` with `.code()`),
    or, for the aio `save_state`, which wraps the `AioRpcError` in a `DaprInternalError`
    (dapr/aio/clients/grpc/client.py, `DaprGrpcClientAsync.save_state`), its `__cause__`."""
    if isinstance(exc, grpc.RpcError) and isinstance(exc, RpcStatus):
        return exc
    if isinstance(exc, DaprInternalError) and exc.__cause__ is not None:
        return status_of(exc.__cause__)
    return None


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    rpc = status_of(exc)
    code = rpc.code() if rpc is not None else None
    return code if isinstance(code, grpc.StatusCode) else None


class DaprState:
    """Thin typed wrapper over the aio DaprClient for what this service stores."""

    def __init__(
        self, *, store: str, timeout_s: float, metrics: Metrics, client: Any = None
    ) -> None:
        """`client`: an aio DaprClient already built (or a fake); else `connect` builds one."""
        self._store = store
        self._timeout = timeout_s
        self._metrics = metrics
        self._client: Any = client

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self, sidecar_ready: Callable[[], Awaitable[bool]]) -> None:
        """Wait for the sidecar without blocking the loop, then build the client.

        The DaprClient constructor polls the sidecar's health with a blocking HTTP call;
        waiting for `sidecar_ready` (an async probe of the same endpoint) first makes that
        constructor return at once.
        """
        from dapr.aio.clients import DaprClient  # noqa: PLC0415 - heavy import, shell only

        waited = 0
        while not await sidecar_ready():
            if waited % 30 == 0:
                log.warning("waiting for the Dapr sidecar")
            waited += 1
            await asyncio.sleep(1.0)
        self._client = DaprClient()
        log.info("connected to the Dapr sidecar")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    @asynccontextmanager
    async def _call(self, op: str) -> AsyncIterator[Any]:
        if self._client is None:
            self._metrics.state_errors.labels(op).inc()
            raise StateUnavailable("not connected to the Dapr sidecar yet")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                yield self._client
        except StateUnavailable:
            raise
        except TimeoutError:
            self._metrics.state_errors.labels(op).inc()
            raise StateUnavailable(f"state {op} timed out after {self._timeout:g} s") from None
        except Exception as exc:
            self._metrics.state_errors.labels(op).inc()
            raise StateUnavailable(
                f"state {op} failed: {_describe(exc)}", status_code(exc)
            ) from exc
        finally:
            self._metrics.state_latency.labels(op).observe(time.perf_counter() - started)

    async def get(self, key: str) -> tuple[bytes, str]:
        async with self._call("get") as client:
            resp = await client.get_state(self._store, key)
        return bytes(resp.data), str(resp.etag)

    async def get_bulk(self, keys: Sequence[str]) -> dict[str, bytes]:
        async with self._call("get_bulk") as client:
            resp = await client.get_bulk_state(self._store, list(keys), parallelism=4)
        found: dict[str, bytes] = {}
        for item in resp.items:
            if item.error:
                raise StateUnavailable(f"bulk get of one key failed: {item.error}")
            found[item.key] = bytes(item.data)
        return found

    async def save(
        self, key: str, value: bytes, *, etag: str | None = None, insert: bool = False
    ) -> None:
        """Save; with an etag, first-write semantics (a stale etag raises ConflictError).

        `insert` (no etag): write only if the key does not exist. First-write concurrency
        without an ETag is an insert in the stores (components-contrib state/postgresql and
        state/mysql `Set`: a plain INSERT; state/redis `Set`: `setQuery` with `firstWrite`);
        an existing key answers ABORTED from the dev sidecar, another error from some
        stores, which then reaches the caller as StateUnavailable (RETRY, redelivered).
        """
        from dapr.clients.grpc._state import (  # noqa: PLC0415
            Concurrency,
            StateOptions,
        )

        guarded = etag is not None or insert
        options = StateOptions(concurrency=Concurrency.first_write) if guarded else None
        try:
            async with self._call("save") as client:
                await client.save_state(self._store, key, value, etag=etag or None, options=options)
        except StateUnavailable as exc:
            if guarded and exc.code == grpc.StatusCode.ABORTED:
                raise ConflictError(key) from exc
            raise

    async def save_many(self, items: Sequence[tuple[str, bytes]], *, ttl_s: int) -> None:
        from dapr.clients.grpc._state import StateItem  # noqa: PLC0415

        if not items:
            return
        states = [
            StateItem(key=k, value=v, metadata={"ttlInSeconds": str(ttl_s)}) for k, v in items
        ]
        async with self._call("save_bulk") as client:
            await client.save_bulk_state(self._store, states)

    async def publish(self, pubsub: str, topic: str, data: bytes) -> None:
        """Publish one JSON message (a share-list change on the task topic, a control
        message): the service's pub/sub calls ride the same sidecar client (and its
        DAPR_API_TOKEN). Raises StateUnavailable."""
        async with self._call("publish") as client:
            await client.publish_event(pubsub, topic, data, data_content_type="application/json")

    async def delete_many(self, keys: Sequence[str]) -> None:
        from dapr.clients.grpc._request import (  # noqa: PLC0415
            TransactionalStateOperation,
            TransactionOperationType,
        )

        if not keys:
            return
        ops = [
            TransactionalStateOperation(key=k, operation_type=TransactionOperationType.delete)
            for k in keys
        ]
        async with self._call("delete") as client:
            await client.execute_state_transaction(self._store, ops)


def _describe(exc: BaseException) -> str:
    rpc = status_of(exc)
    code = status_code(exc)
    if rpc is None or code is None:
        return type(exc).__name__
    return f"{code.name}: {rpc.details()}"


async def read_keys(state: DaprState, keys: Sequence[str]) -> dict[str, bytes]:
    """The stored values of `keys` (a missing key is absent or empty): one GetState call for
    a single key, one GetBulkState call for more. Raises StateUnavailable."""
    if len(keys) == 1:
        raw, _ = await state.get(keys[0])
        return {keys[0]: raw}
    return await state.get_bulk(keys)


class ShareLists:
    """Share-list records (`core.shares`): cached for SHARES_CACHE_S, misses batched into one
    bulk read per loop tick, single-flight per key, changes applied by the ordering rule with
    an ETag-guarded write. The cache obeys the same rule: it only ever moves to a newer
    record, so neither a late read nor a late older change can put an older list back."""

    def __init__(
        self,
        state: DaprState,
        *,
        cache_s: float,
        clock: Callable[[], float],
        metrics: Metrics | None = None,
    ) -> None:
        """`metrics`: where lists of another owner are counted (default: the state's)."""
        self._state = state
        if metrics is None and isinstance(state, DaprState):
            metrics = state.metrics
        self._metrics = metrics
        self._cache_s = cache_s
        self._clock = clock
        # share key -> (the newest record known, or None for "read and absent"; cached at)
        self._cache: OrderedDict[str, tuple[ShareRecord | None, float]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[ShareRecord | None]] = {}
        self._flush_scheduled = False

    def _users(self, key: str, owner: str, record: ShareRecord | None) -> tuple[str, ...]:
        """The users a record shares the task with, for an event of `owner`: none when the
        record names another owner (counted, logged: the event then goes to its owner only)."""
        if record is None:
            return ()
        if record.owner != owner:
            self._foreign(key, record.owner, owner)
            return ()
        return record.users

    def _foreign(self, key: str, stored: str, owner: str) -> None:
        if self._metrics is not None:
            self._metrics.share_owner_mismatch.inc()
        log.warning(
            "share list of another owner not used",
            extra={"key": key, "stored_owner": stored, "event_owner": owner},
        )

    def cached(self, key: str, owner: str) -> tuple[str, ...] | None:
        """The users of a fresh cached record for an event of `owner`; None if not cached."""
        hit = self._cache.get(key)
        if hit is not None and self._clock() - hit[1] <= self._cache_s:
            return self._users(key, owner, hit[0])
        return None

    def remember(self, key: str, record: ShareRecord | None) -> ShareRecord | None:
        """Cache what was read or written, unless a newer record is cached; returns the
        record now cached."""
        hit = self._cache.get(key)
        kept = newest(hit[0], record) if hit is not None else record
        self._cache[key] = (kept, self._clock())
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED_SHARE_LISTS:
            self._cache.popitem(last=False)
        return kept

    async def get(self, key: str, owner: str) -> tuple[str, ...]:
        """The users of a task's share list for an event of `owner`."""
        hit = self.cached(key, owner)
        if hit is not None:
            return hit
        fut = self._pending.get(key)
        if fut is None:
            fut = self._pending[key] = asyncio.get_running_loop().create_future()
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._start_flush)
        return self._users(key, owner, await asyncio.shield(fut))

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        batch, self._pending = self._pending, {}
        if batch:
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def _flush(self, batch: dict[str, asyncio.Future[ShareRecord | None]]) -> None:
        keys = list(batch)
        try:
            found = await read_keys(self._state, keys)
        except StateUnavailable as exc:
            for fut in batch.values():
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # mark retrieved: a waiter may have given up
            return
        for key, fut in batch.items():
            # A record applied here during the read is newer than what was read: it stays.
            record = self.remember(key, decode_record(found.get(key, b"")))
            if not fut.done():
                fut.set_result(record)

    async def apply(self, key: str, change: ShareRecord) -> Applied:
        """Apply a share-list change by the ordering rule: read, compare, write with the
        ETag (an absent key: insert-only), and again on a conflict. An older change writes
        nothing; the result names the list in force and the users who lost access."""
        hit = self._cache.get(key)
        if hit is not None and hit[0] is not None and hit[0].owner == change.owner:
            cached = hit[0]
            if cached.order.change_id == change.order.change_id or cached.order > change.order:
                # Known here already, or older than what is known: the store can only be newer.
                return apply_change(cached, change)
        for _ in range(ETAG_ATTEMPTS):
            raw, etag = await self._state.get(key)
            applied = apply_change(decode_record(raw), change)
            if applied.foreign:
                stored = decode_record(raw)
                self._foreign(key, stored.owner if stored else "", change.owner)
            if applied.write:
                try:
                    await self._state.save(
                        key, applied.current.encode(), etag=etag or None, insert=not etag
                    )
                except ConflictError:
                    await asyncio.sleep(random.uniform(0.005, 0.03))  # noqa: S311 - jitter
                    continue
            self.remember(key, applied.current)
            return applied
        raise ConflictError(key)


class ResumeSnapshots:
    """`resume:{user_id}`: a user's recent events, saved at shutdown for the clients being
    closed, so they resume across a restart of the service instead of resyncing.

    Each run of the service is a generation. At its graceful shutdown it saves the
    snapshots, then `resume-handover:{instance}` (instance: the pod, or the host) naming
    its generation; the next run on the same instance, behind the same sidecar, claims
    (reads and deletes) it at start. A snapshot is merged only when it joins this run's
    history without a gap (`core.resume.contiguous`): one from a run that crashed after
    taking over, or from two runs ago, answers `resync_required` instead.
    """

    PREFIX = "resume:"
    HANDOVER_PREFIX = "resume-handover:"
    RUN_PREFIX = "resume-run:"
    MAX_EVENTS = 200
    BATCH = 100
    SKEW_MARGIN_S = 5.0

    def __init__(
        self,
        state: DaprState,
        *,
        ttl_s: int,
        instance: str,
        generation: str,
        started_at: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._ttl = max(1, ttl_s)
        self._handover_key = self.HANDOVER_PREFIX + instance
        self._run_key = self.RUN_PREFIX + instance
        self.generation = generation
        self._started_at = started_at
        self._clock = clock
        self.claimed: str | None = None

    async def note_run(self) -> bool:
        """At start: whether an earlier run on this instance (behind the same sidecar, so
        the same consumer group) ran within the resume window, and record this one.

        Without one, nothing this run's group delivered before its start is missing here;
        with one, that run may have acknowledged events this run never gets.
        """
        raw, _ = await self._state.get(self._run_key)
        await self._save_run()
        return bool(raw)

    async def keep_run_noted(self) -> None:
        """While this run lives, keep its record from lapsing (a third of the TTL), so the
        next run after a crash knows there was one however long this one ran."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._save_run()
            except StateUnavailable as exc:  # the next round tries again
                log.warning("run record not refreshed", extra={"reason": str(exc)})

    async def _save_run(self) -> None:
        run = orjson.dumps(
            {"generation": self.generation, "started_at": self._started_at, "at": self._clock()}
        )
        await self._state.save_many([(self._run_key, run)], ttl_s=self._ttl)

    async def claim_handover(self) -> str | None:
        """At start: take over from the previous run on this instance, if it shut down
        gracefully (its hand-over is still there). Returns its generation."""
        raw, _ = await self._state.get(self._handover_key)
        if not raw:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = None
        await self._state.delete_many([self._handover_key])
        if isinstance(value, dict) and isinstance(value.get("generation"), str):
            self.claimed = value["generation"]
        return self.claimed

    async def save(
        self, snapshots: dict[str, tuple[list[Buffered], float | None]], *, handover: bool = True
    ) -> int:
        """Save each user's entries with how far back their history reaches, then the
        hand-over, unless `handover` is False (this run's history has a hole: the next run
        must not take the snapshots as contiguous)."""
        now = self._clock()
        items = [
            (
                self.PREFIX + user,
                encode_snapshot(
                    entries, self.MAX_EVENTS, generation=self.generation, saved_at=now, floor=floor
                ),
            )
            for user, (entries, floor) in snapshots.items()
            if entries
        ]
        for start in range(0, len(items), self.BATCH):
            await self._state.save_many(items[start : start + self.BATCH], ttl_s=self._ttl)
        if handover:
            record = orjson.dumps({"generation": self.generation, "saved_at": now})
            await self._state.save_many([(self._handover_key, record)], ttl_s=self._ttl)
        return len(items)

    async def load(self, user_id: str) -> Snapshot | None:
        """The user's saved snapshot if it continues this run's history, else None."""
        raw, _ = await self._state.get(self.PREFIX + user_id)
        snapshot = decode_snapshot(raw)
        if snapshot is None:
            return None
        if not contiguous(
            snapshot,
            claimed=self.claimed,
            history_since=self._started_at,
            margin_s=self.SKEW_MARGIN_S,
        ):
            log.info(
                "resume snapshot not merged: a gap may lie between it and this run",
                extra={"generation": snapshot.generation},
            )
            return None
        return snapshot


_background: set[asyncio.Task[Any]] = set()
