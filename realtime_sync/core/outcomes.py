"""Every outcome that reaches a wire, written down once.

| situation                                   | to Dapr | to the client                  |
|---------------------------------------------|---------|--------------------------------|
| event routed (or a duplicate, or stale)     | SUCCESS |                                |
| event data can never be processed           | DROP    |                                |
| state store failed / overloaded / stopping  | RETRY   |                                |
| missing, invalid or expired token           |         | close 4001                     |
| token expired on a live connection          |         | close 4002                     |
| outbox over its bound                       |         | close 4008                     |
| an event for the user acknowledged but lost |         | close 4010 (resume: resync)    |
| too many connections / frames               |         | close 4029                     |
| client frame larger than MAX_FRAME_BYTES    |         | close 1009                     |
| server shutting down                        |         | close 1001                     |
| bad client frame                            |         | error frame, connection stays  |
"""

from __future__ import annotations

from enum import Enum, IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes this service sends (4000-4999 are private use)."""

    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    UNAUTHORIZED = 4001
    TOKEN_EXPIRED = 4002
    ACCESS_REVOKED = 4003
    SLOW_CONSUMER = 4008
    EVENTS_LOST = 4010  # an acknowledged event was not routed: resume to hear resync
    TOO_MANY = 4029


class Verdict(Enum):
    """The answer given to Dapr for one delivered event."""

    SUCCESS = "success"
    RETRY = "retry"
    DROP = "drop"
