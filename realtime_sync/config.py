"""Settings: read once from the environment (flags override), typed, frozen, failing fast.

Each setting is one row of SETTINGS: its environment variable, type, default and help.
The CLI builds a flag for every row, so the table is also the documentation.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from realtime_sync.core.auth import check_key_setup


class SettingsError(ValueError):
    """A bad setting: the message names the variable."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Setting:
    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("ws_host", "WS_HOST", str, "0.0.0.0", "interface of the WebSocket/HTTP server"),
    Setting("ws_port", "WS_PORT", int, 8080, "WebSocket and HTTP port", 0, 65535),
    Setting("app_host", "APP_HOST", str, "127.0.0.1", "interface of the gRPC app callback"),
    Setting("app_port", "APP_PORT", int, 50051, "gRPC app callback port (Dapr sets it)", 0, 65535),
    Setting("pubsub_name", "PUBSUB_NAME", str, "pubsub", "Dapr pub/sub component"),
    Setting("topic_name", "TOPIC_NAME", str, "task-updates", "topic of task events"),
    Setting(
        "dead_letter_topic",
        "DEAD_LETTER_TOPIC",
        str,
        "",
        "dead-letter topic (default: TOPIC_NAME-deadletter)",
    ),
    Setting("state_store_name", "STATE_STORE_NAME", str, "statestore", "Dapr state store"),
    Setting("jwt_secret", "JWT_SECRET", str, "", "HMAC key for HS* tokens (>= 32 bytes)"),
    Setting("jwt_public_key", "JWT_PUBLIC_KEY", str, "", "PEM public key for RS/ES/EdDSA tokens"),
    Setting("jwt_public_key_file", "JWT_PUBLIC_KEY_FILE", str, "", "file with the PEM public key"),
    Setting("jwt_algorithms", "JWT_ALGORITHMS", _csv, ("HS256",), "accepted algorithms (pinned)"),
    Setting("jwt_audience", "JWT_AUDIENCE", str, "", "required `aud` when set"),
    Setting("jwt_issuer", "JWT_ISSUER", str, "", "required `iss` when set"),
    Setting("jwt_leeway_s", "JWT_LEEWAY_S", float, 2.0, "clock leeway for exp/nbf", 0, 30),
    Setting("jwt_user_claim", "JWT_USER_CLAIM", str, "userId", "claim holding the user id"),
    Setting(
        "allowed_origins",
        "ALLOWED_ORIGINS",
        _csv,
        (),
        "browser origins allowed (unset: same-origin or no Origin)",
    ),
    Setting("heartbeat_s", "HEARTBEAT_S", float, 30.0, "WebSocket ping interval", 0.1, 3600),
    Setting("auth_timeout_s", "AUTH_TIMEOUT_S", float, 5.0, "deadline of the auth frame", 0.1, 60),
    Setting(
        "outbox_max_messages", "OUTBOX_MAX_MESSAGES", int, 1000, "per-connection queue", 1, 10**6
    ),
    Setting(
        "outbox_max_bytes", "OUTBOX_MAX_BYTES", int, 1 << 20, "per-connection bytes", 1024, 1 << 30
    ),
    Setting("resume_window_s", "RESUME_WINDOW_S", float, 300.0, "resume buffer age", 1, 86400),
    Setting("resume_max_events", "RESUME_MAX_EVENTS", int, 1000, "resume buffer size", 1, 10**6),
    Setting("dedupe_window_s", "DEDUPE_WINDOW_S", float, 600.0, "event id memory", 1, 86400),
    Setting("dedupe_max_ids", "DEDUPE_MAX_IDS", int, 100_000, "event ids remembered", 100, 10**7),
    Setting("max_frame_bytes", "MAX_FRAME_BYTES", int, 65536, "largest client frame", 256, 1 << 24),
    Setting("max_connections_per_user", "MAX_CONNECTIONS_PER_USER", int, 50, "per user", 1, 10**6),
    Setting("max_connections", "MAX_CONNECTIONS", int, 20_000, "per replica", 1, 10**7),
    Setting("client_rate", "CLIENT_RATE", float, 20.0, "client frames per second", 0.01, 10**6),
    Setting("client_burst", "CLIENT_BURST", float, 40.0, "client frame burst", 1, 10**6),
    Setting("max_subscriptions", "MAX_SUBSCRIPTIONS", int, 1000, "per connection", 1, 10**6),
    Setting("shares_cache_s", "SHARES_CACHE_S", float, 5.0, "share list cache age", 0, 3600),
    Setting("connection_ttl_s", "CONNECTION_TTL_S", int, 60, "TTL of connection records", 3, 86400),
    Setting(
        "compression",
        "COMPRESSION",
        str,
        "off",
        "permessage-deflate",
        choices=("off", "deflate"),
    ),
    Setting("app_api_token", "APP_API_TOKEN", str, "", "token daprd must send to the app"),
    Setting("dapr_timeout_s", "DAPR_TIMEOUT_S", float, 2.0, "deadline of sidecar calls", 0.05, 120),
    Setting("handoff_queue", "HANDOFF_QUEUE", int, 10_000, "events waiting for the loop", 1, 10**7),
    Setting(
        "ack_ahead",
        "ACK_AHEAD",
        int,
        128,
        "events answered SUCCESS before their writes (recipients known); 0 = after",
        0,
        10**6,
    ),
    Setting("handoff_wait_s", "HANDOFF_WAIT_S", float, 0.5, "wait on a full queue", 0, 30),
    Setting(
        "handler_timeout_s",
        "HANDLER_TIMEOUT_S",
        float,
        10.0,
        "longest an event may take to route before RETRY",
        0.1,
        300,
    ),
    Setting("app_workers", "APP_WORKERS", int, 16, "gRPC handler threads", 1, 1024),
    Setting("drain_s", "DRAIN_S", float, 5.0, "window over which clients are closed", 0, 20),
    Setting("replica_id", "REPLICA_ID", str, "", "replica name (default: POD_NAME or host)"),
    Setting("board", "BOARD", _bool, False, "serve the live task board at /"),
    Setting(
        "log_level",
        "LOG_LEVEL",
        str,
        "info",
        "log level",
        choices=("debug", "info", "warning", "error"),
    ),
    Setting("log_format", "LOG_FORMAT", str, "json", "log format", choices=("json", "text")),
)


