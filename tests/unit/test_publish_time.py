"""The latency histogram's start: daprd's whole-second envelope time, refined by the
publisher's own timestamp only when that lies within the same second."""

from __future__ import annotations

from datetime import UTC, datetime

from realtime_sync.core.events import parse_cloudevent_time
from realtime_sync.subscriber import publish_time

ENVELOPE = parse_cloudevent_time("2026-11-26T10:00:05Z")
RECEIVED = datetime(2026, 11, 26, 10, 0, 5, 900_000, tzinfo=UTC)


def test_a_publisher_timestamp_within_the_second_refines_the_envelope_time() -> None:
    assert ENVELOPE is not None
    found = publish_time(ENVELOPE, "2026-11-26T10:00:05.250Z", RECEIVED)
    assert found is not None
    assert abs(found - ENVELOPE.timestamp() - 0.25) < 1e-6


def test_an_old_or_defaulted_timestamp_leaves_the_envelope_time() -> None:
    assert ENVELOPE is not None
    for stamp in ("2001-01-01T00:00:00Z", RECEIVED.isoformat(), "not a time"):
        assert publish_time(ENVELOPE, stamp, RECEIVED) == ENVELOPE.timestamp()


def test_no_envelope_time_means_no_latency_sample() -> None:
    assert publish_time(None, "2026-11-26T10:00:05.250Z", RECEIVED) is None
