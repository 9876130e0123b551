"""An asyncio client for the realtime-sync WebSocket protocol.

It keeps one connection open for as long as it runs, and hides the network from its user:

* the token is a string, or a callable (sync or async) that is asked again before every
  connection attempt — after a close with 4001 (unauthorized), 4002 (token expired) or
  4003 (access revoked) a refused token is never sent again;
* it reconnects with exponential backoff and *full* jitter (``uniform(0, min(cap,
  base * 2**attempt))``), so clients dropped together by a restart do not come back
  together;
* after a reconnect it subscribes again, with ``since`` set to the last event id it saw
  (and ``since_time`` to that event's ``published_at``, so a replica that has not got, or
  no longer has, that id can replay by publish time), so the server replays what was
  missed; a duplicate ``event_id`` is never delivered twice;
* a watchdog pings a silent connection and drops it (then reconnects) when the ping goes
  unanswered.

Every such decision is taken by `realtime_sync.core.client_policy.ClientPolicy` (sans I/O, the
same machine as the browser client's, both tested against `clients/vectors/policy.json`);
this module only drives it: sockets, timers, the token provider and the user's callbacks.

Updates arrive as an async iterator, or through a callback::

    async with SyncClient(url, token_provider) as client:
        async for item in client:
            match item:
                case TaskUpdate():
                    apply(item)
                case AccessRevoked():
                    forget(item.task_id)  # shared no more: drop it and any cached copy
                case ResyncRequired():
                    refetch_everything()
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from realtime_sync.core.client_policy import (
    ABNORMAL_CLOSURE,
    ClientPolicy,
    DropSilent,
    GiveUp,
    Lapse,
    Ping,
    RecentIds,
    Reconnect,
    RefreshIn,
    SendRefresh,
)

__all__ = [
    "AccessRevoked",
    "ClientError",
    "ConnectionState",
    "Item",
    "Reconnect",
    "ResyncRequired",
    "SyncClient",
    "TaskId",
    "TaskUpdate",
    "TokenRefused",
    "TokenSource",
]

log = logging.getLogger(__name__)

TaskId = int | str
TokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]

#: HTTP statuses at the handshake that retrying cannot fix.
FATAL_HANDSHAKE_STATUSES: Final = frozenset({400, 401, 403, 404})


def _notify(callback: Callable[[Any], object], value: Any) -> None:
    """Call an application callback; its exception is logged, never fatal to the client."""
    try:
        callback(value)
    except Exception:
        log.exception("realtime-sync callback %s failed", getattr(callback, "__name__", "?"))


def _close_of(exc: ConnectionClosed) -> tuple[int, str]:
    """The close code and reason the server sent (none received: the socket died)."""
    return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (ABNORMAL_CLOSURE, "")


class ConnectionState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    RESYNCING = "resyncing"
    CLOSED = "closed"


class ClientError(Exception):
    """The client stopped for good (for example, its token was refused)."""


class TokenRefused(ClientError):
    """The server refused the token (4001/4002/4003) and no fresh token is available."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"token refused by the server ({code} {reason})".strip())
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One task change, as the server sent it."""

    event_id: str
    action: str
    event_type: str
    task_id: TaskId
    user_id: str
    data: dict[str, Any]
    timestamp: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_frame(cls, frame: dict[str, Any]) -> TaskUpdate:
        data = frame.get("data")
        metadata = frame.get("metadata")
        return cls(
            event_id=str(frame["event_id"]),
            action=str(frame.get("action", "")),
            event_type=str(frame.get("event_type", "")),
            task_id=frame["task_id"],
            user_id=str(frame.get("user_id", "")),
            data=data if isinstance(data, dict) else {},
            timestamp=frame.get("timestamp"),
            metadata=metadata if isinstance(metadata, dict) else {},
        )


@dataclass(frozen=True, slots=True)
class ResyncRequired:
    """The server could not replay what was missed since ``since``: refetch from the task API.

    ``reason``: ``unknown_position``, ``window_ended`` or ``hole`` (None from older servers).
    """

    since: str | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AccessRevoked:
    """The user lost access to a task (it is no longer shared with them): drop it, and any
    copy of it kept locally. Carries no task data."""

    event_id: str
    task_id: TaskId


Item = TaskUpdate | AccessRevoked | ResyncRequired


class SyncClient:
    """A self-healing subscription to a user's task updates.

    ``token``: a JWT, or a callable returning one (asked before every connection attempt).
    ``subscribe_all`` / ``task_ids``: what to subscribe to (all of the user's tasks by default).
    ``on_update``: a callback (sync or async) for updates; without it, iterate the client.
    ``backoff_base_s`` / ``backoff_cap_s``: the reconnect backoff (full jitter).
    ``ping_interval_s`` / ``ping_timeout_s``: after this long without a frame, ping; without
    an answer in time, the connection is dropped and re-established.

    With a token provider, the live connection outlives each token: before the expiry the
    server announced (`exp`), the provider is asked for a new token, which goes to the
    server in a ``refresh`` frame. If that fails, the server closes with 4002 and the
    client reconnects with a fresh token and resumes.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        subscribe_all: bool = True,
        task_ids: Sequence[TaskId] = (),
        on_update: Callable[[Item], Awaitable[None] | None] | None = None,
        on_state: Callable[[ConnectionState], None] | None = None,
        on_reconnect: Callable[[Reconnect], None] | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        ping_interval_s: float = 20.0,
        ping_timeout_s: float = 10.0,
        open_timeout_s: float = 10.0,
        max_pending: int = 10_000,
        dedupe_size: int = 10_000,
        since: str | None = None,
        rng: random.Random | None = None,
        proxy: str | Literal[True] | None = True,
    ) -> None:
        if backoff_base_s <= 0 or backoff_cap_s < backoff_base_s:
            raise ValueError("need 0 < backoff_base_s <= backoff_cap_s")
        if ping_interval_s <= 0 or ping_timeout_s <= 0:
            raise ValueError("ping_interval_s and ping_timeout_s must be positive")
        if not subscribe_all and not task_ids:
            raise ValueError("subscribe to all tasks or give task_ids")
        self.url = url
        self._token_source = token
        self._subscribe_all = subscribe_all
        self._task_ids = tuple(task_ids)
        self._on_update = on_update
        self._on_state = on_state
        self._on_reconnect = on_reconnect
        self._open_timeout = open_timeout_s
        self._proxy = proxy
        self._policy = ClientPolicy(
            backoff_base_s=backoff_base_s,
            backoff_cap_s=backoff_cap_s,
            ping_interval_s=ping_interval_s,
            ping_timeout_s=ping_timeout_s,
            renewable_token=not isinstance(token, str),
            random=(rng or random.Random()).random,  # noqa: S311 - jitter, not cryptography
        )
        self._dedupe = RecentIds(dedupe_size)
        self._queue: asyncio.Queue[Item | BaseException | None] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._pending_subscriptions: set[int | str] = set()  # of the live connection
        self._refresher: asyncio.Task[None] | None = None
        self._next_id = 0
        self.state = ConnectionState.CLOSED
        self.last_event_id: str | None = since
        self.last_event_time: float | None = None  # the last event's `published_at`
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self.connections = 0
        self.error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background (idempotent)."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sync-client")

    async def close(self) -> None:
        """Close the connection and stop reconnecting; a pending iteration ends."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set_state(ConnectionState.CLOSED)

    async def run(self) -> None:
        """Start (if needed) and wait until the client stops; raise its fatal error, if any."""
        self.start()
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.error is not None:
            raise self.error

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> AsyncIterator[Item]:
        if self._on_update is not None:
            raise TypeError("updates go to on_update; do not also iterate the client")
        self.start()
        return self._items()

    async def _items(self) -> AsyncIterator[Item]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    # -- the reconnect loop ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not self._closing:
                self._set_state(ConnectionState.CONNECTING if self.connections == 0 else self.state)
                decision = await self._connect_once()
                if self._closing:
                    break
                if isinstance(decision, GiveUp):
                    raise TokenRefused(decision.code, decision.reason)
                self._announce(decision)
                await asyncio.sleep(decision.delay_s)
        except asyncio.CancelledError:
            pass
        except ClientError as exc:
            self.error = exc
            log.warning("realtime-sync client stopped: %s", exc)
        finally:
            self._set_state(ConnectionState.CLOSED)
            await self._finish()

    async def _finish(self) -> None:
        if self._on_update is not None:
            return
        end: BaseException | None = self.error
        # Never block shutdown on a full queue: drop the oldest to make room for the end.
        while self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(end)

    def _announce(self, reconnect: Reconnect) -> None:
        self._set_state(ConnectionState.RECONNECTING)
        log.info(
            "realtime-sync reconnecting",
            extra={
                "attempt": reconnect.attempt,
                "delay_s": round(reconnect.delay_s, 3),
                "code": reconnect.close_code,
            },
        )
        if self._on_reconnect is not None:
            _notify(self._on_reconnect, reconnect)

    async def _token(self) -> str:
        source = self._token_source
        if isinstance(source, str):
            return source
        value = source()
        token = await value if inspect.isawaitable(value) else value
        if not isinstance(token, str) or not token:
            raise ClientError("the token provider returned no token")
        return token

    async def _connect_once(self) -> Reconnect | GiveUp:
        """One connection, from asking for its token to its end: what the policy decides next."""
        try:
            token = await self._token()
        except Exception as exc:  # noqa: BLE001 - the provider's outage: back off, retry
            log.warning("realtime-sync token provider failed: %s", exc)
            return self._policy.token_failed(type(exc).__name__)
        if (refusal := self._policy.opening(token, time.monotonic())) is not None:
            return refusal
        code: int | None = None
        reason = ""
        try:
            async with connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=self._open_timeout,
                ping_interval=None,  # the watchdog below pings at the application level
                close_timeout=2,
                max_size=None,
                compression=None,
                proxy=self._proxy,
            ) as ws:
                code, reason = await self._session(ws)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in FATAL_HANDSHAKE_STATUSES:
                raise ClientError(f"handshake refused with HTTP {status}") from None
            reason = f"HTTP {status}"
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            reason = type(exc).__name__
        except ConnectionClosed as exc:
            code, reason = _close_of(exc)
        return self._policy.closed(code, reason)

    async def _session(self, ws: ClientConnection) -> tuple[int, str]:
        """Read frames until the connection closes; its close code and reason."""
        self._pending_subscriptions = set()
        self._policy.frame_received(time.monotonic())  # the handshake's answer
        watchdog = asyncio.get_running_loop().create_task(self._watchdog(ws))
        try:
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed as exc:
                    return _close_of(exc)
                self._policy.frame_received(time.monotonic())
                try:
                    frame = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(frame, dict):
                    self._policy.delivery_started()
                    try:
                        await self._on_frame(ws, frame)
                    finally:
                        self._policy.delivery_done(time.monotonic())
        finally:
            tasks, self._refresher = (watchdog, self._refresher), None
            for task in tasks:
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _watchdog(self, ws: ClientConnection) -> None:
        """Ask the policy's watchdog now, and again when it says."""
        while True:
            decision = self._policy.watchdog(time.monotonic())
            if isinstance(decision, DropSilent):
                log.info("realtime-sync connection silent: dropping it")
                ws.transport.abort()
                return
            if isinstance(decision, Ping):
                with contextlib.suppress(ConnectionClosed):
                    await self._send(ws, {"type": "ping"})
            await asyncio.sleep(max(0.0, decision.check_at - time.monotonic()))

    def _refresh(self, ws: ClientConnection, decision: RefreshIn | Lapse | None) -> None:
        """Carry out the policy's plan for the token announced in `connected`/`refreshed`."""
        if isinstance(decision, Lapse):
            log.warning("realtime-sync: %s; the token will lapse", decision.reason)
        elif isinstance(decision, RefreshIn):
            if self._refresher is not None:
                self._refresher.cancel()
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_after(ws, decision.delay_s)
            )

    async def _refresh_after(self, ws: ClientConnection, delay: float) -> None:
        """Ask the provider for the next token after `delay`, and as often as the policy says."""
        while True:
            await asyncio.sleep(delay)
            try:
                token = await self._token()
            except Exception as exc:  # noqa: BLE001 - the provider's own failure: the server
                # closes with 4002 at expiry and the reconnect asks the provider again
                log.warning("realtime-sync token refresh failed: %s", exc)
                return
            decision = self._policy.refresh_token(token, time.time())
            if isinstance(decision, SendRefresh):
                with contextlib.suppress(ConnectionClosed):
                    await self._send(ws, {"type": "refresh", "token": decision.token})
                return
            if isinstance(decision, Lapse):
                log.warning("realtime-sync: %s; the token will lapse", decision.reason)
                return
            delay = decision.delay_s

    async def _send(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        self._next_id += 1
        frame["id"] = self._next_id
        await ws.send(orjson.dumps(frame).decode())

    async def _subscribe(self, ws: ClientConnection) -> None:
        targets: list[dict[str, Any]] = (
            [{"all": True}] if self._subscribe_all else [{"taskId": t} for t in self._task_ids]
        )
        for target in targets:
            frame: dict[str, Any] = {"type": "subscribe", **target}
            if self.last_event_id is not None:
                frame["since"] = self.last_event_id
                if self.last_event_time is not None:
                    frame["since_time"] = self.last_event_time
            await self._send(ws, frame)
            self._pending_subscriptions.add(frame["id"])

    async def _on_frame(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        match frame.get("type"):
            case "connected":
                self.connections += 1
                self.connection_id = str(frame.get("connection_id"))
                self.user_id = str(frame.get("user_id"))
                self._refresh(ws, self._policy.connected(frame.get("exp"), time.time()))
                await self._subscribe(ws)
            case "refreshed":
                self._refresh(ws, self._policy.refreshed(frame.get("exp"), time.time()))
            case "task_update" if "event_id" in frame and "task_id" in frame:
                update: TaskUpdate | AccessRevoked
                if frame.get("action") == "task_access_revoked":
                    update = AccessRevoked(str(frame["event_id"]), frame["task_id"])
                else:
                    update = TaskUpdate.from_frame(frame)
                if self._dedupe.seen(update.event_id):
                    return
                self.last_event_id = update.event_id
                published = frame.get("published_at")
                self.last_event_time = (
                    float(published)
                    if isinstance(published, int | float) and not isinstance(published, bool)
                    else None
                )
                await self._deliver(update)
            case "resync_required":
                self._set_state(ConnectionState.RESYNCING)
                reason = frame.get("reason")
                await self._deliver(
                    ResyncRequired(frame.get("since"), reason if isinstance(reason, str) else None)
                )
            case "subscribed":
                self._pending_subscriptions.discard(frame.get("id", ""))
                if not self._pending_subscriptions:
                    self._policy.subscribed()
                    self._set_state(ConnectionState.CONNECTED)
            case "error":
                log.warning(
                    "realtime-sync server error frame",
                    extra={"code": frame.get("code"), "detail": frame.get("message")},
                )
            case _:
                pass

    async def _deliver(self, item: Item) -> None:
        if self._on_update is None:
            await self._queue.put(item)  # a slow consumer slows reading: the server sees it
            return
        try:
            result = self._on_update(item)
            if inspect.isawaitable(result):
                await result
        except Exception:  # the application's bug must not stop the client
            log.exception("realtime-sync on_update callback failed")

    def _set_state(self, state: ConnectionState) -> None:
        if state == self.state:
            return
        self.state = state
        if self._on_state is not None:
            _notify(self._on_state, state)
