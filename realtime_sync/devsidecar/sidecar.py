"""``DevSidecar``: wires the state store, the broker, the app channels and both APIs."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Sequence
from concurrent import futures
from types import TracebackType

import grpc
from dapr.proto.runtime.v1 import dapr_pb2_grpc

from .api import ApiTokenInterceptor, DaprApiServicer
from .app_channel import AppChannel
from .broker import Broker, Deliver, Member
from .bulk import BatchingDelivery
from .config import DeliveryMode, SidecarConfig
from .faults import StateFaults
from .health import AppHealthProbe
from .http_api import DaprHttpServer
from .journal import Journal, Record
from .routing import Subscription
from .runtime import AppInstance, SidecarRuntime
from .state import CommittedWrite, InMemoryStateStore

log = logging.getLogger(__name__)

GRPC_WORKERS = 64  # state calls may hang (fault switch) for up to 30 s each
DRAIN_MAX_S = 30.0  # daprd's drainMaxDuration (pkg/runtime/subscription/subscription.go)


def _state_record(store: str, writes: Sequence[CommittedWrite]) -> Record:
    return {
        "op": "state",
        "store": store,
        "writes": [
            {
                "key": w.key,
                "value": None if w.value is None else base64.b64encode(w.value).decode("ascii"),
                "version": w.version,
                "expires_at": w.expires_at,
            }
            for w in writes
        ],
    }


def _committed_writes(record: Record) -> list[CommittedWrite]:
    writes = record.get("writes")
    result = []
    for w in writes if isinstance(writes, list) else ():
        if not isinstance(w, dict) or not isinstance(w.get("key"), str):
            continue
        value, expires_at, version = w.get("value"), w.get("expires_at"), w.get("version")
        result.append(
            CommittedWrite(
                key=w["key"],
                value=base64.b64decode(value) if isinstance(value, str) else None,
                version=version if isinstance(version, int) else 1,
                expires_at=float(expires_at) if isinstance(expires_at, int | float) else None,
            )
        )
    return result


class DevSidecar:
    """An in-memory stand-in for daprd; see the package docstring for what it covers."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self._stopping = threading.Event()
        self._journal = Journal(config.journal) if config.journal else None
        self._broker = Broker(
            retry=config.retry, concurrency=config.concurrency, journal=self._journal
        )
        self._health_changed = threading.Condition()
        self._batchers: dict[tuple[str, str], BatchingDelivery] = {}
        self._batchers_lock = threading.Lock()
        self._store = InMemoryStateStore(config.state_store_name)
        self._instances = [
            AppInstance(
                AppChannel(
                    config.app_host,
                    port,
                    pubsub_name=config.pubsub_name,
                    app_api_token=config.app_api_token,
                    delivery_timeout_s=config.delivery_timeout_s,
                )
            )
            for port in config.app_ports
        ]
        self.runtime = SidecarRuntime(
            config,
            broker=self._broker,
            stores={config.state_store_name: self._store},
            faults=StateFaults(),
            instances=self._instances,
        )
        self._grpc_server: grpc.Server | None = None
        self._http_server: DaprHttpServer | None = None
        self._grpc_port = 0
        self._threads: list[threading.Thread] = []
        self._state = "new"

    @property
    def grpc_port(self) -> int:
        return self._grpc_port

    @property
    def http_port(self) -> int:
        return self._http_server.port if self._http_server else 0

    def __enter__(self) -> DevSidecar:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start both APIs and the app channels; returns at once. Raises OSError on bind."""
        if self._state != "new":
            raise RuntimeError("a DevSidecar starts once")
        self._state = "starting"
        if self._journal is not None:
            self._restore(self._journal)
        config = self.config
        interceptors = [ApiTokenInterceptor(config.dapr_api_token)] if config.dapr_api_token else []
        server = grpc.server(
            futures.ThreadPoolExecutor(GRPC_WORKERS, thread_name_prefix="devsidecar-api"),
            interceptors=interceptors,
            options=[("grpc.so_reuseport", 0)],  # a taken port must fail, not be shared
        )
        dapr_pb2_grpc.add_DaprServicer_to_server(DaprApiServicer(self.runtime), server)
        host = f"[{config.listen_host}]" if ":" in config.listen_host else config.listen_host
        try:
            port = server.add_insecure_port(f"{host}:{config.grpc_port}")
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {host}:{config.grpc_port}: {exc}") from None
        if not port:
            raise OSError(f"cannot listen for gRPC on {host}:{config.grpc_port}")
        self._grpc_server, self._grpc_port = server, port
        self._http_server = DaprHttpServer(config.listen_host, config.http_port, self.runtime)
        server.start()
        self._spawn(self._http_server.serve_forever, "devsidecar-http")
        for instance in self._instances:
            self._spawn(
                lambda i=instance: self._attach(i), f"devsidecar-app-{instance.channel.port}"
            )
        self._state = "running"
        log.info(
            "dev sidecar started (a development tool, not daprd): app-id %s, gRPC %s:%d, "
            "HTTP %s:%d, app at %s, delivery %s, journal %s, inbound policy: %s, "
            "app health checks %s",
            config.app_id,
            config.listen_host,
            self.grpc_port,
            config.listen_host,
            self.http_port,
            ", ".join(i.channel.label for i in self._instances),
            config.delivery.value,
            "on" if self._journal else "off",
            config.resources,
            "on" if config.app_health_check else "off",
        )

    def stop(self, grace_s: float = 2.0) -> None:
        """Stop serving and delivering; compact the journal. Safe to call twice."""
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        self._state = "stopped"
        if self.config.block_shutdown_s is not None:
            self._block_shutdown(self.config.block_shutdown_s)
        self._stopping.set()
        if self._grpc_server is not None:
            self._grpc_server.stop(grace_s).wait(grace_s + 1.0)
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
        self._broker.stop(grace_s)
        for instance in self._instances:
            instance.channel.close()
        if self._journal is not None:
            try:
                self._journal.compact(self._snapshot())
            except OSError as exc:
                log.error("could not compact the journal (it stays as it was): %s", exc)
            self._journal.close()
        log.info("dev sidecar stopped")

    def _spawn(self, target: object, name: str) -> None:
        assert callable(target)
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _group_name(self, instance: AppInstance) -> str:
        if self.config.delivery is DeliveryMode.COMPETING:
            return self.config.app_id
        return f"{self.config.app_id}@{instance.channel.label}"

    def _block_shutdown(self, duration_s: float) -> None:
        """daprd's shutdown with ``--dapr-block-shutdown-duration`` (pkg/runtime/runtime.go
        Run): stop every subscription (in-flight deliveries finish), then keep the Dapr APIs
        up until the duration ends or the app reports unhealthy."""
        log.info("Blocking graceful shutdown for %ss or until app reports unhealthy...", duration_s)
        self._broker.stop_delivering(DRAIN_MAX_S)

        def app_unhealthy() -> bool:
            # daprd's isAppHealthy starts closed (= unhealthy) and opens once the app is
            # healthy: without health checks, when it first answered on its port. So an app
            # that never came up ends the wait at once; a healthy one without health checks
            # is never seen unhealthy, and daprd waits the whole duration.
            return not any(i.healthy for i in self._instances)

        with self._health_changed:
            if self._health_changed.wait_for(app_unhealthy, timeout=duration_s):
                log.info("App reported unhealthy, entering shutdown...")
            else:
                log.info("Block shutdown period expired, entering shutdown...")

    def _set_health(self, instance: AppInstance, healthy: bool) -> None:
        with self._health_changed:
            instance.healthy = healthy
            self._health_changed.notify_all()
        if instance.state == "subscribed":
            self._broker.set_paused(instance.channel.label, not healthy)
            log.info(
                "app %s %s",
                instance.channel.label,
                "healthy: deliveries resume" if healthy else "unhealthy: deliveries stop",
            )
        elif healthy and instance.state == "waiting":
            self._subscribe(instance)  # the first healthy probe starts the subscriptions

    def _attach(self, instance: AppInstance) -> None:
        """daprd's start-up toward one app instance: wait for it to listen, then (after its
        first healthy probe, when app health checks are on) list its subscriptions once."""
        channel = instance.channel
        if not channel.wait_until_listening(self._stopping):
            return
        config = self.config
        if not config.app_health_check:
            instance.healthy = True
            self._subscribe(instance)
            return
        probe = AppHealthProbe(
            channel.probe_health,
            interval_s=config.app_health_probe_interval_s,
            timeout_s=config.app_health_probe_timeout_s,
            threshold=config.app_health_threshold,
            on_change=lambda healthy: self._set_health(instance, healthy),
        )
        probe.run(self._stopping)

    def _subscribe(self, instance: AppInstance) -> None:
        channel = instance.channel
        instance.list_subscriptions_calls += 1
        replies = channel.list_subscriptions(self._stopping)
        if replies is None:
            instance.state = "failed"
            log.error("could not list the subscriptions of app %s: no deliveries", channel.label)
            return
        accepted: list[Subscription] = []
        for reply in replies:
            subscription = Subscription.from_proto(reply)
            if subscription.pubsub_name != self.config.pubsub_name:
                instance.ignored.append(f"{subscription.pubsub_name}/{subscription.topic}")
                log.warning(
                    "app %s subscribed to unknown pubsub %s (topic %s): ignored",
                    channel.label,
                    subscription.pubsub_name,
                    subscription.topic,
                )
                continue
            accepted.append(subscription)
        instance.subscriptions = accepted
        log.info(
            "app %s subscriptions received: %s",
            channel.label,
            ", ".join(
                s.topic + (f" (dead-letter {s.dead_letter_topic})" if s.dead_letter_topic else "")
                for s in accepted
            )
            or "none",
        )
        group = self._group_name(instance)
        for subscription in accepted:
            self._broker.subscribe(
                group, Member(channel.label, subscription, self._deliver(instance, subscription))
            )
        instance.state = "subscribed"

    def _deliver(self, instance: AppInstance, subscription: Subscription) -> Deliver:
        """How the broker's workers deliver to this instance: one ``OnTopicEvent`` each, or,
        when the app asked for bulk, through the batching layer daprd puts in between (one
        per instance and topic, kept across a re-subscription)."""
        channel = instance.channel
        if subscription.bulk is None:
            return channel.deliver
        key = (channel.label, subscription.topic)
        with self._batchers_lock:
            batcher = self._batchers.get(key)
            if batcher is None or batcher.config != subscription.bulk:
                batcher = BatchingDelivery(
                    channel.deliver_bulk, subscription.topic, subscription.bulk, self._stopping
                )
                self._batchers[key] = batcher
        log.info(
            "app %s: bulk delivery on topic %s (up to %d per call, %g ms window)",
            channel.label,
            subscription.topic,
            subscription.bulk.max_messages,
            subscription.bulk.max_await_s * 1000,
        )
        return batcher.deliver

    def _restore(self, journal: Journal) -> None:
        restored = 0
        for record in journal.replay():
            restored += 1
            if record.get("op") == "state":
                if record.get("store") == self._store.name:
                    for write in _committed_writes(record):
                        self._store.restore(write)
            else:
                self._broker.restore(record)
        journal.compact(self._snapshot())
        journal.open()
        self._store.on_commit = lambda store, writes: journal.append(_state_record(store, writes))
        log.info("journal %s: replayed %d record(s)", journal.path.name, restored)

    def _snapshot(self) -> list[Record]:
        records: list[Record] = []
        writes = self._store.snapshot()
        if writes:
            records.append(_state_record(self._store.name, writes))
        records.extend(self._broker.snapshot_records())
        return records
