"""A connection's bounded outbound queue."""

from __future__ import annotations

from realtime_sync.core.outbox import Outbox


def test_frames_within_the_bounds_are_queued_in_order() -> None:
    box = Outbox(max_messages=10, max_bytes=100)
    assert not box
    assert box.push(b"one") is True
    assert box.push(b"three") is True
    assert bool(box) is True
    assert len(box) == 2
    assert box.bytes == 8
    assert box.pop() == b"one"
    assert box.pop() == b"three"


def test_the_message_bound_refuses_one_frame_too_many() -> None:
    box = Outbox(max_messages=2, max_bytes=1000)
    assert [box.push(b"x") for _ in range(3)] == [True, True, False]
    assert len(box) == 2
    assert box.bytes == 2


def test_the_byte_bound_refuses_a_frame_that_would_cross_it() -> None:
    box = Outbox(max_messages=100, max_bytes=10)
    assert box.push(b"123456") is True
    assert box.push(b"12345") is False
    assert (len(box), box.bytes) == (1, 6)
    assert box.push(b"1234") is True
    assert box.bytes == 10
    assert box.push(b"1") is False


def test_a_single_frame_larger_than_the_byte_bound_is_refused() -> None:
    box = Outbox(max_messages=100, max_bytes=10)
    assert box.push(b"x" * 11) is False
    assert (len(box), box.bytes) == (0, 0)


def test_bytes_in_flight_count_against_the_bound() -> None:
    box = Outbox(max_messages=100, max_bytes=10)
    assert box.push(b"123456", in_flight_bytes=5) is False
    assert box.push(b"123456", in_flight_bytes=4) is True
    assert box.push(b"1", in_flight_bytes=4) is False
    assert box.push(b"1", in_flight_bytes=3) is True
    assert box.bytes == 7


def test_pop_frees_room_for_more() -> None:
    box = Outbox(max_messages=2, max_bytes=10)
    assert box.push(b"aaaaa")
    assert box.push(b"bbbbb")
    assert box.push(b"c") is False
    assert box.pop() == b"aaaaa"
    assert box.bytes == 5
    assert box.push(b"ccccc") is True
    assert box.bytes == 10
    assert [box.pop(), box.pop()] == [b"bbbbb", b"ccccc"]
    assert box.bytes == 0


def test_clear_empties_the_queue_and_its_byte_count() -> None:
    box = Outbox(max_messages=5, max_bytes=100)
    for frame in (b"a", b"bb", b"ccc"):
        box.push(frame)
    box.clear()
    assert (len(box), box.bytes, bool(box)) == (0, 0, False)
    assert box.push(b"x" * 100) is True
