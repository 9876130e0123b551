"""Bounds an attacker cannot push, against a real service and dev sidecar: duplicate
handshake headers, token-less sockets, `since` look-ups, huge connection records; and
the board's security headers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.integration.conftest import ServiceProcess, http_get, running_stack
from tests.integration.test_disconnect_user import invoke

MAX_CONNECTIONS = 200


@pytest.fixture(scope="module")
def bounded() -> Iterator[ServiceProcess]:
    extra = {
        "BOARD": "true",
        "MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "AUTH_TIMEOUT_S": "30",  # token-less sockets hold their slot for the whole test
        "SINCE_LOOKUP_RATE": "1",
        "SINCE_LOOKUP_BURST": "5",
        "CLIENT_RATE": "100000",
        "CLIENT_BURST": "100000",
    }
    with running_stack("bounds", service_env_extra=extra) as service:
        yield service


def raw_request(service: ServiceProcess, lines: list[str]) -> tuple[int, bytes]:
    """Send a hand-written HTTP request; the status and the whole answer."""
    with socket.create_connection(("127.0.0.1", service.ws_port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


UPGRADE = [
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
]


@pytest.mark.parametrize(
    "twice",
    [
        ["Host: 127.0.0.1", "Host: evil.example", "Origin: http://127.0.0.1"],
        ["Host: 127.0.0.1", "Origin: http://127.0.0.1", "Origin: http://evil.example"],
        ["Host: 127.0.0.1", "Authorization: Bearer a.b.c", "Authorization: Bearer d.e.f"],
    ],
    ids=["host", "origin", "authorization"],
)
def test_a_duplicate_handshake_header_is_answered_400_without_a_traceback(
    bounded: ServiceProcess, twice: list[str]
) -> None:
    before = bounded.log().count("Traceback")
    status, answer = raw_request(bounded, ["GET /ws HTTP/1.1", *twice, *UPGRADE])
    assert status == 400, answer
    assert b"duplicate" in answer
    assert bounded.log().count("Traceback") == before
    assert bounded.metric("realtime_sync_handshakes_refused_total", reason="duplicate_header") >= 1


def test_the_board_is_served_with_a_csp_that_forbids_framing(bounded: ServiceProcess) -> None:
    for path in ("/", "/board.js", "/client/realtime-sync.js"):
        status, answer = raw_request(bounded, [f"GET {path} HTTP/1.1", "Host: 127.0.0.1"])
        assert status == 200, path
        head = answer.split(b"\r\n\r\n", 1)[0].decode().lower()
        assert "content-security-policy:" in head, path
        assert "frame-ancestors 'none'" in head
        assert "x-frame-options: deny" in head
        assert "x-content-type-options: nosniff" in head
    for other in ("package.json", "package-lock.json", "README.md"):
        assert http_get(f"{bounded.base}/client/{other}")[0] == 404


async def test_token_less_sockets_do_not_lock_a_real_user_out(bounded: ServiceProcess) -> None:
    """200 sockets that never authenticate, at MAX_CONNECTIONS=200: they hold slots of
    their own bound only (100 per address here, the rest refused 429)."""
    async with AsyncExitStack() as stack:
        held: list[ClientConnection] = []
        refused = 0
        for _ in range(MAX_CONNECTIONS):
            try:
                held.append(await stack.enter_async_context(connect(bounded.ws_url)))
            except InvalidStatus as exc:
                assert exc.response.status_code == 429
                refused += 1
        async with bounded.client("flood-real-user") as real:
            await real.send({"type": "ping", "id": "p"})
            assert (await real.next())["type"] == "pong"
        # The bound is checked before the upgrade against the sockets already waiting, so
        # at most a handful over it get in before their handlers count them (those are
        # closed 4029 at once).
        assert 100 <= len(held) <= 110
        assert refused == MAX_CONNECTIONS - len(held)
        assert bounded.metric(
            "realtime_sync_limits_hit_total", limit="unauthenticated_per_address"
        ) >= float(refused)


def state_gets(service: ServiceProcess) -> float:
    return service.metric("realtime_sync_state_call_seconds_count", op="get")


async def test_a_burst_of_unknown_since_reads_the_state_store_at_most_the_bound(
    bounded: ServiceProcess,
) -> None:
    burst = 30
    async with bounded.client("since-burst", subscribe_all=False) as client:
        started = time.monotonic()
        before = state_gets(bounded)
        for i in range(burst):
            await client.send(
                {"type": "subscribe", "taskId": f"t{i}", "since": f"unknown-{i}", "id": i}
            )
        answers: list[dict[str, Any]] = []
        while sum(a["type"] == "subscribed" for a in answers) < burst:
            answers.append(await client.next())
        elapsed = time.monotonic() - started
        reads = state_gets(bounded) - before
    assert sum(a["type"] == "resync_required" for a in answers) == burst
    # The burst (5) plus what the rate (1/s) refilled meanwhile, plus one background read
    # of the replica list at most.
    assert reads <= 5 + int(elapsed) + 1, (reads, elapsed)
    assert bounded.metric("realtime_sync_limits_hit_total", limit="since_lookups") >= burst - reads


async def test_huge_subscription_lists_leave_presence_working_for_others(
    bounded: ServiceProcess,
) -> None:
    """One user, 20 connections x 1,000 subscriptions to 256-character ids: the records
    are summarised, presence keeps saving, `get_presence` answers for another user."""
    heavy, victim = "presence-heavy", "presence-victim"
    async with AsyncExitStack() as stack:
        conns = []
        for n in range(20):
            client = await stack.enter_async_context(bounded.client(heavy, subscribe_all=False))
            for i in range(1000):
                task = f"{n:02d}-{i:04d}-".ljust(256, "x")
                await client.ws.send(orjson.dumps({"type": "subscribe", "taskId": task}).decode())
            conns.append(client)
        for client in conns:
            for _ in range(1000):
                assert (await client.next(timeout=30))["type"] == "subscribed"
        await stack.enter_async_context(bounded.client(victim))

        deadline = time.monotonic() + 15
        while True:
            status, found = invoke(
                bounded.sidecar, "get_presence", orjson.dumps({"user_id": victim})
            )
            if status == 200 and orjson.loads(found)["online"]:
                break
            assert time.monotonic() < deadline, (status, found[:200])
            await asyncio.sleep(0.2)

        deadline = time.monotonic() + 15
        while True:
            status, found = invoke(
                bounded.sidecar, "get_presence", orjson.dumps({"user_id": heavy})
            )
            assert status == 200, found[:200]
            records = orjson.loads(found)["connections"]
            if len(records) == 20 and all(r["subscription_count"] == 1000 for r in records):
                break
            assert time.monotonic() < deadline, len(records)
            await asyncio.sleep(0.2)
        assert all(len(r["subscriptions"]) == 100 for r in records)
    assert bounded.metric("realtime_sync_limits_hit_total", limit="record_subscriptions") > 0
