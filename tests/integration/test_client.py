"""The Python client (realtime_sync.client) against the real service.

A small TCP proxy between client and service cuts, refuses or freezes connections, so
network failures are real socket failures while the service keeps running. The timing of
the client's decisions (backoff bounds, refresh and watchdog deadlines) is tested with a fake
clock in tests/unit/test_client_policy.py; these tests wait on conditions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import pytest

from realtime_sync.client import (
    AccessRevoked,
    ConnectionState,
    Item,
    Reconnect,
    ResyncRequired,
    SyncClient,
    TaskUpdate,
    TokenRefused,
)
from tests.integration.conftest import ServiceProcess, running_stack
from tests.integration.harness import until


class Proxy:
    """A TCP proxy in front of the service: `cut()`, `refuse`, `freeze()`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refuse = False
        self.frozen = False
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ws"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            self.tasks.discard(task)
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.pairs.discard(pair)
            self.tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                if not self.frozen:
                    writer.write(chunk)
        except OSError:
            pass
        finally:
            writer.transport.abort()

    def cut(self) -> None:
        for down, up in list(self.pairs):
            down.transport.abort()
            up.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


@contextlib.asynccontextmanager
async def proxied(service: ServiceProcess) -> AsyncIterator[Proxy]:
    proxy = Proxy(service.ws_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


class Recorder:
    """Collects what a client delivers through its callbacks."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.states: list[ConnectionState] = []
        self.reconnects: list[Reconnect] = []

    @property
    def ids(self) -> list[str]:
        return [i.event_id for i in self.items if isinstance(i, TaskUpdate)]

    def on_update(self, item: Item) -> None:
        self.items.append(item)

    def kwargs(self) -> dict[str, Any]:
        return {
            "on_update": self.on_update,
            "on_state": self.states.append,
            "on_reconnect": self.reconnects.append,
        }


def publish(service: ServiceProcess, user: str, task: int, **extra: Any) -> str:
    event_id = uuid.uuid4().hex
    event = {"id": event_id, "type": "TASK_CHANGED", "user_id": user, "task_id": task}
    assert service.publish({**event, "data": {"n": task}, **extra}) == 204
    return event_id


def expiry(token: str) -> float:
    """The `exp` claim of a token this test minted."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"])


async def settled(service: ServiceProcess, user: str, rec: Recorder) -> list[str]:
    """Publish a last event and wait for it: what was delivered before it (any duplicate of
    an earlier event included) is then all there is."""
    marker = publish(service, user, 999_999)
    await until(lambda: marker in rec.ids, what="the marker event")
    return [event_id for event_id in rec.ids if event_id != marker]


FAST: dict[str, Any] = {"backoff_base_s": 0.05, "backoff_cap_s": 0.4, "proxy": None}


@pytest.fixture(scope="module")
def stack() -> Iterator[ServiceProcess]:
    extra = {"JWT_LEEWAY_S": "0", "DRAIN_S": "0.3", "MAX_CONNECTIONS_PER_USER": "200"}
    with running_stack("client", service_env_extra=extra) as service:
        yield service


async def test_updates_arrive_through_the_iterator_and_the_callback(stack: ServiceProcess) -> None:
    rec = Recorder()
    by_callback = SyncClient(stack.ws_url, stack.token("py-both"), **FAST, **rec.kwargs())
    async with by_callback, SyncClient(stack.ws_url, stack.token("py-both"), **FAST) as iterated:
        await until(lambda: ConnectionState.CONNECTED == by_callback.state == iterated.state)
        sent = [publish(stack, "py-both", 1, type="TASK_ADDED"), publish(stack, "py-both", 2)]
        got: list[TaskUpdate] = []
        async with asyncio.timeout(8):
            async for item in iterated:
                assert isinstance(item, TaskUpdate)
                got.append(item)
                if len(got) == 2:
                    break
        await until(lambda: len(rec.ids) == 2)
    assert sorted(u.event_id for u in got) == sorted(sent) == sorted(rec.ids)
    added = next(u for u in got if u.task_id == 1)
    assert (added.action, added.event_type, added.user_id) == (
        "task_created",
        "TASK_ADDED",
        "py-both",
    )
    assert added.data == {"n": 1}
    assert rec.states[:2] == [ConnectionState.CONNECTING, ConnectionState.CONNECTED]
    assert by_callback.state == ConnectionState.CLOSED


