"""The dev sidecar's settings: one frozen, validated value built once at start."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class DeliveryMode(StrEnum):
    """How several attached app instances share a topic.

    ``broadcast``: every instance is its own consumer group and gets every message (what a
    component with ``consumerID: "{uuid}"`` gives). ``competing``: one group for the app-id,
    each message goes to one instance, round-robin (daprd's default, ``consumerID`` = app-id).
    """

    BROADCAST = "broadcast"
    COMPETING = "competing"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The inbound retry policy of the pub/sub component (resiliency.yaml, exponential)."""

    initial_s: float = 0.2
    max_interval_s: float = 5.0
    max_retries: int = 20  # -1 retries forever

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and math.isfinite(self.initial_s)):
            raise ValueError("retry initial interval must be a positive number of seconds")
        if not (self.max_interval_s >= self.initial_s and math.isfinite(self.max_interval_s)):
            raise ValueError("retry max interval must be at least the initial interval")
        if self.max_retries < -1:
            raise ValueError("max retries must be -1 (forever) or a count >= 0")

    def base_delay(self, failures: int) -> float:
        """Delay before the next attempt after ``failures`` failed ones (no jitter)."""
        exponent = min(max(failures - 1, 0), 64)
        return float(min(self.initial_s * 2.0**exponent, self.max_interval_s))

    def exhausted(self, failures: int) -> bool:
        """True when ``failures`` failed attempts used up the first try and every retry."""
        return self.max_retries >= 0 and failures > self.max_retries


def _check_port(name: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} must be a TCP port (0-65535; 0 picks a free one), got {port}")


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """Everything the dev sidecar needs; the CLI flags map one to one onto these fields."""

    grpc_port: int = 50001
    http_port: int = 3500
    app_ports: tuple[int, ...] = (50051,)
    app_host: str = "127.0.0.1"
    app_id: str = "realtime-sync"
    pubsub_name: str = "pubsub"
    state_store_name: str = "statestore"
    delivery: DeliveryMode = DeliveryMode.BROADCAST
    concurrency: int = 10
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    journal: Path | None = None
    listen_host: str = "127.0.0.1"
    dapr_api_token: str | None = field(default=None, repr=False)
    app_api_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_port("gRPC port", self.grpc_port)
        _check_port("HTTP port", self.http_port)
        if not self.app_ports:
            raise ValueError("at least one app port is needed")
        for port in self.app_ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"app port must be 1-65535, got {port}")
        if len(set(self.app_ports)) != len(self.app_ports):
            raise ValueError("app ports must be distinct")
        for name, value in (
            ("app id", self.app_id),
            ("pubsub name", self.pubsub_name),
            ("state store name", self.state_store_name),
            ("app host", self.app_host),
            ("listen host", self.listen_host),
        ):
            if not value or value != value.strip() or "/" in value:
                raise ValueError(f"{name} must be a non-empty name without '/' or spaces")
        if not 1 <= self.concurrency <= 1000:
            raise ValueError("concurrency must be between 1 and 1000")
