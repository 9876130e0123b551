"""One client's session after the handshake, as a sans-I/O state machine.

The shell feeds it what happened (a client frame and the time, a finished resume, the
expiry timer firing) and performs the actions it returns, in order: send a payload,
replay resumed events, close with a code, start a resume or a cutoff look-up, rewrite the
connection record,
(re)arm the expiry timer. Every per-connection rule lives here: the frame rate limit,
the subscription limit, the order of a resume's replies, the refresh same-user rule and
what an `auth` frame means once connected. `websockets`' `protocol.py` is the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from realtime_sync.core.auth import AuthError, Identity, TokenVerifier, revoked
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
from realtime_sync.core.resume import Resync
from realtime_sync.core.routing import Subscriptions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Send:
    """Send one payload (a JSON text frame) to the client."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Replay:
    """Send the events a resume recovered, in order, stopping at the first refused."""

    payloads: list[bytes]


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this code; nothing more is sent."""

    code: CloseCode
    reason: str


@dataclass(frozen=True, slots=True)
class Resume:
    """Look up what the client missed after `request.since`, then call `Session.resumed`."""

    request: Subscribe


@dataclass(frozen=True, slots=True)
class CheckCutoff:
    """Look up the user's `disconnect_user` cutoff (the state store), then call
    `Session.refreshed` with it."""

    request: Refresh
    identity: Identity


@dataclass(frozen=True, slots=True)
class Touch:
    """The subscriptions changed: rewrite the connection's record."""


@dataclass(frozen=True, slots=True)
class ExpireAt:
    """(Re)arm the expiry timer: call `Session.expire` at Unix time `deadline`."""

    deadline: float


