"""Deeply nested JSON gets a short 400 from the dev sidecar: no 500, no traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from bench.common import free_port
from realtime_sync.devsidecar.envelope import MAX_JSON_DEPTH
from tests.integration.harness import SidecarProcess, running_sidecar

TOPIC = "task-updates"


def nested(levels: int) -> bytes:
    return b'{"type":"TASK_ADDED","user_id":"u","task_id":1,"data":' + (
        b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"
    )


@pytest.fixture(scope="module")
def sidecar() -> Iterator[SidecarProcess]:
    # No app on the app port: whatever is published stays retained on the topic.
    with running_sidecar(app_ports=[free_port()]) as process:
        yield process


@pytest.mark.parametrize("levels", [500, 5000])
def test_a_publish_nested_too_deep_is_refused_with_400(
    sidecar: SidecarProcess, levels: int
) -> None:
    """5,000 levels used to answer 500 (RecursionError); 500 levels were published and then
    failed to re-serialise on every delivery attempt, with a long traceback each time."""
    before = len(sidecar.topic_messages(TOPIC))
    reply = sidecar.request(
        "POST",
        f"/v1.0/publish/pubsub/{TOPIC}",
        nested(levels),
        headers={"Content-Type": "application/json"},
    )
    assert reply.status == 400, reply
    message = reply.json()["message"]
    assert f"deeper than {MAX_JSON_DEPTH} levels" in message
    assert len(message) < 200
    assert len(sidecar.topic_messages(TOPIC)) == before
    assert "Traceback" not in sidecar.logs()


@pytest.mark.parametrize("levels", [500, 5000])
def test_a_state_value_nested_too_deep_is_refused_with_400(
    sidecar: SidecarProcess, levels: int
) -> None:
    body = b'[{"key":"deep","value":' + b"[" * levels + b"]" * levels + b"}]"
    reply = sidecar.request(
        "POST", "/v1.0/state/statestore", body, headers={"Content-Type": "application/json"}
    )
    assert reply.status == 400, reply
    assert f"deeper than {MAX_JSON_DEPTH} levels" in reply.json()["message"]
    assert sidecar.get_state("deep") is None
    assert "Traceback" not in sidecar.logs()


def test_json_up_to_the_bound_is_published(sidecar: SidecarProcess) -> None:
    assert sidecar.publish(TOPIC, nested(MAX_JSON_DEPTH)) == 204
    data = sidecar.topic_messages(TOPIC)[-1]["data"]
    assert data == json.loads(nested(MAX_JSON_DEPTH))
