"""The Python client's decisions, sans I/O: reconnect and backoff, token refresh, watchdog.

`realtime_sync.client` feeds `ClientPolicy` what happened (a token to open with, `connected`
with the announced `exp`, every subscription confirmed, a frame at `now`, a close with its
code) and does what comes back (`Reconnect` after a delay, `GiveUp`, `Ping`, `DropSilent`,
`RefreshIn`, `SendRefresh`...). The browser client holds the same machine (`ClientPolicy` in
`clients/js/realtime-sync.js`); both run the vectors in `clients/vectors/policy.json`, so the
two cannot drift. Times are plain numbers: seconds on a monotonic clock for the watchdog,
Unix seconds for the refresh (`exp` is a Unix time).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from realtime_sync.core.outcomes import CloseCode

#: RFC 6455: the connection ended without a close frame (a dead socket, a dropped one).
ABNORMAL_CLOSURE: Final = 1006
#: Close codes after which the same token must not be sent again.
AUTH_CLOSE_CODES: Final = frozenset(
    {CloseCode.UNAUTHORIZED, CloseCode.TOKEN_EXPIRED, CloseCode.ACCESS_REVOKED}
)
#: Close codes that mean "slow down": the backoff keeps growing instead of restarting.
THROTTLE_CLOSE_CODES: Final = frozenset({CloseCode.TOO_MANY})
# A refresh is sent this share of the token's remaining life before it expires, at most
# REFRESH_LEAD_MAX_S before (clock skew between client and server is covered too).
REFRESH_LEAD_SHARE: Final = 0.2
REFRESH_LEAD_MAX_S: Final = 60.0
REFRESH_RETRY_MIN_S: Final = 1.0
SILENT_REASON: Final = "ping unanswered"


def refresh_delay(expires_at: float, now: float) -> float:
    """Seconds from `now` until a token expiring at `expires_at` should be refreshed."""
    remaining = expires_at - now
    return max(0.0, remaining - min(REFRESH_LEAD_MAX_S, REFRESH_LEAD_SHARE * remaining))


def backoff_delay(attempt: int, *, base: float, cap: float, random: Callable[[], float]) -> float:
    """Exponential backoff with full jitter before retry number `attempt` (from 0): uniform
    over [0, min(cap, base * 2**attempt)], `random` being uniform over [0, 1)."""
    return random() * min(cap, base * 2.0 ** min(attempt, 62))


@dataclass(frozen=True, slots=True)
class Reconnect:
    """A scheduled reconnection attempt (passed to ``on_reconnect``)."""

    attempt: int
    delay_s: float
    close_code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop the client: the server refused the token and no fresh one can be had."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class RefreshIn:
    """Ask the token provider for a new token after `delay_s` seconds."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class SendRefresh:
    """Send this token in a `refresh` frame on the live connection."""

    token: str


@dataclass(frozen=True, slots=True)
class Lapse:
    """No refresh will come: the token lapses into 4002 and a reconnect (`reason` is logged)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    """Send a `ping` now; ask the watchdog again at `check_at`."""

    check_at: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do; ask the watchdog again at `check_at`."""

    check_at: float


@dataclass(frozen=True, slots=True)
class DropSilent:
    """The ping went unanswered: abort the connection (its close reads as ping unanswered)."""


@dataclass(slots=True)
class _Session:
    """What the policy knows of the current connection attempt."""

    token: str = ""  # the one it opened with: remembered if the server refuses it
    current: str = ""  # the one in force after refreshes
    stable: bool = False  # every subscription was confirmed
    silent: bool = False  # dropped by the watchdog
    delivering: bool = False  # blocked on a slow consumer: that is not silence
    last_rx: float = 0.0
    pinged_at: float | None = None
    expires_at: float | None = None


