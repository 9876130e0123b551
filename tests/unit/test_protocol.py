"""The client-message protocol: parsing client frames, building server frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_sync.core.protocol import (
    MAX_TOKEN_LENGTH,
    Auth,
    BadMessage,
    ClientMessage,
    MessageId,
    Ping,
    Refresh,
    Subscribe,
    Unsubscribe,
    connected_frame,
    error_frame,
    parse_client_message,
    pong_frame,
    refreshed_frame,
    resync_required_frame,
    subscribed_frame,
    unsubscribed_frame,
)

BAD_CODES = {"bad_frame", "bad_json", "bad_message", "unknown_type"}
MESSAGE_TYPES = (Subscribe, Unsubscribe, Ping, Auth, Refresh)


def _parse(payload: object) -> ClientMessage | BadMessage:
    return parse_client_message(orjson.dumps(payload).decode())


def _frame(raw: bytes) -> dict[str, Any]:
    frame = orjson.loads(raw)
    assert isinstance(frame, dict)
    return frame


# --- client → server ---------------------------------------------------------------------


def test_subscribe_all() -> None:
    msg = _parse({"type": "subscribe", "all": True})
    assert msg == Subscribe(id=None, all=True, task_id=None, since=None)
    assert isinstance(msg, Subscribe)
    assert msg.task_key is None


@pytest.mark.parametrize(("task_id", "key"), [(7, "7"), ("7", "7"), ("t-1", "t-1"), (0, "0")])
def test_subscribe_to_one_task_keys_it_by_its_string_form(task_id: int | str, key: str) -> None:
    msg = _parse({"type": "subscribe", "taskId": task_id})
    assert msg == Subscribe(id=None, all=False, task_id=task_id, since=None)
    assert isinstance(msg, Subscribe)
    assert msg.task_key == key


def test_subscribe_with_all_false_and_a_task_id_is_a_task_subscription() -> None:
    assert _parse({"type": "subscribe", "all": False, "taskId": 3}) == Subscribe(
        None, False, 3, None
    )


@pytest.mark.parametrize(("since", "expected"), [("evt-9", "evt-9"), (12, "12")])
def test_subscribe_since_carries_the_event_id_as_a_string(since: object, expected: str) -> None:
    msg = _parse({"type": "subscribe", "all": True, "since": since})
    assert msg == Subscribe(id=None, all=True, task_id=None, since=expected)


@pytest.mark.parametrize("value", [1764873723, 1764873723.25])
def test_subscribe_since_time_carries_the_last_events_publish_time(value: float) -> None:
    msg = _parse({"type": "subscribe", "all": True, "since": "e9", "since_time": value})
    assert msg == Subscribe(None, True, None, "e9", float(value))


@pytest.mark.parametrize("value", ["2026-12-04T10:00:00Z", True, -1, [1.0]])
def test_a_since_time_that_is_not_a_unix_time_is_refused(value: object) -> None:
    msg = _parse({"type": "subscribe", "all": True, "since": "e9", "since_time": value})
    assert isinstance(msg, BadMessage)
    assert "since_time" in msg.message


def test_resync_required_says_why() -> None:
    msg = Subscribe(3, True, None, "e9")
    assert _frame(resync_required_frame(msg, "window_ended"))["reason"] == "window_ended"
    assert "reason" not in _frame(resync_required_frame(msg))


def test_subscribe_with_null_since_has_no_since() -> None:
    msg = _parse({"type": "subscribe", "taskId": 1, "since": None})
    assert msg == Subscribe(id=None, all=False, task_id=1, since=None)


def test_unsubscribe_from_a_task() -> None:
    msg = _parse({"type": "unsubscribe", "taskId": "9"})
    assert msg == Unsubscribe(id=None, all=False, task_id="9")
    assert isinstance(msg, Unsubscribe)
    assert msg.task_key == "9"


def test_unsubscribe_all() -> None:
    msg = _parse({"type": "unsubscribe", "all": True})
    assert msg == Unsubscribe(id=None, all=True, task_id=None)
    assert isinstance(msg, Unsubscribe)
    assert msg.task_key is None


def test_ping() -> None:
    assert _parse({"type": "ping"}) == Ping(id=None)


def test_auth_carries_the_token() -> None:
    assert _parse({"type": "auth", "token": "a.b.c"}) == Auth(id=None, token="a.b.c")


def test_refresh_carries_the_token() -> None:
    assert _parse({"type": "refresh", "token": "x.y.z"}) == Refresh(id=None, token="x.y.z")


def test_a_token_of_the_maximum_length_is_accepted() -> None:
    token = "t" * MAX_TOKEN_LENGTH
    assert _parse({"type": "auth", "token": token}) == Auth(None, token)


def test_unknown_extra_fields_are_ignored() -> None:
    assert _parse({"type": "ping", "extra": {"x": 1}}) == Ping(None)


@pytest.mark.parametrize("msg_id", [7, 0, -3, 2**63, "req-1", "", "i" * 128], ids=repr)
@pytest.mark.parametrize(
    "payload",
    [
        {"type": "ping"},
        {"type": "subscribe", "all": True},
        {"type": "subscribe", "taskId": 1, "since": "e"},
        {"type": "unsubscribe", "taskId": 1},
        {"type": "auth", "token": "t"},
        {"type": "refresh", "token": "t"},
    ],
    ids=lambda p: str(p["type"]),
)
def test_every_message_carries_its_id_int_or_str(
    payload: dict[str, Any], msg_id: int | str
) -> None:
    msg = _parse({**payload, "id": msg_id})
    assert isinstance(msg, MESSAGE_TYPES)
    assert msg.id == msg_id
    assert type(msg.id) is type(msg_id)


# --- bad frames --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(b'{"type":"ping"}', "bad_frame", id="binary"),
        pytest.param("not json", "bad_json", id="not-json"),
        pytest.param("", "bad_json", id="empty"),
        pytest.param("{", "bad_json", id="truncated"),
        pytest.param("{'type':'ping'}", "bad_json", id="single-quotes"),
        pytest.param("\ud800", "bad_json", id="lone-surrogate"),
        pytest.param("[" * 3000, "bad_json", id="too-deep"),
        pytest.param("[]", "bad_message", id="array"),
        pytest.param('"ping"', "bad_message", id="string"),
        pytest.param("42", "bad_message", id="number"),
        pytest.param("null", "bad_message", id="null"),
        pytest.param("{}", "bad_message", id="no-type"),
        pytest.param('{"type":null}', "bad_message", id="null-type"),
        pytest.param('{"type":5}', "bad_message", id="numeric-type"),
        pytest.param('{"type":["ping"]}', "bad_message", id="list-type"),
        pytest.param('{"type":"dance"}', "unknown_type", id="unknown-type"),
        pytest.param('{"type":"PING"}', "unknown_type", id="case-sensitive-type"),
        pytest.param('{"type":"subscribe"}', "bad_message", id="subscribe-neither"),
        pytest.param('{"type":"subscribe","all":false}', "bad_message", id="subscribe-all-false"),
        pytest.param('{"type":"subscribe","all":true,"taskId":1}', "bad_message", id="both"),
        pytest.param(
            '{"type":"unsubscribe","all":true,"taskId":"1"}', "bad_message", id="unsub-both"
        ),
        pytest.param('{"type":"unsubscribe"}', "bad_message", id="unsub-neither"),
        pytest.param('{"type":"subscribe","all":"yes"}', "bad_message", id="all-string"),
        pytest.param('{"type":"subscribe","all":1}', "bad_message", id="all-int"),
        pytest.param('{"type":"subscribe","taskId":true}', "bad_message", id="taskid-bool"),
        pytest.param('{"type":"subscribe","taskId":1.5}', "bad_message", id="taskid-float"),
        pytest.param('{"type":"subscribe","taskId":[1]}', "bad_message", id="taskid-list"),
        pytest.param('{"type":"subscribe","taskId":{}}', "bad_message", id="taskid-object"),
        pytest.param('{"type":"subscribe","taskId":""}', "bad_message", id="taskid-empty"),
        pytest.param('{"type":"subscribe","all":true,"since":""}', "bad_message", id="since-empty"),
        pytest.param(
            '{"type":"subscribe","all":true,"since":true}', "bad_message", id="since-bool"
        ),
        pytest.param('{"type":"subscribe","all":true,"since":[]}', "bad_message", id="since-list"),
        pytest.param(
            '{"type":"subscribe","all":true,"since":1.5}', "bad_message", id="since-float"
        ),
        pytest.param('{"type":"ping","id":1e300}', "bad_message", id="id-float"),
        pytest.param('{"type":"ping","id":1' + "0" * 40 + "}", "bad_message", id="id-huge"),
        pytest.param('{"type":"ping","id":true}', "bad_message", id="id-bool"),
        pytest.param('{"type":"ping","id":[1]}', "bad_message", id="id-list"),
        pytest.param('{"type":"ping","id":{"a":1}}', "bad_message", id="id-object"),
        pytest.param('{"type":"ping","id":"' + "i" * 129 + '"}', "bad_message", id="id-long"),
        pytest.param('{"type":"auth"}', "bad_message", id="auth-no-token"),
        pytest.param('{"type":"auth","token":""}', "bad_message", id="auth-empty-token"),
        pytest.param('{"type":"auth","token":null}', "bad_message", id="auth-null-token"),
        pytest.param('{"type":"auth","token":123}', "bad_message", id="auth-numeric-token"),
        pytest.param('{"type":"refresh","token":""}', "bad_message", id="refresh-empty-token"),
        pytest.param('{"type":"refresh","token":["a"]}', "bad_message", id="refresh-list-token"),
    ],
)
def test_a_bad_frame_is_a_bad_message_with_a_code(raw: str | bytes, code: str) -> None:
    msg = parse_client_message(raw)
    assert isinstance(msg, BadMessage)
    assert msg.code == code
    assert msg.message


def test_an_overlong_token_is_a_bad_message() -> None:
    msg = _parse({"type": "auth", "token": "t" * (MAX_TOKEN_LENGTH + 1)})
    assert isinstance(msg, BadMessage)
    assert msg.code == "bad_message"


def test_an_overlong_since_is_a_bad_message() -> None:
    msg = _parse({"type": "subscribe", "all": True, "since": "e" * 257})
    assert isinstance(msg, BadMessage)
    assert msg.code == "bad_message"


def test_a_bad_message_echoes_the_id_when_the_id_itself_is_valid() -> None:
    assert _parse({"type": "dance", "id": 5}) == BadMessage(
        5, "unknown_type", "unknown message type"
    )
    bad = _parse({"type": "subscribe", "id": "r1"})
    assert isinstance(bad, BadMessage)
    assert bad.id == "r1"


def test_a_bad_id_is_not_echoed() -> None:
    bad = _parse({"type": "ping", "id": True})
    assert isinstance(bad, BadMessage)
    assert bad.id is None


# --- server → client ---------------------------------------------------------------------


def test_connected_frame_has_the_designed_fields() -> None:
    assert _frame(connected_frame("c-1", "alice", 30.0, 1795708800.0)) == {
        "type": "connected",
        "connection_id": "c-1",
        "user_id": "alice",
        "heartbeat_s": 30.0,
        "exp": 1795708800.0,
    }


def test_pong_frame() -> None:
    assert _frame(pong_frame(None)) == {"type": "pong"}


def test_subscribed_frame_names_the_target() -> None:
    assert _frame(subscribed_frame(Subscribe(None, True, None, None))) == {
        "type": "subscribed",
        "all": True,
    }
    assert _frame(subscribed_frame(Subscribe(None, False, "7", None))) == {
        "type": "subscribed",
        "taskId": "7",
    }


def test_subscribed_frame_reports_a_replay_only_when_asked() -> None:
    msg = Subscribe(None, False, 3, "e1")
    assert _frame(subscribed_frame(msg, recovered=True, replayed=4)) == {
        "type": "subscribed",
        "taskId": 3,
        "recovered": True,
        "replayed": 4,
    }
    assert "recovered" not in _frame(subscribed_frame(msg))


def test_unsubscribed_frame_names_the_target() -> None:
    assert _frame(unsubscribed_frame(Unsubscribe(None, False, 9))) == {
        "type": "unsubscribed",
        "taskId": 9,
    }
    assert _frame(unsubscribed_frame(Unsubscribe(None, True, None))) == {
        "type": "unsubscribed",
        "all": True,
    }


def test_resync_required_frame_names_the_lost_id() -> None:
    assert _frame(resync_required_frame(Subscribe(None, True, None, "e-old"))) == {
        "type": "resync_required",
        "since": "e-old",
        "all": True,
    }


def test_refreshed_frame_carries_the_new_expiry() -> None:
    assert _frame(refreshed_frame(None, 1700000000.0)) == {"type": "refreshed", "exp": 1700000000.0}


def test_error_frame_has_code_and_message() -> None:
    assert _frame(error_frame("bad_json", "frame is not valid JSON")) == {
        "type": "error",
        "code": "bad_json",
        "message": "frame is not valid JSON",
    }


REPLY_BUILDERS: list[tuple[str, Callable[[MessageId], bytes]]] = [
    ("pong", pong_frame),
    ("subscribed", lambda i: subscribed_frame(Subscribe(i, True, None, None))),
    ("subscribed", lambda i: subscribed_frame(Subscribe(i, False, 1, "e"), recovered=False)),
    ("unsubscribed", lambda i: unsubscribed_frame(Unsubscribe(i, False, "x"))),
    ("resync_required", lambda i: resync_required_frame(Subscribe(i, False, 2, "e"))),
    ("refreshed", lambda i: refreshed_frame(i, 1.0)),
    ("error", lambda i: error_frame("c", "m", i)),
]


@pytest.mark.parametrize(("kind", "build"), REPLY_BUILDERS, ids=[k for k, _ in REPLY_BUILDERS])
@pytest.mark.parametrize("msg_id", [1, 0, -1, 2**64 - 1, "req-7", ""], ids=repr)
def test_every_reply_builder_echoes_the_id(
    kind: str, build: Callable[[MessageId], bytes], msg_id: int | str
) -> None:
    frame = _frame(build(msg_id))
    assert frame["type"] == kind
    assert frame["id"] == msg_id
    assert type(frame["id"]) is type(msg_id)


@pytest.mark.parametrize(("kind", "build"), REPLY_BUILDERS, ids=[k for k, _ in REPLY_BUILDERS])
def test_a_reply_to_a_message_without_id_has_no_id(
    kind: str, build: Callable[[MessageId], bytes]
) -> None:
    frame = _frame(build(None))
    assert frame["type"] == kind
    assert "id" not in frame


# --- properties --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=12,
)
message_like: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["subscribe", "unsubscribe", "ping", "auth", "refresh", "x"])
        | json_values,
        "id": st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.text(max_size=130)
        | json_values,
        "all": st.booleans() | json_values,
        "taskId": st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.text(max_size=5)
        | json_values,
        "since": st.text(max_size=5) | st.integers(min_value=0, max_value=2**63) | json_values,
        "token": st.text(max_size=20) | json_values,
    },
)


def _reply(msg: ClientMessage | BadMessage) -> bytes:
    """The frame the server answers a parsed client message with."""
    match msg:
        case BadMessage():
            return error_frame(msg.code, msg.message, msg.id)
        case Ping():
            return pong_frame(msg.id)
        case Subscribe():
            return subscribed_frame(msg)
        case Unsubscribe():
            return unsubscribed_frame(msg)
        case Auth() | Refresh():
            return refreshed_frame(msg.id, None)


REPLY_TYPE = {
    BadMessage: "error",
    Ping: "pong",
    Subscribe: "subscribed",
    Unsubscribe: "unsubscribed",
    Auth: "refreshed",
    Refresh: "refreshed",
}


def _check_parsed(msg: ClientMessage | BadMessage) -> None:
    assert isinstance(msg, (*MESSAGE_TYPES, BadMessage))
    if isinstance(msg, BadMessage):
        assert msg.code in BAD_CODES
        assert msg.message
    if isinstance(msg, Subscribe | Unsubscribe):
        assert msg.all != (msg.task_id is not None)
    if isinstance(msg, Auth | Refresh):
        assert 0 < len(msg.token) <= MAX_TOKEN_LENGTH
    frame = _frame(_reply(msg))
    assert frame["type"] == REPLY_TYPE[type(msg)]
    if msg.id is None:
        assert "id" not in frame
    else:
        assert frame["id"] == msg.id


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=()), max_size=64))
def test_any_text_frame_parses_without_raising(raw: str) -> None:
    _check_parsed(parse_client_message(raw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_binary_frame_is_a_bad_frame(raw: bytes) -> None:
    msg = parse_client_message(raw)
    assert isinstance(msg, BadMessage)
    assert msg.code == "bad_frame"


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_parses_without_raising(value: object) -> None:
    _check_parsed(_parse(value))


@settings(max_examples=300, deadline=None)
@given(message_like)
def test_any_message_shaped_object_parses_without_raising(payload: dict[str, Any]) -> None:
    _check_parsed(_parse(payload))


ids = st.none() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(max_size=128)
task_ids: st.SearchStrategy[int | str] = st.integers(
    min_value=-(2**63), max_value=2**63 - 1
) | st.text(min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    msg_id=ids,
    text_a=st.text(),
    text_b=st.text(),
    number=st.floats(allow_nan=False),
    task_id=task_ids,
    since=st.text(min_size=1, max_size=20),
    everything=st.booleans(),
)
def test_every_server_frame_builder_writes_json_of_its_type(
    *,
    msg_id: MessageId,
    text_a: str,
    text_b: str,
    number: float,
    task_id: int | str,
    since: str,
    everything: bool,
) -> None:
    target = None if everything else task_id
    sub = Subscribe(msg_id, everything, target, since)
    unsub = Unsubscribe(msg_id, everything, target)
    built = {
        "connected": connected_frame(text_a, text_b, number, number),
        "pong": pong_frame(msg_id),
        "subscribed": subscribed_frame(sub, recovered=everything, replayed=3),
        "unsubscribed": unsubscribed_frame(unsub),
        "resync_required": resync_required_frame(sub),
        "refreshed": refreshed_frame(msg_id, number),
        "error": error_frame(text_a, text_b, msg_id),
    }
    for kind, raw in built.items():
        frame = _frame(raw)
        assert frame["type"] == kind
        if kind != "connected" and msg_id is not None:
            assert frame["id"] == msg_id
    assert _frame(built["connected"])["user_id"] == text_b
    target_field = {"all": True} if everything else {"taskId": task_id}
    assert _frame(built["unsubscribed"]).items() >= target_field.items()
