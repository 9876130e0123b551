"""Chaos: replicas killed and restarted under a live stream. Does any user miss an update?

The scenario (localhost only, bounded in cycles and time):

* N replicas of the service, each behind its OWN dev sidecar. The publisher publishes every
  event, as one CloudEvent with its `time` stamped once, to every sidecar: what a consumer
  group per replica gives on Dapr (`consumerID: "{podName}"`). Each sidecar delivers with
  many concurrent workers, so the replicas see the events in different orders.
* One Python client (`SyncClient`, its reconnect and `since`/`since_time` resume) per user,
  all pointed at a small TCP balancer that spreads connections round-robin over the replicas
  in rotation. A client whose replica died reconnects through it to a survivor.
* Each kill cycle publishes a burst of events and, in the middle of it, kills one replica
  with SIGKILL or SIGTERM (chosen at random); the replica is then restarted behind its same
  sidecar (which kept what it had not delivered) and put back in rotation once it has been
  ready for the resume margin. At least one replica stays in rotation.
* At the end every replica is up, and the run waits (bounded) until every owed delivery is
  shown or covered by a resync.

Definitions (what the report counts):

* **owed**: a pair (user, event) where the user is the event's task owner or in its share
  list. Share lists are fixed per task: every event of a task carries the same owner and
  list, so which users are owed an event never depends on delivery order.
* **shown**: the client passed the event to the application (after its `event_id` dedupe).
* **resync**: the client passed a `ResyncRequired` to the application at time R (it then
  refetches from the task API). A resync **covers** every event published (publish call
  started) before R: the refetch includes it.
* **silent gap**: an owed (user, event) never shown and not covered by any resync of that
  user. Required: 0.
* **duplicate**: an `event_id` shown to the same user's application more than once.
  Required: 0.
* **resync needed**: a resync of user u at R for which some owed event of u published
  before R was never shown: the refetch was what the user needed. The others were answered
  although nothing was missing in the end (the server could not prove it).
* **time to recover**: per client disconnection, from losing the connection to having every
  subscription confirmed on a new one.

Run: `python -m bench.chaos --cycles 200` (prints the report and writes it as JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import ROOT, SECRET, Proc, free_port, http_status, python
from realtime_sync.client import ConnectionState, Item, ResyncRequired, SyncClient, TaskUpdate
from realtime_sync.core.auth import mint_token

TOPIC = "task-updates"
ARTIFACTS = ROOT / "test-artifacts"


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    replicas: int = 3
    users: int = 12
    tasks: int = 24
    cycles: int = 200
    burst: int = 40  # events published around each kill
    concurrency: int = 16  # delivery workers per sidecar
    sigkill_share: float = 0.5
    seed: int = 1
    max_seconds: float = 1500.0
    settle_s: float = 60.0
    margin_s: float = 2.0  # the service's RESUME_MARGIN_S
    bulk: bool = True  # the service's BULK_SUBSCRIBE (off: events are acknowledged ahead)
    log_dir: Path = ARTIFACTS / "chaos"  # inside the project


@dataclass
class Report:
    config: dict[str, Any]
    cycles: int = 0
    sigkills: int = 0
    sigterms: int = 0
    events: int = 0
    owed: int = 0
    shown: int = 0
    silent_gaps: int = 0
    gap_examples: list[str] = field(default_factory=list)
    duplicates: int = 0
    resyncs: int = 0
    resyncs_by_reason: dict[str, int] = field(default_factory=dict)
    resyncs_needed: int = 0
    recoveries: int = 0
    recover_s: dict[str, float] = field(default_factory=dict)
    settled: bool = False
    seconds: float = 0.0
    # Events the replicas answered SUCCESS before writing them (ACK_AHEAD; read from each
    # run's /metrics just before it was signalled, and from every run left at the end).
    acked_ahead: int = 0

    @property
    def ok(self) -> bool:
        return self.silent_gaps == 0 and self.duplicates == 0


# -- processes ---------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "JWT_", "APP_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _retry_forever(folder: Path) -> Path:
    """A resources folder whose Resiliency retries every RETRY (as a broker keeps a message
    until it is acknowledged), fast: 50 ms, doubling to 0.5 s."""
    folder.mkdir(parents=True, exist_ok=True)
    resiliency = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Resiliency",
        "metadata": {"name": "chaos"},
        "spec": {
            "policies": {
                "retries": {
                    "inbound": {
                        "policy": "exponential",
                        "initialInterval": "50ms",
                        "maxInterval": "500ms",
                        "maxRetries": -1,
                    }
                }
            },
            "targets": {"components": {"pubsub": {"inbound": {"retry": "inbound"}}}},
        },
    }
    # JSON is YAML: no YAML writer needed.
    (folder / "resiliency.yaml").write_text(json.dumps(resiliency, indent=2) + "\n")
    return folder


class Replica:
    """One service process behind its own dev sidecar (which outlives its restarts)."""

    def __init__(self, index: int, config: ChaosConfig) -> None:
        self.name = f"chaos-{index}"
        self.grpc_port, self.http_port = free_port(), free_port()
        self.app_port, self.ws_port = free_port(), free_port()
        self.log_dir = config.log_dir
        self.sidecar = Proc(
            f"{self.name}-sidecar",
            python(
                "realtime_sync.devsidecar",
                *("--grpc-port", str(self.grpc_port), "--http-port", str(self.http_port)),
                *("--app-port", str(self.app_port), "--concurrency", str(config.concurrency)),
                *("--resources-path", str(_retry_forever(self.log_dir / "resources"))),
                *("--log-level", "warning"),
            ),
            self.log_dir,
            env=_clean_env(),
        )
        self.env = _clean_env() | {
            "JWT_SECRET": SECRET,
            "WS_PORT": str(self.ws_port),
            "APP_PORT": str(self.app_port),
            "DAPR_HTTP_PORT": str(self.http_port),
            "DAPR_GRPC_PORT": str(self.grpc_port),
            "TOPIC_NAME": TOPIC,
            "POD_NAME": self.name,
            "REPLICA_ID": self.name,
            "LOG_LEVEL": "warning",
            "DRAIN_S": "0.2",
            "DAPR_HEALTH_TIMEOUT": "10",
            "RESUME_MARGIN_S": str(config.margin_s),
            # Bulk delivery answers after the writes; without it events of known tasks are
            # acknowledged ahead of them (ACK_AHEAD), the path a crash can cost.
            "BULK_SUBSCRIBE": "true" if config.bulk else "false",
        }
        self.service: Proc | None = None
        self.runs = 0
        self.in_rotation = False

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start_sidecar(self) -> None:
        self.sidecar.start()
        _wait(
            lambda: http_status(f"{self.sidecar_url}/v1.0/healthz/outbound") == 204, 20, self.name
        )

    def start_service(self) -> None:
        """Start a run and wait until it is ready (blocking: call in a thread)."""
        self.runs += 1
        self.service = Proc(
            f"{self.name}-run{self.runs}", python("realtime_sync", "serve"), self.log_dir, self.env
        ).start()
        _wait(
            lambda: http_status(f"http://127.0.0.1:{self.ws_port}/readyz") == 200,
            30,
            f"{self.name} ready",
        )

    def acked_ahead(self) -> int:
        """The run's `realtime_sync_events_acked_ahead_total` (blocking), 0 if unreadable."""
        url = f"http://127.0.0.1:{self.ws_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith("realtime_sync_events_acked_ahead_total "):
                return int(float(line.split()[1]))
        return 0

    def kill(self, sig: int) -> int:
        """Signal the run and wait for it to exit (blocking: call in a thread). Returns
        how many events it had acknowledged ahead."""
        self.in_rotation = False
        service = self.service
        if service is None or not service.alive():
            return 0
        acked = self.acked_ahead()
        service.popen.send_signal(sig)
        try:
            service.popen.wait(30)
        except Exception:  # noqa: BLE001 - a run that ignores SIGTERM is killed
            service.popen.kill()
            service.popen.wait()
        return acked

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        self.sidecar.stop()


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(0.05)


