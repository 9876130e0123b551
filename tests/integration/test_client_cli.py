"""`realtime-sync watch`, `demo` and `dev` as a user runs them."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bench.common import free_port
from realtime_sync.client import SyncClient, TaskUpdate
from tests.integration.conftest import ARTIFACTS, ServiceProcess, http_get
from tests.integration.harness import PROJECT_ROOT


class Lines:
    """The stdout of a process, line by line, with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.put(line)

    def until(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        seen = []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            seen.append(line)
            if found := re.search(pattern, line):
                return found
        raise AssertionError(f"{pattern!r} not printed within {timeout}s; got:\n{''.join(seen)}")


@pytest.fixture
def cli_env(stack: ServiceProcess) -> dict[str, str]:
    return {**stack.env, "PYTHONUNBUFFERED": "1"}


def cli(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    ARTIFACTS.mkdir(exist_ok=True)
    with (ARTIFACTS / f"cli-{args[0]}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "realtime_sync", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=PROJECT_ROOT,
        )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_watch_prints_live_updates_and_rereads_its_token_file(
    stack: ServiceProcess, cli_env: dict[str, str], processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:  # fmt: skip
    token_file = tmp_path / "token"
    token_file.write_text(stack.token("cli-watch") + "\n")
    watch = cli("watch", "--url", stack.ws_url, "--token-file", str(token_file), env=cli_env)
    processes.append(watch)
    out = Lines(watch)
    time.sleep(1.0)  # connected and subscribed (stderr says so; stdout is for updates)
    ev = {"id": "w-1", "type": "TASK_CHANGED", "user_id": "cli-watch", "task_id": 3,
          "data": {"title": "seen by the operator"}}  # fmt: skip
    assert stack.publish(ev) == 204
    line = orjson.loads(out.until(r"w-1").string)
    assert line["task_id"] == 3 and line["data"] == {"title": "seen by the operator"}
    assert line["action"] == "task_updated"


def test_watch_with_a_refused_token_exits_2_without_printing_it(
    stack: ServiceProcess, cli_env: dict[str, str]
) -> None:
    token = stack.token("cli-expired", ttl_s=-60)
    done = subprocess.run(
        [sys.executable, "-m", "realtime_sync", "watch", "--url", stack.ws_url, "--token", token],
        env=cli_env, capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "4001" in done.stderr
    assert token not in done.stdout + done.stderr


async def test_demo_publishes_a_task_lifecycle_through_the_sidecar(stack: ServiceProcess) -> None:
    got: list[TaskUpdate] = []
    client = SyncClient(
        stack.ws_url, stack.token("demo-u1"), proxy=None,
        on_update=lambda i: got.append(i) if isinstance(i, TaskUpdate) else None,
    )  # fmt: skip
    async with client:
        deadline = time.monotonic() + 8
        while client.state != "connected" and time.monotonic() < deadline:
            await _sleep()
        env = {**stack.env, "DAPR_HTTP_PORT": str(stack.sidecar.http_port)}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "realtime_sync", "demo", "--users", "demo-u1", "--count",
             "40", "--rate", "200", "--seed", "5"],
            env=env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "published 40 events" in done.stdout
        while len(got) < 40 and time.monotonic() < deadline + 10:
            await _sleep()
    assert len(got) == 40
    assert {u.action for u in got} >= {"task_created", "task_status_changed", "task_updated"}
    assert all(isinstance(u.data.get("title"), str) for u in got)


async def _sleep() -> None:
    await asyncio.sleep(0.05)


def test_dev_serves_the_board_and_feeds_it_with_the_demo(
    processes: list[subprocess.Popen[str]],
) -> None:
    ports = {
        k: str(free_port()) for k in ("WS_PORT", "DAPR_HTTP_PORT", "DAPR_GRPC_PORT", "APP_PORT")
    }
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DAPR_", "JWT_", "APP_", "BOARD"))
    }
    env |= ports | {"PYTHONUNBUFFERED": "1", "LOG_LEVEL": "warning"}
    dev = cli("dev", "--demo-rate", "20", env=env)
    processes.append(dev)
    found = Lines(dev).until(r"Live board\s*: (http://localhost:(\d+)/)#token=(\S+)", 40)
    base, port, token = found.group(1), found.group(2), found.group(3)
    assert port == ports["WS_PORT"]
    status, body = http_get(base.replace("localhost", "127.0.0.1"))
    assert status == 200 and b"Live task board" in body
    status, body = http_get(f"http://127.0.0.1:{port}/client/realtime-sync.js")
    assert status == 200 and b"export class RealtimeSyncClient" in body
    assert http_get(f"http://127.0.0.1:{port}/client/test/client.test.mjs")[0] == 404
    assert http_get(f"http://127.0.0.1:{port}/client/node_modules/ws/package.json")[0] == 404

    async def first_updates() -> list[TaskUpdate]:
        got: list[TaskUpdate] = []
        async with SyncClient(f"ws://127.0.0.1:{port}/ws", token, proxy=None) as client:
            async with asyncio.timeout(20):
                async for item in client:
                    if isinstance(item, TaskUpdate):
                        got.append(item)
                        if len(got) == 3:
                            return got
        return got

    updates = asyncio.run(first_updates())
    assert len(updates) == 3  # the demo publisher keeps alice's board alive
