"""Soak: many connections, a steady event rate, for minutes; counts lost and duplicated.

Runs the dev sidecar and the service as processes, opens CONNECTIONS WebSocket clients
(2 per user, all subscribed to everything) in a separate client process, and publishes
RATE events/s through the sidecar's Dapr publish API: each event is of one of TASKS tasks,
each owned by a random user and shared with two others (the "personal" shape: 6 frames per
event). Each task's share list is published once, before the timed phase; the events after
it carry no `metadata.shared_with`, so the service routes them by its cached list and, with
one delivery per call (`--delivery single`, the default here: BULK_SUBSCRIBE=false),
answers SUCCESS before writing them (ACK_AHEAD): the path a crash can cost. At the end it
prints lost and duplicated deliveries, how many events were acknowledged ahead (the
service's `realtime_sync_events_acked_ahead_total`) and lost after SUCCESS
(`realtime_sync_events_lost_total`), latency percentiles (publish → receipt, measured in
the client process) and the service's RSS at the start and the end.

    .venv/bin/python bench/soak.py --connections 2000 --rate 200 --duration 600

Not part of `make test`; loopback only; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python bench/soak.py`
    sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402 - after the path set-up above

SECRET = "soak-test-secret-" + "s" * 32


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status < 300:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"not ready in time: {url}")


def metric_sum(url: str, name: str) -> float:
    """The sum of a metric's samples (all labels) on the service's /metrics."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- the client process --------------------------------------------------------------------


def client_main(url: str, tokens: list[str], ready: Any, stop: Any, out: str) -> None:
    raise_fd_limit()
    asyncio.run(_clients(url, tokens, ready, stop, out))


async def _clients(url: str, tokens: list[str], ready: Any, stop: Any, out: str) -> None:
    from websockets.asyncio.client import connect

    received: list[dict[str, int]] = [{} for _ in tokens]
    latencies: list[float] = []
    closed: list[int] = []

    async def one(index: int, token: str) -> None:
        try:
            async with connect(
                url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=60
            ) as ws:
                await ws.recv()
                await ws.send('{"type":"subscribe","all":true}')
                await ws.recv()
                ready_count[0] += 1
                async for raw in ws:
                    frame = json.loads(raw)
                    if frame.get("type") != "task_update":
                        continue
                    seen = received[index]
                    event_id = frame["event_id"]
                    seen[event_id] = seen.get(event_id, 0) + 1
                    sent = (frame.get("data") or {}).get("sent_at")
                    if sent:
                        latencies.append(time.time() - sent)
        except Exception:  # noqa: BLE001 - counted as a dropped connection
            closed.append(index)

    ready_count = [0]
    tasks = []
    for i, token in enumerate(tokens):
        tasks.append(asyncio.create_task(one(i, token)))
        if i % 200 == 199:
            await asyncio.sleep(0.2)
    deadline = time.monotonic() + 120
    while ready_count[0] < len(tokens) and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter, bounded
        await asyncio.sleep(0.2)
    ready.set()
    while not stop.is_set():  # noqa: ASYNC110 - a multiprocessing Event cannot be awaited
        await asyncio.sleep(0.2)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    payload = json.dumps({"received": received, "latencies": latencies, "dropped": closed})
    await asyncio.to_thread(Path(out).write_text, payload)