# -- the balancer ------------------------------------------------------------------------


class Balancer:
    """TCP round-robin over the replicas in rotation; a refused backend is skipped."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self._next = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(
            _pump(reader, up_writer), _pump(up_reader, writer), return_exceptions=True
        )

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.replicas)):
            replica = self.replicas[self._next % len(self.replicas)]
            self._next += 1
            if not replica.in_rotation:
                continue
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", replica.ws_port)
        return None

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


# -- users and events ----------------------------------------------------------------------


@dataclass
class Watcher:
    """What one user's application was shown."""

    user: str
    shown: Counter[str] = field(default_factory=Counter)
    resyncs: list[tuple[float, str]] = field(default_factory=list)
    lost_at: float | None = None
    recoveries: list[float] = field(default_factory=list)
    client: SyncClient | None = None

    def on_update(self, item: Item) -> None:
        match item:
            case TaskUpdate():
                self.shown[item.event_id] += 1
            case ResyncRequired():
                self.resyncs.append((time.time(), item.reason or "unknown"))

    def on_state(self, state: ConnectionState) -> None:
        now = time.monotonic()
        if state == ConnectionState.CONNECTED:
            if self.lost_at is not None:
                self.recoveries.append(now - self.lost_at)
                self.lost_at = None
        elif self.lost_at is None and state == ConnectionState.RECONNECTING:
            self.lost_at = now


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    owner: str
    shared_with: tuple[str, ...]

    def owed(self) -> tuple[str, ...]:
        return (self.owner, *self.shared_with)


