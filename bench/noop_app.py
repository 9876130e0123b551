"""The ingest reference: a dapr.ext.grpc App whose topic handler does nothing.

Same SDK path, same worker pool size and message limits as the service's subscriber,
answering SUCCESS at once: what the gRPC App layer alone can accept on this core.
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from dapr.ext.grpc import App, SubscriptionMessage, TopicEventResponse

MAX_GRPC_MESSAGE = 4 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=600.0)
    args = p.parse_args(argv)
    app = App(
        thread_pool=ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="noop"),
        options=[
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
        ],
    )

    def on_event(message: SubscriptionMessage) -> TopicEventResponse:
        return TopicEventResponse("success")

    app.subscribe("pubsub", "task-updates", dead_letter_topic="task-updates-deadletter")(on_event)

    server = app._server  # noqa: SLF001 - as the service does: a non-blocking start
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait(args.max_seconds)
    server.stop(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