class ClientPolicy:
    """One client's reconnect, backoff, refresh and watchdog decisions.

    ``renewable_token``: the token comes from a provider that can be asked again (not a
    fixed string). ``random``: the jitter source, uniform over [0, 1).
    """

    def __init__(
        self,
        *,
        backoff_base_s: float,
        backoff_cap_s: float,
        ping_interval_s: float,
        ping_timeout_s: float,
        renewable_token: bool,
        random: Callable[[], float],
    ) -> None:
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._ping_interval = ping_interval_s
        self._ping_timeout = ping_timeout_s
        self._renewable = renewable_token
        self._random = random
        self._attempt = 0  # the backoff exponent of the next retry
        self._refused: str | None = None
        self._session = _Session()

    # -- connection attempts ---------------------------------------------------------------

    def opening(self, token: str, now: float) -> GiveUp | None:
        """A connection attempt is about to be made with `token`."""
        if token == self._refused:
            return GiveUp(
                CloseCode.UNAUTHORIZED, "the token provider returned the refused token again"
            )
        self._session = _Session(token=token, current=token, last_rx=now)
        return None

    def token_failed(self, error: str) -> Reconnect:
        """The token provider raised `error` (its outage): back off and ask again."""
        self._session = _Session()
        return self._backoff(None, f"token provider failed: {error}", throttled=False)

    def connected(self, exp: object, now: float) -> RefreshIn | Lapse | None:
        """The server accepted the token and announced its expiry `exp` (Unix seconds)."""
        self._refused = None
        return self._plan_refresh(exp, now)

    def subscribed(self) -> None:
        """Every subscription of this connection was confirmed: it is a working session."""
        self._session.stable = True

    def closed(self, code: int | None, reason: str) -> Reconnect | GiveUp:
        """The connection ended (`code` None: it never opened, or no close code is known)."""
        session = self._session
        if session.silent:
            code, reason = ABNORMAL_CLOSURE, SILENT_REASON
        if session.stable and code not in THROTTLE_CLOSE_CODES:
            # A working session resets the backoff; one closed before it was subscribed (or
            # for sending too much) does not, so a close right after `connected` cannot spin.
            self._attempt = 0
        if code in AUTH_CLOSE_CODES:
            self._refused = session.token
            if not self._renewable:
                return GiveUp(code, reason)
            if self._attempt == 0:
                # A fresh token usually fixes it: ask for one and try at once, once.
                self._attempt = 1
                return Reconnect(0, 0.0, code, reason)
        return self._backoff(code, reason, throttled=code in THROTTLE_CLOSE_CODES)

    def _backoff(self, code: int | None, reason: str, *, throttled: bool) -> Reconnect:
        delay = backoff_delay(self._attempt, base=self._base, cap=self._cap, random=self._random)
        decision = Reconnect(self._attempt + 1, delay, code, reason)
        self._attempt += 2 if throttled else 1
        return decision

    # -- watchdog --------------------------------------------------------------------------

    def frame_received(self, now: float) -> None:
        """A frame arrived: the connection is alive (any frame answers a ping)."""
        self._session.last_rx = now
        self._session.pinged_at = None

    def delivery_started(self) -> None:
        """Frames wait on a slow consumer: the wire is not silent meanwhile."""
        self._session.delivering = True

    def delivery_done(self, now: float) -> None:
        self._session.delivering = False
        self.frame_received(now)

    def watchdog(self, now: float) -> Ping | Wait | DropSilent:
        """After `ping_interval` without a frame, ping; without an answer within
        `ping_timeout`, drop the connection."""
        session = self._session
        if session.delivering:
            self.frame_received(now)
        if session.pinged_at is None:
            due = session.last_rx + self._ping_interval
            if now < due:
                return Wait(due)
            session.pinged_at = now
            return Ping(now + self._ping_timeout)
        due = session.pinged_at + self._ping_timeout
        if now < due:
            return Wait(due)
        session.silent = True
        return DropSilent()

    # -- token refresh ---------------------------------------------------------------------

    def refreshed(self, exp: object, now: float) -> RefreshIn | Lapse | None:
        """The server accepted a refresh and announced the new expiry."""
        return self._plan_refresh(exp, now)

    def _plan_refresh(self, exp: object, now: float) -> RefreshIn | Lapse | None:
        """Only a provider can give a newer token, and only a later expiry is worth another
        round (a provider returning the same token would loop)."""
        if not self._renewable or isinstance(exp, bool) or not isinstance(exp, int | float):
            return None
        if not math.isfinite(exp):
            return None
        session = self._session
        if session.expires_at is not None and exp <= session.expires_at:
            return Lapse("the refresh gave no later expiry")
        session.expires_at = float(exp)
        return RefreshIn(refresh_delay(float(exp), now))

    def refresh_token(self, token: str, now: float) -> SendRefresh | RefreshIn | Lapse:
        """The provider answered `token` for the planned refresh. One still handing out the
        current token (it caches tokens until shortly before expiry) is asked again halfway
        to the expiry, until a second is left."""
        session = self._session
        if token != session.current:
            session.current = token
            return SendRefresh(token)
        remaining = (session.expires_at or 0.0) - now
        if remaining < REFRESH_RETRY_MIN_S:
            return Lapse("the token provider gave no new token before expiry")
        return RefreshIn(remaining / 2)


class RecentIds:
    """The last `size` event ids seen, for dropping duplicates across reconnects.

    The least recently *seen* id is evicted (not the first inserted): an id that keeps
    coming back is still in some replay buffer, so it is the one worth remembering.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """True if `event_id` was seen before; remembers it (as the most recent) either way."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False
