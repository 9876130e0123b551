"""The latency probe: a few connections of the probe users, nothing else.

Each `task_update` carries data.sent_us, stamped by the caller just before it issued
the OnTopicEvent call; latency = receipt time - sent_us. Runs until `--seconds` pass
(or stdin closes), then prints one JSON object with p50/p99/max in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tokens: list[str] = args.token_list
    latencies: list[float] = []
    stats = {"frames": 0, "closed": 0}
    ready = 0
    recording = asyncio.Event()

    async def one(token: str) -> None:
        nonlocal ready
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(args.url, additional_headers=headers, compression=None) as ws:
            await subscribe(ws)
            ready += 1
            if ready == len(tokens):
                print("READY", flush=True)
            async for raw in ws:
                now_us = time.time() * 1e6
                msg = orjson.loads(raw)
                if msg.get("type") != "task_update":
                    continue
                stats["frames"] += 1
                sent = (msg.get("data") or {}).get("sent_us")
                if recording.is_set() and isinstance(sent, int):
                    latencies.append((now_us - sent) / 1e3)
        stats["closed"] += 1

    async def subscribe(ws: ClientConnection) -> None:
        await ws.recv()  # connected
        await ws.send('{"type":"subscribe","all":true}')
        await ws.recv()  # subscribed

    async def control() -> None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() == "record":
                recording.set()
            elif not line or line.strip() == "stop":
                return

    tasks = [asyncio.create_task(one(t)) for t in tokens]
    ctl = asyncio.create_task(control())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(ctl), args.seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "samples": len(latencies),
        "frames": stats["frames"],
        "p50_ms": round(percentile(latencies, 0.50), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies, default=0.0), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--tokens", required=True, help="file: one JWT per connection")
    p.add_argument("--seconds", type=float, default=120.0)
    args = p.parse_args(argv)
    args.token_list = [t for t in Path(args.tokens).read_text().split() if t]
    result = asyncio.run(main_async(args))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