class Publisher:
    """Publishes each event once per sidecar, as a CloudEvent with one `time`."""

    def __init__(self, replicas: list[Replica], session: aiohttp.ClientSession) -> None:
        self.replicas = replicas
        self.session = session
        self.published: dict[str, tuple[float, Task]] = {}
        self._seq = 0

    async def publish(self, task: Task, *, shares: bool = False) -> None:
        """One event of `task`; with `shares` it carries the task's share list (sets it)."""
        self._seq += 1
        event_id = f"ev-{self._seq:06d}"
        now = datetime.now(UTC)
        cloud_event = {
            "specversion": "1.0",
            "id": event_id,
            "source": "chaos",
            "type": "com.dapr.event.sent",
            "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),  # daprd's RFC 3339, whole seconds
            "datacontenttype": "application/json",
            "data": {
                "id": event_id,
                "type": "TASK_CHANGED",
                "user_id": task.owner,
                "task_id": task.task_id,
                "data": {"seq": self._seq},
                "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "metadata": {"shared_with": list(task.shared_with)} if shares else {},
            },
        }
        self.published[event_id] = (time.time(), task)
        body = json.dumps(cloud_event).encode()
        await asyncio.gather(*(self._post(r, body) for r in self.replicas))

    async def _post(self, replica: Replica, body: bytes) -> None:
        url = f"{replica.sidecar_url}/v1.0/publish/pubsub/{TOPIC}"
        headers = {"Content-Type": "application/cloudevents+json"}
        for _ in range(50):
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.post(url, data=body, headers=headers) as resp:
                    if resp.status == 204:
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"publish to {replica.name} failed")


# -- the run -------------------------------------------------------------------------------


