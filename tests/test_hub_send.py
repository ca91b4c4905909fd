"""How the hub queues a request body behind its head.

The hub seals as much of a body as the stream's window takes before its
first write, and counts the DATA frames it queued: the REQUEST frame's
number (for :meth:`Link.was_sent`, and so for the retry rule) is the last
frame's number minus that count. Synchronous, on a :func:`make_pair`.
"""

from __future__ import annotations

from support.pair import make_pair

from trustelem_relay._events import (
    DataReceived,
    RequestHead,
    RequestReceived,
    StreamEnded,
)
from trustelem_relay._frames import MAX_PAYLOAD
from trustelem_relay._hub import _queue_body, _queue_body_start
from trustelem_relay._mux import Connection


def open_stream(hub: Connection, body: bytes) -> int:
    head = RequestHead(method="POST", scheme="http", authority="t", path="/")
    return hub.open_stream("scim", head, end_stream=not body)


def test_a_large_body_fills_the_window_behind_its_head() -> None:
    pair = make_pair()
    body = bytes(range(256)) * (5 * MAX_PAYLOAD // 256) + b"tail"
    stream_id = open_stream(pair.hub, body)
    window = pair.hub.send_window(stream_id)

    rest, frames = _queue_body_start(pair.hub, stream_id, body)

    # Everything after the head is one of the counted DATA frames.
    events = pair.to_agent()
    assert isinstance(events[0], RequestReceived)
    data = [e for e in events[1:] if isinstance(e, DataReceived)]
    assert len(data) == len(events) - 1 == frames > 1
    assert all(len(e.data) <= MAX_PAYLOAD for e in data)
    sent = b"".join(e.data for e in data)
    assert sent + bytes(rest) == body
    assert pair.hub.send_window(stream_id) == 0 < window


def test_a_body_within_the_window_is_one_frame_that_ends_the_stream() -> None:
    pair = make_pair()
    body = b"x" * 1000
    stream_id = open_stream(pair.hub, body)

    rest, frames = _queue_body_start(pair.hub, stream_id, body)

    assert (len(rest), frames) == (0, 1)
    events = pair.to_agent()
    assert events[1:] == [DataReceived(stream_id, body), StreamEnded(stream_id)]


def test_no_body_queues_no_frame() -> None:
    pair = make_pair()
    stream_id = open_stream(pair.hub, b"")

    rest, frames = _queue_body_start(pair.hub, stream_id, b"")

    assert (len(rest), frames) == (0, 0)
    assert [type(e) for e in pair.to_agent()] == [RequestReceived, StreamEnded]


def test_nothing_is_queued_without_window() -> None:
    pair = make_pair()
    body = b"y" * (8 * MAX_PAYLOAD)
    stream_id = open_stream(pair.hub, body)
    rest, _ = _queue_body_start(pair.hub, stream_id, body)
    pair.hub.data_to_send()

    again, frames = _queue_body(pair.hub, stream_id, rest)

    assert (len(again), frames) == (len(rest), 0)
    assert pair.hub.data_to_send() == []
