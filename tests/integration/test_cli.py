"""The command line as a user runs it: help, bad settings, tokens, publishing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from bench.common import free_port
from tests.integration.conftest import ARTIFACTS, SECRET, ServiceProcess
from tests.integration.devrun import PORT_VARIABLES, running_dev

CLI = [sys.executable, "-m", "realtime_sync"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "DAPR_", "WS_"))}
    return subprocess.run(
        [*CLI, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [[], ["serve"], ["sidecar"], ["dev"], ["token"], ["publish"], ["watch"]],
)
def test_help_is_everywhere(args: list[str]) -> None:
    result = run(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"JWT_SECRET": SECRET, "WS_PORT": "eighty"}, "WS_PORT"),
        ({"JWT_SECRET": SECRET, "HEARTBEAT_S": "-1"}, "HEARTBEAT_S"),
        ({"JWT_SECRET": SECRET, "COMPRESSION": "gzip"}, "COMPRESSION"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({}, "JWT_SECRET"),
        ({"JWT_SECRET": SECRET, "JWT_ALGORITHMS": "HS256,RS256"}, "JWT_ALGORITHMS"),
        (
            {"JWT_ALGORITHMS": "RS256", "JWT_PUBLIC_KEY_FILE": "/nonexistent.pem"},
            "JWT_PUBLIC_KEY_FILE",
        ),
    ],
)
def test_a_bad_setting_exits_non_zero_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    result = run("serve", env=env)
    assert result.returncode == 2
    assert variable in result.stderr


def test_a_flag_overrides_the_environment_and_is_validated() -> None:
    result = run("serve", "--ws-port", "99999", env={"JWT_SECRET": SECRET, "WS_PORT": "8080"})
    assert result.returncode == 2
    assert "WS_PORT" in result.stderr


def test_token_mints_a_jwt_for_the_user() -> None:
    result = run("token", "bob", "--ttl", "120", env={"JWT_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["userId"] == "bob"
    assert 100 <= claims["exp"] - claims["iat"] <= 120


def test_token_without_a_secret_fails_with_a_message() -> None:
    result = run("token", "bob")
    assert result.returncode == 2
    assert "JWT_SECRET" in result.stderr


async def test_publish_goes_through_dapr_to_the_client(stack: ServiceProcess) -> None:
    async with stack.client("cli-user") as client:
        result = run(
            "publish",
            "--type",
            "TASK_ADDED",
            "--user",
            "cli-user",
            "--task",
            "77",
            "--data",
            '{"title": "from the CLI"}',
            "--shared-with",
            "cli-friend",
            env={"DAPR_HTTP_PORT": str(stack.sidecar.http_port)},
        )
        assert result.returncode == 0, result.stderr
        [frame] = await client.updates(1)
    assert (frame["action"], frame["task_id"], frame["data"]) == (
        "task_created",
        77,
        {"title": "from the CLI"},
    )
    assert frame["metadata"]["shared_with"] == ["cli-friend"]


def test_publish_to_a_missing_sidecar_fails_with_a_message() -> None:
    result = run("publish", "--user", "u", "--task", "1", "--dapr-http-port", str(free_port()))
    assert result.returncode == 2
    assert "cannot reach the Dapr sidecar" in result.stderr


def test_publish_refuses_data_that_is_not_json() -> None:
    result = run("publish", "--user", "u", "--task", "1", "--data", "{nope")
    assert result.returncode == 2
    assert "--data" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_to_dev_alone_stops_all_it_started(sig: signal.Signals) -> None:
    """`dev` gets the signal, not its process group (as from `kill`, systemd, a
    supervisor): the sidecar, the service and the demo must go too, freeing the ports."""
    with running_dev(CLI, ARTIFACTS / f"dev-{sig.name}.log") as dev:
        dev.wait_for_banner()
        assert len(dev.children) == 3  # sidecar, service, demo publisher
        dev.proc.send_signal(sig)
        dev.proc.wait(timeout=30)
        dev.wait_all_stopped(timeout_s=10)
        assert dev.proc.returncode == 0


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_killing_dev_outright_stops_all_it_started() -> None:
    with running_dev(CLI, ARTIFACTS / "dev-SIGKILL.log", "--no-demo") as dev:
        dev.wait_for_banner()
        assert len(dev.children) == 2  # sidecar, service
        dev.proc.kill()
        dev.proc.wait(timeout=10)
        dev.wait_all_stopped(timeout_s=30)


def test_dev_stops_with_a_message_when_its_sidecar_cannot_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {name: str(free_port()) for name in PORT_VARIABLES}
        ports["DAPR_HTTP_PORT"] = str(taken.getsockname()[1])
        result = run("dev", "--no-demo", env=ports)
    assert result.returncode == 2
    assert "the dev sidecar exited with 1" in result.stderr


def listening_addresses(port: int) -> set[str]:
    """The local addresses (hex, as the kernel lists them) of sockets listening on port."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text(encoding="ascii").splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net/tcp")
def test_dev_listens_on_the_loopback_interface_only() -> None:
    """The board, the WebSocket and the unauthenticated /metrics of `dev` are not on the
    network unless asked (`--host`)."""
    with running_dev(CLI, ARTIFACTS / "dev-loopback.log", "--no-demo") as dev:
        dev.wait_for_banner()
        assert listening_addresses(dev.ports["WS_PORT"]) == {"0100007F"}  # 127.0.0.1