class Chaos:
    def __init__(self, config: ChaosConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)  # a reproducible schedule
        self.replicas = [Replica(i, config) for i in range(config.replicas)]
        users = [f"chaos-u{i}" for i in range(config.users)]
        self.watchers = {u: Watcher(u) for u in users}
        self.tasks: list[Task] = []
        for i in range(config.tasks):
            owner = self.rng.choice(users)
            others = [u for u in users if u != owner]
            shared = tuple(self.rng.sample(others, self.rng.randint(0, 2)))
            self.tasks.append(Task(f"chaos-t{i}", owner, shared))
        settings = asdict(config) | {"log_dir": config.log_dir.relative_to(ROOT)}
        self.report = Report(config={k: str(v) for k, v in settings.items()})
        self.restarts: set[asyncio.Task[None]] = set()

    async def run(self) -> Report:
        started = time.monotonic()
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        for replica in self.replicas:
            replica.start_sidecar()
        await asyncio.gather(*(self._bring_up(r) for r in self.replicas))
        balancer = Balancer(self.replicas)
        await balancer.start()
        try:
            async with aiohttp.ClientSession() as session, contextlib.AsyncExitStack() as stack:
                publisher = Publisher(self.replicas, session)
                for watcher in self.watchers.values():
                    watcher.client = await stack.enter_async_context(
                        self._client(balancer.port, watcher)
                    )
                await self._until(self._all_connected, 30, "clients connected")
                # Each task's share list, once, before the chaos: the events after it carry
                # none, so a replica routes them by its stored (then cached) list and, with
                # bulk delivery off, acknowledges them ahead of the writes.
                await asyncio.gather(*(publisher.publish(t, shares=True) for t in self.tasks))
                await self._until(lambda: not self._missing(publisher), 60, "share lists set")
                deadline = started + self.config.max_seconds
                while self.report.cycles < self.config.cycles and time.monotonic() < deadline:
                    await self._cycle(publisher)
                await asyncio.gather(*self.restarts)
                await self._until(self._all_connected, 30, "clients reconnected")
                await self._burst(publisher, self.config.burst)  # every replica up
                self.report.settled = await self._settle(publisher)
                self._score(publisher)
                for replica in self.replicas:
                    self.report.acked_ahead += await asyncio.to_thread(replica.acked_ahead)
        finally:
            await balancer.close()
            for task in self.restarts:
                task.cancel()
            for replica in self.replicas:
                await asyncio.to_thread(replica.stop)
        self.report.seconds = round(time.monotonic() - started, 1)
        return self.report

    def _client(self, port: int, watcher: Watcher) -> SyncClient:
        token = mint_token(watcher.user, secret=SECRET, ttl_s=7200, now=time.time())
        return SyncClient(
            f"ws://127.0.0.1:{port}/ws",
            token,
            on_update=watcher.on_update,
            on_state=watcher.on_state,
            backoff_base_s=0.05,
            backoff_cap_s=0.5,
            ping_interval_s=5.0,
            ping_timeout_s=5.0,
            dedupe_size=1_000_000,
            proxy=None,
        )

    async def _bring_up(self, replica: Replica) -> None:
        """Start a run; into rotation once it has been ready for the resume margin (a
        resume anchored before that answers `window_ended`, truthfully)."""
        await asyncio.to_thread(replica.start_service)
        await asyncio.sleep(self.config.margin_s)
        replica.in_rotation = True

    def _all_connected(self) -> bool:
        return all(
            w.client is not None and w.client.state == ConnectionState.CONNECTED
            for w in self.watchers.values()
        )

    async def _cycle(self, publisher: Publisher) -> None:
        live = [r for r in self.replicas if r.in_rotation]
        if len(live) < 2:  # keep a survivor: wait for a restart first
            await asyncio.wait(self.restarts, return_when=asyncio.FIRST_COMPLETED)
            return
        victim = self.rng.choice(live)
        sig = signal.SIGKILL if self.rng.random() < self.config.sigkill_share else signal.SIGTERM
        half = self.config.burst // 2
        await self._burst(publisher, half)
        killing = asyncio.create_task(asyncio.to_thread(victim.kill, sig))
        await self._burst(publisher, self.config.burst - half)
        self.report.acked_ahead += await killing
        if sig == signal.SIGKILL:
            self.report.sigkills += 1
        else:
            self.report.sigterms += 1
        self.report.cycles += 1
        restart = asyncio.create_task(self._bring_up(victim))
        self.restarts.add(restart)
        restart.add_done_callback(self.restarts.discard)
        await self._until(self._all_connected, 30, "clients back after a kill")

    async def _burst(self, publisher: Publisher, count: int) -> None:
        """`count` events published at once, many in flight: the sidecars' workers take
        them together, so each replica routes them in its own order."""
        tasks = [self.rng.choice(self.tasks) for _ in range(count)]
        await asyncio.gather(*(publisher.publish(task) for task in tasks))

    async def _until(self, predicate: Any, within_s: float, what: str) -> None:
        deadline = time.monotonic() + within_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {within_s:g} s")
            await asyncio.sleep(0.02)

    def _missing(self, publisher: Publisher) -> list[tuple[str, str]]:
        """Owed pairs neither shown nor covered by a resync."""
        missing = []
        for event_id, (at, task) in publisher.published.items():
            for user in task.owed():
                watcher = self.watchers[user]
                if event_id in watcher.shown:
                    continue
                if any(when > at for when, _ in watcher.resyncs):
                    continue
                missing.append((user, event_id))
        return missing

    async def _settle(self, publisher: Publisher) -> bool:
        with contextlib.suppress(TimeoutError):
            await self._until(lambda: not self._missing(publisher), self.config.settle_s, "settle")
            return True
        return False

    def _score(self, publisher: Publisher) -> None:
        report = self.report
        report.events = len(publisher.published)
        report.owed = sum(len(task.owed()) for _, task in publisher.published.values())
        missing = self._missing(publisher)
        report.silent_gaps = len(missing)
        report.gap_examples = [f"{u}:{e}" for u, e in missing[:20]]
        reasons: Counter[str] = Counter()
        recoveries: list[float] = []
        for watcher in self.watchers.values():
            owed_here = {
                e: at
                for e, (at, task) in publisher.published.items()
                if watcher.user in task.owed()
            }
            report.shown += sum(1 for e in watcher.shown if e in owed_here)
            report.duplicates += sum(n - 1 for n in watcher.shown.values() if n > 1)
            for when, reason in watcher.resyncs:
                reasons[reason] += 1
                if any(at < when and e not in watcher.shown for e, at in owed_here.items()):
                    report.resyncs_needed += 1
            recoveries += watcher.recoveries
        report.resyncs = sum(reasons.values())
        report.resyncs_by_reason = dict(reasons)
        report.recoveries = len(recoveries)
        if recoveries:
            ordered = sorted(recoveries)
            report.recover_s = {
                "p50": round(statistics.median(ordered), 3),
                "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
                "max": round(ordered[-1], 3),
            }


