"""Settings: read once from the environment (flags override), typed, frozen, failing fast.

Each setting is declared once, as a field of `Settings`: its type, default, help and
bounds. SETTINGS (variable, parser, default, help, bounds per setting) and the CLI flags are
derived from those fields.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, get_type_hints

from realtime_sync.core.auth import check_key_setup
from realtime_sync.core.resume import DEFAULT_MAX_BYTES, DEFAULT_MAX_USERS


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
    """One setting as the CLI sees it, derived from its `Settings` field:
    the variable is the field's name in capitals, the flag `--field-name`."""

    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None


def setting(
    default: Any,
    meaning: str,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """Declare a field of `Settings`: its default, its meaning, its bounds or choices."""
    return field(
        default=default,
        metadata={"help": meaning, "minimum": minimum, "maximum": maximum, "choices": choices},
    )


@dataclass(frozen=True)
class Settings:
    """Every setting, declared once: the type parses the variable, `setting()` holds
    the rest."""

    ws_host: str = setting("0.0.0.0", "interface of the WebSocket/HTTP server")
    ws_port: int = setting(8080, "WebSocket and HTTP port", 0, 65535)
    app_host: str = setting("127.0.0.1", "interface of the gRPC app callback")
    app_port: int = setting(50051, "gRPC app callback port (Dapr sets it)", 0, 65535)
    pubsub_name: str = setting("pubsub", "Dapr pub/sub component")
    topic_name: str = setting("task-updates", "topic of task events")
    control_topic: str = setting(
        "realtime-sync-control", "topic of control messages between replicas (disconnect_user)"
    )
    dead_letter_topic: str = setting("", "dead-letter topic (default: TOPIC_NAME-deadletter)")
    state_store_name: str = setting("statestore", "Dapr state store")
    jwt_secret: str = setting("", "HMAC key for HS* tokens (>= 32 bytes)")
    jwt_public_key: str = setting("", "PEM public key for RS/ES/EdDSA tokens")
    jwt_public_key_file: str = setting("", "file with the PEM public key")
    jwt_algorithms: tuple[str, ...] = setting(("HS256",), "accepted algorithms (pinned)")
    jwt_audience: str = setting("", "required `aud` when set")
    jwt_issuer: str = setting("", "required `iss` when set")
    jwt_leeway_s: float = setting(2.0, "clock leeway for exp/nbf", 0, 30)
    jwt_user_claim: str = setting("userId", "claim holding the user id")
    max_token_lifetime_s: int = setting(
        86400,
        "longest token lifetime (exp - iat) accepted; TTL of a disconnect_user cutoff",
        60,
        90 * 86400,
    )
    allowed_origins: tuple[str, ...] = setting(
        (), "browser origins allowed (unset: same-origin or no Origin)"
    )
    heartbeat_s: float = setting(30.0, "WebSocket ping interval", 0.1, 3600)
    auth_timeout_s: float = setting(5.0, "deadline of the auth frame", 0.1, 60)
    outbox_max_messages: int = setting(1000, "per-connection queue", 1, 10**6)
    outbox_max_bytes: int = setting(1 << 20, "per-connection bytes", 1024, 1 << 30)
    resume_window_s: float = setting(300.0, "resume buffer age", 1, 86400)
    resume_max_events: int = setting(1000, "resume buffer size", 1, 10**6)
    resume_margin_s: float = setting(2.0, "resume reorder margin (seconds)", 0, 3600)
    resume_margin_events: int = setting(64, "resume reorder margin (entries)", 0, 10**6)
    resume_max_users: int = setting(
        DEFAULT_MAX_USERS, "users with a resume buffer (least recently used evicted)", 1, 10**8
    )
    resume_max_bytes: int = setting(
        DEFAULT_MAX_BYTES, "memory of all resume buffers (LRU users evicted)", 1 << 20, 1 << 40
    )
    dedupe_window_s: float = setting(600.0, "event id memory", 1, 86400)
    dedupe_max_ids: int = setting(100_000, "event ids remembered", 100, 10**7)
    max_frame_bytes: int = setting(65536, "largest client frame", 256, 1 << 24)
    max_connections_per_user: int = setting(50, "per user", 1, 10**6)
    max_connections: int = setting(20_000, "per replica", 1, 10**7)
    max_unauthenticated: int = setting(
        1000, "token-less sockets waiting for their auth frame, per replica", 1, 10**6
    )
    max_unauthenticated_per_address: int = setting(
        100, "token-less sockets waiting for their auth frame, per client address", 1, 10**6
    )
    client_rate: float = setting(20.0, "client frames per second", 0.01, 10**6)
    client_burst: float = setting(40.0, "client frame burst", 1, 10**6)
    max_subscriptions: int = setting(1000, "per connection", 1, 10**6)
    since_lookup_rate: float = setting(
        1.0,
        "`since` look-ups missing the buffer that may read the state store, per second "
        "per connection",
        0.01,
        10**4,
    )
    since_lookup_burst: float = setting(5.0, "burst of those look-ups", 1, 10**4)
    shares_cache_s: float = setting(5.0, "share list cache age", 0, 3600)
    max_shared_with: int = setting(
        1000, "users one event's metadata.shared_with may name (more: DROP)", 1, 100_000
    )
    max_event_bytes: int = setting(
        256 * 1024, "largest event data accepted from the topic (more: DROP)", 1024, 4 << 20
    )
    connection_ttl_s: int = setting(60, "TTL of connection records", 3, 86400)
    record_max_subscriptions: int = setting(
        100, "subscriptions listed in a connection record (then a count)", 0, 10**5
    )
    presence_batch_bytes: int = setting(
        1 << 20, "largest bulk save of connection records (gRPC's limit is 4 MiB)", 4096, 3 << 20
    )
    compression: str = setting("off", "permessage-deflate", choices=("off", "deflate"))
    app_api_token: str = setting("", "token daprd must send to the app")
    dapr_timeout_s: float = setting(2.0, "deadline of sidecar calls", 0.05, 120)
    handoff_queue: int = setting(10_000, "events waiting for the loop", 1, 10**7)
    ack_ahead: int = setting(
        256, "events answered SUCCESS before their writes (recipients known); 0 = after", 0, 10**6
    )
    handoff_wait_s: float = setting(0.5, "wait on a full queue", 0, 30)
    handler_timeout_s: float = setting(
        10.0, "longest an event may take to route before RETRY", 0.1, 300
    )
    app_workers: int = setting(16, "gRPC handler threads", 1, 1024)
    bulk_subscribe: bool = setting(True, "ask daprd for bulk delivery (OnBulkTopicEvent)")
    bulk_max_messages: int = setting(100, "most events daprd puts in one bulk call", 1, 10_000)
    bulk_max_await_ms: int = setting(5, "longest daprd holds a partial batch (ms)", 1, 60_000)
    drain_s: float = setting(5.0, "window over which clients are closed", 0, 20)
    replica_id: str = setting("", "replica name (default: POD_NAME or host)")
    board: bool = setting(False, "serve the live task board at /")
    log_level: str = setting("info", "log level", choices=("debug", "info", "warning", "error"))
    log_format: str = setting("json", "log format", choices=("json", "text"))

    @cached_property
    def jwt_key(self) -> str:
        """The verification key, checked against the algorithms once (load_settings
        does it first, so a bad pairing fails at start)."""
        return check_key_setup(self.jwt_algorithms, self.jwt_secret, self.jwt_public_key)


PARSERS: dict[Any, Callable[[str], Any]] = {
    str: str,
    int: int,
    float: float,
    bool: _bool,
    tuple[str, ...]: _csv,
}


def _rows() -> tuple[Setting, ...]:
    hints = get_type_hints(Settings)
    return tuple(
        Setting(
            name=f.name,
            env=f.name.upper(),
            parse=PARSERS[hints[f.name]],
            default=f.default,
            help=f.metadata["help"],
            minimum=f.metadata["minimum"],
            maximum=f.metadata["maximum"],
            choices=f.metadata["choices"],
        )
        for f in fields(Settings)
    )


SETTINGS: tuple[Setting, ...] = _rows()
ENV_OF = {s.name: s.env for s in SETTINGS}


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
    if values["control_topic"] in {values["topic_name"], values["dead_letter_topic"]}:
        raise SettingsError("CONTROL_TOPIC must differ from TOPIC_NAME and DEAD_LETTER_TOPIC")
    for name in ("pubsub_name", "topic_name", "state_store_name", "control_topic"):
        if not values[name]:
            raise SettingsError(f"{ENV_OF[name]} must not be empty")
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
    return {s.name: getattr(namespace, s.name, None) for s in SETTINGS}
