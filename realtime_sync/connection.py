"""One client connection: its session, its bounded outbound path and its expiry timer.

A frame is written straight to the socket (through the `SocketWriter` seam) when nothing
is queued and the socket keeps up (no task switch);
otherwise it waits in the bounded Outbox, drained by a short-lived task that honours
backpressure. Crossing the bound closes the connection with 4008: a slow client never
slows the others and never grows memory without limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from realtime_sync.core.outbox import Outbox
from realtime_sync.core.outcomes import CloseCode
from realtime_sync.core.session import Session
from realtime_sync.core.wire import split_text_frames
from realtime_sync.writer import SocketWriter


class ExpiryTimer:
    """Calls `fire` at a Unix time; armed again by each `arm`, stopped by `cancel`."""

    __slots__ = ("_fire", "_handle")

    def __init__(self, fire: Callable[[], None]) -> None:
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, deadline: float) -> None:
        self.cancel()
        delay = max(0.0, deadline - time.time())
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ClientConnection:
    """A registered, authenticated connection (the `Routable` of the core registry)."""

    __slots__ = (
        "_close_task",
        "_drainer",
        "_on_close",
        "_socket",
        "close_code",
        "connection_id",
        "outbox",
        "session",
        "subscriptions",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        *,
        session: Session,
        ws: ServerConnection,
        outbox: Outbox,
        on_close: Callable[[ClientConnection, CloseCode], None],
    ) -> None:
        self.session = session
        self.connection_id = session.connection_id
        self.user_id = session.user_id
        # The session's own set: the hub's routing loop reads it on every event.
        self.subscriptions = session.subscriptions
        self.ws = ws
        self.outbox = outbox
        self.close_code: CloseCode | None = None
        self._socket = SocketWriter(ws)
        self._drainer: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._on_close = on_close

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    @property
    def connected_at(self) -> float:
        return self.session.connected_at

    @property
    def last_activity(self) -> float:
        return self.session.last_activity

    def send_message(self, payload: bytes) -> bool:
        """Write or queue one text message. False if the connection is (now) closing."""
        if self.close_code is not None:
            return False
        socket = self._socket
        if self._drainer is None and socket.write_message_now(payload):
            return True
        if not socket.open:
            return False
        if not self.outbox.push(payload, in_flight_bytes=socket.buffered):
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
            return False
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return True

    def send_encoded(self, frames: bytes) -> bool:
        """Write text frames encoded by `core.wire.encode_text_frame` (the same bytes for
        every connection) in one socket write when nothing is queued and the socket keeps
        up; otherwise `send_message` each frame's payload (outbox, bound, 4008). False if
        any frame was refused (the connection is closing).

        One drain of the hub can carry many events: the batch goes in one write only while
        it stays within the outbox's byte bound. A connection that negotiated an extension
        (permessage-deflate) never takes the verbatim path.
        """
        if (
            self._drainer is None
            and self.close_code is None
            and self._socket.write_encoded_now(frames, self.outbox.max_bytes)
        ):
            return True
        return all(self.send_message(payload) for payload in split_text_frames(frames))

    async def _drain(self) -> None:
        """Send what waits in the outbox, with websockets' flow control; the task ends
        when the outbox is empty (so `_drainer is None` means nothing is queued)."""
        try:
            while self.outbox and self.close_code is None:
                await self._socket.send(self.outbox.pop())
        except ConnectionClosed:
            pass
        finally:
            self._drainer = None

    def close(self, code: CloseCode, reason: str) -> None:
        """Close once: stop routing to it now, send the close frame after what was written."""
        if self.close_code is not None:
            return
        self.close_code = code
        self.session.stop()
        self.outbox.clear()
        self._on_close(self, code)
        self._close_task = asyncio.get_running_loop().create_task(self.ws.close(int(code), reason))

    async def wait_closed(self) -> None:
        """Let a close started by `close` finish: the handler must not return first, or
        websockets would close with 1000 instead of our code."""
        if self._close_task is not None:
            await asyncio.shield(self._close_task)
