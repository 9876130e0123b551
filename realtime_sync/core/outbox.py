"""A connection's bounded outbound queue: overflow is a protocol outcome (close 4008)."""

from __future__ import annotations

from collections import deque


class Outbox:
    """Frames waiting for a slow socket, bounded by count and by bytes.

    `push` answers False when the frame would cross a bound: the caller closes the
    connection as a slow consumer instead of buffering without limit.
    """

    __slots__ = ("_max_messages", "bytes", "frames", "max_bytes")

    def __init__(self, *, max_messages: int, max_bytes: int) -> None:
        # Public for the hot path: `not outbox.frames` is a C-level check.
        self.frames: deque[bytes] = deque()
        self._max_messages = max_messages
        self.max_bytes = max_bytes
        """The byte bound (a plain attribute: read once per socket write)."""
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.frames)

    def __bool__(self) -> bool:
        return bool(self.frames)

    def push(self, frame: bytes, *, in_flight_bytes: int = 0) -> bool:
        """Queue a frame; False if this would exceed the bound (counting bytes already
        handed to the transport but not yet sent)."""
        if (
            len(self.frames) + 1 > self._max_messages
            or self.bytes + len(frame) + in_flight_bytes > self.max_bytes
        ):
            return False
        self.frames.append(frame)
        self.bytes += len(frame)
        return True

    def pop(self) -> bytes:
        frame = self.frames.popleft()
        self.bytes -= len(frame)
        return frame

    def clear(self) -> None:
        self.frames.clear()
        self.bytes = 0