async def test_losing_access_to_a_task_is_its_own_item(stack: ServiceProcess) -> None:
    async with SyncClient(stack.ws_url, stack.token("py-guest"), **FAST) as client:
        await until(lambda: client.state == ConnectionState.CONNECTED)
        items = aiter(client)
        shared = publish(
            stack,
            "py-host",
            5,
            timestamp="2026-12-01T10:00:00Z",
            metadata={"shared_with": ["py-guest"]},
        )
        async with asyncio.timeout(8):
            first = await anext(items)
        unshared = publish(
            stack, "py-host", 5, timestamp="2026-12-01T10:00:01Z", metadata={"shared_with": []}
        )
        async with asyncio.timeout(8):
            second = await anext(items)
    assert isinstance(first, TaskUpdate) and first.event_id == shared
    assert second == AccessRevoked(event_id=unshared, task_id=5)
    assert client.last_event_id == unshared


async def test_a_callback_client_cannot_also_be_iterated(stack: ServiceProcess) -> None:
    client = SyncClient(stack.ws_url, "t", on_update=lambda item: None)
    with pytest.raises(TypeError):
        client.__aiter__()


async def test_resume_after_a_dropped_connection_has_no_gap_and_no_duplicate(
    stack: ServiceProcess,
) -> None:
    """Events keep flowing while the connection drops: every one arrives exactly once."""
    rec = Recorder()
    async with proxied(stack) as proxy:
        client = SyncClient(proxy.url, stack.token("py-seam"), **FAST, **rec.kwargs())
        async with client:
            await until(lambda: client.state == ConnectionState.CONNECTED)
            sent: list[str] = []
            for n in range(30):
                sent.append(await asyncio.to_thread(publish, stack, "py-seam", n))
                if n == 8:
                    # The client has a position to resume from (its last event) before the
                    # connection drops: without one, a fresh subscribe is all it can ask for.
                    await until(lambda: len(rec.ids) == 9, what="the first 9 updates")
                    proxy.refuse = True
                    proxy.cut()
                if n == 20:
                    proxy.refuse = False
            await until(lambda: len(rec.ids) >= 30, what="all 30 updates")
            delivered = await settled(stack, "py-seam", rec)
    assert sorted(delivered) == sorted(sent)
    assert len(delivered) == 30, "no duplicate"
    assert client.connections == 2
    assert not any(isinstance(i, ResyncRequired) for i in rec.items)
    assert rec.reconnects[0].close_code == 1006  # a dead socket: no close frame


async def test_a_replay_overlapping_what_was_delivered_is_not_delivered_twice(
    stack: ServiceProcess,
) -> None:
    rec = Recorder()
    async with proxied(stack) as proxy:
        client = SyncClient(proxy.url, stack.token("py-dup"), **FAST, **rec.kwargs())
        async with client:
            await until(lambda: client.state == ConnectionState.CONNECTED)
            sent = [publish(stack, "py-dup", n) for n in range(3)]
            await until(lambda: len(rec.ids) == 3)
            client.last_event_id = sent[0]  # a stale checkpoint: the server replays 2 events
            proxy.cut()
            await until(lambda: client.connections == 2 and client.state == "connected")
            sent.append(publish(stack, "py-dup", 3))
            await until(lambda: len(rec.ids) >= 4)
            delivered = await settled(stack, "py-dup", rec)
    assert sorted(delivered) == sorted(sent)


