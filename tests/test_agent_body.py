"""StreamedBody on its own: the link's reader feeds it, a forwarder takes it.

The link is a stand-in that records the credit given back to the hub; the
relay-level behaviour is in test_relay_body.py.
"""

from __future__ import annotations

from typing import cast

import attrs
import pytest

from trustelem_relay import StreamProtocolError
from trustelem_relay._agent_body import StreamedBody
from trustelem_relay._link import Link

STREAM = 3


@attrs.define
class CreditLog:
    """The part of a Connection a StreamedBody acknowledges data to."""

    credited: int = 0

    def acknowledge_data(self, stream_id: int, size: int) -> None:
        assert stream_id == STREAM
        self.credited += size


@attrs.define
class FakeLink:
    """The part of a Link a StreamedBody uses."""

    conn: CreditLog = attrs.field(factory=CreditLog)
    is_open: bool = True

    def flush(self) -> int:
        return 0


def body_of(length: int) -> tuple[StreamedBody, CreditLog]:
    link = FakeLink()
    return StreamedBody(cast(Link, link), STREAM, length), link.conn


def test_a_body_that_all_arrived_is_taken_whole_and_credited() -> None:
    body, credit = body_of(5)
    body.feed(b"ab")
    body.feed(b"cde")
    assert body.take_whole() is None  # the end has not come yet

    body.end()
    assert body.take_whole() == b"abcde"
    assert body.buffered == 0
    assert credit.credited == 5


def test_a_single_frame_body_is_taken_as_it_came() -> None:
    body, _ = body_of(3)
    frame = b"xyz"
    body.feed(frame)
    body.end()
    assert body.take_whole() is frame


@pytest.mark.parametrize(
    "frames", [[b"ab"], [b"abcdef"]], ids=["ended-short", "too-long"]
)
async def test_a_body_that_broke_its_length_is_not_taken_whole(
    frames: list[bytes],
) -> None:
    body, credit = body_of(5)
    for frame in frames:
        body.feed(frame)
    body.end()
    assert body.take_whole() is None
    with pytest.raises(StreamProtocolError, match="Content-Length announced"):
        await body.receive()
    # Nothing will be written: all that came was credited back.
    assert credit.credited == sum(map(len, frames))
