"""`realtime-sync`: serve, sidecar, dev, token, publish, watch."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import orjson

from realtime_sync import __version__
from realtime_sync.config import SettingsError, add_setting_flags, load_settings, settings_overrides


def _fail(message: str) -> int:
    print(f"realtime-sync: {message}", file=sys.stderr)
    return 2


def _cmd_serve(args: argparse.Namespace) -> int:
    from realtime_sync.logs import configure_logging  # noqa: PLC0415
    from realtime_sync.service import run_service  # noqa: PLC0415
    from realtime_sync.static import BoardUnavailable  # noqa: PLC0415

    try:
        settings = load_settings(overrides=settings_overrides(args))
    except SettingsError as exc:
        return _fail(str(exc))
    configure_logging(settings.log_level, settings.log_format)
    try:
        return run_service(settings)
    except BoardUnavailable as exc:
        return _fail(str(exc))


def _cmd_sidecar(args: argparse.Namespace) -> int:
    from realtime_sync.devsidecar import main as sidecar_main  # noqa: PLC0415

    return sidecar_main(list(args.sidecar_args))


def _cmd_dev(args: argparse.Namespace) -> int:
    from realtime_sync.dev import run_dev  # noqa: PLC0415

    return run_dev(demo=not args.no_demo, demo_rate=args.demo_rate, host=args.host)


def _cmd_demo(args: argparse.Namespace) -> int:
    import random  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415

    from realtime_sync.demo import Story, run_demo  # noqa: PLC0415
    from realtime_sync.publisher import Publisher, sidecar_base_url  # noqa: PLC0415

    if args.rate <= 0:
        return _fail("--rate must be positive")
    users = [u for u in args.users.split(",") if u]
    if not users:
        return _fail("--users must name at least one user")
    publisher = Publisher(
        sidecar_base_url(args.dapr_http_port),
        pubsub=args.pubsub,
        topic=args.topic,
        api_token=os.environ.get("DAPR_API_TOKEN") or None,
    )
    story = Story(users, rng=random.Random(args.seed))  # noqa: S311 - a story, not a secret
    print(
        f"demo: publishing to {publisher.base_url} ({args.pubsub}/{args.topic}) "
        f"for {', '.join(users)} at {args.rate:g} events/s",
        flush=True,
    )
    try:
        sent = run_demo(publisher, story, rate=args.rate, count=args.count, verbose=args.verbose)
    except KeyboardInterrupt:
        return 0
    except (urllib.error.URLError, OSError) as exc:
        return _fail(f"cannot publish through the Dapr sidecar at {publisher.base_url}: {exc}")
    print(f"demo: published {sent} events", flush=True)
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from realtime_sync.core.auth import MIN_HMAC_KEY_BYTES, mint_token  # noqa: PLC0415

    secret = os.environ.get("JWT_SECRET", "")
    if len(secret.encode()) < MIN_HMAC_KEY_BYTES:
        return _fail(f"JWT_SECRET must be set to at least {MIN_HMAC_KEY_BYTES} bytes")
    if args.ttl <= 0:
        return _fail("--ttl must be positive")
    print(
        mint_token(
            args.user,
            secret=secret,
            ttl_s=args.ttl,
            now=time.time(),
            audience=os.environ.get("JWT_AUDIENCE") or None,
            issuer=os.environ.get("JWT_ISSUER") or None,
            user_claim=os.environ.get("JWT_USER_CLAIM", "userId") or "userId",
        )
    )
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    event: dict[str, Any] = {"type": args.type, "user_id": args.user}
    event["task_id"] = int(args.task) if args.task.lstrip("-").isdigit() else args.task
    if args.id:
        event["id"] = args.id
    if args.data:
        try:
            event["data"] = orjson.loads(args.data)
        except orjson.JSONDecodeError:
            return _fail("--data must be JSON")
    if args.shared_with is not None:
        event["metadata"] = {"shared_with": [u for u in args.shared_with.split(",") if u]}
    from realtime_sync.publisher import Publisher, sidecar_base_url  # noqa: PLC0415

    publisher = Publisher(
        sidecar_base_url(args.dapr_http_port),
        pubsub=args.pubsub,
        topic=args.topic,
        api_token=os.environ.get("DAPR_API_TOKEN") or None,
        timeout_s=10,
    )
    try:
        status = publisher.publish(event)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace") if exc.fp is not None else ""
        return _fail(f"publish refused: HTTP {exc.code} {body}")
    except (urllib.error.URLError, OSError) as exc:
        return _fail(f"cannot reach the Dapr sidecar at {publisher.url}: {exc}")
    print(f"published {args.type} for task {event['task_id']} (HTTP {status})")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from realtime_sync.client import (  # noqa: PLC0415
        ClientError,
        ConnectionState,
        Reconnect,
        ResyncRequired,
        SyncClient,
        TaskUpdate,
    )

    token_file: str | None = args.token_file
    token = args.token or os.environ.get("REALTIME_SYNC_TOKEN", "")
    if not token and not token_file:
        return _fail("give --token or --token-file (or set REALTIME_SYNC_TOKEN)")

    def read_token_file() -> str:
        assert token_file is not None
        try:
            with open(token_file, encoding="utf-8") as handle:  # noqa: PTH123
                return handle.read().strip()
        except OSError as exc:
            raise ClientError(f"cannot read --token-file: {exc.strerror}") from None

    def on_state(state: ConnectionState) -> None:
        print(f"# {state.value}", file=sys.stderr, flush=True)

    def on_reconnect(info: Reconnect) -> None:
        why = f"closed {info.close_code}" if info.close_code else info.reason or "no connection"
        print(
            f"# {why}; reconnecting in {info.delay_s:.1f} s (attempt {info.attempt})",
            file=sys.stderr,
            flush=True,
        )

    task_ids: list[int | str] = [int(t) if t.lstrip("-").isdigit() else t for t in args.task]
    client = SyncClient(
        args.url,
        read_token_file if token_file else token,
        subscribe_all=not task_ids,
        task_ids=task_ids,
        since=args.since,
        on_state=on_state,
        on_reconnect=on_reconnect,
        backoff_cap_s=args.backoff_cap,
    )

    async def watch() -> int:
        try:
            async with client:
                async for item in client:
                    match item:
                        case TaskUpdate():
                            line: dict[str, Any] = {
                                "event_id": item.event_id,
                                "action": item.action,
                                "task_id": item.task_id,
                                "user_id": item.user_id,
                                "data": item.data,
                                "timestamp": item.timestamp,
                            }
                            if item.metadata:
                                line["metadata"] = item.metadata
                            print(orjson.dumps(line).decode(), flush=True)
                        case ResyncRequired():
                            print(
                                "# missed updates could not be replayed: refetch",
                                file=sys.stderr,
                                flush=True,
                            )
        except ClientError as exc:
            return _fail(str(exc))
        return 0

    try:
        return asyncio.run(watch())
    except KeyboardInterrupt:
        return 0


def _add_dapr_target(parser: argparse.ArgumentParser) -> None:
    """Where a publishing command sends its events: the Dapr sidecar's publish API."""
    parser.add_argument("--pubsub", default=os.environ.get("PUBSUB_NAME", "pubsub"))
    parser.add_argument("--topic", default=os.environ.get("TOPIC_NAME", "task-updates"))
    parser.add_argument(
        "--dapr-http-port", type=int, default=None, help="sidecar HTTP port (DAPR_HTTP_PORT)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-sync",
        description="Push task changes from a Dapr pub/sub topic to WebSocket clients.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the service (next to daprd or the dev sidecar)")
    add_setting_flags(serve)
    serve.set_defaults(func=_cmd_serve)

    sidecar = sub.add_parser(
        "sidecar",
        help="run the dev sidecar alone (a development tool, not a Dapr replacement)",
        add_help=False,
    )
    sidecar.add_argument("sidecar_args", nargs=argparse.REMAINDER)
    sidecar.set_defaults(func=_cmd_sidecar)

    dev = sub.add_parser(
        "dev", help="dev sidecar + service + live board + demo publisher on the default ports"
    )
    dev.add_argument("--no-demo", action="store_true", help="do not start the demo publisher")
    dev.add_argument("--demo-rate", type=float, default=1.0, help="demo events per second (1)")
    dev.add_argument(
        "--host",
        default=None,
        help="interface the board, WebSocket and /metrics listen on "
        "(default: WS_HOST, else 127.0.0.1; 0.0.0.0 exposes them to the network)",
    )
    dev.set_defaults(func=_cmd_dev)

    demo = sub.add_parser(
        "demo", help="publish a realistic stream of task events through Dapr (for the board)"
    )
    demo.add_argument("--rate", type=float, default=1.0, help="events per second (1)")
    demo.add_argument("--count", type=int, default=None, help="stop after this many events")
    demo.add_argument(
        "--users", default=os.environ.get("DEMO_USERS", "alice,bob,carol"), help="comma list"
    )
    demo.add_argument("--seed", type=int, default=None, help="random seed (repeatable story)")
    demo.add_argument("--verbose", "-v", action="store_true", help="print every event")
    _add_dapr_target(demo)
    demo.set_defaults(func=_cmd_demo)

    token = sub.add_parser("token", help="mint an HS256 JWT with JWT_SECRET (development)")
    token.add_argument("user", help="user id to put in the token")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (3600)")
    token.set_defaults(func=_cmd_token)

    publish = sub.add_parser("publish", help="publish one task event through Dapr's publish API")
    publish.add_argument("--type", default="TASK_CHANGED", help="event type (TASK_CHANGED)")
    publish.add_argument("--user", required=True, help="owner of the task")
    publish.add_argument("--task", required=True, help="task id (integer or string)")
    publish.add_argument("--data", help="the task, as a JSON object")
    publish.add_argument("--id", help="event id (default: the CloudEvent id)")
    publish.add_argument("--shared-with", help="comma list of user ids sharing the task")
    _add_dapr_target(publish)
    publish.set_defaults(func=_cmd_publish)

    watch = sub.add_parser("watch", help="print a user's live updates (for operators)")
    watch.add_argument("--url", default="ws://localhost:8080/ws")
    watch.add_argument("--token", help="JWT (or REALTIME_SYNC_TOKEN)")
    watch.add_argument(
        "--token-file", help="file holding the JWT, read again before every reconnect"
    )
    watch.add_argument(
        "--task", action="append", default=[], help="watch only this task (repeatable)"
    )
    watch.add_argument("--since", help="replay the updates after this event id first")
    watch.add_argument(
        "--backoff-cap", type=float, default=30.0, help="longest reconnect delay in s (30)"
    )
    watch.set_defaults(func=_cmd_watch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sidecar"]:
        # The dev sidecar parses its own flags (`realtime-sync sidecar --help`).
        from realtime_sync.devsidecar import main as sidecar_main  # noqa: PLC0415

        return sidecar_main(argv[1:])
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