Effect = Send | Replay | Close | Touch | ExpireAt
"""An action the shell carries out at once."""
Action = Effect | Resume | CheckCutoff
"""An action that needs a look-up first; its answer comes back through the session."""


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection limits, from the settings."""

    max_subscriptions: int
    rate: float  # client frames per second
    burst: float
    heartbeat_s: float
    since_lookup_rate: float = 1.0  # `since` look-ups that read the state store, per second
    since_lookup_burst: float = 5.0


def authenticate(raw: str | bytes, verifier: TokenVerifier) -> Identity | Close:
    """The first frame of a client that brought no token in the handshake must be `auth`
    with a valid token; anything else closes with 4001."""
    msg = parse_client_message(raw)
    if not isinstance(msg, Auth):
        return Close(CloseCode.UNAUTHORIZED, "authenticate first")
    try:
        return verifier.verify(msg.token)
    except AuthError as exc:
        return Close(CloseCode.UNAUTHORIZED, str(exc))


class Session:
    """The protocol of one authenticated connection.

    `now` is always Unix time in seconds: token expiry is, and the records show it. The
    rate limit tolerates a clock step (a step back refills nothing, one forward at most
    refills the burst).
    """

    def __init__(
        self,
        *,
        connection_id: str,
        identity: Identity,
        verifier: TokenVerifier,
        limits: SessionLimits,
        now: float,
    ) -> None:
        self.connection_id = connection_id
        self.user_id = identity.user_id
        self.expires_at = identity.expires_at
        self.issued_at = identity.issued_at
        self.subscriptions = Subscriptions()
        self.connected_at = now
        self.last_activity = now
        self.closed = False
        self._verifier = verifier
        self._limits = limits
        self._bucket = TokenBucket(rate=limits.rate, burst=limits.burst, now=now)
        self._store_reads = TokenBucket(
            rate=limits.since_lookup_rate, burst=limits.since_lookup_burst, now=now
        )

    def start(self) -> list[Effect]:
        """The first frame, and the expiry timer."""
        hello = connected_frame(
            self.connection_id, self.user_id, self._limits.heartbeat_s, self.expires_at
        )
        return [Send(hello), self._expiry()]

    def receive(self, raw: str | bytes, now: float) -> list[Action]:
        """One client frame. Never raises: a bad frame is answered with an error frame."""
        if self.closed:
            return []
        if not self._bucket.allow(now):
            return [self._close(CloseCode.TOO_MANY, "too many messages")]
        self.last_activity = now
        msg = parse_client_message(raw)
        match msg:
            case BadMessage():
                return [Send(error_frame(msg.code, msg.message, msg.id))]
            case Ping():
                return [Send(pong_frame(msg.id))]
            case Subscribe():
                return self._subscribe(msg)
            case Unsubscribe():
                self.subscriptions.remove(msg.task_key)
                if msg.all:
                    self.subscriptions.clear()
                return [Touch(), Send(unsubscribed_frame(msg))]
            case Refresh():
                return self._refresh(msg, now)
            case Auth():
                return [Send(error_frame("already_authenticated", "already authenticated", msg.id))]

    def resumed(self, request: Subscribe, payloads: list[bytes] | Resync) -> list[Effect]:
        """The answer to a `Resume`: the events to replay for `since` (a reorder margin
        included, which the client dedupes by `event_id`), or why they are not known. The
        subscription starts now; the client hears `subscribed` (after `resync_required`
        with its reason when nothing was recovered), then the replayed events."""
        if self.closed:
            return []
        self.subscriptions.add(request.task_key)
        if isinstance(payloads, Resync):
            return [
                Touch(),
                Send(resync_required_frame(request, payloads.reason)),
                Send(subscribed_frame(request, recovered=False)),
            ]
        replied = subscribed_frame(request, recovered=True, replayed=len(payloads))
        return [Touch(), Send(replied), Replay(payloads)]

    def refreshed(self, request: Refresh, identity: Identity, cutoff: int | None) -> list[Effect]:
        """The answer to a `CheckCutoff`: a token issued before the user's cutoff is
        refused; if the connection's own token is before it too, the connection closes
        with 4003 (a replica that missed the `disconnect_user` message learns it here)."""
        if self.closed:
            return []
        if revoked(identity, cutoff):
            if revoked(self._identity(), cutoff):
                return [self._close(CloseCode.ACCESS_REVOKED, "access revoked")]
            return [Send(error_frame("refresh_refused", "token revoked", request.id))]
        self.expires_at = identity.expires_at
        self.issued_at = identity.issued_at
        return [self._expiry(), Send(refreshed_frame(request.id, identity.expires_at))]

    def disconnect(self, cutoff: int) -> list[Effect]:
        """`disconnect_user` named this connection's user: close with 4003 if its token
        was issued before the cutoff (a connection opened with a newer token stays, so a
        late or replayed control message cannot cut off the user's next session)."""
        if self.closed or not revoked(self._identity(), cutoff):
            return []
        return [self._close(CloseCode.ACCESS_REVOKED, "access revoked")]

    def _identity(self) -> Identity:
        return Identity(self.user_id, self.expires_at, self.issued_at)

    def may_read_store(self, now: float) -> bool:
        """A `since` that missed the resume buffer may read the state store (a saved
        snapshot) only within its own rate; past it the client gets `resync_required`
        without the read (an unknown `since` must not buy a state read each time)."""
        return self._store_reads.allow(now)

    def expire(self, now: float) -> list[Effect]:
        """The expiry timer fired: close with 4002 once past the token's expiry (with the
        verifier's leeway); a timer that fired early is armed again."""
        if self.closed:
            return []
        if now < self.expires_at + self._verifier.leeway_s:
            return [self._expiry()]
        return [self._close(CloseCode.TOKEN_EXPIRED, "token expired")]

    def stop(self) -> None:
        """The connection is closing for a reason of the shell's (slow consumer, shutdown):
        nothing more comes out of the session."""
        self.closed = True

    def _close(self, code: CloseCode, reason: str) -> Close:
        self.closed = True
        return Close(code, reason)

    def _expiry(self) -> ExpireAt:
        return ExpireAt(self.expires_at + self._verifier.leeway_s)

    def _subscribe(self, msg: Subscribe) -> list[Action]:
        subs = self.subscriptions
        key = msg.task_key
        is_new = (not subs.all) if key is None else key not in subs.tasks
        if is_new and len(subs) >= self._limits.max_subscriptions:
            return [
                Send(error_frame("too_many_subscriptions", "subscription limit reached", msg.id))
            ]
        if msg.since is not None:
            return [Resume(msg)]
        subs.add(key)
        return [Touch(), Send(subscribed_frame(msg))]

    def _refresh(self, msg: Refresh, now: float) -> list[Action]:
        try:
            identity = self._verifier.verify(msg.token, now)
        except AuthError as exc:
            return [Send(error_frame("refresh_refused", str(exc), msg.id))]
        if identity.user_id != self.user_id:
            log.warning(
                "refresh for another user refused", extra={"connection_id": self.connection_id}
            )
            return [Send(error_frame("refresh_refused", "token is for another user", msg.id))]
        return [CheckCutoff(msg, identity)]
