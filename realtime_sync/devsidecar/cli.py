"""``python -m realtime_sync.devsidecar``: run the dev sidecar until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from .config import DeliveryMode, SidecarConfig
from .resources import go_duration_s, load_inbound_policy
from .sidecar import DevSidecar

log = logging.getLogger("realtime_sync.devsidecar")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _duration(text: str) -> float:
    try:
        return go_duration_s(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m realtime_sync.devsidecar",
        description=(
            "Dev sidecar: a small in-memory stand-in for daprd for development and "
            "integration tests (not a Dapr replacement). Serves the Dapr state and publish "
            "APIs over gRPC and HTTP and delivers pub/sub messages to the app over gRPC "
            "AppCallback the way daprd does. DAPR_API_TOKEN / APP_API_TOKEN are read from "
            "the environment."
        ),
    )
    add = parser.add_argument
    add(
        "--grpc-port",
        type=_port,
        default=env.get("DAPR_GRPC_PORT", "50001"),
        help="Dapr gRPC API port (env DAPR_GRPC_PORT; default 50001)",
    )
    add(
        "--http-port",
        type=_port,
        default=env.get("DAPR_HTTP_PORT", "3500"),
        help="Dapr HTTP API port (env DAPR_HTTP_PORT; default 3500)",
    )
    add(
        "--app-port",
        type=_port,
        action="append",
        default=None,
        help="the app's gRPC port; repeat to attach several instances "
        "(env APP_PORT, comma-separated; default 50051)",
    )
    add("--app-host", default="127.0.0.1", help="host of the app instances")
    add("--app-id", default="realtime-sync", help="app id (CloudEvent source)")
    add("--pubsub-name", default="pubsub", help="name of the pub/sub component")
    add("--state-store-name", default="statestore", help="name of the state store")
    add(
        "--delivery",
        choices=[m.value for m in DeliveryMode],
        default="broadcast",
        help="with several app instances: broadcast = a consumer group per instance, "
        "competing = one group, round-robin (default broadcast)",
    )
    add(
        "--concurrency",
        type=_count,
        default="10",
        help="delivery workers per consumer group (default 10)",
    )
    add(
        "--resources-path",
        type=Path,
        action="append",
        default=None,
        help="folder of Dapr resources, as daprd's flag (repeatable): the Resiliency "
        "resources scoped to the app id give the pub/sub inbound retry and timeout; without "
        "one a RETRY is not retried (dead-lettered at once, as daprd does)",
    )
    add(
        "--enable-app-health-check",
        action="store_true",
        help="probe the app's gRPC HealthCheck; deliveries start on the first healthy probe "
        "and stop while the app is unhealthy (daprd's flag; default off)",
    )
    add(
        "--app-health-probe-interval",
        type=_count,
        default="5",
        help="seconds between app health probes (default 5)",
    )
    add(
        "--app-health-probe-timeout",
        type=_count,
        default="500",
        help="app health probe timeout in milliseconds (default 500)",
    )
    add(
        "--app-health-threshold",
        type=_count,
        default="3",
        help="failed probes in a row that make the app unhealthy (default 3)",
    )
    add(
        "--dapr-block-shutdown-duration",
        type=_duration,
        default=None,
        help="on SIGTERM: stop delivering, then keep the APIs up this long (Go duration, "
        "e.g. 30s) or until the app reports unhealthy (daprd's flag; default: no block)",
    )
    add(
        "--journal",
        type=Path,
        default=None,
        help="append-only file that keeps state and unacked messages across restarts",
    )
    add("--listen-host", default="127.0.0.1", help="address the Dapr APIs listen on")
    add(
        "--allowed-origins",
        default="",
        help="comma-separated browser origins (scheme://host:port) whose pages may call the "
        "HTTP API, or * for any (daprd's flag); default none: a request a browser sends for "
        "a web page is refused with 403",
    )
    add(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )
    return parser


def _app_ports(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[int, ...]:
    if args.app_port:
        return tuple(args.app_port)
    raw = env.get("APP_PORT", "").strip()
    if not raw:
        return (50051,)
    try:
        return tuple(_port(part.strip()) for part in raw.split(",") if part.strip())
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"APP_PORT: {exc}") from None


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> SidecarConfig:
    """Build the config; raises ValueError naming the bad setting."""
    inbound = load_inbound_policy(
        args.resources_path or [], app_id=args.app_id, pubsub_name=args.pubsub_name
    )
    return SidecarConfig(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        app_ports=_app_ports(args, env),
        app_host=args.app_host,
        app_id=args.app_id,
        pubsub_name=args.pubsub_name,
        state_store_name=args.state_store_name,
        delivery=DeliveryMode(args.delivery),
        concurrency=args.concurrency,
        retry=inbound.retry,
        delivery_timeout_s=inbound.timeout_s,
        resources=inbound.source,
        app_health_check=args.enable_app_health_check,
        app_health_probe_interval_s=float(args.app_health_probe_interval),
        app_health_probe_timeout_s=args.app_health_probe_timeout / 1000,
        app_health_threshold=args.app_health_threshold,
        block_shutdown_s=args.dapr_block_shutdown_duration,
        journal=args.journal,
        listen_host=args.listen_host,
        allowed_origins=tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip()),
        dapr_api_token=env.get("DAPR_API_TOKEN") or None,
        app_api_token=env.get("APP_API_TOKEN") or None,
    )


def _configure_logging(level: str) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    log.setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dev sidecar until SIGTERM/SIGINT; return the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, or a bad flag (argparse printed why)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        config = config_from_args(args, os.environ)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(args.log_level)

    stop = threading.Event()
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():

        def request_stop(signum: int, frame: FrameType | None) -> None:
            log.info("signal %s received: stopping", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)

    sidecar = DevSidecar(config)
    try:
        sidecar.start()
    except OSError as exc:
        log.error("cannot start the dev sidecar: %s", exc)
        sidecar.stop(0)
        return 1
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sidecar.stop()
        for number, handler in previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]  # stored as object
    return 0
