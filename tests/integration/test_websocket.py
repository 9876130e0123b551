"""The WebSocket surface: authentication, client frames, limits, HTTP endpoints."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.conftest import SECRET, ServiceProcess, http_get


async def closed_with(
    url: str, headers: dict[str, str] | None = None, first: Any = None
) -> tuple[int, str]:
    """Connect, optionally send a first frame, and return the close code and reason."""
    async with connect(url, additional_headers=headers or {}) as ws:
        if first is not None:
            await ws.send(first if isinstance(first, str) else orjson.dumps(first).decode())
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("not closed")


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def bad_tokens() -> dict[str, str]:
    now = int(time.time())
    return {
        "bad signature": jwt.encode({"userId": "u", "exp": now + 60}, "y" * 40, "HS256"),
        "expired": jwt.encode({"userId": "u", "exp": now - 60}, SECRET, "HS256"),
        "alg none": ".".join(
            [_b64({"alg": "none", "typ": "JWT"}), _b64({"userId": "u", "exp": now + 60}), ""]
        ),
        "no exp": jwt.encode({"userId": "u"}, SECRET, "HS256"),
        "garbage": "not.a.token",
    }


@pytest.mark.parametrize("kind", sorted(bad_tokens()))
async def test_a_bad_header_token_closes_4001(stack: ServiceProcess, kind: str) -> None:
    token = bad_tokens()[kind]
    code, reason = await closed_with(stack.ws_url, {"Authorization": f"Bearer {token}"})
    assert code == 4001
    assert reason in {"invalid token", "token expired"}


@pytest.mark.parametrize("kind", sorted(bad_tokens()))
async def test_a_bad_query_token_closes_4001(stack: ServiceProcess, kind: str) -> None:
    code, _ = await closed_with(f"{stack.ws_url}?token={bad_tokens()[kind]}")
    assert code == 4001


@pytest.mark.parametrize("kind", sorted(bad_tokens()))
async def test_a_bad_auth_frame_closes_4001(stack: ServiceProcess, kind: str) -> None:
    code, _ = await closed_with(stack.ws_url, first={"type": "auth", "token": bad_tokens()[kind]})
    assert code == 4001


async def test_a_bare_user_id_is_never_trusted(stack: ServiceProcess) -> None:
    started = time.monotonic()
    code, reason = await closed_with(f"{stack.ws_url}?userId=alice")
    assert (code, reason) == (4001, "authentication timed out")
    assert 0.5 < time.monotonic() - started < 5  # AUTH_TIMEOUT_S is 1 s in these tests


async def test_a_first_frame_that_is_not_auth_closes_4001(stack: ServiceProcess) -> None:
    code, _ = await closed_with(stack.ws_url, first={"type": "subscribe", "all": True})
    assert code == 4001


async def test_token_in_query_or_auth_frame_authenticates(stack: ServiceProcess) -> None:
    async with connect(f"{stack.ws_url}?token={stack.token('q-user')}") as ws:
        hello = orjson.loads(await ws.recv())
        assert (hello["type"], hello["user_id"]) == ("connected", "q-user")
    async with connect(stack.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": stack.token("f-user")}).decode())
        hello = orjson.loads(await ws.recv())
        assert (hello["type"], hello["user_id"]) == ("connected", "f-user")
        assert isinstance(hello["connection_id"], str)
        assert hello["heartbeat_s"] == 30


async def test_the_sub_claim_is_the_fallback_user(stack: ServiceProcess) -> None:
    token = jwt.encode({"sub": "sub-user", "exp": int(time.time()) + 60}, SECRET, "HS256")
    async with stack.client("ignored", token=token, subscribe_all=False) as client:
        await client.send({"type": "ping"})
        assert await client.next() == {"type": "pong"}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "bad_json"),
        ("[1,2]", "bad_message"),
        ('{"type":"dance"}', "unknown_type"),
        ('{"type":"subscribe"}', "bad_message"),
        ('{"type":"subscribe","taskId":[1]}', "bad_message"),
        ('{"type":"subscribe","all":"yes"}', "bad_message"),
        ('{"type":"unsubscribe","all":true,"taskId":1}', "bad_message"),
        ('{"type":"auth","token":"x"}', "already_authenticated"),
    ],
)
async def test_bad_client_frames_get_an_error_frame_and_the_connection_stays(
    stack: ServiceProcess, frame: str, code: str
) -> None:
    async with stack.client("frames-user", subscribe_all=False) as client:
        await client.send(frame)
        reply = await client.next()
        assert reply["type"] == "error"
        assert reply["code"] == code
        assert isinstance(reply["message"], str)
        await client.send({"type": "ping", "id": 5})
        assert await client.next() == {"type": "pong", "id": 5}


async def test_a_binary_frame_gets_an_error_frame(stack: ServiceProcess) -> None:
    async with stack.client("binary-user", subscribe_all=False) as client:
        await client.ws.send(b"\x00\x01")
        assert (await client.next())["code"] == "bad_frame"


async def test_replies_echo_the_message_id(stack: ServiceProcess) -> None:
    async with stack.client("echo-user", subscribe_all=False) as client:
        await client.send({"type": "subscribe", "all": True, "id": "s1"})
        assert await client.next() == {"type": "subscribed", "all": True, "id": "s1"}
        await client.send({"type": "unsubscribe", "all": True, "id": 2})
        assert await client.next() == {"type": "unsubscribed", "all": True, "id": 2}
        await client.send({"type": "ping", "id": "p"})
        assert await client.next() == {"type": "pong", "id": "p"}
        await client.send({"type": "dance", "id": 7})
        assert (await client.next())["id"] == 7


async def test_a_frame_over_the_size_limit_closes_1009(stack: ServiceProcess) -> None:
    async with stack.client("big-user", subscribe_all=False) as client:
        await client.send({"type": "ping", "pad": "x" * 70_000})
        with pytest.raises(ConnectionClosed) as info:
            await client.next()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009


async def test_a_foreign_origin_is_refused_with_403(stack: ServiceProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            stack.ws_url,
            origin="https://evil.example",  # type: ignore[arg-type]
            additional_headers={"Authorization": f"Bearer {stack.token('o')}"},
        ):
            pass
    assert info.value.response.status_code == 403


async def test_the_same_origin_is_allowed(stack: ServiceProcess) -> None:
    origin = f"http://127.0.0.1:{stack.ws_port}"
    async with connect(
        stack.ws_url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers={"Authorization": f"Bearer {stack.token('same')}"},
    ) as ws:
        assert orjson.loads(await ws.recv())["type"] == "connected"


def test_health_ready_and_metrics_answer_plain_http(stack: ServiceProcess) -> None:
    assert http_get(f"{stack.base}/healthz")[0] == 200
    status, body = http_get(f"{stack.base}/readyz")
    assert status == 200
    assert orjson.loads(body)["ready"] is True
    status, body = http_get(f"{stack.base}/metrics")
    assert status == 200
    assert b"realtime_sync_connections" in body
    assert http_get(f"{stack.base}/nope")[0] == 404


async def test_connection_records_are_written_and_removed(stack: ServiceProcess) -> None:
    from tests.integration.harness import wait_until

    async with stack.client("record-user") as client:
        key = f"connection:{client.connection_id}"
        wait_until(lambda: stack.sidecar.get_state(key) is not None, 5, message="no record")
        raw = stack.sidecar.get_state(key)
        assert raw is not None
        record = orjson.loads(raw)
        assert record["user_id"] == "record-user"
        assert record["id"] == client.connection_id
        assert record["subscriptions"] == ["*"]
        assert {"replica", "connected_at", "last_activity"} <= record.keys()
    wait_until(lambda: stack.sidecar.get_state(key) is None, 5, message="record not removed")


async def test_a_dropped_connection_leaves_no_registration_record_or_subscription(
    stack: ServiceProcess,
) -> None:
    """A client whose TCP connection vanishes (no close frame) is cleaned up once: it
    leaves the gauges and the state store as they were before it came."""
    from tests.integration.harness import wait_until

    connections = stack.metric("realtime_sync_connections")
    subscriptions = stack.metric("realtime_sync_subscriptions")
    async with stack.client("dropped-user") as client:
        await client.send({"type": "subscribe", "taskId": 5, "id": 1})
        assert (await client.next())["type"] == "subscribed"
        key = f"connection:{client.connection_id}"
        wait_until(lambda: stack.sidecar.get_state(key) is not None, 5, message="no record")
        assert stack.metric("realtime_sync_subscriptions") >= subscriptions + 2
        client.ws.transport.abort()
    wait_until(
        lambda: (
            stack.metric("realtime_sync_connections") <= connections
            and stack.metric("realtime_sync_subscriptions") <= subscriptions
        ),
        10,
        message="gauges not back",
    )
    wait_until(lambda: stack.sidecar.get_state(key) is None, 5, message="record not removed")
