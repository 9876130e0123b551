"""Server text frames: built once, identical to websockets' own, and split back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from realtime_sync.core.wire import encode_text_frame, split_text_frames


def websockets_frame(payload: bytes) -> bytes:
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_the_frame_matches_websockets_serialisation_at_every_length_boundary(size: int) -> None:
    payload = b"x" * size
    assert encode_text_frame(payload) == websockets_frame(payload)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=70_000), max_size=5))
def test_concatenated_frames_split_back_into_their_payloads(payloads: list[bytes]) -> None:
    """The slow path recovers each frame of a coalesced write."""
    wire = b"".join(encode_text_frame(p) for p in payloads)
    assert split_text_frames(wire) == payloads
