"""The WebSocket shell: handshake checks, per-connection loop, and HTTP endpoints.

`/ws` is the WebSocket endpoint; `/healthz`, `/readyz` and `/metrics` answer plain
HTTP on the same port (websockets' process_request runs before the upgrade).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from realtime_sync.config import Settings
from realtime_sync.connection import ClientConnection, ExpiryTimer
from realtime_sync.core.auth import AuthError, Identity, TokenVerifier, revoked
from realtime_sync.core.outbox import Outbox
from realtime_sync.core.outcomes import CloseCode
from realtime_sync.core.session import (
    CheckCutoff,
    Close,
    Effect,
    ExpireAt,
    Replay,
    Resume,
    Send,
    Session,
    SessionLimits,
    Touch,
    authenticate,
)
from realtime_sync.cutoffs import UserCutoffs
from realtime_sync.hub import Hub
from realtime_sync.metrics import Metrics
from realtime_sync.presence import ConnectionRecords
from realtime_sync.static import SECURITY_HEADERS, StaticFiles

log = logging.getLogger(__name__)
WS_PATH = "/ws"
# Headers a request may carry once: a second one is ambiguous (which Origin? which token?).
SINGLE_HEADERS = ("Host", "Origin", "Authorization", "Upgrade")


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


def _address(ws: ServerConnection) -> str:
    """The client's IP address (behind a proxy: the proxy's)."""
    remote = ws.remote_address
    return str(remote[0]) if remote else "unknown"


def _response(
    status: HTTPStatus, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()
) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), *extra])
    return Response(status.value, status.phrase, headers, body)


class Gateway:
    """Admits WebSocket clients and drives each one's `Session` for its lifetime."""

    def __init__(
        self,
        *,
        settings: Settings,
        hub: Hub,
        verifier: TokenVerifier,
        records: ConnectionRecords,
        metrics: Metrics,
        readiness: Readiness,
        cutoffs: UserCutoffs,
        static: StaticFiles | None = None,
    ) -> None:
        self.settings = settings
        self.cutoffs = cutoffs
        self.hub = hub
        self.verifier = verifier
        self.records = records
        self.metrics = metrics
        self.readiness = readiness
        self.static = static
        self.server: Server | None = None
        # Token-less sockets waiting for their auth frame: bounded apart from
        # MAX_CONNECTIONS, in total and per client address.
        self._unauthenticated: Counter[str] = Counter()
        self._limits = SessionLimits(
            max_subscriptions=settings.max_subscriptions,
            rate=settings.client_rate,
            burst=settings.client_burst,
            heartbeat_s=settings.heartbeat_s,
            since_lookup_rate=settings.since_lookup_rate,
            since_lookup_burst=settings.since_lookup_burst,
        )

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
        for name in SINGLE_HEADERS:
            if len(request.headers.get_all(name)) > 1:
                self.metrics.handshakes_refused.labels("duplicate_header").inc()
                log.info("request refused: duplicate header", extra={"header": name})
                return _response(
                    HTTPStatus.BAD_REQUEST, f"duplicate {name} header\n".encode(), "text/plain"
                )
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
                return _response(HTTPStatus.OK, body, content_type, SECURITY_HEADERS)
        if path != WS_PATH:
            return _response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        return self._check_handshake(ws, request)

    def _check_handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.readiness.draining:
            self.metrics.handshakes_refused.labels("draining").inc()
            return _response(HTTPStatus.SERVICE_UNAVAILABLE, b"shutting down\n", "text/plain")
        token = _token_from(request)
        if token is None:
            refused = self._unauthenticated_refusal(_address(ws))
            if refused is not None:
                return refused
        elif len(self.hub.registry) >= self.settings.max_connections:
            return self._at_capacity()
        if not self._origin_allowed(request):
            self.metrics.handshakes_refused.labels("origin").inc()
            log.info("handshake refused: origin not allowed")
            return _response(HTTPStatus.FORBIDDEN, b"origin not allowed\n", "text/plain")
        if token is not None and isinstance(ws, SyncConnection):
            try:
                ws.identity = self.verifier.verify(token, time.time())
            except AuthError as exc:
                ws.auth_error = str(exc)
        return None

    def _at_capacity(self) -> Response:
        self.metrics.handshakes_refused.labels("capacity").inc()
        return _response(HTTPStatus.SERVICE_UNAVAILABLE, b"at capacity\n", "text/plain")

    def _unauthenticated_refusal(self, address: str) -> Response | None:
        """A token-less socket holds a slot of its own bound until its auth frame: 503
        past MAX_UNAUTHENTICATED, 429 past MAX_UNAUTHENTICATED_PER_ADDRESS."""
        s = self.settings
        if self._unauthenticated.total() >= s.max_unauthenticated:
            self.metrics.limits_hit.labels("unauthenticated").inc()
            self.metrics.handshakes_refused.labels("unauthenticated").inc()
            return _response(
                HTTPStatus.SERVICE_UNAVAILABLE, b"too many unauthenticated sockets\n", "text/plain"
            )
        if self._unauthenticated[address] >= s.max_unauthenticated_per_address:
            self.metrics.limits_hit.labels("unauthenticated_per_address").inc()
            self.metrics.handshakes_refused.labels("unauthenticated").inc()
            return _response(
                HTTPStatus.TOO_MANY_REQUESTS,
                b"too many unauthenticated sockets from this address\n",
                "text/plain",
            )
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
        identity = await self._admit(ws)
        if identity is None:
            return
        s = self.settings
        session = Session(
            connection_id=uuid.uuid4().hex,
            identity=identity,
            verifier=self.verifier,
            limits=self._limits,
            now=time.time(),
        )
        conn = ClientConnection(
            session=session,
            ws=ws,
            outbox=Outbox(max_messages=s.outbox_max_messages, max_bytes=s.outbox_max_bytes),
            on_close=self.hub.on_close,
        )
        async with self._registered(conn) as expiry:
            try:
                # A cutoff learnt between the look-up and the registration closes it now.
                cutoff = self.cutoffs.known(identity.user_id)
                if cutoff is not None and revoked(identity, cutoff):
                    self._apply(conn, expiry, session.disconnect(cutoff))
                else:
                    self._apply(conn, expiry, session.start())
                async for raw in ws:
                    if conn.closing:
                        break
                    await self._receive(conn, expiry, raw)
                await conn.wait_closed()
            except ConnectionClosed:
                pass

    async def _admit(self, ws: ServerConnection) -> Identity | None:
        """Who the client is, or None once it has been closed (4001; 4003 for a token
        issued before its user's `disconnect_user` cutoff; 4029 when its user holds too
        many connections; 4029 too when a token-less socket authenticates at capacity)."""
        came_with_token = isinstance(ws, SyncConnection) and (
            ws.identity is not None or ws.auth_error is not None
        )
        identity = await self._authenticate(ws)
        if identity is None:
            return None
        if revoked(identity, await self.cutoffs.lookup(identity.user_id)):
            self.metrics.closes.labels(str(int(CloseCode.ACCESS_REVOKED))).inc()
            log.info("client refused: token issued before its user's cutoff")
            await ws.close(CloseCode.ACCESS_REVOKED, "access revoked")
            return None
        if not came_with_token and len(self.hub.registry) >= self.settings.max_connections:
            self.metrics.handshakes_refused.labels("capacity").inc()
            self.metrics.closes.labels(str(int(CloseCode.TOO_MANY))).inc()
            await ws.close(CloseCode.TOO_MANY, "at capacity")
            return None
        if self.hub.registry.count_for(identity.user_id) >= self.settings.max_connections_per_user:
            self.metrics.closes.labels(str(int(CloseCode.TOO_MANY))).inc()
            await ws.close(CloseCode.TOO_MANY, "too many connections for this user")
            return None
        return identity

    @contextlib.asynccontextmanager
    async def _registered(self, conn: ClientConnection) -> AsyncIterator[ExpiryTimer]:
        """The connection is routed to, recorded in the state store and timed for its
        token's expiry exactly as long as this block."""
        expiry = ExpiryTimer(lambda: self._apply(conn, expiry, conn.session.expire(time.time())))
        self.hub.register(conn)
        self.records.opened(conn)
        log.info(
            "client connected",
            extra={"connection_id": conn.connection_id, "user_id": conn.user_id},
        )
        try:
            yield expiry
        finally:
            expiry.cancel()
            self.metrics.subscriptions.dec(len(conn.subscriptions))
            self.hub.unregister(conn)
            self.records.closed(conn)
            log.info(
                "client disconnected",
                extra={"connection_id": conn.connection_id, "code": conn.ws.close_code},
            )

    async def _authenticate(self, ws: ServerConnection) -> Identity | None:
        if isinstance(ws, SyncConnection):
            if ws.auth_error is not None:
                await self._refuse(ws, ws.auth_error)
                return None
            if ws.identity is not None:
                return ws.identity
        address = _address(ws)
        if self._unauthenticated_refusal(address) is not None:  # others got in first
            self.metrics.closes.labels(str(int(CloseCode.TOO_MANY))).inc()
            await ws.close(CloseCode.TOO_MANY, "too many unauthenticated sockets")
            return None
        self._unauthenticated[address] += 1
        try:
            async with asyncio.timeout(self.settings.auth_timeout_s):
                raw = await ws.recv()
        except TimeoutError:
            await self._refuse(ws, "authentication timed out")
            return None
        except ConnectionClosed:
            return None
        finally:
            self._unauthenticated[address] -= 1
            if self._unauthenticated[address] <= 0:
                del self._unauthenticated[address]
        found = authenticate(raw, self.verifier)
        if isinstance(found, Close):
            await self._refuse(ws, found.reason)
            return None
        return found

    async def _refuse(self, ws: ServerConnection, reason: str) -> None:
        self.metrics.closes.labels(str(int(CloseCode.UNAUTHORIZED))).inc()
        log.info("client refused", extra={"reason": reason})
        await ws.close(CloseCode.UNAUTHORIZED, reason)

    async def _receive(self, conn: ClientConnection, expiry: ExpiryTimer, raw: str | bytes) -> None:
        """Feed one client frame to the session and carry out its actions in order; a
        resume is awaited, and the actions of its answer follow."""
        before = len(conn.subscriptions)
        for action in conn.session.receive(raw, time.time()):
            if isinstance(action, Resume):
                payloads = await self.hub.resume(
                    conn, action.request, lambda: conn.session.may_read_store(time.time())
                )
                self._apply(conn, expiry, conn.session.resumed(action.request, payloads))
            elif isinstance(action, CheckCutoff):
                cutoff = await self.cutoffs.lookup(conn.user_id)
                self._apply(
                    conn, expiry, conn.session.refreshed(action.request, action.identity, cutoff)
                )
            else:
                self._apply(conn, expiry, [action])
        if changed := len(conn.subscriptions) - before:
            self.metrics.subscriptions.inc(changed)

    def _apply(self, conn: ClientConnection, expiry: ExpiryTimer, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Send():
                    conn.send_message(effect.payload)
                case Replay():
                    self._replay(conn, effect.payloads)
                case Close():
                    conn.close(effect.code, effect.reason)
                case Touch():
                    self.records.touched(conn)
                case ExpireAt():
                    expiry.arm(effect.deadline)

    def _replay(self, conn: ClientConnection, payloads: list[bytes]) -> None:
        sent = 0
        for payload in payloads:
            if not conn.send_message(payload):
                break
            sent += 1
        self.metrics.messages_sent.inc(sent)
        self.metrics.bytes_sent.inc(sum(len(p) for p in payloads[:sent]))

    # -- disconnect_user ---------------------------------------------------------------

    def disconnect_user(self, user_id: str, cutoff: int) -> int:
        """Close with 4003 every connection of the user on this replica whose token was
        issued before the cutoff; how many."""
        closed = 0
        for conn in self.hub.registry.of_user(user_id):
            for effect in conn.session.disconnect(cutoff):
                if isinstance(effect, Close):
                    conn.close(effect.code, effect.reason)
                    closed += 1
        if closed:
            log.info("user disconnected", extra={"user_id": user_id, "connections": closed})
        return closed

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