async def test_reconnects_after_the_service_restarts_and_catches_up(stack: ServiceProcess) -> None:
    rec = Recorder()
    client = SyncClient(
        stack.ws_url, stack.token("py-restart"), backoff_base_s=0.1, backoff_cap_s=1.0,
        proxy=None, **rec.kwargs(),
    )  # fmt: skip
    async with client:
        await until(lambda: client.state == ConnectionState.CONNECTED)
        sent = [publish(stack, "py-restart", 1)]
        await until(lambda: len(rec.ids) == 1)
        await asyncio.to_thread(stack.stop)  # SIGTERM: drain, close clients with 1001
        await until(lambda: client.state == ConnectionState.RECONNECTING)
        sent += [publish(stack, "py-restart", n) for n in (2, 3)]  # while the service is down
        await asyncio.to_thread(stack.start)
        await until(lambda: client.connections == 2 and client.state == "connected", 15)
        sent.append(publish(stack, "py-restart", 4))
        await until(lambda: len(rec.ids) >= 4, 15, "caught up")
        delivered = await settled(stack, "py-restart", rec)
    assert delivered[0] == sent[0]
    assert sorted(delivered) == sorted(sent)
    assert len(delivered) == 4, "no duplicate"
    assert rec.reconnects[0].close_code in {1001, 1006}


async def test_a_provider_token_is_refreshed_on_the_live_connection(
    stack: ServiceProcess,
) -> None:
    """Tokens of 2 s, no leeway: the client sends `refresh` before each expiry, so one
    connection outlives its first token and never sees 4002."""
    issued: list[str] = []

    def provider() -> str:
        issued.append(stack.token("py-refresh", ttl_s=2))
        return issued[-1]

    rec = Recorder()
    client = SyncClient(stack.ws_url, provider, **FAST, **rec.kwargs())
    async with client:
        await until(lambda: client.state == ConnectionState.CONNECTED)
        first_connection = client.connection_id
        await until(lambda: len(issued) >= 3, 10, "two refreshes")
        await until(lambda: time.time() > expiry(issued[0]), 5, "the first token's expiry")
        event_id = publish(stack, "py-refresh", 1)
        await until(lambda: event_id in rec.ids)
        assert client.connection_id == first_connection
    assert client.connections == 1
    assert rec.reconnects == []
    assert len(issued) >= 3


async def test_a_caching_provider_is_asked_again_before_the_token_lapses(
    stack: ServiceProcess,
) -> None:
    """A provider that still returns its cached token when first asked (many auth SDKs
    renew only shortly before expiry) is asked again halfway to the expiry."""
    issued: list[str] = []
    asked = 0

    def provider() -> str:
        nonlocal asked
        asked += 1
        if asked != 2:  # the second call, the first refresh attempt, gets the cached one
            issued.append(stack.token("py-cached", ttl_s=7))
        return issued[-1]

    rec = Recorder()
    client = SyncClient(stack.ws_url, provider, **FAST, **rec.kwargs())
    async with client:
        await until(lambda: client.state == ConnectionState.CONNECTED)
        await until(lambda: asked >= 3, 10, "the provider asked again")
        await until(lambda: time.time() > expiry(issued[0]), 5, "the first token's expiry")
        event_id = publish(stack, "py-cached", 1)
        await until(lambda: event_id in rec.ids)
    assert asked >= 3 and len(issued) >= 2
    assert client.connections == 1
    assert rec.reconnects == []


async def test_after_4002_a_fresh_token_is_fetched_and_the_client_resumes(
    stack: ServiceProcess,
) -> None:
    """The refresh is refused (the provider hands out another user's token), so the
    token lapses: 4002, then a reconnect with a fresh token and a resume."""
    issued: list[str] = []
    plan = [("py-expiry", 2), ("someone-else", 3600), ("py-expiry", 3600)]

    async def provider() -> str:
        user, ttl = plan[min(len(issued), 2)]
        issued.append(stack.token(user, ttl_s=ttl))
        return issued[-1]

    rec = Recorder()
    client = SyncClient(stack.ws_url, provider, **FAST, **rec.kwargs())
    async with client:
        await until(lambda: client.state == ConnectionState.CONNECTED)
        first = publish(stack, "py-expiry", 1)
        await until(lambda: any(r.close_code == 4002 for r in rec.reconnects), 8, "4002")
        second = publish(stack, "py-expiry", 2)
        await until(lambda: len(rec.ids) == 2)
    assert rec.ids == [first, second]
    assert len(issued) == 3 and len(set(issued)) == 3
    assert rec.reconnects[0].delay_s == 0  # a fresh token: no backoff needed
    assert client.connections == 2


