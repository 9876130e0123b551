"""Processes, pinning and /proc sampling for the benchmark (loopback only, all bounded)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from realtime_sync.core.auth import mint_token

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / ".build"
WSLOAD = BUILD_DIR / "wsload"
SECRET = "bench-only-secret-" + "b" * 32  # a throwaway HS256 key for this run only
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- cores ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cores:
    server: int | None
    client: int | None

    @property
    def pinned(self) -> bool:
        return self.server is not None

    def prefix(self, core: int | None) -> list[str]:
        if core is None:
            return []
        return ["taskset", "-c", str(core)]


def choose_cores() -> Cores:
    """Server on core 0, everything else (clients, callers, sidecar) on core 1."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset"):
        server, client = cpus[0], cpus[1]
        os.sched_setaffinity(0, {client})  # this harness and its children: client core
        return Cores(server, client)
    return Cores(None, None)


def raise_nofile(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, min(wanted, _nr_open()))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(hard, target)))
        return target
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def _nr_open() -> int:
    try:
        return int(Path("/proc/sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        return 65536


def cpu_times() -> dict[int, tuple[float, float]]:
    """Per core: (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[float, float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            v = [float(x) for x in vals[:8]]
            idle = v[3] + v[4]
            out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def busy_share(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], core: int | None
) -> float | None:
    if core is None or core not in before:
        return None
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return round(busy / total, 3) if total > 0 else None


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, below the kernel's ephemeral
    range: a port the kernel hands out (bind to 0) can be taken by any outgoing
    connection before the process under test binds it ("Address already in use")."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10_000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(11_000, low)


def http_status(url: str, timeout: float = 1.0) -> int:
    try:
        with _OPENER.open(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def http_post_json(url: str, body: Any, timeout: float = 10.0) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with _OPENER.open(req, timeout=timeout) as resp:
        return int(resp.status)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout:g} s")


# -- processes -----------------------------------------------------------------------


@dataclass
class Proc:
    """A child process with its log file; stopped with SIGTERM, then SIGKILL."""

    name: str
    argv: list[str]
    log_dir: Path
    env: dict[str, str] | None = None
    stdin: bool = False
    stdout_pipe: bool = False
    popen: subprocess.Popen[bytes] = field(init=False)

    def start(self) -> Proc:
        log = (self.log_dir / f"{self.name}.log").open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.stdout_pipe else log,
            stderr=log,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def log_tail(self, n: int = 3000) -> str:
        path = self.log_dir / f"{self.name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# -- the C load client ---------------------------------------------------------------


@dataclass
class Status:
    t: float  # CLOCK_MONOTONIC seconds
    open: int
    messages: int
    bytes: int
    closed: int
    failed: int
    pending: int
    closed_4008: int


class WsLoad:
    """The C client process: N connections; parses its status lines in a thread."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.statuses: list[Status] = []
        self.storm: list[float] | None = None
        self._lines: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)

    @classmethod
    def launch(
        cls,
        *,
        port: int,
        tokens: Path,
        count: int,
        log_dir: Path,
        cores: Cores,
        name: str,
        subscribe: str | None = None,
        storm: bool = False,
        concurrency: int = 64,
    ) -> WsLoad:
        argv = [
            *cores.prefix(cores.client),
            str(WSLOAD),
            "--port",
            str(port),
            "--tokens",
            str(tokens),
            "--count",
            str(count),
            "--report-ms",
            "200",
            "--concurrency",
            str(concurrency),
            "--max-seconds",
            "600",
        ]
        if subscribe:
            argv += ["--subscribe", subscribe]
        if storm:
            argv.append("--storm")
        proc = Proc(name, argv, log_dir, stdin=True, stdout_pipe=True).start()
        load = cls(proc)
        load._thread.start()
        return load

    def _read(self) -> None:
        out: IO[bytes] | None = self.proc.popen.stdout
        assert out is not None
        for raw in out:
            parts = raw.decode().split()
            if parts and parts[0] == "S" and len(parts) == 9:
                nums = [int(float(x)) for x in parts[1:]]
                self.statuses.append(Status(nums[0] / 1e3, *nums[1:]))
            elif parts and parts[0] == "STORM":
                self.storm = [float(x) for x in parts[1:]]

    @property
    def last(self) -> Status:
        wait_for(lambda: bool(self.statuses), 10, "first status line of the load client")
        return self.statuses[-1]

    def wait_open(self, count: int, min_messages: int, timeout: float) -> None:
        def ready() -> bool:
            s = self.last
            if s.failed:
                raise RuntimeError(f"{s.failed} connections failed; log: {self.proc.log_tail()}")
            return s.open >= count and s.messages >= min_messages

        wait_for(ready, timeout, f"{count} open connections")

    def at(self, t: float) -> Status:
        """The first status line at or after monotonic time t."""
        wait_for(lambda: self.last.t >= t, 10, "load client status")
        for s in self.statuses:
            if s.t >= t:
                return s
        return self.statuses[-1]

    def stop(self) -> None:
        self.proc.stop()
        self._thread.join(5)


def write_tokens(path: Path, users: Sequence[str], ttl_s: int = 3600) -> Path:
    now = time.time()
    cache: dict[str, str] = {}
    lines = []
    for u in users:
        if u not in cache:
            cache[u] = mint_token(u, secret=SECRET, ttl_s=ttl_s, now=now)
        lines.append(cache[u])
    path.write_text("\n".join(lines) + "\n")
    return path


def build_wsload() -> Path:
    src = BENCH_DIR / "wsload.c"
    if not WSLOAD.exists() or WSLOAD.stat().st_mtime < src.stat().st_mtime:
        BUILD_DIR.mkdir(exist_ok=True)
        subprocess.run(["gcc", "-O2", "-o", str(WSLOAD), str(src)], check=True)
    return WSLOAD


def ensure_peer() -> Path | None:
    peer = BENCH_DIR / "peer"
    if not shutil.which("node"):
        return None
    if not (peer / "node_modules" / "ws").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=peer, check=True)
    return peer / "server.js"
