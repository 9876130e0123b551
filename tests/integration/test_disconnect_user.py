"""`disconnect_user` across two replicas (one dev sidecar, a consumer group per replica).

The call reaches one replica; the control topic tells the other. Both close the user's
connections with 4003; the old token is refused with 4003 on either replica afterwards
(one of them learnt the cutoff only from the state store); a token issued at or after the
answer's `cutoff` connects.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

import jwt
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import SECRET, ServiceProcess
from tests.integration.harness import SidecarProcess, until
from tests.integration.test_replicas import two_replicas, watch

USER = "cut-user"
BYSTANDER = "cut-bystander"


def invoke(sidecar: SidecarProcess, method: str, body: bytes) -> tuple[int, bytes]:
    reply = sidecar.invoke(method, body)
    return reply.status, reply.body


async def close_code_of(service: ServiceProcess, token: str) -> int | None:
    """Connect with the token: the close code if the server closes it before `connected`,
    else None (the connection was admitted)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(service.ws_url, additional_headers=headers) as ws:
        try:
            hello = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        except ConnectionClosed:
            assert ws.close_code is not None
            return ws.close_code
        assert hello["type"] == "connected", hello
        return None


async def test_disconnect_user_closes_the_user_on_every_replica_and_refuses_old_tokens() -> None:
    with two_replicas("broadcast") as (sidecar, a, b):
        async with AsyncExitStack() as stack:
            old_token = a.token(USER)
            on_a = await watch(stack, a, USER)
            on_b = await watch(stack, b, USER)
            bystanders = [await watch(stack, a, BYSTANDER), await watch(stack, b, BYSTANDER)]

            status, body = invoke(sidecar, "disconnect_user", orjson.dumps({"user_id": USER}))
            assert status == 200, body
            answer: dict[str, Any] = orjson.loads(body)
            assert answer["user_id"] == USER
            cutoff = answer["cutoff"]
            assert cutoff >= int(time.time())

            for watcher in (on_a, on_b):
                await asyncio.wait_for(watcher.closed.wait(), 10)
                assert watcher.ws.close_code == 4003, watcher.replica
                assert watcher.ws.close_reason == "access revoked"
            # Nobody else is touched.
            for watcher in bystanders:
                await watcher.ws.send(orjson.dumps({"type": "ping", "id": "p"}).decode())
                await until(lambda w=watcher: any(f["type"] == "pong" for f in w.frames), 5)
                assert not watcher.closed.is_set()

            # The old token, on either replica: refused with 4003.
            assert await close_code_of(a, old_token) == 4003
            assert await close_code_of(b, old_token) == 4003

            # A token issued at or after the cutoff connects, on both replicas.
            await until(lambda: time.time() >= cutoff, 3, "the cutoff second")
            fresh = a.token(USER)
            assert await close_code_of(a, fresh) is None
            assert await close_code_of(b, fresh) is None
            # On the new connection, a refresh with the old token is refused.
            async with b.client(USER, token=fresh) as client:
                await client.send({"type": "refresh", "token": old_token, "id": "r"})
                assert await client.next() == {
                    "type": "error",
                    "code": "refresh_refused",
                    "message": "token revoked",
                    "id": "r",
                }

            for service in (a, b):
                assert service.metric("realtime_sync_users_disconnected_total") == 1
            # The control message went on its own topic, never to a client.
            assert all(f["type"] != "task_update" for w in bystanders for f in w.frames)
            assert sidecar.topic_messages("realtime-sync-control")


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"user_id": 5}', b'{"user_id": ""}', b'{"user": "x"}'],
)
def test_disconnect_user_refuses_a_malformed_request(stack: ServiceProcess, body: bytes) -> None:
    status, _ = invoke(stack.sidecar, "disconnect_user", body)
    assert status == 400


async def test_a_replica_that_missed_the_control_message_reads_the_cutoff_at_the_handshake(
    stack: ServiceProcess,
) -> None:
    """The cutoff another replica stored (its control message never came here): the old
    token is refused with 4003, and so is one without `iat`."""
    user = "cut-missed"
    old_token = stack.token(user)
    no_iat = jwt.encode({"userId": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    assert await close_code_of(stack, old_token) is None
    assert await close_code_of(stack, no_iat) is None
    cutoff = int(time.time()) + 1
    assert stack.sidecar.save_state([{"key": f"cutoff:{user}", "value": cutoff}]) == 204
    # The look-up is cached per user for a moment: wait for the refusal, not a fixed time.
    deadline = time.monotonic() + 10
    while await close_code_of(stack, old_token) is None:
        assert time.monotonic() < deadline, "the stored cutoff was never read"
        await asyncio.sleep(0.2)
    assert await close_code_of(stack, old_token) == 4003
    assert await close_code_of(stack, no_iat) == 4003