@dataclass(frozen=True)
class Settings:
    ws_host: str
    ws_port: int
    app_host: str
    app_port: int
    pubsub_name: str
    topic_name: str
    dead_letter_topic: str
    state_store_name: str
    jwt_secret: str
    jwt_public_key: str
    jwt_public_key_file: str
    jwt_algorithms: tuple[str, ...]
    jwt_audience: str
    jwt_issuer: str
    jwt_leeway_s: float
    jwt_user_claim: str
    allowed_origins: tuple[str, ...]
    heartbeat_s: float
    auth_timeout_s: float
    outbox_max_messages: int
    outbox_max_bytes: int
    resume_window_s: float
    resume_max_events: int
    dedupe_window_s: float
    dedupe_max_ids: int
    max_frame_bytes: int
    max_connections_per_user: int
    max_connections: int
    client_rate: float
    client_burst: float
    max_subscriptions: int
    shares_cache_s: float
    connection_ttl_s: int
    compression: str
    app_api_token: str
    dapr_timeout_s: float
    handoff_queue: int
    ack_ahead: int
    handoff_wait_s: float
    handler_timeout_s: float
    app_workers: int
    drain_s: float
    replica_id: str
    board: bool
    log_level: str
    log_format: str

    @property
    def jwt_key(self) -> str:
        """The verification key (validated at load)."""
        return check_key_setup(self.jwt_algorithms, self.jwt_secret, self.jwt_public_key)


def _convert(setting: Setting, raw: str) -> Any:
    try:
        value = setting.parse(raw)
    except ValueError as exc:
        raise SettingsError(f"{setting.env}={raw!r} is not valid: {exc}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError(f"{setting.env} must be a finite number")
    if setting.choices and isinstance(value, str):
        value = value.lower()
    if setting.choices and value not in setting.choices:
        raise SettingsError(f"{setting.env} must be one of {', '.join(setting.choices)}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if setting.minimum is not None and value < setting.minimum:
            raise SettingsError(f"{setting.env} must be at least {setting.minimum:g}")
        if setting.maximum is not None and value > setting.maximum:
            raise SettingsError(f"{setting.env} must be at most {setting.maximum:g}")
    return value


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (`--ws-port` for WS_PORT); a flag overrides the environment."""
    group = parser.add_argument_group("settings (each also read from its environment variable)")
    for s in SETTINGS:
        group.add_argument(
            "--" + s.name.replace("_", "-"),
            dest=s.name,
            default=None,
            metavar=s.env,
            help=f"{s.help} (default: {s.default!r})"
            if "secret" not in s.name and "token" not in s.name
            else s.help,
        )


def instance_name(environ: Mapping[str, str] | None = None) -> str:
    """Where this process runs, stable across restarts of the app: the pod (`POD_NAME`),
    else the host. Two runs on one instance sit behind the same sidecar."""
    env = os.environ if environ is None else environ
    return env.get("POD_NAME") or socket.gethostname()


def load_settings(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, str | None] | None = None,
    *,
    require_jwt: bool = True,
) -> Settings:
    """Parse the environment plus flag overrides; raise SettingsError naming the variable."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = (overrides or {}).get(s.name)
        if raw is None:
            raw = env.get(s.env)
        values[s.name] = s.default if raw is None else _convert(s, raw)

    if not values["dead_letter_topic"]:
        values["dead_letter_topic"] = f"{values['topic_name']}-deadletter"
    if not values["replica_id"]:
        values["replica_id"] = f"{instance_name(env)}-{uuid.uuid4().hex[:6]}"
    key_file = values["jwt_public_key_file"]
    if key_file and not values["jwt_public_key"]:
        try:
            values["jwt_public_key"] = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"JWT_PUBLIC_KEY_FILE cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SettingsError("JWT_PUBLIC_KEY_FILE is not a PEM (text) file") from None
    for name in ("pubsub_name", "topic_name", "state_store_name"):
        if not values[name]:
            env_name = next(s.env for s in SETTINGS if s.name == name)
            raise SettingsError(f"{env_name} must not be empty")
    if values["client_burst"] < 1:
        raise SettingsError("CLIENT_BURST must be at least 1")
    settings = Settings(**values)
    if require_jwt:
        try:
            settings.jwt_key  # noqa: B018 - validates the algorithm/key pairing
        except ValueError as exc:
            variable = "JWT_ALGORITHMS"
            text = str(exc)
            if "JWT_SECRET" in text:
                variable = "JWT_SECRET"
            elif "JWT_PUBLIC_KEY" in text:
                variable = "JWT_PUBLIC_KEY"
            raise SettingsError(f"{variable}: {text}") from None
    return settings


def settings_overrides(namespace: argparse.Namespace) -> dict[str, str | None]:
    return {f.name: getattr(namespace, f.name, None) for f in fields(Settings)}


def describe_settings() -> Sequence[tuple[str, str, str]]:
    """(variable, default, meaning) rows for the README's configuration table."""
    return [(s.env, repr(s.default), s.help) for s in SETTINGS]
