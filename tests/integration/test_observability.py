"""What an operator sees: /metrics after a short, varied run, and the logs.

One service (real processes, sockets) is driven through every path a metric counts: two
users connected, subscriptions, events of several types (routed, dropped, stale, retried
while the state store is down), a refused token (close 4001), resumes that recover and
that do not. Then /metrics must expose every family the issue names with the values the
run implies, and the log must be one JSON object per line, carrying connection and event
ids but never a token or a message body.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import ServiceProcess, running_stack
from tests.integration.harness import wait_until

BODY_MARKER = "body-marker-" + uuid.uuid4().hex  # must never reach a log line


@pytest.fixture(scope="module")
def observed() -> Iterator[ServiceProcess]:
    with running_stack("observability") as service:
        yield service


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line of a Prometheus text page."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def families(text: str) -> dict[str, str]:
    """Metric family -> type, from the `# TYPE` lines."""
    return {
        parts[2]: parts[3]
        for parts in (line.split() for line in text.splitlines())
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]
    }


def event(user: str, task: str, kind: str = "TASK_CHANGED", **extra: Any) -> dict[str, Any]:
    return {"type": kind, "user_id": user, "task_id": task, **extra}


async def test_metrics_and_logs_after_a_short_run(observed: ServiceProcess) -> None:
    s = observed
    token = s.token("obs-alice")
    # --- connections: one by header, one by query parameter (the token is in the URL) ---
    async with (
        s.client("obs-alice") as alice,
        connect(f"{s.ws_url}?token={token}") as alice_tab,
        s.client("obs-bob") as bob,
    ):
        hello = orjson.loads(await alice_tab.recv())
        assert hello["type"] == "connected"
        await alice_tab.send(orjson.dumps({"type": "subscribe", "taskId": "obs-1"}).decode())
        assert orjson.loads(await alice_tab.recv())["type"] == "subscribed"

        # --- events: routed (two types, one shared), dropped, stale ---------------------
        s.publish(event("obs-alice", "obs-1", "TASK_ADDED", id="obs-e1"))
        assert (await alice.updates(1))[0]["event_id"] == "obs-e1"  # e1 buffered before e2
        s.publish(
            event(
                "obs-alice",
                "obs-1",
                id="obs-e2",
                data={"title": BODY_MARKER},
                metadata={"shared_with": ["obs-bob"]},
            )
        )
        assert (await alice.updates(1))[0]["event_id"] == "obs-e2"
        assert (await bob.updates(1))[0]["data"] == {"title": BODY_MARKER}
        assert s.sidecar.publish("task-updates", {"type": "TASK_CHANGED"}) == 204  # no user
        old = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        stale = {
            "specversion": "1.0",
            "id": "obs-stale-ce",
            "source": "publisher",
            "type": "com.dapr.event.sent",
            "time": old,
            "datacontenttype": "application/json",
            "data": event("obs-alice", "obs-1", id="obs-stale"),
        }
        s.sidecar.publish(
            "task-updates", orjson.dumps(stale), content_type="application/cloudevents+json"
        )

        # --- the state store fails: RETRY, state errors; then it recovers ---------------
        s.sidecar.set_fault("unavailable")
        try:
            s.publish(event("obs-bob", "obs-2", id="obs-e3", metadata={"shared_with": []}))
            wait_until(
                lambda: (
                    s.metric(
                        "realtime_sync_events_received_total", type="TASK_CHANGED", outcome="retry"
                    )
                    >= 1
                ),
                10,
                message="no RETRY while the state store is down",
            )
        finally:
            s.sidecar.set_fault(None)
        [late] = await bob.updates(1, timeout=15)  # redelivered by the sidecar, then routed
        assert late["event_id"] == "obs-e3"

        # --- resume: one id still buffered, one unknown -----------------------------------
        async with s.client("obs-alice", subscribe_all=False) as again:
            await again.send({"type": "subscribe", "all": True, "since": "obs-e1"})
            subscribed = await again.next()
            assert subscribed["recovered"] is True
            # The replay starts a reorder margin before `since` (the client drops the
            # overlap by event id), so it holds obs-e1 itself and then obs-e2.
            replayed = [(await again.next())["event_id"] for _ in range(subscribed["replayed"])]
            assert replayed[replayed.index("obs-e1") + 1] == "obs-e2"
            await again.send({"type": "subscribe", "all": True, "since": "never-seen"})
            assert (await again.next())["type"] == "resync_required"

        # --- a refused token: close 4001 -------------------------------------------------
        async with connect(f"{s.ws_url}?token=not-a-jwt") as refused:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(refused.recv(), 5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4001

        # Gauges while the three connections are open (subscriptions are recounted
        # every 5 s by the hub's housekeeping).
        wait_until(
            lambda: s.metric("realtime_sync_subscriptions") >= 3,
            8,
            message="subscriptions gauge",
        )
        live = samples(s.metrics())
        assert live["realtime_sync_connections"] == 3
        assert live["realtime_sync_users"] == 2

    page = s.metrics()
    got = samples(page)
    kinds = families(page)
    expected_families = {
        "realtime_sync_connections": "gauge",
        "realtime_sync_users": "gauge",
        "realtime_sync_subscriptions": "gauge",
        "realtime_sync_events_received": "counter",
        "realtime_sync_events_stale": "counter",
        "realtime_sync_messages_sent": "counter",
        "realtime_sync_bytes_sent": "counter",
        "realtime_sync_closes": "counter",
        "realtime_sync_resume": "counter",
        "realtime_sync_handoff_queue_depth": "gauge",
        "realtime_sync_state_call_seconds": "histogram",
        "realtime_sync_state_errors": "counter",
        "realtime_sync_delivery_latency_seconds": "histogram",
    }
    # prometheus-client names a counter's family after its `_total` sample.
    missing = {
        k: v
        for k, v in expected_families.items()
        if kinds.get(k + "_total" if v == "counter" else k) != v
    }
    assert not missing, f"missing or mistyped: {missing}"

    def value(name: str, **labels: str) -> float:
        # prometheus-client writes labels sorted by name.
        pairs = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return got.get(name + (f"{{{pairs}}}" if labels else ""), 0.0)

    received = "realtime_sync_events_received_total"
    assert value(received, type="TASK_ADDED", outcome="success") == 1
    assert value(received, type="TASK_CHANGED", outcome="success") == 3  # e2, e3, stale
    assert value(received, type="TASK_CHANGED", outcome="retry") >= 1
    assert sum(v for k, v in got.items() if k.startswith(received) and 'outcome="drop"' in k) == 1
    assert value("realtime_sync_events_stale_total") == 1
    # Live fan-out: e1 -> alice's two connections (all, taskId obs-1), e2 -> those two and
    # bob, e3 -> bob; plus the two frames the recovered resume replayed (e1 in the reorder
    # margin before `since`, and e2).
    assert value("realtime_sync_messages_sent_total") == 8
    assert value("realtime_sync_bytes_sent_total") > 6 * 100
    assert value("realtime_sync_closes_total", code="4001") == 1
    assert value("realtime_sync_resume_total", result="recovered") == 1
    assert value("realtime_sync_resume_total", result="not_recovered") == 1
    assert value("realtime_sync_handoff_queue_depth") == 0
    assert sum(v for k, v in got.items() if k.startswith("realtime_sync_state_errors_total")) >= 1
    assert (
        sum(v for k, v in got.items() if k.startswith("realtime_sync_state_call_seconds_count"))
        >= 1
    )
    assert value("realtime_sync_delivery_latency_seconds_count") >= 3
    assert value("realtime_sync_connections") == 0
    print("\n" + "\n".join(line for line in page.splitlines() if "realtime_sync_" in line))

    # --- logs: one JSON object per line, ids as fields, no token, no body --------------
    log_text = s.log_path.read_text(encoding="utf-8")
    records = []
    for number, line in enumerate(log_text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            pytest.fail(f"log line {number} is not JSON: {line[:200]}")
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        records.append(record)
    assert any("connection_id" in r for r in records), "no log line names a connection"
    assert any("event_id" in r or "cloudevent_id" in r for r in records), "no event id"
    assert token not in log_text
    assert token.split(".")[2] not in log_text  # not even the signature
    assert BODY_MARKER not in log_text
    assert "not-a-jwt" not in log_text
