"""Delivery you can trust: slow clients, resume, token lifetime, limits, presence, outages."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.conftest import ServiceProcess, running_stack
from tests.integration.harness import inbound_retry, wait_until

# One replica, so no reorder between replicas to cover: a replay is exactly what came after
# `since` (the margin replayed across replicas is tested in test_replicas and test_chaos).
EXACT_REPLAY = {"RESUME_MARGIN_S": "0", "RESUME_MARGIN_EVENTS": "0"}
LIMITS = {
    "MAX_CONNECTIONS_PER_USER": "2",
    "MAX_SUBSCRIPTIONS": "2",
    "CLIENT_RATE": "5",
    "CLIENT_BURST": "5",
    "JWT_LEEWAY_S": "0",
    "ALLOWED_ORIGINS": "https://app.example,https://admin.example:8443",
    "OUTBOX_MAX_MESSAGES": "200",
    "OUTBOX_MAX_BYTES": "262144",
    **EXACT_REPLAY,
}


@pytest.fixture(scope="module")
def limited() -> Iterator[ServiceProcess]:
    with running_stack("reliability", service_env_extra=LIMITS) as service:
        yield service


def event(user: str, task: int | str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "TASK_CHANGED", "user_id": user, "task_id": task, "id": event_id, **extra}


async def close_code(client_ws: Any, timeout: float = 10) -> int:
    try:
        while True:
            await asyncio.wait_for(client_ws.recv(), timeout)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code


# -- slow consumers ------------------------------------------------------------------------


def stalled_reader(port: int, token: str) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that never reads after the handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert b" 101 " in head.split(b"\r\n", 1)[0]
    # subscribe to everything (a masked text frame), then never read again
    payload = b'{"type":"subscribe","all":true}'
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


async def test_a_stalled_reader_is_cut_4008_and_others_get_everything(
    limited: ServiceProcess,
) -> None:
    count = 400
    blob = "x" * 8000
    stalled = stalled_reader(limited.ws_port, limited.token("slow-owner"))
    try:
        async with limited.client("slow-friend") as friend:
            before = limited.metric("realtime_sync_closes_total", code="4008")
            for i in range(count):
                limited.publish(
                    event(
                        "slow-owner",
                        "shared-1",
                        f"slow-{i}",
                        data={"blob": blob},
                        metadata={"shared_with": ["slow-friend"]},
                    )
                )
            frames = await friend.updates(count, timeout=60)
            assert [f["event_id"] for f in frames] == [f"slow-{i}" for i in range(count)] or (
                sorted(f["event_id"] for f in frames) == sorted(f"slow-{i}" for i in range(count))
            )
            wait_until(
                lambda: limited.metric("realtime_sync_closes_total", code="4008") == before + 1,
                20,
                message="stalled reader not closed with 4008",
            )
    finally:
        stalled.close()


# -- resume --------------------------------------------------------------------------------


async def test_resume_replays_missed_events_once_and_in_order(limited: ServiceProcess) -> None:
    """Replay follows routing order (seen by an observer connected throughout), then live
    delivery continues with no gap and no duplicate at the seam."""
    async with limited.client("resume-u") as observer:
        async with limited.client("resume-u") as first:
            for i in range(3):
                limited.publish(event("resume-u", i, f"r-{i}"))
            seen = [f["event_id"] for f in await first.updates(3)]
        last = seen[-1]
        assert sorted(seen) == ["r-0", "r-1", "r-2"]
        for i in range(3, 6):
            limited.publish(event("resume-u", i, f"r-{i}"))
        routed = [f["event_id"] for f in await observer.updates(6)][3:]
        async with limited.client("resume-u", subscribe_all=False) as second:
            await second.send({"type": "subscribe", "all": True, "since": last, "id": 1})
            assert await second.next() == {
                "type": "subscribed",
                "all": True,
                "id": 1,
                "recovered": True,
                "replayed": 3,
            }
            replayed = [f["event_id"] for f in await second.updates(3)]
            assert replayed == routed
            limited.publish(event("resume-u", 6, "r-6"))
            [live] = await second.updates(1)
            assert live["event_id"] == "r-6"
            assert await second.silence(0.4) == []


async def test_resume_of_one_task_replays_only_that_task(limited: ServiceProcess) -> None:
    async with limited.client("resume-t") as observer:
        for event_id, task in (("rt-0", 1), ("rt-1", 2), ("rt-2", 1)):
            limited.publish(event("resume-t", task, event_id))
            # Dapr does not order deliveries: each is routed before the next is published.
            [routed] = await observer.updates(1)
            assert routed["event_id"] == event_id
    async with limited.client("resume-t", subscribe_all=False) as client:
        await client.send({"type": "subscribe", "taskId": "1", "since": "rt-0"})
        reply = await client.next()
        assert (reply["recovered"], reply["replayed"]) == (True, 1)
        assert [f["event_id"] for f in await client.updates(1)] == ["rt-2"]


async def test_an_unknown_since_answers_resync_required(limited: ServiceProcess) -> None:
    async with limited.client("resume-x", subscribe_all=False) as client:
        await client.send({"type": "subscribe", "all": True, "since": "never-seen", "id": "s"})
        assert await client.next() == {
            "type": "resync_required",
            "since": "never-seen",
            "all": True,
            "id": "s",
            "reason": "unknown_position",
        }
        reply = await client.next()
        assert (reply["type"], reply["recovered"]) == ("subscribed", False)
        limited.publish(event("resume-x", 1, "rx-1"))
        assert len(await client.updates(1)) == 1  # live delivery continues


async def test_an_expired_since_answers_resync_required() -> None:
    """RESUME_WINDOW_S=1: a resume from an event older than that answers resync_required
    (asked again until the window has passed; each answer must be one of the two)."""
    with running_stack("resume-expiry", service_env_extra={"RESUME_WINDOW_S": "1"}) as stack:
        async with stack.client("resume-e") as observer:
            stack.publish(event("resume-e", 1, "re-1"))
            await observer.updates(1)
        routed = time.monotonic()
        answers: list[str] = []
        while not answers or answers[-1] != "resync_required":
            assert time.monotonic() - routed < 15, f"never expired: {answers}"
            async with stack.client("resume-e", subscribe_all=False) as client:
                await client.send({"type": "subscribe", "all": True, "since": "re-1"})
                answers.append((await client.next())["type"])
            await asyncio.sleep(0.1)  # poll interval
        assert set(answers) <= {"subscribed", "resync_required"}, answers


# -- token lifetime ------------------------------------------------------------------------


def expiry(token: str) -> int:
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert isinstance(exp, int)
    return exp


async def test_an_expiring_token_closes_4002_at_expiry(limited: ServiceProcess) -> None:
    token = limited.token("exp-u", ttl_s=2)
    async with limited.client("exp-u", token=token) as client:
        assert await close_code(client.ws) == 4002
    assert time.time() >= expiry(token)  # JWT_LEEWAY_S=0: not before the token's `exp`


async def test_a_refresh_keeps_the_connection_open(limited: ServiceProcess) -> None:
    """A control connection whose token expires a second after the refreshed one's
    original token shows, when it is closed 4002, that the original expiry has passed."""
    token = limited.token("ref-u", ttl_s=2)
    control_token = limited.token("ref-u", ttl_s=3)
    assert expiry(control_token) > expiry(token)
    async with (
        limited.client("ref-u", token=token) as client,
        limited.client("ref-u", token=control_token, subscribe_all=False) as control,
    ):
        await client.send({"type": "refresh", "token": limited.token("ref-u", 60), "id": "r"})
        reply = await client.next()
        assert (reply["type"], reply["id"]) == ("refreshed", "r")
        assert await close_code(control.ws) == 4002
        await client.send({"type": "ping"})
        assert await client.next() == {"type": "pong"}


async def test_a_refresh_for_another_user_is_refused(limited: ServiceProcess) -> None:
    async with limited.client("ref-a", token=limited.token("ref-a", ttl_s=2)) as client:
        await client.send({"type": "refresh", "token": limited.token("ref-b", 60)})
        reply = await client.next()
        assert (reply["type"], reply["code"]) == ("error", "refresh_refused")
        assert await close_code(client.ws) == 4002


async def test_no_auth_frame_in_time_closes_4001() -> None:
    # The default deadline of 5 s is shortened to 1 s in these tests (AUTH_TIMEOUT_S).
    with running_stack("auth-deadline") as stack:
        async with connect(stack.ws_url) as ws:
            started = time.monotonic()
            assert await close_code(ws) == 4001
            assert time.monotonic() - started > 0.8  # not before the deadline


# -- limits --------------------------------------------------------------------------------


async def test_the_newest_connection_past_the_per_user_limit_closes_4029(
    limited: ServiceProcess,
) -> None:
    async with limited.client("many-u"), limited.client("many-u"):
        headers = {"Authorization": f"Bearer {limited.token('many-u')}"}
        async with connect(limited.ws_url, additional_headers=headers) as third:
            assert await close_code(third) == 4029


async def test_a_flood_of_frames_closes_4029(limited: ServiceProcess) -> None:
    async with limited.client("flood-u", subscribe_all=False) as client:
        for _ in range(20):
            await client.send({"type": "ping"})
        assert await close_code(client.ws) == 4029


async def test_subscriptions_past_the_limit_get_an_error_frame(limited: ServiceProcess) -> None:
    async with limited.client("subs-u", subscribe_all=False) as client:
        for task in (1, 2):
            await client.send({"type": "subscribe", "taskId": task})
            assert (await client.next())["type"] == "subscribed"
        await client.send({"type": "subscribe", "taskId": 3, "id": 3})
        assert await client.next() == {
            "type": "error",
            "code": "too_many_subscriptions",
            "message": "subscription limit reached",
            "id": 3,
        }
        await client.send({"type": "subscribe", "taskId": 1})  # already held: fine
        assert (await client.next())["type"] == "subscribed"


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://app.example",
        "https://app.example.evil.com",
        "https://app.example:444",
        "https://admin.example",
        "null",
        "https://APP.example.com",
        "https://sub.app.example",
        "",
        "file://",
    ],
)
async def test_origins_outside_the_allowlist_get_403(limited: ServiceProcess, origin: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            limited.ws_url,
            origin=origin,  # type: ignore[arg-type]
            additional_headers={"Authorization": f"Bearer {limited.token('o')}"},
        ):
            pass
    assert info.value.response.status_code == 403


@pytest.mark.parametrize("origin", ["https://app.example", "https://admin.example:8443"])
async def test_listed_origins_are_allowed(limited: ServiceProcess, origin: str) -> None:
    async with connect(
        limited.ws_url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers={"Authorization": f"Bearer {limited.token('o-ok')}"},
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "connected"


async def test_handshakes_past_the_total_limit_get_503() -> None:
    with running_stack("capacity", service_env_extra={"MAX_CONNECTIONS": "2"}) as stack:
        async with stack.client("cap-a"), stack.client("cap-b"):
            with pytest.raises(InvalidStatus) as info:
                async with connect(
                    stack.ws_url,
                    additional_headers={"Authorization": f"Bearer {stack.token('cap-c')}"},
                ):
                    pass
            assert info.value.response.status_code == 503


# -- presence ------------------------------------------------------------------------------


def invoke(stack: ServiceProcess, method: str, body: dict[str, Any]) -> tuple[int, Any]:
    reply = stack.sidecar.invoke(method, body)
    return reply.status, orjson.loads(reply.body) if reply.status == 200 else reply.body


async def test_get_presence_lists_a_users_open_connections(limited: ServiceProcess) -> None:
    async with limited.client("pres-u") as a:
        async with limited.client("pres-u", subscribe_all=False) as b:

            def both_listed() -> bool:
                status, found = invoke(limited, "get_presence", {"user_id": "pres-u"})
                ids = {c["id"] for c in found["connections"]} if status == 200 else set()
                return ids == {a.connection_id, b.connection_id}

            wait_until(both_listed, 5, message="presence does not list both connections")
        wait_until(
            lambda: (
                [
                    c["id"]
                    for c in invoke(limited, "get_presence", {"user_id": "pres-u"})[1][
                        "connections"
                    ]
                ]
                == [a.connection_id]
            ),
            5,
            message="closed connection still listed",
        )
        status, found = invoke(limited, "get_presence", {"user_id": "pres-u"})
        assert status == 200
        assert found["online"] is True
        [record] = found["connections"]
        assert record["subscriptions"] == ["*"]
        assert record["replica"]
    status, found = invoke(limited, "get_presence", {"user_id": "nobody-here"})
    assert (status, found["online"], found["connections"]) == (200, False, [])
    assert invoke(limited, "get_presence", {"user": 1})[0] == 400


# -- sidecar outage ------------------------------------------------------------------------


async def test_a_sidecar_outage_drops_no_connection_and_loses_no_event(tmp_path: Any) -> None:
    """The sidecar is killed under load for 10 s: connections stay, /readyz reports it,
    and every event it held is delivered once after it returns."""
    journal = str(tmp_path / "journal.jsonl")
    with running_stack(
        "outage",
        sidecar_args=[
            "--journal",
            journal,
            *inbound_retry(
                "reliability-forever",
                policy="exponential",
                initialInterval="200ms",
                maxInterval="5s",
                maxRetries=-1,
            ),
        ],
    ) as stack:
        async with stack.client("out-u") as client, stack.client("out-u") as second:
            for i in range(150):
                stack.publish(event("out-u", i % 10, f"o-{i}"))
            stack.sidecar.kill()  # mid-stream: some events are still pending in the sidecar
            killed = time.monotonic()
            wait_until(lambda: stack.readyz() == 503, 5, message="readyz still 200")
            assert time.monotonic() - killed < 5
            await asyncio.sleep(max(0.0, 10 - (time.monotonic() - killed)))
            await client.send({"type": "ping"})  # the connection survived the outage
            stack.sidecar.start()
            back = time.monotonic()
            wait_until(lambda: stack.readyz() == 200, 5, message="readyz not back")
            assert time.monotonic() - back < 5
            for i in range(150, 200):
                stack.publish(event("out-u", i % 10, f"o-{i}"))
            for conn in (client, second):
                frames = await conn.updates(200, timeout=30)
                ids = [f["event_id"] for f in frames]
                assert sorted(ids) == sorted(f"o-{i}" for i in range(200))
                assert [f for f in await conn.silence(0.5) if f["type"] != "pong"] == []


async def test_a_client_that_stops_answering_pings_is_closed_and_forgotten() -> None:
    with running_stack("heartbeat", service_env_extra={"HEARTBEAT_S": "0.5"}) as stack:
        silent = stalled_reader(stack.ws_port, stack.token("hb-u"))
        try:
            wait_until(
                lambda: stack.metric("realtime_sync_connections") == 1, 5, message="not open"
            )
            # ping every 0.5 s, pong due within 0.5 s, then the close handshake's 5 s
            wait_until(
                lambda: stack.metric("realtime_sync_connections") == 0,
                10,
                message="a client that never answers pings is still registered",
            )
        finally:
            silent.close()


async def test_sigterm_closes_clients_over_a_jittered_window() -> None:
    with running_stack("drain-spread", service_env_extra={"DRAIN_S": "2"}) as stack:
        closed_at: list[float] = []

        async def wait_close(index: int) -> None:
            async with stack.client(f"drain-{index}") as client:
                assert await close_code(client.ws, timeout=15) == 1001
                closed_at.append(time.monotonic())

        waiters = [asyncio.create_task(wait_close(i)) for i in range(12)]
        await asyncio.to_thread(
            wait_until,
            lambda: stack.metric("realtime_sync_connections") == 12,
            5,
            message="not all open",
        )
        assert stack.proc is not None
        stack.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*waiters)
        assert await asyncio.to_thread(stack.proc.wait, 25) == 0
        spread = max(closed_at) - min(closed_at)
        assert spread > 0.5, f"closes spread over {spread:.2f} s, not over DRAIN_S"


def restartable(name: str) -> AbstractContextManager[ServiceProcess]:
    return running_stack(
        name,
        sidecar_args=inbound_retry(
            "reliability-fast",
            policy="exponential",
            initialInterval="200ms",
            maxInterval="1s",
            maxRetries=20,
        ),
        service_env_extra={"DRAIN_S": "0.2", **EXACT_REPLAY},
    )


async def seen_then_drained(stack: ServiceProcess, user: str, prefix: str) -> list[str]:
    """The user receives three events; then SIGTERM drains the service and saves the resume
    buffers (stopped in a thread: the client must keep answering the close handshake)."""
    async with stack.client(user) as first:
        for i in range(3):
            stack.publish(event(user, i, f"{prefix}-{i}"))
        seen = [f["event_id"] for f in await first.updates(3)]
        assert await asyncio.to_thread(stack.stop) == 0
    return seen


async def test_resume_works_across_a_service_restart() -> None:
    with restartable("restart-resume") as stack:
        seen = await seen_then_drained(stack, "rs-u", "rs")
        assert sorted(seen) == ["rs-0", "rs-1", "rs-2"]
        for i in range(3, 6):
            stack.publish(event("rs-u", i, f"rs-{i}"))  # held by the sidecar meanwhile
        stack.start()
        async with stack.client("rs-u", subscribe_all=False) as second:
            await second.send({"type": "subscribe", "all": True, "since": seen[-1]})
            reply = await second.next()
            assert (reply["type"], reply["recovered"]) == ("subscribed", True)
            frames = await second.updates(3, timeout=15)
            assert sorted(f["event_id"] for f in frames) == ["rs-3", "rs-4", "rs-5"]
            assert await second.silence(0.5) == []


async def test_a_snapshot_older_than_a_crashed_run_is_not_merged() -> None:
    """Run 1 drains: the user's buffer (cr-0..2) is saved with a hand-over. Run 2 takes it
    over, delivers cr-3..5 (to another tab of the user), and is killed: nothing saved.
    Resuming from cr-2 on run 3 must not merge run 1's snapshot, which would claim a
    recovery that skips cr-3..5: the answer is resync_required."""
    with restartable("crash-resume") as stack:
        seen = await seen_then_drained(stack, "cr-u", "cr")
        stack.start()
        async with stack.client("cr-u") as other_tab:
            for i in range(3, 6):
                stack.publish(event("cr-u", i, f"cr-{i}"))
            assert len(await other_tab.updates(3)) == 3  # routed and acknowledged by run 2
            assert stack.stop(signal.SIGKILL) == -signal.SIGKILL
        stack.start()
        async with stack.client("cr-u", subscribe_all=False) as resumed:
            await resumed.send({"type": "subscribe", "all": True, "since": sorted(seen)[-1]})
            assert (await resumed.next())["type"] == "resync_required"
            reply = await resumed.next()
            assert (reply["type"], reply["recovered"]) == ("subscribed", False)


async def test_permessage_deflate_when_enabled_still_delivers_every_frame() -> None:
    """COMPRESSION=deflate: frames go through websockets' own (compressing) framing, not the
    pre-encoded fast path, and arrive intact and in full."""
    with running_stack("deflate", service_env_extra={"COMPRESSION": "deflate"}) as stack:
        headers = {"Authorization": f"Bearer {stack.token('zip-u')}"}
        async with connect(stack.ws_url, additional_headers=headers, compression="deflate") as ws:
            assert ws.response is not None
            assert "permessage-deflate" in (
                ws.response.headers.get("Sec-WebSocket-Extensions") or ""
            )
            assert orjson.loads(await ws.recv())["type"] == "connected"
            await ws.send('{"type":"subscribe","all":true}')
            assert orjson.loads(await ws.recv())["type"] == "subscribed"
            for i in range(30):
                stack.publish(event("zip-u", i, f"z-{i}", data={"text": "x" * 500}))
            got: list[str] = []
            while len(got) < 30:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                got.append(frame["event_id"])
                assert frame["data"] == {"text": "x" * 500}
            assert sorted(got) == sorted(f"z-{i}" for i in range(30))


async def test_compression_is_off_by_default(limited: ServiceProcess) -> None:
    headers = {"Authorization": f"Bearer {limited.token('plain-u')}"}
    async with connect(limited.ws_url, additional_headers=headers, compression="deflate") as ws:
        assert ws.response is not None
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
