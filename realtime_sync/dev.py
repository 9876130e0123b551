"""`realtime-sync dev`: the dev sidecar, the service and the demo publisher as child
processes whose lifetime is the command's.

`DevProcesses` starts them inside a `with` block and stops every one of them when the
block ends, however it ends: the service exits, Ctrl-C, SIGTERM or SIGHUP sent to `dev`
alone (not to its process group), an error. On Linux a child also gets SIGTERM if `dev`
is killed outright (`PR_SET_PDEATHSIG`), so nothing is left holding the ports.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_GRACE_S = 25.0  # the service's drain budget plus its gRPC grace fits in it
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DEV_USER = "alice"
DEV_CONCURRENCY = 100  # the Redis component's `concurrency` in components/pubsub.yaml
DEFAULT_PORTS = {
    "DAPR_HTTP_PORT": "3500",
    "DAPR_GRPC_PORT": "50001",
    "APP_PORT": "50051",
    "WS_PORT": "8080",
}
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Stopped(Exception):
    """A stop signal reached `dev`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StartFailed(Exception):
    """A child did not come up; the message says which."""


def _child_setup(parent: int) -> Callable[[], None]:
    """Runs in each child between fork and exec: take back the stop signals blocked
    around the fork, and (Linux) ask for SIGTERM when `dev` goes away."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if sys.platform == "linux":
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
            if os.getppid() != parent:  # `dev` died before the request took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return setup


class DevProcesses:
    """The children of one `dev` run. Inside the block a stop signal raises `Stopped`;
    leaving it stops each child in turn, the last started first: SIGTERM, up to
    STOP_GRACE_S to exit, then SIGKILL. A second signal while they stop kills them all."""

    def __init__(self, env: Mapping[str, str], *, grace_s: float = STOP_GRACE_S) -> None:
        self.env = dict(env)
        self._grace_s = grace_s
        self._children: list[subprocess.Popen[bytes]] = []
        self._previous: dict[signal.Signals, SignalHandler] = {}

    def __enter__(self) -> DevProcesses:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._raise_stopped)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._kill_all)
        try:
            # One at a time, the last started first: the service drains (saving resume
            # snapshots, deleting its records) while the sidecar is still there.
            for proc in reversed(self._children):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self._grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def start(self, *module_args: str) -> subprocess.Popen[bytes]:
        """`python -m <module_args>` with this run's environment, tracked before any
        stop signal can be handled (they are blocked around the fork)."""
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            proc = subprocess.Popen(  # noqa: S603 - our interpreter, our modules
                [sys.executable, "-m", *module_args],
                env=self.env,
                preexec_fn=_child_setup(os.getpid()),  # noqa: PLW1509 - no threads in `dev`
            )
            self._children.append(proc)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return proc

    def wait_ready(
        self, proc: subprocess.Popen[bytes], url: str, what: str, timeout_s: float
    ) -> None:
        """Wait until `url` answers 2xx; StartFailed if `proc` exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StartFailed(f"{what} exited with {proc.returncode} (see its log above)")
            try:
                with _OPENER.open(url, timeout=1) as resp:
                    if 200 <= resp.status < 300:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise StartFailed(f"{what} did not become ready in {timeout_s:g} s (see its log above)")

    def _raise_stopped(self, signum: int, frame: FrameType | None) -> None:
        raise Stopped(signum)

    def _kill_all(self, signum: int, frame: FrameType | None) -> None:
        for proc in self._children:
            if proc.poll() is None:
                proc.kill()


DEV_HOST = "127.0.0.1"


def dev_environment(environ: Mapping[str, str], host: str | None = None) -> dict[str, str]:
    """The children's environment: the caller's, default ports, a fresh dev secret. The
    service (board, WebSocket, unauthenticated /metrics) listens on `host`, else WS_HOST,
    else the loopback interface only."""
    env = dict(environ)
    env["WS_HOST"] = host or env.get("WS_HOST") or DEV_HOST
    if not env.get("JWT_SECRET"):
        env["JWT_SECRET"] = secrets.token_urlsafe(32)
    for name, port in DEFAULT_PORTS.items():
        env.setdefault(name, port)
    env.setdefault("LOG_FORMAT", "text")
    env["BOARD"] = "true"
    return env


def run_dev(*, demo: bool, demo_rate: float, host: str | None = None) -> int:
    """Start the dev sidecar, the service and (optionally) the demo; print how to use
    them; return when the service exits or a stop signal arrives."""
    from realtime_sync.core.auth import mint_token  # noqa: PLC0415

    try:
        with DevProcesses(dev_environment(os.environ, host)) as procs:
            env = procs.env
            # As `dapr run -f dapr.yaml`: the shipped resources (resiliency) and app health
            # checks. /v1.0/healthz waits for the app (as daprd's does); the APIs answer first.
            # Bulk delivery is on by default (BULK_SUBSCRIBE); the sidecar's delivery workers
            # cap a batch as the Redis component's `concurrency` does under daprd, so they
            # match components/pubsub.yaml (100 = BULK_MAX_MESSAGES).
            sidecar_args = ["--enable-app-health-check", "--concurrency", str(DEV_CONCURRENCY)]
            if Path("components").is_dir():
                sidecar_args += ["--resources-path", "components"]
            sidecar = procs.start("realtime_sync.devsidecar", *sidecar_args)
            procs.wait_ready(
                sidecar,
                f"http://127.0.0.1:{env['DAPR_HTTP_PORT']}/v1.0/healthz/outbound",
                "the dev sidecar",
                15,
            )
            service = procs.start("realtime_sync", "serve")
            ws_port = env["WS_PORT"]
            procs.wait_ready(service, f"http://127.0.0.1:{ws_port}/readyz", "the service", 30)
            if demo:
                procs.start("realtime_sync", "demo", "--rate", str(demo_rate))
            token = mint_token(DEV_USER, secret=env["JWT_SECRET"], ttl_s=24 * 3600, now=time.time())
            print(_banner(env, token, demo=demo), flush=True)
            return service.wait()
    except Stopped:
        return 0
    except StartFailed as exc:
        print(f"realtime-sync: {exc}", file=sys.stderr)
        return 2


def _command() -> str:
    """How to run this installation's `realtime-sync` from the current folder."""
    script = Path(sys.executable).parent / "realtime-sync"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def _banner(env: Mapping[str, str], token: str, *, demo: bool) -> str:
    ws_port = env["WS_PORT"]
    command = _command()
    url = f"ws://localhost:{ws_port}/ws"
    feeding = "the demo publisher is feeding it" if demo else "publish events to fill it"
    return f"""
realtime-sync dev is running (dev sidecar: gRPC {env["DAPR_GRPC_PORT"]}, HTTP \
{env["DAPR_HTTP_PORT"]}; app gRPC {env["APP_PORT"]}).

  Live board    : http://localhost:{ws_port}/#token={token}
                  ({feeding}; the token stays in the URL fragment, never sent to a server)
  WebSocket URL : {url}
  Demo user     : {DEV_USER}
  Token (24 h)  : {token}

Watch {DEV_USER}'s updates (in another terminal, from this folder):
  {command} watch --url {url} --token {token}

Publish a task change (another terminal):
  {command} publish --type TASK_CHANGED --user {DEV_USER} --task 42 \
--data '{{"title":"Write the README","status":"doing"}}'

Mint tokens for other users with:  JWT_SECRET=<the dev secret> {command} token bob
Press Ctrl-C to stop.
"""
