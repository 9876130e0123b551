"""`realtime-sync dev` as a user starts it, on free ports, with what it started in view.

`running_dev` yields a `DevRun` once the banner is printed and, however the test ends,
kills `dev` and every process it started that is still alive, so a test of a bug that
leaves orphans does not leave them behind itself.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from bench.common import free_port
from tests.integration.harness import wait_until

PORT_VARIABLES = ("WS_PORT", "DAPR_HTTP_PORT", "DAPR_GRPC_PORT", "APP_PORT")
BANNER = re.compile(r"Live board\s*: (http://localhost:\d+/#token=\S+)")
STARTUP_S = 60.0


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return None if fields[0] == "Z" else int(fields[1])


def descendants(root: int) -> set[int]:
    """Live processes below `root` (Linux /proc)."""
    parents = {
        int(entry.name): _parent_of(int(entry.name))
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
    }
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    return _parent_of(pid) is not None


def listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class DevRun:
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path
    board_url: str = ""
    children: frozenset[int] = frozenset()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_banner(self) -> None:
        def printed() -> str | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"dev exited with {self.proc.returncode}:\n{self.log()}")
            found = BANNER.search(self.log())
            return found.group(1) if found else None

        self.board_url = wait_until(printed, STARTUP_S, 0.1, message=self.log)
        self.children = frozenset(descendants(self.proc.pid))

    def wait_all_stopped(self, timeout_s: float) -> None:
        """Every process dev started has exited and no port of the run is listening."""
        wait_until(
            lambda: (
                not any(alive(pid) for pid in self.children)
                and not any(listening(port) for port in self.ports.values())
            ),
            timeout_s,
            0.1,
            message=lambda: (
                f"still running: {sorted(p for p in self.children if alive(p))}, "
                f"listening: {[n for n, p in self.ports.items() if listening(p)]}"
            ),
        )


@contextmanager
def running_dev(
    command: Sequence[str], log_path: Path, *extra_args: str, cwd: Path | None = None
) -> Iterator[DevRun]:
    ports = {name: free_port() for name in PORT_VARIABLES}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAPR_", "JWT_", "APP_", "WS_", "BOARD", "VIRTUAL_ENV", "PYTHONPATH"))
    }
    env |= {name: str(port) for name, port in ports.items()}
    env |= {"PYTHONUNBUFFERED": "1", "LOG_LEVEL": "warning", "DRAIN_S": "0.3"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*command, "dev", *extra_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # no signal of the test's own group reaches it
        )
    run = DevRun(proc, ports, log_path)
    try:
        yield run
    finally:
        for pid in {proc.pid, *run.children, *descendants(proc.pid)}:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
