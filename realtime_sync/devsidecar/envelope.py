"""CloudEvent envelopes, built at publish and unwrapped at delivery the way daprd does it.

Publish (daprd's ``PublishEvent`` + the components' envelope code): the published bytes
become a CloudEvent map, which is what the broker retains. Delivery to a gRPC app
(daprd's ``GRPCEnvelopeFromSubscriptionMessage``): the map becomes a
``TopicEventRequest`` whose ``data`` depends on ``datacontenttype``:

==============================================  =======================  =====================
published content type                          retained as              the subscriber gets
==============================================  =======================  =====================
``application/json`` (any parameters)           ``data``: parsed JSON    Go ``json.Marshal``
(empty)                                         ``data``: text/plain     the exact bytes
``text/*``, ``application/xml``                 ``data``: string         the exact bytes
``application/octet-stream``                    ``data_base64``          the exact bytes
``application/cloudevents+json``                the publisher's CE       by the CE's own type
anything else                                   ``data``: string         **empty** (as daprd)
==============================================  =======================  =====================
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from dapr.proto.runtime.v1 import appcallback_pb2

from .wellknown import Struct

log = logging.getLogger(__name__)

DEFAULT_EVENT_TYPE = "com.dapr.event.sent"
SPEC_VERSION = "1.0"
CLOUDEVENT_CONTENT_TYPE = "application/cloudevents+json"
# CloudEvent keys that become TopicEventRequest fields; every other key is an extension.
CORE_FIELDS = frozenset(
    {"id", "source", "datacontenttype", "type", "specversion", "data", "data_base64"}
)
_OVERRIDES = {
    "cloudevent.id": "id",
    "cloudevent.source": "source",
    "cloudevent.type": "type",
    "cloudevent.subject": "subject",
}
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class PublishError(ValueError):
    """The published bytes cannot become a CloudEvent (HTTP 400 / INVALID_ARGUMENT)."""


class EnvelopeError(ValueError):
    """A retained CloudEvent cannot become a TopicEventRequest (daprd: the retry path)."""


@dataclass(frozen=True, slots=True)
class Publication:
    """One publish call, as either API received it."""

    pubsub_name: str
    topic: str
    data: bytes
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    traceparent: str = ""
    tracestate: str = ""


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json_type(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_cloudevent_type(content_type: str) -> bool:
    return media_type(content_type) == CLOUDEVENT_CONTENT_TYPE


def is_string_type(content_type: str) -> bool:
    return content_type.lower().startswith("text/") or media_type(content_type) == "application/xml"


def is_binary_type(content_type: str) -> bool:
    return media_type(content_type) == "application/octet-stream"


def is_deliverable_type(content_type: str) -> bool:
    """Whether a gRPC subscriber gets data for this CloudEvent ``datacontenttype``."""
    return (
        is_json_type(content_type)
        or is_cloudevent_type(content_type)
        or is_string_type(content_type)
        or is_binary_type(content_type)
    )


def new_traceparent() -> str:
    """A fresh, sampled W3C ``traceparent``."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def rfc3339(moment: datetime) -> str:
    """Go's ``time.RFC3339`` layout in UTC (second precision, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


# Deeper JSON is refused where the sidecar parses and where it re-serialises: Python's
# parser and `go_json` recurse once per level and would hit the interpreter's recursion
# limit (~1000) with an unhelpful error. daprd's Go decoder allows 10,000 levels
# (encoding/json scanner.go `maxNestingDepth`); the service's own parser (orjson) 1,024.
MAX_JSON_DEPTH = 128
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


def nested_too_deep(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value has arrays/objects nested more than `limit` deep
    (checked without recursion)."""
    pending: list[tuple[object, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        if depth + 1 > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def load_json(text: str | bytes, **options: Any) -> object:
    """`json.loads` with the depth bound; raises ValueError (the message says why)."""
    try:
        value = json.loads(text, **options)
    except RecursionError:
        raise ValueError(TOO_DEEP) from None
    if nested_too_deep(value):
        raise ValueError(TOO_DEEP)
    return value


def parse_json(body: bytes) -> object:
    """Parse publisher bytes as JSON (UTF-8 only, no NaN/Infinity, at most MAX_JSON_DEPTH
    levels), or raise PublishError."""
    try:
        return load_json(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PublishError(f"error when marshalling cloud event envelope: {exc}") from None


# --- Go encoding/json, as daprd re-serialises JSON data for the subscriber -------------


def go_json(value: object) -> bytes:
    """Serialise like Go's ``json.Marshal`` of an ``interface{}`` decoded without UseNumber.

    Sorted keys, compact, ``<``, ``>``, ``&``, U+2028 and U+2029 escaped, other non-ASCII
    kept as UTF-8, and every number passed through float64 (so integers beyond 2**53 lose
    precision exactly as they do for a real daprd subscriber). Raises EnvelopeError for
    a value nested deeper than MAX_JSON_DEPTH.
    """
    if nested_too_deep(value):
        raise EnvelopeError(TOO_DEEP)
    return _encode(value).encode("utf-8")


def _encode(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            return _go_float(float(value))
        except OverflowError:
            raise EnvelopeError("number out of float64 range") from None
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted((str(key), item) for key, item in value.items())
        return "{" + ",".join(f"{_go_string(key)}:{_encode(item)}" for key, item in items) + "}"
    raise EnvelopeError(f"cannot marshal a {type(value).__name__} as JSON")


def _go_string(text: str) -> str:
    out = json.dumps(text, ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        out = out.replace(raw, escaped)
    return _LONE_SURROGATE.sub("\ufffd", out)


def _go_float(number: float) -> str:
    if not math.isfinite(number):
        raise EnvelopeError("JSON numbers must be finite")
    shortest = Decimal(repr(number)).normalize()
    magnitude = abs(number)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        sign, digits, exponent = shortest.as_tuple()
        assert isinstance(exponent, int)
        mantissa = str(digits[0])
        if len(digits) > 1:
            mantissa += "." + "".join(str(d) for d in digits[1:])
        power = exponent + len(digits) - 1
        suffix = f"e-{-power}" if power < 0 else f"e+{power:02d}"
        return ("-" if sign else "") + mantissa + suffix
    return format(shortest, "f")


# --- publish: bytes -> retained CloudEvent ---------------------------------------------


def build_cloud_event(
    publication: Publication, *, source: str, now: datetime | None = None
) -> dict[str, object]:
    """The CloudEvent map daprd would put on the broker for this publish."""
    moment = now or datetime.now(UTC)
    if is_cloudevent_type(publication.content_type):
        event = _from_cloud_event(publication, source, moment)
    else:
        event = _new_envelope(publication, source, moment)
    metadata = publication.metadata
    for key, attribute in _OVERRIDES.items():
        if metadata.get(key):
            event[attribute] = metadata[key]
    ttl = metadata.get("ttlInSeconds")
    if ttl is not None:
        try:
            seconds = int(ttl)
        except ValueError:
            raise PublishError(f"invalid ttlInSeconds {ttl!r}: not an integer") from None
        if seconds < 0:
            raise PublishError(f"invalid ttlInSeconds {ttl!r}: negative")
        event["expiration"] = rfc3339(moment + timedelta(seconds=seconds))
    content_type = event.get("datacontenttype")
    if ("data" in event) and not is_deliverable_type(str(content_type or "")):
        log.warning(
            "publish to %s: datacontenttype %r reaches gRPC subscribers as empty data "
            "(daprd behaves the same)",
            publication.topic,
            content_type,
        )
    return event


def _trace_fields(publication: Publication) -> dict[str, object]:
    traceparent = publication.traceparent or new_traceparent()
    return {
        "traceid": traceparent,
        "traceparent": traceparent,
        "tracestate": publication.tracestate,
    }


def _new_envelope(publication: Publication, source: str, moment: datetime) -> dict[str, object]:
    content_type = publication.content_type or "text/plain"
    data_field = "data"
    data: object
    if is_json_type(content_type):
        data = parse_json(publication.data)
    elif is_binary_type(content_type):
        data_field = "data_base64"
        data = base64.b64encode(publication.data).decode("ascii")
    else:
        # surrogateescape keeps arbitrary bytes exact through str and back.
        data = publication.data.decode("utf-8", "surrogateescape")
    return {
        "id": str(uuid.uuid4()),
        "source": source,
        "type": DEFAULT_EVENT_TYPE,
        "specversion": SPEC_VERSION,
        "datacontenttype": content_type,
        "topic": publication.topic,
        "pubsubname": publication.pubsub_name,
        "time": rfc3339(moment),
        **_trace_fields(publication),
        data_field: data,
    }


def _from_cloud_event(publication: Publication, source: str, moment: datetime) -> dict[str, object]:
    parsed = parse_json(publication.data)
    if not isinstance(parsed, dict):
        raise PublishError("an application/cloudevents+json body must be a JSON object")
    event: dict[str, object] = dict(parsed)
    for key, default in (
        ("id", str(uuid.uuid4())),
        ("source", source),
        ("type", DEFAULT_EVENT_TYPE),
        ("specversion", SPEC_VERSION),
        ("time", rfc3339(moment)),
    ):
        if event.get(key) is None:
            event[key] = default
    event["topic"] = publication.topic
    event["pubsubname"] = publication.pubsub_name
    if "traceid" not in event:
        event.update(_trace_fields(publication))
    if event.get("datacontenttype") is None and isinstance(event.get("data"), dict | list):
        event["datacontenttype"] = "application/json"
    return event


# --- delivery: retained CloudEvent -> TopicEventRequest --------------------------------


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def event_data(event: Mapping[str, object]) -> bytes:
    """The ``data`` bytes a gRPC subscriber receives for this CloudEvent."""
    content_type = _text(event.get("datacontenttype"))
    encoded = event.get("data_base64")
    if encoded is not None:
        try:
            return base64.b64decode(_text(encoded), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EnvelopeError(f"data_base64 is not base64: {exc}") from None
    data = event.get("data")
    if data is None:
        return b""
    if is_string_type(content_type):
        if not isinstance(data, str):
            raise EnvelopeError(f"data of a {content_type} event must be a string")
        return data.encode("utf-8", "surrogateescape")
    if is_json_type(content_type) or is_cloudevent_type(content_type):
        return go_json(data)
    return b""


def topic_event_request(
    event: Mapping[str, object], *, topic: str, pubsub_name: str, path: str
) -> appcallback_pb2.TopicEventRequest:
    """The ``OnTopicEvent`` request daprd sends for a retained CloudEvent."""
    extensions = Struct()
    try:
        extensions.update({k: v for k, v in event.items() if k not in CORE_FIELDS})
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f"CloudEvent extensions cannot be encoded: {exc}") from None
    return appcallback_pb2.TopicEventRequest(
        id=_text(event.get("id")),
        source=_text(event.get("source")),
        type=_text(event.get("type")),
        spec_version=_text(event.get("specversion")),
        data_content_type=_text(event.get("datacontenttype")),
        data=event_data(event),
        topic=topic,
        pubsub_name=pubsub_name,
        path=path,
        extensions=extensions,
    )


def is_expired(event: Mapping[str, object], now: datetime | None = None) -> bool:
    """daprd's ``HasExpired``: an unparsable ``expiration`` never expires."""
    expiration = event.get("expiration")
    if not isinstance(expiration, str) or not expiration:
        return False
    try:
        moment = datetime.fromisoformat(expiration)
    except ValueError:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment < (now or datetime.now(UTC))


def bulk_entry(
    entry_id: str, single: appcallback_pb2.TopicEventRequest
) -> appcallback_pb2.TopicEventBulkRequestEntry:
    """One entry of daprd's bulk envelope: the single delivery's CloudEvent, as daprd's
    bulk subscriber carries it (dapr/dapr `pkg/runtime/subscription/postman/grpc`)."""
    return appcallback_pb2.TopicEventBulkRequestEntry(
        entry_id=entry_id,
        cloud_event=appcallback_pb2.TopicEventCERequest(
            id=single.id,
            source=single.source,
            type=single.type,
            spec_version=single.spec_version,
            data_content_type=single.data_content_type,
            data=single.data,
            extensions=single.extensions,
        ),
        content_type=single.data_content_type,
    )
