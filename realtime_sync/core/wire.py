"""Server-side WebSocket text frames (RFC 6455 5.2), built once per event.

Server frames are unmasked, so one encoding serves every connection that negotiated no
extension: the fan-out frames an event once and the same bytes go to each socket.
"""

from __future__ import annotations


def encode_text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (RFC 6455 5.2), as a server sends it."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return bytes((0x81, 126)) + size.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + size.to_bytes(8, "big") + payload


def split_text_frames(wire: bytes) -> list[bytes]:
    """The payloads of consecutive frames built by `encode_text_frame` (the slow path)."""
    payloads: list[bytes] = []
    at = 0
    while at < len(wire):
        size = wire[at + 1]
        at += 2
        if size == 126:
            size = int.from_bytes(wire[at : at + 2], "big")
            at += 2
        elif size == 127:
            size = int.from_bytes(wire[at : at + 8], "big")
            at += 8
        payloads.append(wire[at : at + size])
        at += size
    return payloads
