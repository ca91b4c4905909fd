"""Link.flush: small frames and whole batches leave at once, others wait.

A hub-side :class:`Link` over a real websocket on 127.0.0.1 (the package's
own client and server, on :class:`NetStream`), with the two sans-IO ends of
:func:`support.pair.make_pair` already past their handshake. The agent's
side is read by hand, so each test sees exactly which frames reached it and
when. Frames carry counter nonces: had one overtaken another, the agent's
connection would fail with a gap error instead of giving events.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from support.pair import make_pair

from trustelem_relay._agent import _Exchange
from trustelem_relay._events import (
    DataReceived,
    Event,
    PingReceived,
    RequestHead,
    RequestReceived,
    ResponseHead,
    ResponseReceived,
    StreamEnded,
)
from trustelem_relay._forward import CHUNK_SIZE
from trustelem_relay._link import SEND_NOW_LIMIT, Link
from trustelem_relay._mux import Connection
from trustelem_relay._netstream import NetStream
from trustelem_relay._policy import Target
from trustelem_relay._websocket import WebSocket, accept, connect

MAX_MESSAGE = 1 << 20


@dataclass
class Wired:
    link: Link
    hub: Connection
    agent: Connection
    agent_ws: WebSocket

    async def agent_events(self, count: int) -> list[Event]:
        """Read until the agent's connection has given ``count`` events."""
        events: list[Event] = []
        with trio.fail_after(5):
            while len(events) < count:
                for message in await self.agent_ws.receive_messages():
                    events += self.agent.receive_message(message)
        return events

    async def agent_events_from_writer(self, count: int) -> list[Event]:
        """Run the link (its writer) until the agent has ``count`` events."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: self.link.run(heartbeat=None))
            events = await self.agent_events(count)
            nursery.cancel_scope.cancel()
        return events


@pytest.fixture
async def wired() -> AsyncIterator[Wired]:
    pair = make_pair()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[WebSocket | None] = []

    async def serve_one() -> None:
        tcp = await listeners[0].accept()
        accepted.append(
            await accept(
                NetStream(tcp), path="/", max_message_size=MAX_MESSAGE, timeout=5
            )
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        agent_ws = await connect(
            NetStream(tcp), "127.0.0.1", "/", max_message_size=MAX_MESSAGE, timeout=5
        )
    await listeners[0].aclose()
    (hub_ws,) = accepted
    assert hub_ws is not None
    link = Link(
        pair.hub,
        hub_ws,
        on_event=lambda event: None,
        log=logging.LoggerAdapter(logging.getLogger("test"), {}),
    )
    try:
        yield Wired(link, pair.hub, pair.agent, agent_ws)
    finally:
        # Together: each waits for the other's close frame.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub_ws.aclose)
            nursery.start_soon(agent_ws.aclose)


def open_stream(hub: Connection) -> int:
    head = RequestHead(method="POST", scheme="http", authority="t", path="/")
    return hub.open_stream("scim", head)


async def test_small_frames_leave_from_flush_itself(wired: Wired) -> None:
    # The link's loops are not running: no writer could have sent this.
    wired.hub.ping(b"12345678")
    sequence = wired.link.flush()

    assert wired.link.was_sent(sequence)
    assert await wired.agent_events(1) == [PingReceived(b"12345678")]


async def test_large_frames_wait_for_the_writer(wired: Wired) -> None:
    stream_id = open_stream(wired.hub)
    wired.hub.send_data(stream_id, b"x" * (SEND_NOW_LIMIT + 1))
    sequence = wired.link.flush()
    assert not wired.link.was_sent(sequence)

    events = await wired.agent_events_from_writer(2)
    assert wired.link.was_sent(sequence)
    assert isinstance(events[0], RequestReceived)
    assert events[1] == DataReceived(stream_id, b"x" * (SEND_NOW_LIMIT + 1))


async def test_a_whole_batch_leaves_from_flush_itself(wired: Wired) -> None:
    # Large frames that the caller calls a whole batch skip the writer.
    stream_id = open_stream(wired.hub)
    wired.hub.send_data(stream_id, b"x" * (SEND_NOW_LIMIT + 1))
    sequence = wired.link.flush(whole=True)

    assert wired.link.was_sent(sequence)
    events = await wired.agent_events(2)
    assert isinstance(events[0], RequestReceived)
    assert events[1] == DataReceived(stream_id, b"x" * (SEND_NOW_LIMIT + 1))


async def test_a_whole_batch_never_overtakes_a_queued_one(wired: Wired) -> None:
    stream_id = open_stream(wired.hub)
    wired.hub.send_data(stream_id, b"x" * (SEND_NOW_LIMIT + 1))
    first = wired.link.flush()
    wired.hub.send_data(stream_id, b"y" * (SEND_NOW_LIMIT + 1))
    second = wired.link.flush(whole=True)
    assert not wired.link.was_sent(first)
    assert not wired.link.was_sent(second)

    events = await wired.agent_events_from_writer(3)
    assert events[1] == DataReceived(stream_id, b"x" * (SEND_NOW_LIMIT + 1))
    assert events[2] == DataReceived(stream_id, b"y" * (SEND_NOW_LIMIT + 1))
    assert wired.link.was_sent(second)


async def test_a_small_frame_never_overtakes_a_queued_one(wired: Wired) -> None:
    stream_id = open_stream(wired.hub)
    wired.hub.send_data(stream_id, b"x" * (SEND_NOW_LIMIT + 1))
    first = wired.link.flush()
    wired.hub.ping(b"after---")
    second = wired.link.flush()
    # Queued behind the large frame, not sent around it.
    assert not wired.link.was_sent(first)
    assert not wired.link.was_sent(second)

    events = await wired.agent_events_from_writer(3)
    assert isinstance(events[0], RequestReceived)
    assert isinstance(events[1], DataReceived)
    assert events[2] == PingReceived(b"after---")
    assert wired.link.was_sent(second)


async def test_nothing_leaves_from_flush_once_the_link_is_closing(
    wired: Wired,
) -> None:
    wired.link.close("closing for the test")
    wired.hub.ping(b"too-late")
    sequence = wired.link.flush()
    assert not wired.link.was_sent(sequence)


# --------------------------------------------------------------------------
# The agent's answer: the frames of one read leave from the forwarding task


async def answering(wired: Wired) -> tuple[int, _Exchange]:
    """A request the agent received, and its sink with the answer's head
    sent, on a link whose loops do not run: whatever reaches the hub was
    written by the calling task."""
    stream_id = open_stream(wired.hub)
    wired.link.flush()
    await wired.agent_events(1)
    link = Link(
        wired.agent,
        wired.agent_ws,
        on_event=lambda event: None,
        log=logging.LoggerAdapter(logging.getLogger("test"), {}),
    )
    target = Target(name="scim", host="127.0.0.1", port=1)
    exchange = _Exchange(link, stream_id, f"test.{stream_id}", target)
    await exchange.send_head(ResponseHead(200, ()))
    return stream_id, exchange


async def hub_events(wired: Wired, count: int) -> list[Event]:
    """Read the hub's side by hand until ``count`` events came."""
    events: list[Event] = []
    with trio.fail_after(5):
        while len(events) < count:
            for message in await wired.link.ws.receive_messages():
                events += wired.hub.receive_message(message)
    return events


