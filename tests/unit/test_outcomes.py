"""The outcomes that reach a wire: close codes and Dapr verdicts."""

from __future__ import annotations

from realtime_sync.core.outcomes import CloseCode, Verdict


def test_close_codes_are_the_designed_numbers() -> None:
    assert {code.name: int(code) for code in CloseCode} == {
        "GOING_AWAY": 1001,
        "MESSAGE_TOO_BIG": 1009,
        "UNAUTHORIZED": 4001,
        "TOKEN_EXPIRED": 4002,
        "ACCESS_REVOKED": 4003,
        "SLOW_CONSUMER": 4008,
        "EVENTS_LOST": 4010,
        "TOO_MANY": 4029,
    }


def test_private_close_codes_are_in_the_private_range() -> None:
    private = [c for c in CloseCode if c >= 4000]
    assert private
    assert all(4000 <= c <= 4999 for c in private)


def test_verdicts_are_success_retry_and_drop() -> None:
    assert {v.name for v in Verdict} == {"SUCCESS", "RETRY", "DROP"}
