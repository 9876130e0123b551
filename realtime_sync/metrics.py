"""Prometheus metrics, named realtime_sync_* (after Centrifugo's set)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# No `*_created` timestamp series: they double the series count of every counter and
# histogram and no dashboard or alert here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """All metrics of one service instance, in their own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge(
            "realtime_sync_connections", "Open WebSocket connections", registry=r
        )
        self.users = Gauge("realtime_sync_users", "Users with an open connection", registry=r)
        self.subscriptions = Gauge(
            "realtime_sync_subscriptions", "Subscriptions over all connections", registry=r
        )
        self.events = Counter(
            "realtime_sync_events_received",
            "Pub/sub events by type and the answer given to Dapr",
            ["type", "outcome"],
            registry=r,
        )
        self.events_stale = Counter(
            "realtime_sync_events_stale",
            "Events acknowledged without push: older than the resume window on arrival",
            registry=r,
        )
        self.events_acked_ahead = Counter(
            "realtime_sync_events_acked_ahead",
            "Events answered SUCCESS with their recipients known, before the loop wrote them",
            registry=r,
        )
        self.events_lost = Counter(
            "realtime_sync_events_lost",
            "Events answered SUCCESS to Dapr that were never routed or written, by where they "
            "were lost (routing: a crash; drain: SIGTERM's drain ran out of time); their users "
            "get resync_required on their next resume",
            ["stage"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "realtime_sync_events_duplicate",
            "Redelivered event ids acknowledged without sending again",
            registry=r,
        )
        self.events_over_limit = Counter(
            "realtime_sync_events_over_limit",
            "Events dropped for a bound (MAX_EVENT_BYTES, MAX_SHARED_WITH), by bound",
            ["limit"],
            registry=r,
        )
        self.share_owner_mismatch = Counter(
            "realtime_sync_share_owner_mismatch",
            "Stored share lists not used because they name another owner than the event's",
            registry=r,
        )
        self.shares_changes = Counter(
            "realtime_sync_shares_changes",
            "Share-list changes by result: applied, already applied, or older than stored",
            ["result"],
            registry=r,
        )
        self.revocations_sent = Counter(
            "realtime_sync_revocations_sent",
            "task_access_revoked frames queued to connections",
            registry=r,
        )
        self.messages_sent = Counter(
            "realtime_sync_messages_sent", "Frames queued or written to clients", registry=r
        )
        self.bytes_sent = Counter(
            "realtime_sync_bytes_sent", "Bytes of frames queued or written to clients", registry=r
        )
        self.closes = Counter(
            "realtime_sync_closes",
            "Connections closed by the server, by code",
            ["code"],
            registry=r,
        )
        self.handshakes_refused = Counter(
            "realtime_sync_handshakes_refused",
            "Handshakes refused before the upgrade, by reason",
            ["reason"],
            registry=r,
        )
        self.resume = Counter(
            "realtime_sync_resume", "Subscribes with `since`, by result", ["result"], registry=r
        )
        self.resume_evictions = Counter(
            "realtime_sync_resume_evictions",
            "Users whose resume buffer was dropped early (RESUME_MAX_USERS or "
            "RESUME_MAX_BYTES), by the bound hit; their next resume gets resync_required",
            ["bound"],
            registry=r,
        )
        self.resume_users = Gauge(
            "realtime_sync_resume_users", "Users with a resume buffer", registry=r
        )
        self.resume_bytes = Gauge(
            "realtime_sync_resume_bytes",
            "Memory held by resume buffers, as counted against RESUME_MAX_BYTES",
            registry=r,
        )
        self.handoff_depth = Gauge(
            "realtime_sync_handoff_queue_depth", "Events waiting for the event loop", registry=r
        )
        self.state_latency = Histogram(
            "realtime_sync_state_call_seconds",
            "Latency of Dapr state store calls",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.state_errors = Counter(
            "realtime_sync_state_errors", "Failed Dapr state store calls", ["op"], registry=r
        )
        self.delivery_latency = Histogram(
            "realtime_sync_delivery_latency_seconds",
            "From the event's publish time (CloudEvent time) to the socket write",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cutoff_lookups = Counter(
            "realtime_sync_cutoff_lookups",
            "Reads of a user's disconnect_user cutoff from the state store, by result",
            ["result"],
            registry=r,
        )
        self.users_disconnected = Counter(
            "realtime_sync_users_disconnected",
            "disconnect_user control messages applied by this replica",
            registry=r,
        )
        self.limits_hit = Counter(
            "realtime_sync_limits_hit",
            "Times a bound an attacker could push was reached, by limit",
            ["limit"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