async def test_a_refused_static_token_stops_the_client(stack: ServiceProcess) -> None:
    client = SyncClient(stack.ws_url, stack.token("py-expired", ttl_s=-60), **FAST)
    closes_before = stack.metric("realtime_sync_closes_total", code="4001")
    with pytest.raises(TokenRefused) as refused:
        async with asyncio.timeout(5), client:
            async for _ in client:
                pass
    assert refused.value.code == 4001
    # The client has stopped: no attempt can follow, so the count is final once it shows.
    await until(lambda: stack.metric("realtime_sync_closes_total", code="4001") > closes_before)
    assert stack.metric("realtime_sync_closes_total", code="4001") - closes_before == 1
    assert client.state == ConnectionState.CLOSED


async def test_a_provider_repeating_a_refused_token_is_not_retried(stack: ServiceProcess) -> None:
    expired = stack.token("py-same", ttl_s=-60)
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return expired

    client = SyncClient(stack.ws_url, provider, **FAST)
    with pytest.raises(TokenRefused):
        await asyncio.wait_for(client.run(), 5)
    assert len(calls) == 2  # asked again after the 4001, and the same token was not sent


async def test_the_watchdog_replaces_a_silent_connection(stack: ServiceProcess) -> None:
    rec = Recorder()
    async with proxied(stack) as proxy:
        client = SyncClient(
            proxy.url, stack.token("py-silent"), **FAST, ping_interval_s=0.3, ping_timeout_s=0.3,
            open_timeout_s=1.0, **rec.kwargs(),
        )  # fmt: skip
        # A reconnect may start before the proxy thaws: its handshake is swallowed, and
        # the short open timeout lets the next attempt through.
        async with client:
            await until(lambda: client.state == ConnectionState.CONNECTED)
            first_connection = client.connection_id
            proxy.frozen = True  # the TCP connection stays up; nothing gets through
            await until(lambda: any(r.reason == "ping unanswered" for r in rec.reconnects), 5)
            assert rec.reconnects[0].close_code == 1006  # no close frame: the socket was aborted
            proxy.frozen = False
            await until(lambda: client.connections == 2 and client.state == "connected")
            assert client.connection_id != first_connection
            event_id = publish(stack, "py-silent", 1)
            await until(lambda: event_id in rec.ids)


async def test_a_close_for_sending_too_much_after_connecting_still_backs_off(
    stack: ServiceProcess,
) -> None:
    """45 subscriptions at once overrun the server's burst (40): closed 4029 right after
    `connected`. That must not count as a working session, or the backoff never grows."""
    rec = Recorder()
    client = SyncClient(
        stack.ws_url, stack.token("py-burst"), subscribe_all=False, task_ids=range(45),
        backoff_base_s=0.02, backoff_cap_s=0.5, proxy=None, rng=random.Random(3), **rec.kwargs(),
    )  # fmt: skip
    async with client:
        await until(lambda: len(rec.reconnects) >= 4, 10, "four reconnects")
    assert [r.close_code for r in rec.reconnects[:4]] == [4029] * 4
    # The backoff grows twice as fast (4029), never restarting at 1.
    assert [r.attempt for r in rec.reconnects[:4]] == [1, 3, 5, 7]
    assert client.connections >= 4
    assert ConnectionState.CONNECTED not in rec.states


async def test_a_failing_token_provider_is_retried_with_backoff(stack: ServiceProcess) -> None:
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        if calls in (2, 3):  # the auth service is down when the connection drops
            raise RuntimeError("auth service unavailable")
        return stack.token("py-flaky-auth")

    rec = Recorder()
    async with proxied(stack) as proxy:
        client = SyncClient(proxy.url, provider, **FAST, **rec.kwargs())
        async with client:
            await until(lambda: client.state == ConnectionState.CONNECTED)
            proxy.cut()
            await until(lambda: client.connections == 2 and client.state == "connected")
            event_id = publish(stack, "py-flaky-auth", 1)
            await until(lambda: event_id in rec.ids)
    reasons = [r.reason for r in rec.reconnects]
    assert reasons.count("token provider failed: RuntimeError") == 2, reasons
    assert client.error is None


