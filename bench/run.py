"""realtime-sync benchmark: the service through the real Dapr path, against its ceilings.

    .venv/bin/python -m bench.run            # the full suite (make bench), ~6-8 minutes
    .venv/bin/python -m bench.run --quick    # small sizes: a smoke test of the harness

Layout (2+ cores): the service, the bare `websockets` ceiling, the no-op App and the Node
peer each run alone on core 0; this harness, the C load client, the gRPC callers, the
probe and the dev sidecar on core 1. Everything listens on 127.0.0.1 only, every loop
is bounded in count and time, and every child is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from bench import shapes
from bench.common import (
    BENCH_DIR,
    SECRET,
    Cores,
    Proc,
    WsLoad,
    build_wsload,
    busy_share,
    choose_cores,
    cpu_times,
    ensure_peer,
    free_port,
    http_post_json,
    http_status,
    proc_cpu_s,
    python,
    raise_nofile,
    rss_bytes,
    wait_for,
    write_tokens,
)

SUBSCRIBE_ALL = '{"type":"subscribe","all":true}'
# The bulk phase's modes: bulk delivery answered after the writes, and single events
# answered after the writes (the other phases run single events with ACK_AHEAD's default).
BULK_BATCH = 100
BULK_ENV = {"BULK_SUBSCRIBE": "true", "ACK_AHEAD": "0"}
SINGLE_AFTER_ENV = {"BULK_SUBSCRIBE": "false", "ACK_AHEAD": "0"}
TARGETS = {
    "fanout_vs_ceiling": 0.9,
    "fanout_vs_peer": 2.0,
    "ingest_vs_noop": 0.8,
    "probe_p99_ms": 25.0,
    "rss_kib_per_conn": 24.0,
    "storm_total_s": 3.0,
}


@dataclass
class Config:
    sizes: list[int]
    rss_size: int
    warmup: float
    window: float
    probe_connections: int
    probe_rate: float
    probe_seconds: float
    storm_clients: int
    concurrency: int
    profile_dir: Path | None
    peer: bool
    loaded_size: int
    loaded_rate: float


class Connected(NamedTuple):
    svc: Proc
    load: WsLoad
    ws_port: int
    app_port: int
    n: int


class Bench:
    def __init__(self, cfg: Config, cores: Cores, tmp: Path) -> None:
        self.cfg = cfg
        self.cores = cores
        self.tmp = tmp
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.sidecar: Proc | None = None

    # -- the stack ---------------------------------------------------------------------

    @contextlib.contextmanager
    def dev_sidecar(self) -> Iterator[Proc]:
        # It needs an app port: give it one nobody listens on, so it never delivers;
        # events enter only through the callers' direct OnTopicEvent calls.
        argv = python(
            "realtime_sync.devsidecar",
            "--grpc-port",
            str(self.grpc_port),
            "--http-port",
            str(self.http_port),
            "--app-port",
            str(free_port()),
            "--log-level",
            "warning",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "APP_"))}
        proc = Proc("sidecar", argv, self.tmp, env=env).start()
        try:
            # /v1.0/healthz waits for an app to subscribe (as daprd's does) and none will:
            # the outbound check answers once the APIs are up.
            outbound = f"http://127.0.0.1:{self.http_port}/v1.0/healthz/outbound"
            wait_for(lambda: http_status(outbound) == 204, 20, "dev sidecar APIs up")
            self.sidecar = proc
            yield proc
        finally:
            proc.stop()

    def seed(self, tasks: list[shapes.Task]) -> None:
        items = shapes.seed_items(tasks)
        url = f"http://127.0.0.1:{self.http_port}/v1.0/state/statestore"
        for i in range(0, len(items), 500):
            http_post_json(url, items[i : i + 500])

    @contextlib.contextmanager
    def service(
        self, name: str, extra_env: dict[str, str] | None = None
    ) -> Iterator[tuple[Proc, int, int]]:
        ws_port, app_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "JWT_", "APP_"))}
        env.update(
            JWT_SECRET=SECRET,
            WS_PORT=str(ws_port),
            WS_HOST="127.0.0.1",
            APP_PORT=str(app_port),
            DAPR_HTTP_PORT=str(self.http_port),
            DAPR_GRPC_PORT=str(self.grpc_port),
            LOG_FORMAT="json",
        )
        env.update(extra_env or {})
        argv = [*self.cores.prefix(self.cores.server), *python("realtime_sync", "serve")]
        proc = Proc(f"service-{name}", argv, self.tmp, env=env).start()
        try:
            base = f"http://127.0.0.1:{ws_port}"
            wait_for(lambda: http_status(f"{base}/healthz") == 200, 30, "service /healthz")
            list_subscriptions(app_port)  # what daprd does first; /readyz waits for it
            # /readyz also wants the sidecar's /v1.0/healthz, which waits for an app that the
            # bench's sidecar never delivers to: wait for the subscription alone.
            wait_for(lambda: _subscribed(f"{base}/readyz"), 30, "service subscribed")
            yield proc, ws_port, app_port
        finally:
            proc.stop(timeout=30)

    def server_proc(self, name: str, argv: list[str], port: int) -> Proc:
        proc = Proc(name, [*self.cores.prefix(self.cores.server), *argv], self.tmp, stdin=True)
        proc.start()
        wait_for(lambda: port_open(port), 20, f"{name} listening")
        return proc

    def load(self, port: int, users: list[str], name: str, **kw: Any) -> WsLoad:
        tokens = write_tokens(self.tmp / f"tokens-{name}.txt", users)
        return WsLoad.launch(
            port=port,
            tokens=tokens,
            count=len(users),
            log_dir=self.tmp,
            cores=self.cores,
            name=f"wsload-{name}",
            **kw,
        )

    # -- measuring ---------------------------------------------------------------------

    def measure(
        self, load: WsLoad, server: Proc, seconds: float, profile: str | None = None
    ) -> dict[str, Any]:
        """Frames/s received by the load client over `seconds`, with CPU shares."""
        spy = self._profile(server, seconds, profile)
        c0, p0, s0 = cpu_times(), proc_cpu_s(server.pid), load.at(time.monotonic())
        time.sleep(seconds)
        c1, p1 = cpu_times(), proc_cpu_s(server.pid)
        s1 = load.at(time.monotonic())
        if spy is not None:
            spy.wait(seconds + 30)
        elapsed = s1.t - s0.t
        return {
            "frames_per_s": round((s1.messages - s0.messages) / elapsed),
            "mbytes_per_s": round((s1.bytes - s0.bytes) / elapsed / 1e6, 1),
            "server_cpu_share": round((p1 - p0) / elapsed, 3),
            "server_core_busy": busy_share(c0, c1, self.cores.server),
            "client_core_busy": busy_share(c0, c1, self.cores.client),
            "connections_open": s1.open,
            "closed_4008": s1.closed_4008,
            "closed_total": s1.closed,
        }

    def _profile(self, server: Proc, seconds: float, name: str | None) -> Any:
        spy = shutil.which("py-spy") or shutil.which(
            "py-spy", path=str(Path(sys.executable).parent)
        )
        if name is None or self.cfg.profile_dir is None or spy is None:
            return None
        out = self.cfg.profile_dir / f"{name}.txt"
        argv = [
            spy,
            "record",
            "--pid",
            str(server.pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--nonblocking",
            "--threads",
            "--output",
            str(out),
        ]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def callers(self, app_port: int, *extra: str, duration: float) -> Proc:
        argv = python(
            "bench.callers",
            "--port",
            str(app_port),
            "--concurrency",
            str(self.cfg.concurrency),
            "--warmup",
            str(self.cfg.warmup),
            "--duration",
            str(duration),
            *extra,
        )
        return Proc("callers", argv, self.tmp, stdout_pipe=True).start()

    # -- the measurements --------------------------------------------------------------

    def fanout(self) -> dict[str, Any]:
        out: dict[str, Any] = {"service": {}, "ceiling": {}, "peer": {}, "rss": {}}
        peer_js = ensure_peer() if self.cfg.peer else None
        for n in self.cfg.sizes:
            users = [shapes.user(i // shapes.CONNS_PER_USER) for i in range(n)]
            self.seed(shapes.team_tasks(n))
            with self.service(f"fanout-{n}") as (svc, ws_port, app_port):
                rss0 = rss_bytes(svc.pid)
                load = self.load(ws_port, users, f"svc-{n}", subscribe=SUBSCRIBE_ALL)
                try:
                    load.wait_open(n, 2 * n, timeout=120)
                    if n == self.cfg.rss_size:
                        out["rss"]["service"] = self._rss(svc, rss0, n)
                    callers = self.callers(
                        app_port,
                        "--shape",
                        "team",
                        "--connections",
                        str(n),
                        "--run-id",
                        f"fan{n}",
                        duration=self.cfg.window + 2,
                    )
                    try:
                        time.sleep(self.cfg.warmup + 1.0)
                        m = self.measure(load, svc, self.cfg.window, profile=f"fanout-{n}")
                        m["callers"] = read_json(callers, self.cfg.window + 30)
                    finally:
                        callers.stop()
                finally:
                    load.stop()
            out["service"][n] = m
            print(f"  service  {n:>6} conns: {m['frames_per_s']:>8} frames/s", flush=True)
            out["ceiling"][n] = self._ref_server(
                "ceiling", python("bench.ceiling", "--port"), n, users, rss=out["rss"]
            )
            if peer_js is not None:
                out["peer"][n] = self._ref_server(
                    "peer", ["node", str(peer_js), "--port"], n, users, rss=None
                )
        return out

    def _rss(self, proc: Proc, rss0: int, n: int) -> dict[str, Any]:
        time.sleep(3.0)  # idle: connected, authenticated, subscribed; nothing sent
        rss1 = rss_bytes(proc.pid)
        return {
            "connections": n,
            "rss_before_mib": round(rss0 / 2**20, 1),
            "rss_after_mib": round(rss1 / 2**20, 1),
            "kib_per_conn": round((rss1 - rss0) / n / 1024, 1),
        }

    def _ref_server(
        self, kind: str, argv: list[str], n: int, users: list[str], rss: dict[str, Any] | None
    ) -> dict[str, Any]:
        port = free_port()
        proc = self.server_proc(f"{kind}-{n}", [*argv, str(port)], port)
        try:
            rss0 = rss_bytes(proc.pid)
            load = self.load(port, users, f"{kind}-{n}", subscribe=SUBSCRIBE_ALL)
            try:
                load.wait_open(n, 0, timeout=120)
                if rss is not None and n == self.cfg.rss_size:
                    rss["bare_websockets"] = self._rss(proc, rss0, n)
                proc.send("start")
                time.sleep(self.cfg.warmup)
                m = self.measure(load, proc, self.cfg.window)
                proc.send("stop")
            finally:
                load.stop()
        finally:
            proc.stop()
        print(f"  {kind:<8} {n:>6} conns: {m['frames_per_s']:>8} frames/s", flush=True)
        return m

    def personal(self) -> dict[str, Any]:
        """Probe latency at probe_rate, then ingest (closed loop) vs the no-op App."""
        cfg = self.cfg
        n = cfg.probe_connections
        probes = 4
        self.seed(shapes.personal_tasks(n) + shapes.probe_tasks(probes))
        users = [shapes.user(i // shapes.CONNS_PER_USER) for i in range(n)]
        out: dict[str, Any] = {}
        with self.connected("personal", users, timeout=60) as run:
            out["probe"] = self._probe(run, probes=probes, shape="personal", rate=cfg.probe_rate)
            print(f"  probe: {out['probe']['latency']}", flush=True)
            callers = self.callers(
                run.app_port,
                "--shape",
                "personal",
                "--connections",
                str(n),
                "--run-id",
                "ingest",
                duration=cfg.window,
            )
            try:
                ingest = self._callers_window(callers, run.svc, run.load, "ingest-service")
            finally:
                callers.stop()
            out["ingest_service"] = ingest
        port = free_port()
        noop = self.server_proc("noop-app", python("bench.noop_app", "--port", str(port)), port)
        try:
            callers = self.callers(
                port,
                "--shape",
                "personal",
                "--connections",
                str(n),
                "--run-id",
                "noop",
                duration=cfg.window,
            )
            try:
                out["ingest_noop"] = self._callers_window(callers, noop, None, "ingest-noop")
            finally:
                callers.stop()
        finally:
            noop.stop()
        print(
            f"  ingest: service {out['ingest_service']['accepted_per_s']:.0f}/s, "
            f"no-op App {out['ingest_noop']['accepted_per_s']:.0f}/s",
            flush=True,
        )
        return out

    def _callers_window(
        self, callers: Proc, server: Proc, load: WsLoad | None, profile: str
    ) -> dict[str, Any]:
        time.sleep(self.cfg.warmup + 1.0)
        spy = self._profile(server, self.cfg.window - 1.5, profile)
        c0, p0, t0 = cpu_times(), proc_cpu_s(server.pid), time.monotonic()
        s0 = load.at(t0) if load else None
        time.sleep(self.cfg.window - 1.5)
        c1, p1, t1 = cpu_times(), proc_cpu_s(server.pid), time.monotonic()
        s1 = load.at(t1) if load else None
        result = read_json(callers, self.cfg.window + 30)
        if spy is not None:
            spy.wait(self.cfg.window + 30)
        result["server_cpu_share"] = round((p1 - p0) / (t1 - t0), 3)
        result["server_core_busy"] = busy_share(c0, c1, self.cores.server)
        result["client_core_busy"] = busy_share(c0, c1, self.cores.client)
        if s0 is not None and s1 is not None:
            result["frames_per_s"] = round((s1.messages - s0.messages) / (s1.t - s0.t))
            result["closed_4008"] = s1.closed_4008
        return result

    def loaded(self) -> dict[str, Any]:
        """Probe latency under a heavy but sustainable team-board load (open loop: the
        callers keep to the rate, so queueing shows in the latency, not in the callers)."""
        cfg = self.cfg
        n, probes = cfg.loaded_size, 4
        self.seed(shapes.team_tasks(n) + shapes.probe_tasks(probes))
        users = [shapes.user(i // shapes.CONNS_PER_USER) for i in range(n)]
        with self.connected("loaded", users, timeout=120) as run:
            out = self._probe(run, probes=probes, shape="team", rate=cfg.loaded_rate)
        print(f"  loaded probe: {out['latency']}, {out['bulk_frames_per_s']} frames/s", flush=True)
        return out

    @contextlib.contextmanager
    def connected(
        self, name: str, users: list[str], timeout: float, env: dict[str, str] | None = None
    ) -> Iterator[Connected]:
        """The service with one client per entry of `users`, each subscribed to all."""
        with self.service(name, env) as (svc, ws_port, app_port):
            load = self.load(ws_port, users, name, subscribe=SUBSCRIBE_ALL)
            try:
                load.wait_open(len(users), 2 * len(users), timeout=timeout)
                yield Connected(svc, load, ws_port, app_port, len(users))
            finally:
                load.stop()

    def _probe(
        self, run: Connected, *, probes: int, shape: str, rate: float, extra: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        cfg = self.cfg
        svc, load, ws_port, app_port, n = run
        tokens = write_tokens(
            self.tmp / "tokens-probe.txt",
            [shapes.probe_user(k) for k in range(probes) for _ in range(2)],
        )
        probe = Proc(
            "probe",
            python(
                "bench.probe",
                "--url",
                f"ws://127.0.0.1:{ws_port}/ws",
                "--tokens",
                str(tokens),
                "--seconds",
                str(cfg.probe_seconds + 60),
            ),
            self.tmp,
            stdin=True,
            stdout_pipe=True,
        ).start()
        try:
            assert probe.popen.stdout is not None
            line = probe.popen.stdout.readline().decode().strip()
            if line != "READY":
                raise RuntimeError(f"probe did not connect: {line!r} {probe.log_tail()}")
            callers = self.callers(
                app_port,
                "--shape",
                shape,
                "--connections",
                str(n),
                "--rate",
                str(rate),
                "--probes",
                str(probes),
                "--probe-every",
                "10",
                "--run-id",
                "probe",
                *extra,
                duration=cfg.probe_seconds,
            )
            try:
                time.sleep(cfg.warmup + 0.5)
                probe.send("record")
                c0, p0, t0 = cpu_times(), proc_cpu_s(svc.pid), time.monotonic()
                s0 = load.at(t0)
                result = read_json(callers, cfg.probe_seconds + 60)
                c1, p1, t1 = cpu_times(), proc_cpu_s(svc.pid), time.monotonic()
                s1 = load.at(t1)
            finally:
                callers.stop()
            probe.send("stop")
            latency = json.loads(probe.popen.stdout.readline().decode() or "{}")
        finally:
            probe.stop()
        return {
            "connections": n + 2 * probes,
            "rate_target": rate,
            "latency": latency,
            "callers": result,
            "bulk_frames_per_s": round((s1.messages - s0.messages) / (s1.t - s0.t)),
            "server_cpu_share": round((p1 - p0) / (t1 - t0), 3),
            "client_core_busy": busy_share(c0, c1, self.cores.client),
            "closed_4008": s1.closed_4008,
        }

    # -- bulk delivery (issue #12) -------------------------------------------------------

    def bulk(self, ceilings: dict[Any, Any]) -> dict[str, Any]:
        """Bulk mode side by side with its references, in one run: ingest (batches of
        BULK_BATCH from 16 callers) against a no-op App fed single events and fed the same
        batches; fan-out with every answer after the writes (ACK_AHEAD=0) in bulk and in
        single-event mode against websockets.broadcast(); probe latency with bulk on."""
        cfg = self.cfg
        batch = ("--batch", str(BULK_BATCH))
        out: dict[str, Any] = {"batch": BULK_BATCH, "ingest": {}, "fanout": {}}
        n = cfg.probe_connections
        self.seed(shapes.personal_tasks(n) + shapes.probe_tasks(4))
        users = [shapes.user(i // shapes.CONNS_PER_USER) for i in range(n)]
        personal = ("--shape", "personal", "--connections", str(n))
        with self.connected("bulk-ingest", users, timeout=60, env=BULK_ENV) as run:
            callers = self.callers(
                run.app_port, *personal, "--run-id", "bulk-in", *batch, duration=cfg.window
            )
            try:
                ingest = self._callers_window(callers, run.svc, run.load, "ingest-bulk")
            finally:
                callers.stop()
            out["ingest"]["service_bulk"] = ingest
        for name, extra in (("noop_single", ()), ("noop_bulk", batch)):
            port = free_port()
            noop = self.server_proc(name, python("bench.noop_app", "--port", str(port)), port)
            try:
                callers = self.callers(
                    port, *personal, "--run-id", name, *extra, duration=cfg.window
                )
                try:
                    out["ingest"][name] = self._callers_window(callers, noop, None, name)
                finally:
                    callers.stop()
            finally:
                noop.stop()
        got = {k: round(v["accepted_per_s"]) for k, v in out["ingest"].items()}
        print(f"  bulk ingest events/s: {got}", flush=True)
        for size in cfg.sizes:
            fan_users = [shapes.user(i // shapes.CONNS_PER_USER) for i in range(size)]
            self.seed(shapes.team_tasks(size))
            point: dict[str, Any] = {}
            for mode, env, extra in (
                ("bulk", BULK_ENV, batch),
                ("single_after", SINGLE_AFTER_ENV, ()),
            ):
                point[mode] = self._fanout_point(size, fan_users, f"fan-{mode}-{size}", env, extra)
            ceiling = ceilings.get(size) or ceilings.get(str(size))
            if ceiling is None:
                ceiling = self._ref_server(
                    "ceiling", python("bench.ceiling", "--port"), size, fan_users, rss=None
                )
            point["ceiling"] = ceiling
            out["fanout"][size] = point
            print(
                f"  bulk fan-out {size:>6} conns: bulk {point['bulk']['frames_per_s']}, "
                f"single ACK_AHEAD=0 {point['single_after']['frames_per_s']}, "
                f"broadcast {ceiling['frames_per_s']} frames/s",
                flush=True,
            )
        with self.connected("bulk-probe", users, timeout=60, env=BULK_ENV) as run:
            out["probe"] = self._probe(
                run, probes=4, shape="personal", rate=cfg.probe_rate, extra=batch
            )
        print(f"  bulk probe: {out['probe']['latency']}", flush=True)
        size = cfg.loaded_size
        self.seed(shapes.team_tasks(size) + shapes.probe_tasks(4))
        loaded_users = [shapes.user(i // shapes.CONNS_PER_USER) for i in range(size)]
        with self.connected("bulk-loaded", loaded_users, timeout=120, env=BULK_ENV) as run:
            out["loaded"] = self._probe(
                run, probes=4, shape="team", rate=cfg.loaded_rate, extra=batch
            )
        print(f"  bulk loaded probe: {out['loaded']['latency']}", flush=True)
        return out

    def _fanout_point(
        self, n: int, users: list[str], name: str, env: dict[str, str], extra: tuple[str, ...]
    ) -> dict[str, Any]:
        """Frames/s the service writes to `n` team-board connections, callers closed loop."""
        with self.service(name, env) as (svc, ws_port, app_port):
            load = self.load(ws_port, users, name, subscribe=SUBSCRIBE_ALL)
            try:
                load.wait_open(n, 2 * n, timeout=120)
                callers = self.callers(
                    app_port,
                    "--shape",
                    "team",
                    "--connections",
                    str(n),
                    "--run-id",
                    name,
                    *extra,
                    duration=self.cfg.window + 2,
                )
                try:
                    time.sleep(self.cfg.warmup + 1.0)
                    m = self.measure(load, svc, self.cfg.window, profile=name)
                    m["callers"] = read_json(callers, self.cfg.window + 30)
                finally:
                    callers.stop()
            finally:
                load.stop()
        return m

    def storm(self) -> dict[str, Any]:
        n = self.cfg.storm_clients
        users = [shapes.user(i // shapes.CONNS_PER_USER) for i in range(n)]
        with self.service("storm") as (_svc, ws_port, _app_port):
            load = self.load(ws_port, users, "storm", storm=True)
            try:
                wait_for(lambda: load.storm is not None, 60, "connect storm to finish")
            finally:
                load.stop()
        s = load.storm or []
        result = {
            "clients": n,
            "connected": int(s[0]),
            "failed": int(s[1]),
            "total_s": round(s[2] / 1e3, 3),
            "to_first_frame_ms": {"p50": s[3], "p99": s[4], "max": s[5]},
            "handshake_101_ms": {"p50": s[6], "p99": s[7]},
        }
        print(f"  storm: {result}", flush=True)
        return result


def list_subscriptions(app_port: int) -> None:
    import grpc
    from dapr.proto.runtime.v1 import appcallback_pb2_grpc

    from realtime_sync.devsidecar.wellknown import Empty

    with grpc.insecure_channel(f"127.0.0.1:{app_port}") as channel:
        stub = appcallback_pb2_grpc.AppCallbackStub(channel)
        stub.ListTopicSubscriptions(Empty(), timeout=10)


def _subscribed(readyz: str) -> bool:
    """The service's /readyz says it is subscribed (whatever it says of the sidecar)."""
    try:
        with urllib.request.urlopen(readyz, timeout=1.0) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except OSError:
        return False
    return bool(json.loads(body or b"{}").get("subscribed"))


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def read_json(proc: Proc, timeout: float) -> dict[str, Any]:
    """The last JSON line a child prints (it prints START first)."""
    assert proc.popen.stdout is not None
    deadline = time.monotonic() + timeout
    for raw in proc.popen.stdout:
        line = raw.decode().strip()
        if line.startswith("{"):
            value: dict[str, Any] = json.loads(line)
            return value
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"{proc.name} printed no result: {proc.log_tail()}")