# -- the driver ----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of publishing")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait at the end")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks the events are of")
    parser.add_argument(
        "--delivery",
        choices=("single", "bulk"),
        default="single",
        help="single: one event per call, known tasks acknowledged ahead; bulk: BULK_SUBSCRIBE",
    )
    args = parser.parse_args()
    raise_fd_limit()
    sys.path.insert(0, str(ROOT))
    from realtime_sync.core.auth import mint_token

    users = [f"user-{i}" for i in range(max(3, args.connections // 2))]
    conn_users = [users[i // 2] for i in range(args.connections)]
    tokens = [mint_token(u, secret=SECRET, ttl_s=7200, now=time.time()) for u in conn_users]

    grpc_port, http_port, app_port, ws_port = (free_port() for _ in range(4))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "APP_", "JWT_"))}
    env.update(
        {
            "JWT_SECRET": SECRET,
            "WS_PORT": str(ws_port),
            "APP_PORT": str(app_port),
            "DAPR_HTTP_PORT": str(http_port),
            "DAPR_GRPC_PORT": str(grpc_port),
            "LOG_LEVEL": "warning",
            "MAX_CONNECTIONS": str(args.connections + 100),
            "BULK_SUBSCRIBE": "true" if args.delivery == "bulk" else "false",
        }
    )
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "realtime_sync.devsidecar",
            "--grpc-port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--app-port",
            str(app_port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
        stdout=(workdir / "sidecar.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    service = subprocess.Popen(
        [sys.executable, "-m", "realtime_sync", "serve"],
        env=env,
        cwd=ROOT,
        stdout=(workdir / "service.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{ws_port}/readyz", 30)
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        out = str(workdir / "clients.json")
        clients = ctx.Process(
            target=client_main, args=(f"ws://127.0.0.1:{ws_port}/ws", tokens, ready, stop, out)
        )
        clients.start()
        if not ready.wait(180):
            raise SystemExit("clients did not connect in time")
        time.sleep(2)
        rss_start = rss_kib(service.pid)
        print(f"{args.connections} connections open; service RSS {rss_start / 1024:.1f} MiB")

        expected: dict[str, list[str]] = {}
        url = f"http://127.0.0.1:{http_port}/v1.0/publish/pubsub/task-updates"
        metrics_url = f"http://127.0.0.1:{ws_port}/metrics"
        rng = random.Random(7)
        # Each task: its owner and the two users it is shared with, fixed for the run.
        tasks = [tuple(rng.sample(users, 3)) for _ in range(args.tasks)]
        errors = 0
        started = time.monotonic()
        n = 0
        lock = threading.Lock()

        def publish(body: bytes) -> None:
            nonlocal errors
            request = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=10):
                    pass
            except OSError:
                with lock:
                    errors += 1

        from concurrent.futures import ThreadPoolExecutor

        def event(n: int, task_id: int, *, shares: bool) -> bytes:
            owner, *shared = tasks[task_id]
            event_id = f"soak-{n}"
            expected[event_id] = [owner, *shared]
            return json.dumps(
                {
                    "type": "TASK_CHANGED",
                    "user_id": owner,
                    "task_id": task_id,
                    "id": event_id,
                    "data": {"title": f"task {n}", "sent_at": time.time()},
                    "metadata": {"shared_with": shared} if shares else {},
                }
            ).encode()

        with ThreadPoolExecutor(8) as pool:
            # Every task's share list first, applied before the timed phase (an event that
            # overtook its task's list would be routed to the owner only).
            for task_id in range(args.tasks):
                pool.submit(publish, event(n, task_id, shares=True))
                n += 1
            deadline = time.monotonic() + 120
            while metric_sum(metrics_url, "realtime_sync_shares_changes_total") < args.tasks:
                if time.monotonic() > deadline:
                    raise SystemExit("the share lists were not applied in time")
                time.sleep(0.2)
            started = time.monotonic()
            timed_from = n
            while (elapsed := time.monotonic() - started) < args.duration:
                due = timed_from + int(elapsed * args.rate)
                while n < due:
                    pool.submit(publish, event(n, rng.randrange(args.tasks), shares=False))
                    n += 1
                if int(elapsed) % 60 == 0 and int(elapsed) and n % int(args.rate) == 0:
                    print(
                        f"  t={int(elapsed)}s events={n} RSS {rss_kib(service.pid) / 1024:.1f} MiB"
                    )
                time.sleep(0.005)
        time.sleep(args.grace)
        rss_end = rss_kib(service.pid)
        acked_ahead = metric_sum(metrics_url, "realtime_sync_events_acked_ahead_total")
        lost_after_success = metric_sum(metrics_url, "realtime_sync_events_lost_total")
        stop.set()
        clients.join(60)
        result = json.loads(Path(out).read_text())
    finally:
        for proc in (service, sidecar):
            proc.send_signal(signal.SIGTERM)
        for proc in (service, sidecar):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    by_user: dict[str, list[int]] = {}
    for index, user in enumerate(conn_users):
        by_user.setdefault(user, []).append(index)
    received: list[dict[str, int]] = result["received"]
    dropped = set(result["dropped"])
    lost = dups = delivered = 0
    for event_id, recipients in expected.items():
        for user in recipients:
            for index in by_user[user]:
                if index in dropped:
                    continue
                count = received[index].get(event_id, 0)
                delivered += min(count, 1)
                lost += count == 0
                dups += max(0, count - 1)
    lat = sorted(result["latencies"])

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    summary = {
        "connections": args.connections,
        "rate": args.rate,
        "duration_s": args.duration,
        "events_published": n,
        "delivery": args.delivery,
        "acked_ahead": int(acked_ahead),
        "acked_ahead_share": round(acked_ahead / n, 3) if n else 0.0,
        "lost_after_success": int(lost_after_success),
        "publish_errors": errors,
        "deliveries_expected": delivered + lost,
        "delivered": delivered,
        "lost": lost,
        "duplicated": dups,
        "dropped_connections": len(dropped),
        "latency_ms": {
            "p50": round(pct(0.5), 2),
            "p99": round(pct(0.99), 2),
            "max": round(pct(1.0), 2),
        },
        "rss_mib": {"start": round(rss_start / 1024, 1), "end": round(rss_end / 1024, 1)},
    }
    print(json.dumps(summary, indent=2))
    if args.delivery == "single" and not acked_ahead:
        print("the path that acknowledges ahead was not exercised", file=sys.stderr)
        return 1
    return 0 if lost == 0 and dups == 0 and not dropped and not lost_after_success else 1


if __name__ == "__main__":
    sys.exit(main())