async def test_callbacks_that_raise_do_not_stop_the_client(stack: ServiceProcess) -> None:
    seen: list[str] = []

    def on_update(item: Item) -> None:
        assert isinstance(item, TaskUpdate)
        seen.append(item.event_id)
        raise ValueError("the application's bug")

    def on_state(state: ConnectionState) -> None:
        raise ValueError("another one")

    client = SyncClient(
        stack.ws_url, stack.token("py-raising"), on_update=on_update, on_state=on_state, **FAST
    )
    async with client:
        await until(lambda: client.state == ConnectionState.CONNECTED)
        first, second = publish(stack, "py-raising", 1), publish(stack, "py-raising", 2)
        await until(lambda: len(seen) == 2)
        assert sorted(seen) == sorted([first, second])
        assert client.state == ConnectionState.CONNECTED and client.connections == 1


async def test_a_slow_consumer_is_not_taken_for_a_silent_connection(
    stack: ServiceProcess,
) -> None:
    rec = Recorder()

    async def slow(item: Item) -> None:
        rec.on_update(item)
        if len(rec.items) == 1:
            await asyncio.sleep(1.5)  # five ping timeouts

    client = SyncClient(
        stack.ws_url, stack.token("py-slow"), **FAST, ping_interval_s=0.3, ping_timeout_s=0.3,
        on_update=slow, on_reconnect=rec.reconnects.append,
    )  # fmt: skip
    async with client:
        await until(lambda: client.state == ConnectionState.CONNECTED)
        publish(stack, "py-slow", 1)
        second = publish(stack, "py-slow", 2)
        # A dropped connection would be announced before the second update could come
        # through a new one.
        await until(lambda: second in rec.ids, 10)
    assert rec.reconnects == []
    assert client.connections == 1


async def test_100_clients_dropped_together_come_back_spread_out(stack: ServiceProcess) -> None:
    """A restart drops everyone at once; full jitter spreads the reconnects over [0, cap],
    and each client waits at least the delay it announced."""
    cap = 1.5
    delays: dict[int, float] = {}
    back_at: dict[int, float] = {}
    clients: list[SyncClient] = []
    async with proxied(stack) as proxy:
        for n in range(100):

            def on_state(state: ConnectionState, n: int = n) -> None:
                if state == ConnectionState.CONNECTED and clients[n].connections == 2:
                    back_at[n] = time.monotonic()

            def on_reconnect(info: Reconnect, n: int = n) -> None:
                delays[n] = info.delay_s

            client = SyncClient(
                proxy.url, stack.token(f"py-herd-{n % 4}"), backoff_base_s=cap,
                backoff_cap_s=cap, on_update=lambda item: None, on_state=on_state,
                on_reconnect=on_reconnect, proxy=None, rng=random.Random(n),
            )  # fmt: skip
            clients.append(client)
            client.start()
        try:
            await until(lambda: all(c.state == ConnectionState.CONNECTED for c in clients), 20)
            dropped_at = time.monotonic()
            proxy.cut()
            await until(lambda: len(back_at) == 100, 15, "all 100 back")
        finally:
            await asyncio.gather(*(c.close() for c in clients))
    assert len(delays) == 100
    assert all(0 <= d <= cap for d in delays.values())
    # Spread over [0, cap], not in lockstep: every tenth of the range is used, none crowded.
    bins = [0] * 10
    for d in delays.values():
        bins[min(9, int(d / cap * 10))] += 1
    assert sum(1 for b in bins if b) >= 8, bins
    assert max(bins) <= 25, bins
    assert statistics.pstdev(delays.values()) > cap / 6
    # ... and no client came back before its own delay was over.
    early = {
        n: (back_at[n] - dropped_at, delays[n])
        for n in back_at
        if back_at[n] - dropped_at < delays[n]
    }
    assert not early, early
