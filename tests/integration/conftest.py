"""Fixtures that start the dev sidecar and the service as real processes on free ports."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from bench.common import free_port
from realtime_sync.core.auth import mint_token
from tests.integration.harness import SidecarProcess, running_sidecar, wait_until

SECRET = "integration-tests-secret-" + "x" * 24
STARTUP_S = 20.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class ServiceProcess:
    """The service under test: `realtime-sync serve` in its own process."""

    sidecar: SidecarProcess
    ws_port: int
    app_port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "realtime_sync", "serve", *self.extra_args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(
            lambda: self.readyz() == 200,
            STARTUP_S,
            message=lambda: f"service not ready; log:\n{self.log()}",
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def readyz(self) -> int:
        try:
            return http_get(f"{self.base}/readyz", timeout=1.0)[0]
        except (urllib.error.URLError, OSError):
            return 0

    def metrics(self) -> str:
        return http_get(f"{self.base}/metrics")[1].decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample in /metrics (0 if absent)."""
        wanted = name
        if labels:
            wanted += "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if key == wanted:
                total += float(value)
        return total

    def token(self, user: str, ttl_s: int = 3600, **kwargs: Any) -> str:
        return mint_token(user, secret=SECRET, ttl_s=ttl_s, now=time.time(), **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def publish(self, event: dict[str, Any], **kwargs: Any) -> int:
        return self.sidecar.publish(self.env["TOPIC_NAME"], event, **kwargs)

    @asynccontextmanager
    async def client(
        self, user: str, *, subscribe_all: bool = True, token: str | None = None
    ) -> AsyncIterator[Client]:
        headers = {"Authorization": f"Bearer {token or self.token(user)}"}
        async with connect(self.ws_url, additional_headers=headers, max_size=None) as ws:
            client = Client(ws)
            hello = await client.next()
            assert hello["type"] == "connected", hello
            client.connection_id = hello["connection_id"]
            client.hello = hello
            if subscribe_all:
                await client.send({"type": "subscribe", "all": True, "id": "sub-all"})
                reply = await client.next()
                assert reply["type"] == "subscribed", reply
            yield client


class Client:
    """A WebSocket client that decodes frames and can assert on what (not) arrives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.connection_id = ""
        self.hello: dict[str, Any] = {}

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        value = orjson.loads(raw)
        assert isinstance(value, dict)
        return value

    async def updates(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"got {len(found)} of {count} updates: {found}")
            frame = await self.next(remaining)
            if frame["type"] == "task_update":
                found.append(frame)
        return found

    async def silence(self, seconds: float = 0.5) -> list[dict[str, Any]]:
        """Frames that arrive within `seconds` (expected: none)."""
        frames: list[dict[str, Any]] = []
        try:
            while True:
                frames.append(await self.next(seconds))
        except TimeoutError:
            return frames


def service_env(
    sidecar: SidecarProcess, ws_port: int, app_port: int, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "JWT_", "APP_"))}
    env.update(
        {
            "JWT_SECRET": SECRET,
            "WS_PORT": str(ws_port),
            "APP_PORT": str(app_port),
            "DAPR_HTTP_PORT": str(sidecar.http_port),
            "DAPR_GRPC_PORT": str(sidecar.grpc_port),
            "TOPIC_NAME": "task-updates",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "info",
            "SHARES_CACHE_S": "0.2",
            "DAPR_HEALTH_TIMEOUT": "5",
            "AUTH_TIMEOUT_S": "1",
        }
    )
    env.update(extra)
    return env


@contextmanager
def running_stack(
    name: str,
    *,
    service_env_extra: dict[str, str] | None = None,
    sidecar_env: dict[str, str] | None = None,
    sidecar_args: list[str] | None = None,
) -> Iterator[ServiceProcess]:
    """A dev sidecar plus one service instance, torn down afterwards."""
    ARTIFACTS.mkdir(exist_ok=True)
    app_port = free_port()
    ws_port = free_port()
    with running_sidecar(
        app_ports=[app_port], env=sidecar_env, extra_args=sidecar_args or []
    ) as sidecar:
        service = ServiceProcess(
            sidecar=sidecar,
            ws_port=ws_port,
            app_port=app_port,
            env=service_env(sidecar, ws_port, app_port, **(service_env_extra or {})),
            log_path=ARTIFACTS / f"service-{name}.log",
        )
        service.log_path.write_bytes(b"")
        service.start()
        try:
            yield service
        finally:
            if service.proc is not None and service.proc.poll() is None:
                service.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """One sidecar + service shared by a test module (tests use distinct users/tasks)."""
    with running_stack(request.module.__name__.rsplit(".", 1)[-1]) as service:
        yield service


@pytest.fixture(scope="module")
def single_stack(request: pytest.FixtureRequest) -> Iterator[ServiceProcess]:
    """Like `stack`, with BULK_SUBSCRIBE=false: one OnTopicEvent per event."""
    name = request.module.__name__.rsplit(".", 1)[-1] + "-single"
    with running_stack(name, service_env_extra={"BULK_SUBSCRIBE": "false"}) as service:
        yield service
