"""The token bucket limiting client frames."""

from __future__ import annotations

from realtime_sync.core.ratelimit import TokenBucket


def _allowed(bucket: TokenBucket, now: float, attempts: int) -> int:
    return sum(bucket.allow(now) for _ in range(attempts))


def test_a_fresh_bucket_allows_exactly_its_burst() -> None:
    bucket = TokenBucket(rate=4, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]


def test_the_bucket_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=4, burst=3, now=0.0)
    assert _allowed(bucket, 0.0, 10) == 3
    assert bucket.allow(0.125) is False  # half a token
    assert bucket.allow(0.25) is True  # the other half: one token
    assert bucket.allow(0.25) is False
    assert _allowed(bucket, 0.75, 10) == 2


def test_the_refill_is_capped_at_the_burst() -> None:
    bucket = TokenBucket(rate=4, burst=3, now=0.0)
    assert _allowed(bucket, 0.0, 10) == 3
    assert _allowed(bucket, 1000.0, 10) == 3


def test_a_clock_going_backwards_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=4, burst=2, now=10.0)
    assert _allowed(bucket, 10.0, 5) == 2
    assert _allowed(bucket, 5.0, 5) == 0


def test_a_steady_sender_gets_the_burst_plus_the_rate() -> None:
    bucket = TokenBucket(rate=20, burst=40, now=0.0)
    sent = sum(bucket.allow(i / 100) for i in range(1001))  # 100 frames/s for 10 s
    assert 40 + 200 - 1 <= sent <= 40 + 200 + 1


def test_a_fractional_burst_never_allows_a_frame_without_a_whole_token() -> None:
    bucket = TokenBucket(rate=1, burst=1.5, now=0.0)
    assert _allowed(bucket, 0.0, 3) == 1
    assert bucket.allow(0.25) is False
    assert bucket.allow(0.5) is True