# -- report --------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def summarise(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    fan = res.get("fanout", {})
    for n, m in fan.get("service", {}).items():
        ceiling = fan["ceiling"].get(n, {}).get("frames_per_s")
        peer = fan["peer"].get(n, {}).get("frames_per_s")
        ours = m["frames_per_s"]
        gated = int(n) <= 5000
        rows.append(
            row(
                f"fan-out frames/s @{n} vs websockets.broadcast",
                ours,
                ceiling,
                ratio(ours, ceiling),
                ">= 0.9x" if gated else "(report)",
                (ratio(ours, ceiling) or 0) >= 0.9 if gated else None,
                m["client_core_busy"],
            )
        )
        if peer:
            rows.append(
                row(
                    f"fan-out frames/s @{n} vs Node ws peer",
                    ours,
                    peer,
                    ratio(ours, peer),
                    ">= 2x",
                    (ratio(ours, peer) or 0) >= 2.0,
                    fan["peer"][n]["client_core_busy"],
                )
            )
    pers = res.get("personal", {})
    if pers:
        ours, ref = pers["ingest_service"]["accepted_per_s"], pers["ingest_noop"]["accepted_per_s"]
        rows.append(
            row(
                "ingest events/s vs no-op dapr App",
                round(ours),
                round(ref),
                ratio(ours, ref),
                ">= 0.8x",
                (ratio(ours, ref) or 0) >= 0.8,
                pers["ingest_service"]["client_core_busy"],
            )
        )
        lat = pers["probe"]["latency"]
        rows.append(
            row(
                f"probe latency ms @{pers['probe']['connections']} conns, "
                f"{pers['probe']['rate_target']:.0f} ev/s (p50/p99/max)",
                f"{lat.get('p50_ms')}/{lat.get('p99_ms')}/{lat.get('max_ms')}",
                None,
                None,
                "p99 <= 25",
                (lat.get("p99_ms") or 1e9) <= 25.0,
                pers["probe"]["client_core_busy"],
            )
        )
    rss = fan.get("rss", {})
    if "service" in rss:
        ours, bare = (
            rss["service"]["kib_per_conn"],
            rss.get("bare_websockets", {}).get("kib_per_conn"),
        )
        rows.append(
            row(
                f"RSS KiB per idle authenticated conn @{rss['service']['connections']}",
                ours,
                bare,
                ratio(ours, bare),
                "<= 24 KiB",
                ours <= 24.0,
                None,
            )
        )
    ld = res.get("loaded")
    if ld:
        lat = ld["latency"]
        rows.append(
            row(
                f"probe latency ms @{ld['connections']} conns, team board at "
                f"{ld['rate_target']:.0f} ev/s = {ld['bulk_frames_per_s']} frames/s (p50/p99/max)",
                f"{lat.get('p50_ms')}/{lat.get('p99_ms')}/{lat.get('max_ms')}",
                None,
                None,
                "(report)",
                None,
                ld["client_core_busy"],
            )
        )
    st = res.get("storm")
    if st:
        rows.append(
            row(
                f"connect storm: {st['clients']} JWT clients, total s (first-frame p99 ms)",
                f"{st['total_s']} ({st['to_first_frame_ms']['p99']})",
                None,
                None,
                "<= 3 s",
                st["total_s"] <= 3.0 and st["failed"] == 0,
                None,
            )
        )
    rows.extend(_bulk_rows(res.get("bulk")))
    return rows


