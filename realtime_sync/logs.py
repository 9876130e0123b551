"""Structured logs: one JSON object per line, with connection and event ids as fields.

Never pass a token or a message body to a logger.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    # websockets logs request lines (with query strings, hence tokens) at DEBUG: never
    # let it go below INFO. grpc and the Dapr SDK are chatty at DEBUG too.
    # Its INFO lines (one per connection and HTTP probe) are noise at scale.
    logging.getLogger("websockets").setLevel(max(numeric, logging.WARNING))
    for noisy in ("grpc", "dapr", "asyncio", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.INFO))
