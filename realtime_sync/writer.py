"""The one seam over websockets' internals: writing to a connection's socket at once.

`websockets`' public `send()` is a coroutine: every frame would cost a task switch and an
`await drain()`. An event fanned out to thousands of sockets is written instead straight
to each socket while it keeps up (the gain is measured in the bench). Only `SocketWriter`
reaches behind websockets' back; everything else uses its public API.
"""

from __future__ import annotations

import logging
from typing import Final

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

log = logging.getLogger(__name__)
# A socket with more than this waiting in its buffer does not keep up: frames for it
# wait in the connection's outbox instead.
WRITE_HIGH_WATER: Final = 64 * 1024

# The websockets releases whose internals SocketWriter was read against: [first, last).
# tests/unit/test_writer.py fails on any other version; pyproject.toml pins the same range.
SUPPORTED_WEBSOCKETS: Final = ((17, 0), (18, 0))


def websockets_supported(version: str = websockets.version.version) -> bool:
    """Is this websockets version one SocketWriter was checked against?"""
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return False
    first, last = SUPPORTED_WEBSOCKETS
    return first <= (major, minor) < last


SUPPORTED: Final = websockets_supported()
if not SUPPORTED:  # pragma: no cover - the version test fails first
    log.warning(
        "websockets %s is not a version the direct write path was checked against; "
        "every frame goes through websockets' send()",
        websockets.version.version,
    )


class SocketWriter:
    """Writes frames to one websockets server connection without a task switch.

    What it relies on, and why that holds on the supported versions:
    - `ws.protocol` is the sans-I/O `websockets.protocol.Protocol` of the connection:
      `state` tells whether frames may be sent, `extensions` whether any were negotiated,
      and `send_text()` frames a payload into its outgoing buffer (public Protocol API).
    - `ws.send_data()` (undocumented) writes that buffer to the transport, as websockets'
      own `send()` does before it awaits `drain()`.
    - `ws.transport` is the asyncio transport: `get_write_buffer_size()` tells how far
      the socket lags; `write()` queues bytes in order with websockets' own writes.
    - Server frames are unmasked (RFC 6455 5.1) and, with no extension negotiated, the
      protocol keeps no per-frame send state: bytes framed once by `core.wire` are exactly
      what `send_text()` would produce, so they may be written verbatim.
    If the installed websockets is outside SUPPORTED_WEBSOCKETS, `immediate` and `verbatim`
    are False: every frame goes through the public `send()`.
    """

    __slots__ = ("_protocol", "_transport", "_ws", "immediate", "verbatim")

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        # Fixed once the handshake is done; cached for the per-frame fast path.
        self._protocol = ws.protocol
        self._transport = ws.transport
        self.immediate = SUPPORTED
        """Payloads may be written without a task switch."""
        self.verbatim = SUPPORTED and not ws.protocol.extensions
        """Frames encoded by `core.wire` may be written verbatim (no extension rewrites them)."""

    @property
    def open(self) -> bool:
        return self._protocol.state is State.OPEN

    @property
    def buffered(self) -> int:
        """Bytes handed to the socket and not sent yet."""
        return self._transport.get_write_buffer_size()

    def write_message_now(self, payload: bytes) -> bool:
        """Frame one text payload (with any extension) and write it, if the connection is
        open and its socket keeps up. False: not written (queue it, or the connection is
        closing, or the socket is dying and its handler cleans up)."""
        if not self.immediate or self._protocol.state is not State.OPEN:
            return False
        if self._transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            return False
        try:
            self._protocol.send_text(payload)
            self._ws.send_data()
        except Exception:  # noqa: BLE001 - a dying socket; its handler cleans up
            return False
        return True

    def write_encoded_now(self, frames: bytes, max_buffered: int) -> bool:
        """Write frames encoded by `core.wire.encode_text_frame` verbatim, in one write, if
        no extension rewrites them, the connection is open, its socket keeps up and the
        bytes waiting in it stay within `max_buffered`. False: not written (see above)."""
        if not self.verbatim or self._protocol.state is not State.OPEN:
            return False
        transport = self._transport
        buffered = transport.get_write_buffer_size()
        if buffered > WRITE_HIGH_WATER or buffered + len(frames) > max_buffered:
            return False
        try:
            transport.write(frames)
        except Exception:  # noqa: BLE001 - a dying socket; its handler cleans up
            return False
        return True

    async def send(self, payload: bytes) -> None:
        """The public path, with websockets' flow control (raises ConnectionClosed)."""
        await self._ws.send(payload, text=True)
