"""The fan-out ceiling: a bare `websockets` server that broadcast()s one frame.

Connections are grouped in arrival order into groups of `--group` (200, the team-board
fan-out); on "start" (a line on stdin) it broadcasts one pre-serialised text frame to
one group after another, yielding to the loop after each group, until "stop" or EOF.
No auth, no routing, no JSON per send: what `websockets` itself can push on this core.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.shapes import sample_frame

HIGH_WATER = 256 * 1024


async def main_async(args: argparse.Namespace) -> None:
    conns: list[ServerConnection] = []
    frame = sample_frame().decode()
    running = asyncio.Event()
    finished = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        try:
            async for _ in ws:
                pass
        finally:
            conns.remove(ws)

    async def drive() -> None:
        await running.wait()
        deadline = time.monotonic() + args.max_seconds
        while not finished.is_set() and time.monotonic() < deadline:
            snapshot = list(conns)
            for i in range(0, len(snapshot), args.group):
                group = snapshot[i : i + args.group]
                broadcast(group, frame)
                await asyncio.sleep(0)
                transport = group[0].transport
                while transport.get_write_buffer_size() > HIGH_WATER and not finished.is_set():  # noqa: ASYNC110 - a buffer has no event to wait on
                    await asyncio.sleep(0.001)
                if finished.is_set():
                    break
            if not snapshot:
                await asyncio.sleep(0.01)

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if line.strip() == "start":
            running.set()
        elif not line or line.strip() == "stop":
            finished.set()
            running.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), on_stdin)
    async with serve(
        handler,
        "127.0.0.1",
        args.port,
        compression=None,
        max_size=65536,
        max_queue=16,
        ping_interval=30,
        ping_timeout=30,
    ):
        print("READY", flush=True)
        driver = asyncio.create_task(drive())
        try:
            async with asyncio.timeout(args.max_seconds):
                await finished.wait()
        except TimeoutError:
            pass
        driver.cancel()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--group", type=int, default=200)
    p.add_argument("--max-seconds", type=float, default=300.0)
    asyncio.run(main_async(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