def _bulk_rows(bulk: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not bulk:
        return []
    rows: list[dict[str, Any]] = []
    ingest = bulk["ingest"]
    ours = ingest["service_bulk"]["accepted_per_s"]
    busy = ingest["service_bulk"]["client_core_busy"]
    for ref, label, target in (
        ("noop_single", "no-op App fed one event per call", 5.0),
        ("noop_bulk", f"no-op App fed the same batches of {bulk['batch']}", 0.8),
    ):
        theirs = ingest[ref]["accepted_per_s"]
        r = ratio(ours, theirs)
        rows.append(
            row(
                f"bulk ingest events/s vs {label}",
                round(ours),
                round(theirs),
                r,
                f">= {target:g}x",
                (r or 0) >= target,
                busy,
            )
        )
    for n, point in bulk["fanout"].items():
        ours, ceiling = point["bulk"]["frames_per_s"], point["ceiling"]["frames_per_s"]
        r = ratio(ours, ceiling)
        rows.append(
            row(
                f"bulk fan-out frames/s @{n}, ACK_AHEAD=0, vs websockets.broadcast",
                ours,
                ceiling,
                r,
                ">= 1.5x",
                (r or 0) >= 1.5,
                point["bulk"]["client_core_busy"],
            )
        )
    for key, goal in (("probe", "p99 <= 25"), ("loaded", "(report)")):
        probe = bulk.get(key)
        if not probe:
            continue
        lat = probe["latency"]
        rows.append(
            row(
                f"bulk probe latency ms @{probe['connections']} conns, "
                f"{probe['rate_target']:.0f} ev/s (p50/p99/max)",
                f"{lat.get('p50_ms')}/{lat.get('p99_ms')}/{lat.get('max_ms')}",
                None,
                None,
                goal,
                (lat.get("p99_ms") or 1e9) <= 25.0 if key == "probe" else None,
                probe["client_core_busy"],
            )
        )
    return rows


def matrix(res: dict[str, Any]) -> str:
    """Single events answered ahead (ACK_AHEAD default), single events answered after the
    writes (ACK_AHEAD=0), bulk (answered after the writes), side by side."""
    bulk = res.get("bulk")
    if not bulk:
        return ""
    fan = res.get("fanout", {})
    pers = res.get("personal", {})
    head = "| measurement | single, ack ahead | single, ACK_AHEAD=0 | bulk | broadcast() |"
    lines = [head, "|---|---:|---:|---:|---:|"]
    for n, point in bulk["fanout"].items():
        ahead = fan.get("service", {}).get(n, {}).get("frames_per_s", "-")
        lines.append(
            f"| fan-out frames/s @{n} | {ahead} | {point['single_after']['frames_per_s']} | "
            f"{point['bulk']['frames_per_s']} | {point['ceiling']['frames_per_s']} |"
        )
    ingest = pers.get("ingest_service", {}).get("accepted_per_s")
    lines.append(
        f"| ingest events/s (no-op App: {round(bulk['ingest']['noop_single']['accepted_per_s'])}"
        f" single, {round(bulk['ingest']['noop_bulk']['accepted_per_s'])} batched) | "
        f"{round(ingest) if ingest else '-'} | - | "
        f"{round(bulk['ingest']['service_bulk']['accepted_per_s'])} | - |"
    )
    for key, single in (("probe", pers.get("probe")), ("loaded", res.get("loaded"))):
        probe = bulk.get(key)
        if not probe:
            continue
        p99 = (single or {}).get("latency", {}).get("p99_ms", "-")
        lines.append(
            f"| probe p99 ms @{probe['connections']} conns, {probe['rate_target']:.0f} ev/s | "
            f"{p99} | - | {probe['latency'].get('p99_ms')} | - |"
        )
    return "\n".join(lines)


def row(  # noqa: PLR0917 - one positional argument per table column
    name: str, ours: Any, ref: Any, r: Any, target: str, ok: bool | None, client_busy: float | None
) -> dict[str, Any]:
    return {
        "measurement": name,
        "ours": ours,
        "reference": ref,
        "ratio": r,
        "target": target,
        "pass": ok,
        "client_core_busy": client_busy,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = "| measurement | ours | reference | ratio | target | pass | client core busy |"
    lines = [head, "|---|---:|---:|---:|---|---|---:|"]
    for r in rows:
        ok = {True: "yes", False: "**no**", None: "-"}[r["pass"]]
        busy = "-" if r["client_core_busy"] is None else f"{r['client_core_busy']:.0%}"
        lines.append(
            f"| {r['measurement']} | {r['ours']} | {r['reference'] or '-'} | "
            f"{r['ratio'] or '-'} | {r['target']} | {ok} | {busy} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    node = ""
    if shutil.which("node"):
        node = subprocess.run(
            ["node", "--version"], check=False, capture_output=True, text=True
        ).stdout.strip()
    mem = Path("/proc/meminfo").read_text().split()[1] if Path("/proc/meminfo").exists() else "0"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "websockets": version("websockets"),
        "grpcio": version("grpcio"),
        "dapr_sdk": version("dapr"),
        "orjson": version("orjson"),
        "node": node,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "ws_npm": json.loads((BENCH_DIR / "peer" / "package.json").read_text())["dependencies"][
            "ws"
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and short windows")
    p.add_argument("--sizes", default="", help="fan-out sizes, e.g. 1000,5000,10000")
    p.add_argument("--only", default="fanout,personal,loaded,storm,bulk", help="phases to run")
    p.add_argument("--window", type=float, default=0.0, help="seconds measured per point")
    p.add_argument("--no-peer", action="store_true", help="skip the Node peer")
    p.add_argument("--loaded-size", type=int, default=0, help="connections of the loaded probe")
    p.add_argument(
        "--loaded-rate", type=float, default=400.0, help="events/s of the loaded probe (team board)"
    )
    p.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles to DIR")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest.json")
    args = p.parse_args(argv)
    quick = args.quick
    sizes = [int(x) for x in args.sizes.split(",") if x] or (
        [200, 600] if quick else [1000, 5000, 10000]
    )
    cfg = Config(
        sizes=sizes,
        rss_size=max(sizes),
        warmup=1.0 if quick else 2.0,
        window=args.window or (3.0 if quick else 8.0),
        probe_connections=200 if quick else 1000,
        probe_rate=100 if quick else 500,
        probe_seconds=6.0 if quick else 20.0,
        storm_clients=300 if quick else 3000,
        concurrency=16,
        profile_dir=args.profile,
        peer=not args.no_peer,
        loaded_size=args.loaded_size or (600 if quick else 5000),
        loaded_rate=args.loaded_rate,
    )
    if cfg.profile_dir is not None:
        cfg.profile_dir.mkdir(parents=True, exist_ok=True)
    cores = choose_cores()
    nofile = raise_nofile()
    if nofile < max(sizes) + 1000:
        print(f"RLIMIT_NOFILE is {nofile}: too low for {max(sizes)} connections", file=sys.stderr)
        return 2
    build_wsload()
    started = time.monotonic()
    results: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "layout": {"server_core": cores.server, "client_core": cores.client},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()},
    }
    phases = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="rs-bench-") as tmpdir:
        bench = Bench(cfg, cores, Path(tmpdir))
        try:
            with bench.dev_sidecar():
                if "fanout" in phases:
                    print("fan-out (team board):", flush=True)
                    results["fanout"] = bench.fanout()
                if "personal" in phases:
                    print("probe and ingest (personal):", flush=True)
                    results["personal"] = bench.personal()
                if "loaded" in phases:
                    print("probe under load (team board):", flush=True)
                    results["loaded"] = bench.loaded()
                if "storm" in phases:
                    print("connect storm:", flush=True)
                    results["storm"] = bench.storm()
                if "bulk" in phases:
                    print("bulk delivery:", flush=True)
                    ceilings = results.get("fanout", {}).get("ceiling", {})
                    results["bulk"] = bench.bulk(ceilings)
        except Exception:
            logs = sorted(Path(tmpdir).glob("*.log"))
            for log in logs[-4:]:
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            raise
    results["duration_s"] = round(time.monotonic() - started, 1)
    rows = summarise(json.loads(json.dumps(results)))
    results["summary"] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    results["matrix"] = matrix(results)
    print()
    print(table(rows))
    if results["matrix"]:
        print()
        print(results["matrix"])
    print(f"\nJSON: {args.out} ({results['duration_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
