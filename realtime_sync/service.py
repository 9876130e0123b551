"""Wiring: one event loop, every long-lived task under one TaskGroup, a graceful drain.

Shutdown (SIGTERM/SIGINT): /readyz 503 and new handshakes refused at once; new events are
answered RETRY; the deliveries in flight finish; the hand-off queue is routed to empty;
clients are closed with 1001 over a jittered window; connection records are deleted; only
then does the app report unhealthy and stop its gRPC server, and the process exits.

The order matters under a real daprd: its block-shutdown wait (which keeps the Dapr APIs up
for the draining app) ends as soon as the app's health probe fails (dapr/dapr
pkg/runtime/runtime.go Run), so the app stays healthy until its last state write.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
import uuid
from typing import Any

import aiohttp

from realtime_sync.bridge import Bridge, Slots
from realtime_sync.config import Settings, instance_name
from realtime_sync.core.auth import TokenVerifier
from realtime_sync.cutoffs import UserCutoffs, UserDisconnects
from realtime_sync.dispatcher import Dispatcher
from realtime_sync.hub import Hub
from realtime_sync.metrics import Metrics
from realtime_sync.presence import ConnectionRecords, lookup_presence
from realtime_sync.server import Gateway, Readiness
from realtime_sync.state import DaprState, ResumeSnapshots, ShareLists, StateUnavailable
from realtime_sync.static import load_board
from realtime_sync.subscriber import Subscriber

log = logging.getLogger(__name__)
GRPC_GRACE_S = 8.0
DRAIN_BUDGET_S = 22.0
SIDECAR_PROBE_S = 1.0
# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
# The loop thread routes a whole round of events without a blocking call; the gRPC handler
# threads only need the GIL for a moment to hand an event over and answer it, so each of
# them would otherwise wait up to 5 ms per event, which delays every answer to daprd and
# starves the loop of events to batch (bench/RESULTS.md: the switch interval).
GIL_SWITCH_INTERVAL_S = 0.001


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.readiness = Readiness()
        self.stopping = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._api_url = ""

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

        state = DaprState(
            store=s.state_store_name, timeout_s=s.dapr_timeout_s, metrics=self.metrics
        )
        shares = ShareLists(state, cache_s=s.shares_cache_s, clock=time.monotonic)
        snapshots = ResumeSnapshots(
            state,
            ttl_s=int(s.resume_window_s),
            instance=instance_name(),
            generation=uuid.uuid4().hex,
            started_at=time.time(),
        )
        hub = Hub(
            metrics=self.metrics,
            dedupe_window_s=s.dedupe_window_s,
            dedupe_max_ids=s.dedupe_max_ids,
            resume_window_s=s.resume_window_s,
            resume_max_events=s.resume_max_events,
            resume_max_users=s.resume_max_users,
            resume_max_bytes=s.resume_max_bytes,
            resume_margin_s=s.resume_margin_s,
            resume_margin_events=s.resume_margin_events,
            snapshots=snapshots,
        )
        slots = Slots(s.handoff_queue)
        dispatcher = Dispatcher(hub=hub, shares=shares, metrics=self.metrics, slots=slots)
        bridge = Bridge(
            slots=slots, shares=shares, ack_ahead=s.ack_ahead, route=dispatcher.route_round
        )
        records = ConnectionRecords(
            state,
            hub.registry,
            replica=s.replica_id,
            ttl_s=s.connection_ttl_s,
            max_record_subscriptions=s.record_max_subscriptions,
            max_batch_bytes=s.presence_batch_bytes,
            metrics=self.metrics,
        )
        verifier = TokenVerifier(
            algorithms=s.jwt_algorithms,
            key=s.jwt_key,
            audience=s.jwt_audience or None,
            issuer=s.jwt_issuer or None,
            leeway_s=s.jwt_leeway_s,
            user_claim=s.jwt_user_claim,
            max_lifetime_s=s.max_token_lifetime_s,
        )
        cutoffs = UserCutoffs(
            state, ttl_s=s.max_token_lifetime_s, metrics=self.metrics, clock=time.time
        )
        gateway = Gateway(
            settings=s,
            hub=hub,
            verifier=verifier,
            records=records,
            metrics=self.metrics,
            readiness=self.readiness,
            cutoffs=cutoffs,
            static=load_board() if s.board else None,
        )

        def listed() -> None:
            loop.call_soon_threadsafe(setattr, self.readiness, "subscribed", True)

        subscriber = Subscriber(
            settings=s,
            bridge=bridge,
            shares=shares,
            metrics=self.metrics,
            loop=loop,
            on_subscriptions_listed=listed,
            presence=lambda user: lookup_presence(state, user),
            disconnects=UserDisconnects(
                cutoffs,
                close_local=gateway.disconnect_user,
                publish=lambda data: state.publish(s.pubsub_name, s.control_topic, data),
                metrics=self.metrics,
                clock=time.time,
            ),
            publish_task=lambda data: state.publish(s.pubsub_name, s.topic_name, data),
        )
        freeze_startup_objects()
        await gateway.start()
        app_port = subscriber.start()
        log.info(
            "realtime-sync started",
            extra={
                "ws_port": gateway.port,
                "app_port": app_port,
                "pubsub": s.pubsub_name,
                "topic": s.topic_name,
                "replica": s.replica_id,
                "gc_frozen": gc.get_freeze_count(),
            },
        )
        background: list[asyncio.Task[Any]] = []
        from dapr.clients.http.helpers import get_api_url  # noqa: PLC0415

        self._api_url = get_api_url()
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=SIDECAR_PROBE_S), headers=_dapr_api_headers()
        )
        try:
            async with asyncio.TaskGroup() as tg:
                background += [
                    tg.create_task(hub.run()),
                    tg.create_task(dispatcher.run()),
                    tg.create_task(self._connect_state(state, records, snapshots, hub)),
                    tg.create_task(records.run()),
                    tg.create_task(snapshots.keep_run_noted()),
                    tg.create_task(self._probe_sidecar()),
                ]
                await self.stopping.wait()
                await self._drain(gateway, subscriber, bridge, hub, records)
                for task in background:
                    task.cancel()
        finally:
            await state.close()
            await self._http.close()
        log.info("realtime-sync stopped")

    async def _drain(
        self,
        gateway: Gateway,
        subscriber: Subscriber,
        bridge: Bridge,
        hub: Hub,
        records: ConnectionRecords,
    ) -> None:
        """Each step is bounded, and all of them together by DRAIN_BUDGET_S, so the process
        exits well inside the pod's grace period whatever hangs (deploy/kubernetes budget)."""
        started = time.monotonic()
        deadline = started + DRAIN_BUDGET_S

        def left(cap: float) -> float:
            return max(0.1, min(cap, deadline - time.monotonic()))

        log.info("draining: refusing new handshakes, answering new events RETRY")
        self.readiness.draining = True
        subscriber.draining = True
        # The gRPC server keeps serving (and the health probe keeps answering healthy) until
        # the last state write below: daprd stops delivering on SIGTERM, and its Dapr APIs
        # stay up only while the app is healthy (block-shutdown).
        if not await asyncio.to_thread(subscriber.in_flight.wait_idle, left(GRPC_GRACE_S)):
            log.warning("deliveries still in flight after the gRPC grace period")
        drained = await hub.drain(bridge, left(3))
        try:
            async with asyncio.timeout(left(3)):
                saved = await hub.save_snapshots(handover=drained)
            log.info("resume buffers saved", extra={"users": saved})
        except (TimeoutError, StateUnavailable) as exc:
            log.warning("resume buffers not saved", extra={"reason": str(exc) or "timeout"})
        window = min(self.settings.drain_s, max(0.0, deadline - time.monotonic() - 6))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left(window + 5)):
                await gateway.close_all(window)
        if gateway.server is not None:
            gateway.server.close(close_connections=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left(2)):
                    await gateway.server.wait_closed()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left(2)):
                await records.remove_all()
        # The last state write is done: report unhealthy (daprd may now shut down) and stop.
        await asyncio.to_thread(subscriber.stop, left(1))
        log.info("drained", extra={"seconds": round(time.monotonic() - started, 2)})

    async def _connect_state(
        self, state: DaprState, records: ConnectionRecords, snapshots: ResumeSnapshots, hub: Hub
    ) -> None:
        await state.connect(self._sidecar_outbound_ready)
        try:
            if not await snapshots.note_run():
                hub.buffers.first_run()  # no earlier run's acknowledged events to miss
        except StateUnavailable as exc:  # then resumes near this run's start resync
            log.warning("earlier runs not checked", extra={"reason": str(exc)})
        try:
            claimed = await snapshots.claim_handover()
        except StateUnavailable as exc:  # then only overlapping snapshots are merged
            log.warning("resume hand-over not claimed", extra={"reason": str(exc)})
        else:
            if claimed is not None:
                log.info("took over resume snapshots", extra={"generation": claimed})
        await records.start()

    async def _sidecar_outbound_ready(self) -> bool:
        return await self._get_ok("/healthz/outbound")

    async def _get_ok(self, path: str) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(f"{self._api_url}{path}") as resp:
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _listed_by_sidecar(self) -> bool:
        """Does the sidecar's metadata list our subscription? daprd calls
        ListTopicSubscriptions once per sidecar lifetime, so a restarted app learns that it
        is subscribed from GET /v1.0/metadata instead."""
        assert self._http is not None
        try:
            async with self._http.get(f"{self._api_url}/metadata") as resp:
                if resp.status != 200:
                    return False
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False
        subs = body.get("subscriptions") if isinstance(body, dict) else None
        s = self.settings
        return isinstance(subs, list) and any(
            isinstance(x, dict)
            and x.get("pubsubname") == s.pubsub_name
            and x.get("topic") == s.topic_name
            for x in subs
        )

    async def _probe_sidecar(self) -> None:
        """Poll the sidecar's health endpoint: an outage shows on /readyz within ~2 s."""
        while True:
            healthy = await self._get_ok("/healthz")
            if healthy != self.readiness.sidecar_ok:
                log.info("sidecar health changed", extra={"healthy": healthy})
            self.readiness.sidecar_ok = healthy
            if healthy and not self.readiness.subscribed and await self._listed_by_sidecar():
                self.readiness.subscribed = True
            await asyncio.sleep(SIDECAR_PROBE_S)


def _dapr_api_headers() -> dict[str, str]:
    """`dapr-api-token` for our own HTTP calls to the sidecar when DAPR_API_TOKEN is set:
    daprd refuses every HTTP API call without it except GET /v1.0/healthz and
    /v1.0/healthz/outbound (dapr/dapr pkg/api/http/middlewares.go
    APITokenAuthMiddleware). The SDK's DaprClient adds it to its own calls."""
    from dapr.conf import settings as dapr_settings  # noqa: PLC0415 - reads the env lazily

    token = dapr_settings.DAPR_API_TOKEN
    return {"dapr-api-token": token} if token else {}


def freeze_startup_objects() -> None:
    """Move what exists before the first client (modules, classes, the App, the clients,
    all alive as long as the process; their count is logged at start as `gc_frozen`) out
    of the cyclic GC's reach, so a full collection walks only what came after: the
    connections, their sessions and the buffers. Garbage is collected first, so nothing
    frozen is already dead (bench/RESULTS.md, session 5: the connect storm).
    """
    gc.collect()
    gc.freeze()


def run_service(settings: Settings) -> int:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    asyncio.run(Service(settings).run())
    return 0
