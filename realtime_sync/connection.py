"""One client connection: its identity, subscriptions and bounded outbound path.

A frame is written straight to the socket when nothing is queued and the transport's
buffer is below the high-water mark (no task switch); otherwise it waits in the bounded
Outbox, drained by a short-lived writer task that honours backpressure. Crossing the
bound closes the connection with 4008: a slow client never slows the others and never
grows memory without limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from realtime_sync.core.outbox import Outbox
from realtime_sync.core.outcomes import CloseCode
from realtime_sync.core.ratelimit import TokenBucket
from realtime_sync.core.routing import Subscriptions
from realtime_sync.core.wire import split_text_frames

log = logging.getLogger(__name__)
WRITE_HIGH_WATER = 64 * 1024


class ClientConnection:
    """A registered, authenticated connection (the `Routable` of the core registry)."""

    __slots__ = (
        "_close_task",
        "_direct",
        "_on_close",
        "_plain",
        "_protocol",
        "_transport",
        "_writer",
        "bucket",
        "close_code",
        "connected_at",
        "connection_id",
        "expires_at",
        "expiry_timer",
        "last_activity",
        "outbox",
        "subscriptions",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        *,
        connection_id: str,
        user_id: str,
        ws: ServerConnection,
        outbox: Outbox,
        bucket: TokenBucket,
        expires_at: float,
        on_close: Callable[[ClientConnection, CloseCode], None],
    ) -> None:
        self.connection_id = connection_id
        self.user_id = user_id
        self.ws = ws
        self.outbox = outbox
        self.bucket = bucket
        self.subscriptions = Subscriptions()
        self.expires_at = expires_at
        self.expiry_timer: asyncio.TimerHandle | None = None
        self.connected_at = time.time()
        self.last_activity = self.connected_at
        self.close_code: CloseCode | None = None
        self._writer: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._on_close = on_close
        # Fixed once the handshake is done; cached for the per-frame fast path.
        self._protocol = ws.protocol
        self._transport: Any = ws.transport
        self._plain = not ws.protocol.extensions  # no extension rewrites our frames
        # True while pre-encoded frames may go straight to the socket: no extension, not
        # closing, no writer task (so nothing queued). Kept up to date at each transition.
        self._direct = self._plain

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def send_message(self, payload: bytes) -> bool:
        """Queue or write one JSON text message. False if the connection is (now) closing."""
        if self.close_code is not None or self._protocol.state is not State.OPEN:
            return False
        buffered = self._transport.get_write_buffer_size()
        if self._writer is None and not self.outbox.frames and buffered <= WRITE_HIGH_WATER:
            try:
                self._protocol.send_text(payload)
                self.ws.send_data()
            except Exception:  # noqa: BLE001 - a dying socket; its handler cleans up
                log.debug("direct write failed", extra={"connection_id": self.connection_id})
                return False
            return True
        if not self.outbox.push(payload, in_flight_bytes=buffered):
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")
            return False
        if self._writer is None:
            self._direct = False
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return True

    def send_encoded(self, frames: bytes) -> bool:
        """Write one or more messages already encoded as unmasked text frames (see
        `encode_text_frame`; the same bytes for every connection) in one socket write when
        nothing is queued and the socket keeps up; otherwise `send_message` each payload
        (outbox, bound, 4008). False if any was refused (the connection is closing).

        Server frames are unmasked, so the bytes are the same for every connection unless
        an extension (permessage-deflate) rewrites them: then `send_message` frames them.
        """
        if self._direct and self._protocol.state is State.OPEN:
            transport = self._transport
            # One drain can carry many events: the batch goes in one write only while the
            # socket keeps up and the batch stays within the outbox's byte bound; otherwise
            # each payload goes through `send_message` (outbox, bound, 4008).
            buffered = transport.get_write_buffer_size()
            if buffered <= WRITE_HIGH_WATER and buffered + len(frames) <= self.outbox.max_bytes:
                try:
                    transport.write(frames)
                except Exception:  # noqa: BLE001 - a dying socket; its handler cleans up
                    log.debug("direct write failed", extra={"connection_id": self.connection_id})
                    return False
                return True
        return all(self.send_message(payload) for payload in split_text_frames(frames))

    async def _drain(self) -> None:
        try:
            while self.outbox and self.close_code is None:
                await self.ws.send(self.outbox.pop(), text=True)
        except ConnectionClosed:
            pass
        finally:
            self._writer = None
            self._direct = self._plain and self.close_code is None

    def close(self, code: CloseCode, reason: str) -> None:
        """Close once: stop routing to it now, send the close frame after what was written."""
        if self.close_code is not None:
            return
        self.close_code = code
        self._direct = False
        self.outbox.clear()
        if self.expiry_timer is not None:
            self.expiry_timer.cancel()
        self._on_close(self, code)
        self._close_task = asyncio.get_running_loop().create_task(self.ws.close(int(code), reason))

    async def wait_closed(self) -> None:
        """Let a close started by `close` finish: the handler must not return first, or
        websockets would close with 1000 instead of our code."""
        if self._close_task is not None:
            await asyncio.shield(self._close_task)