def run(config: ChaosConfig) -> Report:
    return asyncio.run(Chaos(config).run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = ChaosConfig()
    parser.add_argument("--replicas", type=int, default=defaults.replicas)
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--cycles", type=int, default=defaults.cycles)
    parser.add_argument("--burst", type=int, default=defaults.burst)
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds)
    parser.add_argument("--margin-s", type=float, default=defaults.margin_s)
    parser.add_argument(
        "--no-bulk",
        action="store_true",
        help="BULK_SUBSCRIBE=false: one call per event, known tasks acknowledged ahead",
    )
    parser.add_argument("--json", type=Path, default=ARTIFACTS / "chaos.json")
    args = parser.parse_args(argv)
    if args.replicas < 2 or args.cycles < 1:
        parser.error("need at least 2 replicas and 1 cycle")
    config = ChaosConfig(
        replicas=args.replicas,
        users=args.users,
        cycles=args.cycles,
        burst=args.burst,
        concurrency=args.concurrency,
        seed=args.seed,
        max_seconds=args.max_seconds,
        margin_s=args.margin_s,
        bulk=not args.no_bulk,
    )
    report = run(config)
    text = json.dumps(asdict(report) | {"ok": report.ok}, indent=1, sort_keys=True)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(text + "\n", encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
