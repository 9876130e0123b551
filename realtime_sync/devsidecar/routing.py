"""Subscriptions as the app declared them, and the route (``path``) each event takes.

daprd evaluates each routing rule's CEL ``match`` itself; the dev sidecar understands a
small subset: ``true``, ``false``, and comparisons ``event.<field>[.<field>...] == <literal>``
or ``!=``, joined with ``&&`` and ``||`` (no parentheses). A rule it cannot read is logged
once and treated as matching, so the app still sees the events in development.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from dapr.proto.runtime.v1 import appcallback_pb2

log = logging.getLogger(__name__)

_COMPARISON = re.compile(r"^event((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*(==|!=)\s*(.+)$")


class UnsupportedExpressionError(ValueError):
    pass


def _literal(text: str) -> object:
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    try:
        return json.loads(text)
    except ValueError:
        raise UnsupportedExpressionError(text) from None


def _comparison(text: str, event: Mapping[str, object]) -> bool:
    text = text.strip()
    if text in ("", "true"):
        return True
    if text == "false":
        return False
    found = _COMPARISON.match(text)
    if found is None:
        raise UnsupportedExpressionError(text)
    path, operator, raw = found.groups()
    expected = _literal(raw.strip())
    value: object = event
    for name in path.strip(".").split("."):
        value = value.get(name) if isinstance(value, Mapping) else None
    return (value == expected) if operator == "==" else (value != expected)


def evaluate(expression: str, event: Mapping[str, object]) -> bool:
    """Evaluate the supported CEL subset; raise UnsupportedExpressionError otherwise."""
    return any(
        all(_comparison(term, event) for term in alternative.split("&&"))
        for alternative in expression.split("||")
    )


# daprd's defaults for unset bulk fields (dapr/dapr pkg/runtime/pubsub/default_bulksub.go)
DEFAULT_MAX_MESSAGES = 100  # daprd's defaultMaxMessagesCount
DEFAULT_MAX_AWAIT_MS = 1000  # daprd's defaultMaxAwaitDurationMs


@dataclass(frozen=True, slots=True)
class BulkConfig:
    """The app's ``bulk_subscribe`` answer, with daprd's defaults for unset (0) fields."""

    max_messages: int = DEFAULT_MAX_MESSAGES
    max_await_s: float = DEFAULT_MAX_AWAIT_MS / 1000

    @classmethod
    def from_fields(cls, max_messages: int, max_await_ms: int) -> BulkConfig:
        return cls(
            max_messages if max_messages > 0 else DEFAULT_MAX_MESSAGES,
            (max_await_ms if max_await_ms > 0 else DEFAULT_MAX_AWAIT_MS) / 1000,
        )


@dataclass(frozen=True, slots=True)
class Rule:
    match: str
    path: str
    readable: bool = True


@dataclass(frozen=True, slots=True)
class Subscription:
    pubsub_name: str
    topic: str
    rules: tuple[Rule, ...] = ()
    default_path: str = ""
    dead_letter_topic: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    bulk: BulkConfig | None = None  # the app asked for bulk delivery (bulk_subscribe)

    @classmethod
    def from_proto(cls, sub: appcallback_pb2.TopicSubscription) -> Subscription:
        rules = []
        for rule in sub.routes.rules:
            readable = True
            try:
                evaluate(rule.match, {})
            except UnsupportedExpressionError:
                readable = False
                log.warning(
                    "topic %s: cannot evaluate routing rule %r; treating it as matching",
                    sub.topic,
                    rule.match,
                )
            rules.append(Rule(rule.match, rule.path, readable))
        return cls(
            pubsub_name=sub.pubsub_name,
            topic=sub.topic,
            rules=tuple(rules),
            default_path=sub.routes.default,
            dead_letter_topic=sub.dead_letter_topic or None,
            metadata=dict(sub.metadata),
            bulk=BulkConfig.from_fields(
                sub.bulk_subscribe.max_messages_count, sub.bulk_subscribe.max_await_duration_ms
            )
            if sub.bulk_subscribe.enabled
            else None,
        )

    def route(self, event: Mapping[str, object]) -> str | None:
        """The ``path`` daprd would send, or None when no rule matches (acked, not sent)."""
        if not self.rules:
            return self.default_path
        for rule in self.rules:
            if not rule.readable or evaluate(rule.match, event):
                return rule.path
        return self.default_path or None

    def describe(self) -> dict[str, object]:
        return {
            "pubsub_name": self.pubsub_name,
            "topic": self.topic,
            "routes": {
                "rules": [{"match": r.match, "path": r.path} for r in self.rules],
                "default": self.default_path,
            },
            "dead_letter_topic": self.dead_letter_topic,
            "metadata": dict(self.metadata),
            "bulk_subscribe": None
            if self.bulk is None
            else {
                "max_messages_count": self.bulk.max_messages,
                "max_await_duration_ms": round(self.bulk.max_await_s * 1000),
            },
        }