async def drain_to_hub(wired: Wired, exchange: _Exchange, count: int) -> list[Event]:
    """Write what the kernel did not take yet, as the link's writer would,
    while the hub reads ``count`` events."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchange.link.ws.send_messages, [])
        return await hub_events(wired, count)


async def test_a_read_of_the_answer_leaves_at_once_but_its_last_chunk(
    wired: Wired,
) -> None:
    stream_id, exchange = await answering(wired)
    await exchange.send_data(b"a" * CHUNK_SIZE + b"b" * CHUNK_SIZE + b"c")
    assert exchange.link.was_sent(exchange.link.frames_queued)
    events = await drain_to_hub(wired, exchange, 3)
    assert isinstance(events[0], ResponseReceived)
    assert events[1:] == [
        DataReceived(stream_id, b"a" * CHUNK_SIZE),
        DataReceived(stream_id, b"b" * CHUNK_SIZE),
    ]

    # The held chunk carries the end.
    await exchange.finish()
    assert await drain_to_hub(wired, exchange, 2) == [
        DataReceived(stream_id, b"c"),
        StreamEnded(stream_id),
    ]


async def test_frames_sealed_before_a_wait_for_credit_leave_before_it(
    wired: Wired,
) -> None:
    stream_id, exchange = await answering(wired)
    window = wired.agent.send_window(stream_id) * 4  # the stream's, untouched

    # A window's worth and one chunk more: the chunk held from the first
    # read fills the window, the second read's first chunk must wait.
    await exchange.send_data(bytes(window))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchange.send_data, bytes(2 * CHUNK_SIZE))
        await trio.testing.wait_all_tasks_blocked()
        events = await drain_to_hub(wired, exchange, 1 + window // CHUNK_SIZE)
        nursery.cancel_scope.cancel()
    data = [event for event in events if isinstance(event, DataReceived)]
    assert sum(len(event.data) for event in data) == window
    assert wired.agent.send_window(stream_id) == 0


async def test_a_small_answers_head_waits_for_its_one_data_frame(wired: Wired) -> None:
    stream_id, exchange = await answering(wired)
    await exchange.send_data(b"{}")
    # Nothing sealed yet: the head waits for the one DATA frame.
    assert exchange.link.frames_queued == 0

    await exchange.finish()
    assert exchange.link.frames_queued == 2
    assert exchange.link.was_sent(2)
    events = await hub_events(wired, 3)
    assert isinstance(events[0], ResponseReceived)
    assert events[1:] == [DataReceived(stream_id, b"{}"), StreamEnded(stream_id)]
