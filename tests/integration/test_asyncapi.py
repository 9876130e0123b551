"""docs/asyncapi.yaml describes what the real server sends, and what publishers and clients send."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from realtime_sync.core.outcomes import CloseCode
from realtime_sync.demo import Story
from tests.integration.conftest import ServiceProcess

DOC = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
)


def validator(name: str) -> jsonschema.Draft7Validator:
    """A validator for one component schema; `#/…` references resolve against the document."""
    return jsonschema.Draft7Validator({**DOC, "$ref": f"#/components/schemas/{name}"})


SERVER = validator("ServerMessage")
BY_TYPE = {
    "connected": "Connected",
    "task_update": "TaskUpdate",
    "subscribed": "Subscribed",
    "unsubscribed": "Unsubscribed",
    "pong": "Pong",
    "refreshed": "Refreshed",
    "resync_required": "ResyncRequired",
    "error": "Error",
}


def schema_of(frame: dict[str, Any]) -> str:
    if frame.get("action") == "task_access_revoked":
        return "AccessRevoked"
    return BY_TYPE[frame["type"]]


def test_the_document_is_asyncapi_3_and_lists_every_close_code() -> None:
    assert DOC["asyncapi"].startswith("3.")
    assert set(DOC["x-close-codes"]) == {int(c) for c in CloseCode}
    for message in DOC["channels"]["websocket"]["messages"].values():
        assert (
            message["$ref"].removeprefix("#/components/messages/") in DOC["components"]["messages"]
        )


async def test_every_frame_the_server_sends_validates(stack: ServiceProcess) -> None:
    frames: list[dict[str, Any]] = []
    async with stack.client("schema-a", subscribe_all=False) as client:

        async def exchange(frame: dict[str, Any] | str | bytes, count: int = 1) -> None:
            if isinstance(frame, bytes):
                await client.ws.send(frame)
            else:
                await client.send(frame)
            for _ in range(count):
                frames.append(await client.next())

        await exchange({"type": "subscribe", "all": True, "id": 1})
        await exchange({"type": "subscribe", "taskId": "t-9"})
        added = {"type": "TASK_ADDED", "user_id": "schema-a", "task_id": 5, "id": "sa-1"}
        added |= {"data": {"title": "x"}, "metadata": {"shared_with": ["b"]}}
        assert stack.publish(added) == 204
        frames.append(await client.next())
        assert (
            stack.publish({"type": "SOMETHING_ELSE", "user_id": "schema-a", "task_id": "s"}) == 204
        )
        frames.append(await client.next())
        shared = {"type": "TASK_ADDED", "user_id": "schema-o", "task_id": 6, "id": "so-1"}
        shared |= {"timestamp": "2026-12-01T10:00:00Z", "metadata": {"shared_with": ["schema-a"]}}
        assert stack.publish(shared) == 204
        frames.append(await client.next())
        unshared = {**shared, "id": "so-2", "timestamp": "2026-12-01T10:00:01Z"}
        assert stack.publish({**unshared, "metadata": {"shared_with": []}}) == 204
        frames.append(await client.next())
        await exchange({"type": "ping", "id": "p"})
        await exchange({"type": "unsubscribe", "taskId": "t-9", "id": 3})
        await exchange({"type": "unsubscribe", "all": True})
        await exchange({"type": "subscribe", "all": True, "since": "sa-1"}, 1)
        await exchange({"type": "subscribe", "taskId": 5, "since": "no-such-id"}, 2)
        await exchange({"type": "refresh", "token": stack.token("schema-a"), "id": 4})
        await exchange({"type": "refresh", "token": stack.token("someone-else")})
        await exchange({"type": "auth", "token": stack.token("schema-a")})
        await exchange("{not json")
        await exchange({"type": "dance"})
        await exchange({"type": "subscribe", "all": "yes"})
        await exchange(b"\x00binary")
    frames.append(client.hello)
    seen = {f["type"] for f in frames}
    assert seen == set(BY_TYPE), seen
    assert {f.get("action") for f in frames if f["type"] == "task_update"} == {
        "task_created",
        "task_unknown_event",
        "task_access_revoked",
    }
    for frame in frames:
        SERVER.validate(frame)
        validator(schema_of(frame)).validate(frame)
    token_exp = frames[-1]["exp"]
    assert isinstance(token_exp, float) and token_exp > time.time()  # the token's own exp


def test_the_schemas_reject_what_the_server_must_not_send() -> None:
    update = {"type": "task_update", "action": "task_updated", "event_type": "TASK_CHANGED",
              "event_id": "e", "task_id": 1, "user_id": "u", "data": {}, "timestamp": "t",
              "metadata": {}}  # fmt: skip
    SERVER.validate(update)
    for broken in (
        {k: v for k, v in update.items() if k != "event_id"},
        {**update, "action": "task_exploded"},
        {"type": "subscribed"},
        {"type": "error", "code": "bad_json"},
        # a revocation never carries task data
        {
            "type": "task_update",
            "action": "task_access_revoked",
            "task_id": 1,
            "event_id": "e",
            "data": {"title": "secret"},
        },
    ):
        with pytest.raises(jsonschema.ValidationError):
            SERVER.validate(broken)


def test_what_the_demo_publishes_is_a_valid_task_event() -> None:
    check = validator("TaskEvent")
    story = Story(["alice", "bob"], rng=random.Random(3))
    kinds = set()
    for _ in range(300):
        event = story.step()
        check.validate(event)
        kinds.add(event["type"])
    assert kinds == {"TASK_ADDED", "TASK_CHANGED", "TASK_STATUS_CHANGED", "TASK_REMOVED",
                     "TASK_RESTORED"}  # fmt: skip


def test_what_the_clients_send_is_a_valid_client_message() -> None:
    check = validator("ClientMessage")
    for frame in (
        {"type": "subscribe", "all": True, "id": 1, "since": "e1"},
        {"type": "subscribe", "taskId": 7, "id": 2},
        {"type": "ping", "id": 3},
        {"type": "auth", "token": "a.b.c", "id": 4},
    ):
        check.validate(frame)
    with pytest.raises(jsonschema.ValidationError):
        check.validate({"type": "subscribe", "all": True, "taskId": 1})
