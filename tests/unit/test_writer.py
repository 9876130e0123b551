"""The SocketWriter seam: the websockets versions it supports, and that the internals it
relies on exist and behave, checked on a real socket. A websockets upgrade fails here
first, loudly, instead of corrupting frames in production."""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State

from realtime_sync.core.wire import encode_text_frame
from realtime_sync.writer import (
    SUPPORTED_WEBSOCKETS,
    WRITE_HIGH_WATER,
    SocketWriter,
    websockets_supported,
)

LIMIT = 1 << 20
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
Script = Callable[[SocketWriter, ServerConnection], Awaitable[None]]


def test_the_installed_websockets_is_a_supported_version() -> None:
    assert websockets_supported(), (
        f"websockets {websockets.version.version} is outside {SUPPORTED_WEBSOCKETS}: read "
        "SocketWriter's internals against it, then widen SUPPORTED_WEBSOCKETS"
    )


def test_the_supported_range_is_the_one_pyproject_pins() -> None:
    deps = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["dependencies"]
    [pin] = [d for d in deps if re.match(r"websockets\b", d)]
    (first, _), (last, _) = SUPPORTED_WEBSOCKETS
    assert pin == f"websockets>={first},<{last}"


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("17.0", True),
        ("17.4", True),
        ("17.4.1", True),
        ("16.0", False),
        ("18.0", False),
        ("17.0rc1", False),
        ("nonsense", False),
    ],
)
def test_versions_outside_the_range_are_not_supported(version: str, supported: bool) -> None:
    assert websockets_supported(version) is supported


def test_the_internals_it_uses_exist() -> None:
    assert callable(getattr(ServerConnection, "send_data", None))
    assert callable(getattr(Protocol, "send_text", None))
    assert State.OPEN in State


@pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
def test_a_frame_encoded_once_is_what_websockets_would_send(size: int) -> None:
    """The verbatim path writes `core.wire` frames: byte for byte websockets' own."""
    payload = b"x" * size
    assert encode_text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


@asynccontextmanager
async def served(script: Script, *, compression: str | None = None) -> AsyncIterator[str]:
    """A websockets server whose handler runs `script` on a SocketWriter of its connection."""
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await script(SocketWriter(ws), ws)
        await ws.wait_closed()
        done.set()

    async with serve(handler, "127.0.0.1", 0, compression=compression) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"
        await asyncio.wait_for(done.wait(), 10)


async def received(url: str, count: int, *, compression: str | None = None) -> list[int]:
    """The `n` of the first `count` messages, each of which must be a text frame."""
    async with connect(url, compression=compression) as ws:
        messages = [await asyncio.wait_for(ws.recv(), 10) for _ in range(count)]
    assert all(isinstance(m, str) for m in messages), "every frame arrives as text"
    return [orjson.loads(m)["n"] for m in messages]


async def test_direct_and_public_writes_arrive_as_text_in_order() -> None:
    async def script(writer: SocketWriter, _: ServerConnection) -> None:
        assert writer.open and writer.immediate and writer.verbatim
        assert writer.buffered == 0
        assert writer.write_message_now(b'{"n":1}')
        both = encode_text_frame(b'{"n":2}') + encode_text_frame(b'{"n":3}')
        assert writer.write_encoded_now(both, LIMIT)
        await writer.send(b'{"n":4}')
        big = orjson.dumps({"n": 5, "pad": "x" * 70_000})  # a 64-bit length field
        assert writer.write_encoded_now(encode_text_frame(big), LIMIT)
        assert writer.write_message_now(b'{"n":6}')

    async with served(script) as url:
        got = await received(url, 6)
    assert got == [1, 2, 3, 4, 5, 6]


async def test_with_permessage_deflate_frames_are_not_written_verbatim() -> None:
    async def script(writer: SocketWriter, _: ServerConnection) -> None:
        assert not writer.verbatim  # the extension rewrites every frame
        assert not writer.write_encoded_now(encode_text_frame(b'{"n":0}'), LIMIT)
        assert writer.write_message_now(b'{"n":1}')
        await writer.send(b'{"n":2}')

    async with served(script, compression="deflate") as url:
        assert await received(url, 2, compression="deflate") == [1, 2]


async def test_a_closed_connection_is_not_open_and_takes_no_direct_write() -> None:
    seen: list[bool] = []

    async def script(writer: SocketWriter, ws: ServerConnection) -> None:
        seen.append(writer.open)
        await ws.close()
        seen.append(writer.open)
        seen.append(writer.write_message_now(b"{}"))
        seen.append(writer.write_encoded_now(encode_text_frame(b"{}"), LIMIT))

    async with served(script) as url, connect(url) as ws:
        await ws.wait_closed()
    assert seen == [True, False, False, False]


async def test_a_socket_that_does_not_keep_up_takes_no_direct_write() -> None:
    """A client that stops reading: once the socket's buffer is past the high-water mark,
    nothing more is written at once (the connection queues it in its bounded outbox)."""
    frame = encode_text_frame(b'"' + b"x" * WRITE_HIGH_WATER + b'"')
    outcome: list[bool] = []

    async def script(writer: SocketWriter, ws: ServerConnection) -> None:
        assert not writer.write_encoded_now(frame, len(frame) - 1)  # over the given bound
        for _ in range(10_000):  # the client's queue and the kernel's buffers fill up
            if not writer.write_encoded_now(frame, 1 << 40):
                break
        outcome.append(writer.buffered > WRITE_HIGH_WATER)
        outcome.append(writer.write_message_now(b"{}"))
        outcome.append(writer.write_encoded_now(encode_text_frame(b"{}"), 1 << 40))
        checked.set()

    checked = asyncio.Event()
    async with served(script) as url, connect(url, max_queue=1, max_size=None) as ws:
        await asyncio.wait_for(checked.wait(), 10)
        ws.transport.abort()  # a client that stopped reading would not see a close frame
    assert outcome == [True, False, False]
