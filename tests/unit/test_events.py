"""Inbound task events: validation, the type → action map, and the outgoing frame."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realtime_sync.core.events import (
    ACTIONS,
    MAX_ID_LENGTH,
    MAX_NESTING,
    UNKNOWN_ACTION,
    InvalidEvent,
    TaskEvent,
    encode_update,
    is_task_id,
    nested_deeper_than,
    parse_cloudevent_time,
    parse_event,
    task_key,
)

RECEIVED = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
RECEIVED_ISO = "2024-05-06T07:08:09.123456Z"
CE_ID = "ce-0001"
FRAME_FIELDS = {
    "type",
    "action",
    "event_type",
    "event_id",
    "task_id",
    "user_id",
    "data",
    "timestamp",
    "metadata",
}


def _event(**fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "TASK_CHANGED", "user_id": "alice", "task_id": 42}
    payload.update(fields)
    return payload


def _parse_raw(raw: bytes, traceparent: str | None = None) -> TaskEvent:
    return parse_event(raw, cloudevent_id=CE_ID, received_at=RECEIVED, traceparent=traceparent)


def _parse(payload: object, traceparent: str | None = None) -> TaskEvent:
    return _parse_raw(orjson.dumps(payload), traceparent)


def _reason(raw: bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        _parse_raw(raw)
    assert info.value.reason
    assert str(info.value) == info.value.reason
    return info.value.reason


def _frame(event: TaskEvent) -> dict[str, Any]:
    frame = orjson.loads(encode_update(event))
    assert isinstance(frame, dict)
    return frame


# --- required fields -------------------------------------------------------------------


def test_a_minimal_valid_event_parses_into_its_fields() -> None:
    event = _parse(_event())
    assert event == TaskEvent(
        event_id=CE_ID,
        event_type="TASK_CHANGED",
        user_id="alice",
        task_id=42,
        data=None,
        timestamp=RECEIVED_ISO,
        metadata={},
        shared_with=None,
    )


@pytest.mark.parametrize("field", ["type", "user_id", "task_id"])
def test_a_missing_required_field_is_invalid_and_named_in_the_reason(field: str) -> None:
    payload = _event()
    del payload[field]
    reason = _reason(orjson.dumps(payload))
    assert field in reason
    assert "missing" in reason


@pytest.mark.parametrize("field", ["type", "user_id", "task_id"])
def test_a_null_required_field_counts_as_missing(field: str) -> None:
    reason = _reason(orjson.dumps(_event(**{field: None})))
    assert field in reason


@pytest.mark.parametrize("field", ["type", "user_id"])
@pytest.mark.parametrize(
    "value",
    [1, 0, 1.5, True, False, [], ["alice"], {}, {"id": "alice"}, "", "x" * (MAX_ID_LENGTH + 1)],
    ids=repr,
)
def test_a_string_field_of_the_wrong_type_is_invalid(field: str, value: object) -> None:
    reason = _reason(orjson.dumps(_event(**{field: value})))
    assert field in reason


def test_a_user_id_of_the_maximum_length_is_accepted() -> None:
    user = "u" * MAX_ID_LENGTH
    assert _parse(_event(user_id=user)).user_id == user


@pytest.mark.parametrize(
    "task_id", [0, 1, -7, 42, 2**63 - 1, "1", "abc", "t" * MAX_ID_LENGTH, "ü-task"], ids=repr
)
def test_task_id_is_an_integer_or_string_kept_as_given(task_id: int | str) -> None:
    event = _parse(_event(task_id=task_id))
    assert event.task_id == task_id
    assert type(event.task_id) is type(task_id)
    assert event.task_key == str(task_id)
    assert _frame(event)["task_id"] == task_id


@pytest.mark.parametrize(
    "task_id",
    [True, False, 1.0, 1.5, -0.5, "", [], [1], {}, {"id": 1}, "t" * (MAX_ID_LENGTH + 1)],
    ids=repr,
)
def test_task_id_of_another_type_is_invalid(task_id: object) -> None:
    reason = _reason(orjson.dumps(_event(task_id=task_id)))
    assert "task_id" in reason


def test_is_task_id_accepts_ints_and_nonempty_strings_only() -> None:
    assert [is_task_id(v) for v in (1, "1", 0, True, 1.0, "", None, [1])] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
    ]


def test_task_key_is_the_string_form_so_int_and_string_ids_match() -> None:
    assert task_key(1) == task_key("1") == "1"
    assert task_key("abc") == "abc"


# --- event id --------------------------------------------------------------------------


def test_an_absent_id_falls_back_to_the_cloudevent_id() -> None:
    assert _parse(_event()).event_id == CE_ID


def test_a_null_id_falls_back_to_the_cloudevent_id() -> None:
    assert _parse(_event(id=None)).event_id == CE_ID


def test_a_string_id_is_the_event_id() -> None:
    assert _parse(_event(id="evt-9")).event_id == "evt-9"


def test_an_integer_id_becomes_its_string_form() -> None:
    event = _parse(_event(id=1234))
    assert event.event_id == "1234"
    assert _frame(event)["event_id"] == "1234"


@pytest.mark.parametrize(
    "value", [True, False, 1.5, "", [], ["e"], {}, "e" * (MAX_ID_LENGTH + 1)], ids=repr
)
def test_an_id_of_the_wrong_type_is_invalid(value: object) -> None:
    reason = _reason(orjson.dumps(_event(id=value)))
    assert "'id'" in reason


def test_an_empty_cloudevent_id_with_no_data_id_is_invalid() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(_event()), cloudevent_id="", received_at=RECEIVED)
    assert "id" in info.value.reason


# --- type → action ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "action"),
    [
        ("TASK_ADDED", "task_created"),
        ("TASK_CHANGED", "task_updated"),
        ("TASK_STATUS_CHANGED", "task_status_changed"),
        ("TASK_REMOVED", "task_deleted"),
        ("TASK_RESTORED", "task_restored"),
    ],
)
def test_each_known_type_maps_to_its_action(event_type: str, action: str) -> None:
    event = _parse(_event(type=event_type))
    assert event.action == action
    frame = _frame(event)
    assert frame["action"] == action
    assert frame["event_type"] == event_type


def test_the_action_map_has_exactly_the_five_designed_types() -> None:
    assert ACTIONS == {
        "TASK_ADDED": "task_created",
        "TASK_CHANGED": "task_updated",
        "TASK_STATUS_CHANGED": "task_status_changed",
        "TASK_REMOVED": "task_deleted",
        "TASK_RESTORED": "task_restored",
    }
    assert UNKNOWN_ACTION == "task_unknown_event"


@pytest.mark.parametrize("event_type", ["TASK_ARCHIVED", "task_added", "Task_Changed", " ", "x"])
def test_an_unknown_type_is_delivered_as_task_unknown_event(event_type: str) -> None:
    event = _parse(_event(type=event_type))
    assert event.action == "task_unknown_event"
    frame = _frame(event)
    assert frame["action"] == "task_unknown_event"
    assert frame["event_type"] == event_type


# --- timestamp, data, metadata -----------------------------------------------------------


def test_an_absent_timestamp_is_the_receipt_time_in_iso_8601() -> None:
    stamp = _parse(_event()).timestamp
    assert stamp == RECEIVED_ISO
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")) == RECEIVED


def test_a_receipt_time_in_another_zone_is_written_in_utc() -> None:
    local = datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    event = parse_event(orjson.dumps(_event()), cloudevent_id=CE_ID, received_at=local)
    assert event.timestamp == "2024-05-06T07:08:09Z"


def test_a_given_timestamp_is_kept_verbatim_even_when_old() -> None:
    stamp = "1999-12-31T23:59:59.5+01:00"
    assert _parse(_event(timestamp=stamp)).timestamp == stamp


@pytest.mark.parametrize("value", [1700000000, 1.5, True, [], {}], ids=repr)
def test_a_timestamp_of_the_wrong_type_is_invalid(value: object) -> None:
    assert "timestamp" in _reason(orjson.dumps(_event(timestamp=value)))


def test_data_is_kept_as_the_task_object() -> None:
    task = {"title": "write tests", "done": False, "tags": ["a", "b"], "n": 1.25}
    event = _parse(_event(data=task))
    assert event.data == task
    assert _frame(event)["data"] == task


@pytest.mark.parametrize("value", [[], [1], "task", 3, True], ids=repr)
def test_data_that_is_not_an_object_is_invalid(value: object) -> None:
    assert "data" in _reason(orjson.dumps(_event(data=value)))


def test_metadata_is_passed_through() -> None:
    meta = {"source": "api", "nested": {"k": [1, 2]}, "shared_with": ["bob"]}
    event = _parse(_event(metadata=meta))
    assert event.metadata == meta
    assert _frame(event)["metadata"] == meta


@pytest.mark.parametrize("value", [[], "meta", 1, True], ids=repr)
def test_metadata_that_is_not_an_object_is_invalid(value: object) -> None:
    assert "metadata" in _reason(orjson.dumps(_event(metadata=value)))


def test_shared_with_is_parsed_deduplicated_in_order() -> None:
    event = _parse(_event(metadata={"shared_with": ["bob", "carol", "bob", "alice", "carol"]}))
    assert event.shared_with == ("bob", "carol", "alice")


def test_an_empty_shared_with_list_means_shared_with_nobody() -> None:
    assert _parse(_event(metadata={"shared_with": []})).shared_with == ()


def test_absent_shared_with_leaves_the_share_list_alone() -> None:
    assert _parse(_event(metadata={"other": 1})).shared_with is None
    assert _parse(_event()).shared_with is None


@pytest.mark.parametrize(
    "value",
    ["bob", 1, {"bob": True}, ["bob", 1], ["bob", None], [""], [["bob"]], ["x" * 257]],
    ids=repr,
)
def test_shared_with_of_the_wrong_type_is_invalid(value: object) -> None:
    assert "shared_with" in _reason(orjson.dumps(_event(metadata={"shared_with": value})))


# --- raw bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"{",
        b"{'type': 'TASK_ADDED'}",
        b"\xff\xfe\x00",
        b'{"type":"TASK_ADDED","user_id":"\xff","task_id":1}',
        b"\xef\xbb\xbf{}",
        b"NaN",
        b"[" * 5000,
    ],
    ids=[
        "text",
        "truncated",
        "single-quotes",
        "binary",
        "bad-utf8-in-string",
        "bom",
        "nan",
        "deep",
    ],
)
def test_data_that_is_not_json_is_invalid(raw: bytes) -> None:
    assert "JSON" in _reason(raw)


@pytest.mark.parametrize("raw", [b"[]", b'[{"type":"TASK_ADDED"}]', b'"x"', b"1", b"null", b"true"])
def test_json_that_is_not_an_object_is_invalid(raw: bytes) -> None:
    assert "object" in _reason(raw)


def test_empty_data_is_invalid() -> None:
    assert "empty" in _reason(b"")


def test_daprd_reserialised_json_with_sorted_keys_and_html_escapes_parses() -> None:
    raw = (
        b'{"data":{"title":"\\u003cb\\u003eurgent\\u003c/b\\u003e \\u0026 more"},'
        b'"id":"evt-7","metadata":{"shared_with":["bob"]},"task_id":7,'
        b'"timestamp":"2024-01-01T00:00:00Z","type":"TASK_ADDED","user_id":"u1"}'
    )
    event = _parse_raw(raw)
    assert event.data == {"title": "<b>urgent</b> & more"}
    assert (event.event_id, event.task_id, event.user_id, event.action) == (
        "evt-7",
        7,
        "u1",
        "task_created",
    )
    assert event.shared_with == ("bob",)


def test_text_plain_bytes_with_whitespace_parse_as_json() -> None:
    raw = b'\n  { "type" : "TASK_REMOVED", "user_id" : "u2", "task_id" : "t-1" }\r\n'
    event = _parse_raw(raw)
    assert (event.action, event.task_id) == ("task_deleted", "t-1")


# --- outgoing frame ----------------------------------------------------------------------


def test_encode_update_writes_exactly_the_designed_frame() -> None:
    event = _parse(
        _event(
            id="evt-1",
            type="TASK_STATUS_CHANGED",
            data={"status": "done"},
            timestamp="2024-01-01T00:00:00Z",
            metadata={"by": "api"},
        )
    )
    frame = _frame(event)
    assert frame == {
        "type": "task_update",
        "action": "task_status_changed",
        "event_type": "TASK_STATUS_CHANGED",
        "event_id": "evt-1",
        "task_id": 42,
        "user_id": "alice",
        "data": {"status": "done"},
        "timestamp": "2024-01-01T00:00:00Z",
        "metadata": {"by": "api"},
    }


def test_the_frame_carries_the_publish_time_when_known() -> None:
    event = _parse(_event(id="evt-1"))
    assert orjson.loads(encode_update(event, 1764873723.25))["published_at"] == 1764873723.25
    assert "published_at" not in _frame(event)


def test_encode_update_is_compact_utf8_json() -> None:
    raw = encode_update(_parse(_event(data={"t": "é"})))
    assert b" " not in raw
    assert "é".encode() in raw


def test_traceparent_is_carried_into_metadata() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = _parse(_event(metadata={"a": 1}), traceparent=tp)
    assert event.metadata == {"a": 1, "traceparent": tp}
    assert _frame(event)["metadata"]["traceparent"] == tp


def test_a_publisher_traceparent_in_metadata_is_not_overwritten() -> None:
    event = _parse(_event(metadata={"traceparent": "mine"}), traceparent="00-other")
    assert event.metadata == {"traceparent": "mine"}


def test_no_traceparent_adds_no_metadata_key() -> None:
    assert _parse(_event(), traceparent=None).metadata == {}
    assert _parse(_event(), traceparent="").metadata == {}


# --- CloudEvent time ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        (
            "2024-01-02T03:04:05.123456789Z",
            datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        ),
        ("2024-01-02T03:04:05.5Z", datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        ("2024-01-02T05:04:05+02:00", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_parse_cloudevent_time_reads_rfc_3339(value: str, expected: datetime) -> None:
    parsed = parse_cloudevent_time(value)
    assert parsed == expected
    assert parsed is not None
    assert parsed.tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [None, "", "garbage", "yesterday", "2024-13-01T00:00:00Z", "2024-01-02T25:00:00Z", 17, [], {}],
    ids=repr,
)
def test_parse_cloudevent_time_answers_none_for_garbage(value: object) -> None:
    assert parse_cloudevent_time(value) is None


# --- properties --------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)
event_types = st.sampled_from([*ACTIONS, "TASK_SOMETHING_ELSE"])
id_strings = st.text(min_size=1, max_size=24)
task_ids: st.SearchStrategy[int | str] = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1) | id_strings
)

event_like: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "type": event_types | json_values,
        "user_id": id_strings | json_values,
        "task_id": task_ids | json_values,
        "id": id_strings | json_values,
        "data": json_values,
        "timestamp": json_values,
        "metadata": st.fixed_dictionaries(
            {}, optional={"shared_with": st.lists(id_strings, max_size=4) | json_values}
        )
        | json_values,
    },
)


def _check_outcome(raw: bytes) -> None:
    try:
        event = _parse_raw(raw, traceparent="00-abc")
    except InvalidEvent as exc:
        assert isinstance(exc.reason, str)
        assert exc.reason
    else:
        assert isinstance(event, TaskEvent)
        frame = _frame(event)
        assert set(frame) == FRAME_FIELDS
        assert frame["event_id"] == event.event_id


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_parses_or_raises_invalid_event_only(value: object) -> None:
    _check_outcome(orjson.dumps(value))


@settings(max_examples=300, deadline=None)
@given(event_like)
def test_any_event_shaped_object_parses_or_raises_invalid_event_only(value: dict[str, Any]) -> None:
    _check_outcome(orjson.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_invalid_event_only(raw: bytes) -> None:
    _check_outcome(raw)


valid_events: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"type": event_types, "user_id": id_strings, "task_id": task_ids},
    optional={
        "id": id_strings | st.integers(min_value=0, max_value=2**63 - 1),
        "data": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
        "timestamp": st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        "metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    },
)


@settings(max_examples=300, deadline=None)
@given(valid_events, st.lists(id_strings, max_size=5))
def test_valid_events_round_trip_into_the_frame(payload: dict[str, Any], shares: list[str]) -> None:
    if "metadata" in payload:
        payload["metadata"]["shared_with"] = shares
    event = _parse(payload)
    frame = _frame(event)
    expected_id = payload.get("id", CE_ID)
    assert frame == {
        "type": "task_update",
        "action": ACTIONS.get(payload["type"], "task_unknown_event"),
        "event_type": payload["type"],
        "event_id": str(expected_id),
        "task_id": payload["task_id"],
        "user_id": payload["user_id"],
        "data": payload.get("data"),
        "timestamp": payload.get("timestamp", RECEIVED_ISO),
        "metadata": payload.get("metadata", {}),
    }
    assert type(frame["task_id"]) is type(payload["task_id"])
    if "metadata" in payload:
        assert event.shared_with == tuple(dict.fromkeys(shares))
    else:
        assert event.shared_with is None


# --- nesting ------------------------------------------------------------------------------


def _nested(levels: int) -> object:
    value: object = []
    for _ in range(levels - 1):
        value = [value]
    return value


def test_json_nested_past_orjsons_limit_is_dropped_with_a_reason() -> None:
    """orjson refuses more than 1,024 levels: a reason, not a crash."""
    raw = b'{"type":"TASK_ADDED","user_id":"u","task_id":1,"data":{"x":' + b"[" * 5000
    raw += b"]" * 5000 + b"}}"
    assert "1024" in _reason(raw)


@pytest.mark.parametrize("field", ["data", "metadata"])
def test_a_field_nested_deeper_than_the_frame_can_carry_is_dropped(field: str) -> None:
    """300 levels parse, but the frame could not be written (orjson writes 254): DROP."""
    raw = json.dumps(_event(**{field: {"x": _nested(300)}})).encode()
    assert f"'{field}' is nested deeper than {MAX_NESTING} levels" in _reason(raw)


def test_data_nested_up_to_the_bound_becomes_a_frame() -> None:
    event = _parse_raw(orjson.dumps(_event(data={"x": _nested(MAX_NESTING - 1)})))
    assert orjson.loads(encode_update(event))["data"] == {"x": _nested(MAX_NESTING - 1)}


@pytest.mark.parametrize("field", ["data", "metadata"])
@pytest.mark.parametrize("levels", [MAX_NESTING - 2, MAX_NESTING - 1, MAX_NESTING, MAX_NESTING + 1])
def test_the_nesting_bound_is_the_same_when_brackets_are_few_or_many(
    field: str, levels: int
) -> None:
    """The walk is skipped when the document opens few brackets: the bound must not move,
    with or without brackets inside strings adding to the count."""
    value = {"x": _nested(levels)}
    too_deep = nested_deeper_than(value, MAX_NESTING)
    for padding in ("", "[{" * MAX_NESTING):
        raw = orjson.dumps(_event(**{field: value}, title=padding))
        if too_deep:
            assert f"'{field}' is nested deeper than {MAX_NESTING} levels" in _reason(raw)
        else:
            assert getattr(_parse_raw(raw), field) == value


def test_nested_deeper_than_counts_levels_of_arrays_and_objects() -> None:
    assert not nested_deeper_than({"a": [1, {"b": 2}]}, 3)
    assert nested_deeper_than({"a": [1, {"b": []}]}, 3)
    assert not nested_deeper_than("scalar", 0)
