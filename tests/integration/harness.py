"""Integration-test harness: free ports, polling, and the dev sidecar as a real process.

Only the standard library is used (``urllib`` for HTTP), so any test can drive a sidecar::

    with running_sidecar(app_ports=[free_port()]) as sidecar:
        assert sidecar.publish("orders", {"id": 1}) == 204
        wait_until(lambda: sidecar.stats()["topics"]["orders"]["success"] == 1, 5)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bench.common import free_port  # one implementation, tests and bench

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_RESOURCES = PROJECT_ROOT / "components"
RESOURCES_ROOT = PROJECT_ROOT / "test-artifacts" / "resources"
STARTUP_TIMEOUT_S = 10.0
# Inherited settings that would silently change the sidecar under test.
_SCRUBBED_ENV = ("DAPR_API_TOKEN", "APP_API_TOKEN", "DAPR_GRPC_PORT", "DAPR_HTTP_PORT", "APP_PORT")
# Loopback only: never route test traffic through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

T = TypeVar("T")


async def until(predicate: Any, timeout: float = 8.0, what: str = "condition") -> None:
    """Await until ``predicate()`` is truthy, polling every 20 ms without blocking the loop;
    fail after ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout:g}s")
        await asyncio.sleep(0.02)


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 5.0,
    interval: float = 0.05,
    *,
    message: str | Callable[[], str] = "",
) -> T:
    """Poll ``predicate`` until it returns a truthy value, and return that value.

    An exception from the predicate counts as "not yet". On timeout, fail with ``message``
    (a string, or a callable evaluated then) plus the last value or exception seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - a failing probe means "not yet"
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            name = getattr(predicate, "__name__", "condition")
            raise AssertionError(f"{what or name} not met within {timeout:g}s (last: {last!r})")
        time.sleep(interval)


@dataclass
class HttpReply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class SidecarProcess:
    """A running ``python -m realtime_sync.devsidecar`` and a small client for it."""

    grpc_port: int
    http_port: int
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] = field(init=False)
    _final_logs: str | None = field(default=None, init=False, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def api_token(self) -> str | None:
        return self.env.get("DAPR_API_TOKEN") or None

    # --- process lifecycle ------------------------------------------------------------

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start the process and wait until its APIs answer (``/v1.0/healthz/outbound``:
        ``/v1.0/healthz`` waits for the app, as daprd's does)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "realtime_sync.devsidecar", *self.args],
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(
            self._healthy,
            timeout,
            message=lambda: (
                f"dev sidecar not healthy; exit code {self.proc.poll()}; log:\n" + self.logs()
            ),
        )

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dev sidecar exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            return self.request("GET", "/v1.0/healthz/outbound", timeout=0.5).status == 204
        except OSError:
            return False

    def logs(self) -> str:
        """Everything the process logged so far (all starts; kept after the block ends)."""
        if self._final_logs is not None:
            return self._final_logs
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def close(self) -> None:
        """Terminate for good, keeping the logs readable after the temporary files go."""
        self.terminate()
        self._final_logs = self.logs()

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no journal compaction."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Start again on the same ports with the same arguments (after kill/terminate)."""
        if self.proc.poll() is None:
            self.terminate()
        self.start()

    # --- HTTP client ------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> HttpReply:
        sent = dict(headers or {})
        if self.api_token and "dapr-api-token" not in {k.lower() for k in sent}:
            sent["dapr-api-token"] = self.api_token
        request = urllib.request.Request(
            self.base_url + path, data=body, method=method, headers=sent
        )
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return HttpReply(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as exc:
            return HttpReply(exc.code, exc.read(), dict(exc.headers))

    def invoke(
        self, method: str, body: bytes | Mapping[str, Any], *, app_id: str = "realtime-sync"
    ) -> HttpReply:
        """Service invocation of the app's `method` through the HTTP API (JSON body)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.request(
            "POST",
            f"/v1.0/invoke/{app_id}/method/{method}",
            data,
            headers={"Content-Type": "application/json"},
        )

    def publish(
        self,
        topic: str,
        data: bytes | Mapping[str, Any] | list[Any],
        *,
        content_type: str = "application/json",
        pubsub: str = "pubsub",
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> int:
        """Publish through the HTTP API; returns the status (204 on success).

        ``content_type=""`` sends an empty Content-Type header (daprd: ``text/plain``).
        """
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        query = urllib.parse.urlencode({f"metadata.{k}": v for k, v in (metadata or {}).items()})
        path = f"/v1.0/publish/{urllib.parse.quote(pubsub)}/{urllib.parse.quote(topic)}"
        sent = {"Content-Type": content_type, **(headers or {})}
        return self.request(
            "POST", path + (f"?{query}" if query else ""), body, headers=sent
        ).status

    def stats(self) -> dict[str, Any]:
        reply = self.request("GET", "/dev/stats")
        assert reply.status == 200, reply
        value = reply.json()
        assert isinstance(value, dict)
        return value

    def topic_counters(self, topic: str) -> dict[str, int]:
        """``stats()["topics"][topic]``, or {} before anything happened on the topic."""
        counters = self.stats()["topics"].get(topic, {})
        assert isinstance(counters, dict)
        return counters

    def topic_messages(self, topic: str) -> list[dict[str, Any]]:
        reply = self.request("GET", f"/dev/topics/{urllib.parse.quote(topic)}/messages")
        assert reply.status == 200, reply
        value = reply.json()
        assert isinstance(value, list)
        return value

    def set_fault(self, state: str | None, delay_s: float = 3.0) -> None:
        body = json.dumps({"state": state, "delay_s": delay_s}).encode()
        reply = self.request(
            "POST", "/dev/faults", body, headers={"Content-Type": "application/json"}
        )
        assert reply.status == 200, reply

    def get_state(self, key: str, store: str = "statestore") -> bytes | None:
        reply = self.request("GET", f"/v1.0/state/{store}/{urllib.parse.quote(key, safe='')}")
        if reply.status == 204:
            return None
        assert reply.status == 200, reply
        return reply.body

    def save_state(self, items: Sequence[Mapping[str, Any]], store: str = "statestore") -> int:
        body = json.dumps(list(items)).encode()
        reply = self.request(
            "POST", f"/v1.0/state/{store}", body, headers={"Content-Type": "application/json"}
        )
        return reply.status


def inbound_retry(name: str, *, timeout: str | None = None, **policy: str | float) -> list[str]:
    """Sidecar flags for a resources folder whose resiliency.yaml gives the pub/sub
    component this inbound retry policy (Resiliency field names, e.g. ``policy="constant",
    duration="50ms", maxRetries=2``) and, optionally, an inbound timeout (``"300ms"``);
    the folder lives under test-artifacts/resources."""
    folder = RESOURCES_ROOT / name
    folder.mkdir(parents=True, exist_ok=True)
    inbound = {"retry": "inbound"} | ({"timeout": "inbound"} if timeout else {})
    resiliency = {
        "apiVersion": "dapr.io/v1alpha1",
        "kind": "Resiliency",
        "metadata": {"name": name},
        "spec": {
            "policies": {
                "retries": {"inbound": dict(policy)},
                "timeouts": {"inbound": timeout} if timeout else {},
            },
            "targets": {"components": {"pubsub": {"inbound": inbound}}},
        },
    }
    # JSON is YAML: no YAML writer needed here.
    (folder / "resiliency.yaml").write_text(json.dumps(resiliency, indent=2) + "\n")
    return ["--resources-path", str(folder)]


def no_resources() -> list[str]:
    """Sidecar flags for an empty resources folder: no resiliency policy at all."""
    folder = RESOURCES_ROOT / "empty"
    folder.mkdir(parents=True, exist_ok=True)
    return ["--resources-path", str(folder)]


@contextmanager
def running_sidecar(
    *,
    app_ports: Sequence[int],
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[SidecarProcess]:
    """Run the dev sidecar on free ports for the block; SIGTERM (then SIGKILL) afterwards.

    ``env`` is added to the test process's environment (minus inherited Dapr ports and
    tokens); ``extra_args`` are extra CLI flags. Without a ``--resources-path`` among them
    the sidecar reads the shipped ``components/`` (its resiliency.yaml), as ``dapr run -f
    dapr.yaml`` would.
    """
    environment = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    environment["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROJECT_ROOT), environment.get("PYTHONPATH", "")) if p
    )
    environment.update(env or {})
    grpc_port, http_port = free_port(), free_port()
    args = ["--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    if "--resources-path" not in extra_args:
        args += ["--resources-path", str(SHIPPED_RESOURCES)]
    for port in app_ports:
        args += ["--app-port", str(port)]
    with tempfile.TemporaryDirectory(prefix="devsidecar-") as workdir:
        sidecar = SidecarProcess(
            grpc_port=grpc_port,
            http_port=http_port,
            args=[*args, *extra_args],
            env=environment,
            log_path=Path(workdir) / "sidecar.log",
        )
        sidecar.start(startup_timeout)
        try:
            yield sidecar
        finally:
            sidecar.close()
