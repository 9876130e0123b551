"""The dev sidecar's settings: one frozen, validated value built once at start."""

from __future__ import annotations

import math
import random
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
    """A Resiliency retry policy, with dapr/kit ``retry.DefaultConfig``'s defaults.

    ``constant``: wait ``duration`` between attempts. ``exponential``: ``initialInterval``
    times ``multiplier`` per retry, capped at ``maxInterval``, each randomised by
    ``± randomizationFactor`` (cenkalti/backoff, which dapr/kit uses). ``maxRetries`` -1
    retries forever.
    """

    policy: str = "constant"
    duration_s: float = 5.0
    initial_s: float = 0.5
    max_interval_s: float = 60.0
    multiplier: float = 1.5
    randomization: float = 0.5
    max_retries: int = -1

    def __post_init__(self) -> None:
        if self.policy not in ("constant", "exponential"):
            raise ValueError(f"policy must be constant or exponential, got {self.policy!r}")
        for name, value in (
            ("duration", self.duration_s),
            ("initialInterval", self.initial_s),
            ("maxInterval", self.max_interval_s),
        ):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a duration >= 0")
        if not (self.multiplier >= 1 and math.isfinite(self.multiplier)):
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.randomization < 1:
            raise ValueError("randomizationFactor must be in [0, 1)")
        if self.max_retries < -1:
            raise ValueError("maxRetries must be -1 (forever) or a count >= 0")

    def delay(self, failures: int, rng: random.Random) -> float:
        """Delay before the next attempt after ``failures`` failed ones."""
        if self.policy == "constant":
            return self.duration_s
        exponent = min(max(failures - 1, 0), 64)
        base = min(self.initial_s * self.multiplier**exponent, self.max_interval_s)
        return base * rng.uniform(1 - self.randomization, 1 + self.randomization)

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
    retry: RetryPolicy | None = None  # the pub/sub inbound retry; None: no retries
    delivery_timeout_s: float | None = None  # the inbound timeout; None: no deadline
    resources: str = "no resiliency policy"  # where the two came from, for the log
    app_health_check: bool = False
    app_health_probe_interval_s: float = 5.0
    app_health_probe_timeout_s: float = 0.5
    app_health_threshold: int = 3
    block_shutdown_s: float | None = None
    journal: Path | None = None
    listen_host: str = "127.0.0.1"
    allowed_origins: tuple[str, ...] = ()  # browser origins served (daprd's flag); "*": any
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
        if not 0 < self.app_health_probe_timeout_s <= self.app_health_probe_interval_s:
            # daprd refuses the same (pkg/apphealth/health.go StartProbes)
            raise ValueError("app health probe timeout must be > 0 and <= the probe interval")
        if self.app_health_threshold < 1:
            raise ValueError("app health threshold must be >= 1")
