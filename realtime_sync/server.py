"""The WebSocket shell: handshake checks, per-connection loop, and HTTP endpoints.

`/ws` is the WebSocket endpoint; `/healthz`, `/readyz` and `/metrics` answer plain
HTTP on the same port (websockets' process_request runs before the upgrade).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from realtime_sync.config import Settings
from realtime_sync.connection import ClientConnection
from realtime_sync.core.auth import AuthError, Identity, TokenVerifier
from realtime_sync.core.outbox import Outbox
from realtime_sync.core.outcomes import CloseCode
from realtime_sync.core.protocol import (
    Auth,
    BadMessage,
    Ping,
    Refresh,
    Subscribe,
    Unsubscribe,
    connected_frame,
    error_frame,
    parse_client_message,
    pong_frame,
    refreshed_frame,
    resync_required_frame,
    subscribed_frame,
    unsubscribed_frame,
)
from realtime_sync.core.ratelimit import TokenBucket
from realtime_sync.hub import Hub
from realtime_sync.metrics import Metrics
from realtime_sync.presence import ConnectionRecords
from realtime_sync.static import StaticFiles

log = logging.getLogger(__name__)
WS_PATH = "/ws"


class Readiness:
    """`/readyz`: subscribed, sidecar answering, not draining."""

    def __init__(self) -> None:
        self.subscribed = False
        self.sidecar_ok = False
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.subscribed and self.sidecar_ok and not self.draining

    def describe(self) -> str:
        return (
            f'{{"ready":{str(self.ready).lower()},"subscribed":{str(self.subscribed).lower()},'
            f'"sidecar":{str(self.sidecar_ok).lower()},"draining":{str(self.draining).lower()}}}'
        )


class SyncConnection(ServerConnection):
    """A websockets connection carrying what the handshake learnt about its token."""

    identity: Identity | None = None
    auth_error: str | None = None


def _token_from(request: Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    query = parse_qs(urlsplit(request.path).query)
    values = query.get("token")
    return values[0] if values and values[0] else None


def _response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body)


class Gateway:
    """Authenticates, registers and serves WebSocket clients."""

    def __init__(
        self,
        *,
        settings: Settings,
        hub: Hub,
        verifier: TokenVerifier,
        records: ConnectionRecords,
        metrics: Metrics,
        readiness: Readiness,
        static: StaticFiles | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.verifier = verifier
        self.records = records
        self.metrics = metrics
        self.readiness = readiness
        self.static = static
        self.server: Server | None = None
        self._handshaking = 0

    async def start(self) -> Server:
        s = self.settings
        self.server = await serve(
            self._handle,
            s.ws_host,
            s.ws_port,
            process_request=self._process_request,
            create_connection=SyncConnection,
            compression="deflate" if s.compression == "deflate" else None,
            max_size=s.max_frame_bytes,
            max_queue=16,
            ping_interval=s.heartbeat_s,
            ping_timeout=s.heartbeat_s,
            close_timeout=5,
            open_timeout=10,
            server_header=None,
            # asyncio's default backlog of 100 drops most of a reconnect storm's SYNs
            # (retried by the kernel after 1, 3, 7 s); the kernel caps it at somaxconn.
            backlog=4096,
        )
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    # -- HTTP, before the upgrade --------------------------------------------------------

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _response(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        if path == "/readyz":
            status = HTTPStatus.OK if self.readiness.ready else HTTPStatus.SERVICE_UNAVAILABLE
            return _response(status, self.readiness.describe().encode(), "application/json")
        if path == "/metrics":
            return _response(HTTPStatus.OK, self.metrics.render(), CONTENT_TYPE_LATEST)
        if self.static is not None and request.headers.get("Upgrade") is None:
            found = self.static.get(path)
            if found is not None:
                body, content_type = found
                return _response(HTTPStatus.OK, body, content_type)
        if path != WS_PATH:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        return self._check_handshake(ws, request)

    def _check_handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.readiness.draining:
            self.metrics.handshakes_refused.labels("draining").inc()
            return _response(HTTPStatus.SERVICE_UNAVAILABLE, b"shutting down\n", "text/plain")
        if len(self.hub.registry) + self._handshaking >= self.settings.max_connections:
            self.metrics.handshakes_refused.labels("capacity").inc()
            return _response(HTTPStatus.SERVICE_UNAVAILABLE, b"at capacity\n", "text/plain")
        if not self._origin_allowed(request):
            self.metrics.handshakes_refused.labels("origin").inc()
            log.info("handshake refused: origin not allowed")
            return _response(HTTPStatus.FORBIDDEN, b"origin not allowed\n", "text/plain")
        token = _token_from(request)
        if token is not None and isinstance(ws, SyncConnection):
            try:
                ws.identity = self.verifier.verify(token)
            except AuthError as exc:
                ws.auth_error = str(exc)
        return None

    def _origin_allowed(self, request: Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: Origin protects browser users only
        allowed = self.settings.allowed_origins
        if allowed:
            return origin in allowed
        host = request.headers.get("Host", "")
        return origin in {f"http://{host}", f"https://{host}"}

    # -- the connection ------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self._handshaking += 1
        try:
            identity = await self._authenticate(ws)
        finally:
            self._handshaking -= 1
        if identity is None:
            return
        s = self.settings
        if self.hub.registry.count_for(identity.user_id) >= s.max_connections_per_user:
            self.metrics.closes.labels(str(int(CloseCode.TOO_MANY))).inc()
            await ws.close(CloseCode.TOO_MANY, "too many connections for this user")
            return
        conn = ClientConnection(
            connection_id=uuid.uuid4().hex,
            user_id=identity.user_id,
            ws=ws,
            outbox=Outbox(max_messages=s.outbox_max_messages, max_bytes=s.outbox_max_bytes),
            bucket=TokenBucket(rate=s.client_rate, burst=s.client_burst, now=time.monotonic()),
            expires_at=identity.expires_at,
            on_close=self.hub.on_close,
        )
        self.hub.register(conn)
        self.records.opened(conn)
        self._schedule_expiry(conn)
        log.info(
            "client connected",
            extra={"connection_id": conn.connection_id, "user_id": conn.user_id},
        )
        try:
            conn.send_message(
                connected_frame(conn.connection_id, conn.user_id, s.heartbeat_s, conn.expires_at)
            )
            async for message in ws:
                if conn.closing:
                    break
                await self._on_frame(conn, message)
            await conn.wait_closed()
        except ConnectionClosed:
            pass
        finally:
            if conn.expiry_timer is not None:
                conn.expiry_timer.cancel()
            self.metrics.subscriptions.dec(len(conn.subscriptions))
            self.hub.unregister(conn)
            self.records.closed(conn)
            log.info(
                "client disconnected",
                extra={
                    "connection_id": conn.connection_id,
                    "code": ws.close_code,
                },
            )

    async def _authenticate(self, ws: ServerConnection) -> Identity | None:
        if isinstance(ws, SyncConnection):
            if ws.auth_error is not None:
                await self._refuse(ws, ws.auth_error)
                return None
            if ws.identity is not None:
                return ws.identity
        try:
            async with asyncio.timeout(self.settings.auth_timeout_s):
                raw = await ws.recv()
        except TimeoutError:
            await self._refuse(ws, "authentication timed out")
            return None
        except ConnectionClosed:
            return None
        msg = parse_client_message(raw)
        if not isinstance(msg, Auth):
            await self._refuse(ws, "authenticate first")
            return None
        try:
            return self.verifier.verify(msg.token)
        except AuthError as exc:
            await self._refuse(ws, str(exc))
            return None

    async def _refuse(self, ws: ServerConnection, reason: str) -> None:
        self.metrics.closes.labels(str(int(CloseCode.UNAUTHORIZED))).inc()
        log.info("client refused", extra={"reason": reason})
        await ws.close(CloseCode.UNAUTHORIZED, reason)

    def _schedule_expiry(self, conn: ClientConnection) -> None:
        if conn.expiry_timer is not None:
            conn.expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, conn.expires_at + self.verifier.leeway_s - time.time())
        conn.expiry_timer = loop.call_later(
            delay, conn.close, CloseCode.TOKEN_EXPIRED, "token expired"
        )

    async def _on_frame(self, conn: ClientConnection, raw: str | bytes) -> None:
        now = time.monotonic()
        if not conn.bucket.allow(now):
            conn.close(CloseCode.TOO_MANY, "too many messages")
            return
        conn.last_activity = time.time()
        msg = parse_client_message(raw)
        match msg:
            case BadMessage():
                conn.send_message(error_frame(msg.code, msg.message, msg.id))
            case Ping():
                conn.send_message(pong_frame(msg.id))
            case Subscribe():
                await self._subscribe(conn, msg)
            case Unsubscribe():
                before = len(conn.subscriptions)
                conn.subscriptions.remove(msg.task_key)
                if msg.all:
                    conn.subscriptions.clear()
                self.metrics.subscriptions.dec(before - len(conn.subscriptions))
                self.records.touched(conn)
                conn.send_message(unsubscribed_frame(msg))
            case Refresh():
                self._refresh(conn, msg)
            case Auth():
                conn.send_message(
                    error_frame("already_authenticated", "already authenticated", msg.id)
                )

    async def _subscribe(self, conn: ClientConnection, msg: Subscribe) -> None:
        subs = conn.subscriptions
        key = msg.task_key
        is_new = (not subs.all) if key is None else key not in subs.tasks
        if is_new and len(subs) >= self.settings.max_subscriptions:
            conn.send_message(
                error_frame("too_many_subscriptions", "subscription limit reached", msg.id)
            )
            return
        if msg.since is None:
            subs.add(key)
            self._subscribed(conn, is_new)
            conn.send_message(subscribed_frame(msg))
            return
        frames = await self.hub.resume(conn, msg)
        if conn.closing:
            return
        subs.add(key)
        self._subscribed(conn, is_new)
        if frames is None:
            conn.send_message(resync_required_frame(msg))
            conn.send_message(subscribed_frame(msg, recovered=False))
            return
        conn.send_message(subscribed_frame(msg, recovered=True, replayed=len(frames)))
        sent = 0
        for frame in frames:
            if not conn.send_message(frame):
                break
            sent += 1
        self.metrics.messages_sent.inc(sent)
        self.metrics.bytes_sent.inc(sum(len(f) for f in frames[:sent]))

    def _subscribed(self, conn: ClientConnection, is_new: bool) -> None:
        if is_new:
            self.metrics.subscriptions.inc()
        self.records.touched(conn)

    def _refresh(self, conn: ClientConnection, msg: Refresh) -> None:
        try:
            identity = self.verifier.verify(msg.token)
        except AuthError as exc:
            conn.send_message(error_frame("refresh_refused", str(exc), msg.id))
            return
        if identity.user_id != conn.user_id:
            log.warning(
                "refresh for another user refused", extra={"connection_id": conn.connection_id}
            )
            conn.send_message(error_frame("refresh_refused", "token is for another user", msg.id))
            return
        conn.expires_at = identity.expires_at
        self._schedule_expiry(conn)
        conn.send_message(refreshed_frame(msg.id, identity.expires_at))

    # -- shutdown ------------------------------------------------------------------------

    async def close_all(self, window_s: float) -> None:
        """Close every client with 1001, spread over a jittered window (no reconnect herd)."""
        conns = list(self.hub.registry)
        loop = asyncio.get_running_loop()
        for conn in conns:
            loop.call_later(
                random.uniform(0.0, window_s),  # noqa: S311 - jitter, not security
                conn.close,
                CloseCode.GOING_AWAY,
                "server shutting down",
            )
        if conns:
            waiters = [loop.create_task(c.ws.wait_closed()) for c in conns]
            await asyncio.wait(waiters, timeout=window_s + 6.0)
            for waiter in waiters:
                waiter.cancel()
