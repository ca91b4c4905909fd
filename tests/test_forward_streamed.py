"""The forwarder with a body that is still arriving (a RequestBody).

The origins are real sockets on 127.0.0.1; the body is scripted: each step
waits, then gives bytes or raises. Timeout tests run on the autojump clock
and assert exact virtual times.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing
from support.forwarding import (
    RecordingSink,
    phases_without_send_all,
    request,
    target_at,
    times_out_at_the_send_limit,
)
from support.listener import CountingListener
from support.origin import Exchange, respond, serve_origin

from trustelem_relay import (
    RequestError,
    RequestTooLarge,
    StreamProtocolError,
    TimeoutAfterSending,
    TimeoutBeforeSending,
)
from trustelem_relay._forward import CHUNK_SIZE, ForwardLimits, forward

pytestmark = pytest.mark.usefixtures("no_resource_warnings")


@attrs.define
class ScriptedBody:
    """A RequestBody that plays *steps*: (seconds to wait, bytes or error)."""

    length: int
    steps: list[tuple[float, bytes | Exception]]
    #: Calls to receive, which each say the previous bytes were written.
    calls: int = 0

    async def receive(self) -> bytes:
        self.calls += 1
        if not self.steps:
            return b""
        delay, outcome = self.steps.pop(0)
        await trio.sleep(delay)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def body_of(*pieces: bytes, delay: float = 0.0) -> ScriptedBody:
    return ScriptedBody(
        length=sum(map(len, pieces)), steps=[(delay, piece) for piece in pieces]
    )


@attrs.define
class RawRecorder:
    """An origin's raw handler that keeps every byte until the client closes."""

    data: bytearray = attrs.field(factory=bytearray)
    closed: trio.Event = attrs.field(factory=trio.Event)

    async def handler(self, stream: trio.abc.Stream) -> None:
        while data := await stream.receive_some(65536):
            self.data += data
        self.closed.set()


async def fails_after(
    body: ScriptedBody, port: int, error: type[RequestError], seconds: float
) -> RequestError:
    """Forward *body* to a target with a 7 s timeout; it must fail with
    *error* exactly *seconds* after the start."""
    start = trio.current_time()
    with pytest.raises(error) as caught:
        await forward(
            target_at(port, timeout=7.0), request("POST"), body, RecordingSink()
        )
    assert trio.current_time() == start + seconds
    return caught.value


async def test_streamed_body_reaches_the_target_with_its_announced_length() -> None:
    pieces = [bytes([n]) * CHUNK_SIZE for n in range(5)] + [b"tail"]
    body = body_of(*pieces)
    async with serve_origin() as origin:
        sink = RecordingSink()
        await forward(target_at(origin.port), request("POST"), body, sink)

    (exchange,) = origin.exchanges
    assert exchange.body == b"".join(pieces)
    assert exchange.header(b"content-length") == [b"%d" % body.length]
    # Every piece was asked for, and the end too: all of it was written.
    assert body.calls == len(pieces) + 1
    assert sink.body == b"ok"


async def test_streamed_body_over_the_limit_is_refused_before_dialling(
    counting_listener: CountingListener,
) -> None:
    body = ScriptedBody(length=2048, steps=[])
    with pytest.raises(RequestTooLarge) as caught:
        await forward(
            target_at(counting_listener.port),
            request("POST"),
            body,
            RecordingSink(),
            limits=ForwardLimits(max_request_body=1024),
        )

    assert caught.value.may_have_reached_target is False
    assert counting_listener.attempts() == 0
    assert body.calls == 0


async def test_body_that_never_starts_times_out_before_sending(
    autojump_clock: trio.abc.Clock,
) -> None:
    body = ScriptedBody(length=10, steps=[(1000.0, b"x" * 10)])
    recorder = RawRecorder()
    async with serve_origin(raw_handler=recorder.handler) as origin:
        error = await fails_after(body, origin.port, TimeoutBeforeSending, 7.0)

    assert error.may_have_reached_target is False
    assert "deadline of 7 s" in str(error)
    assert recorder.data == b""


async def test_waits_for_the_body_count_against_the_deadline_not_the_send_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Three waits of 4 s each: 12 s in all, over the 5 s send limit.
    body = body_of(b"a" * 100, b"b" * 100, b"c" * 100, delay=4.0)
    async with serve_origin() as origin:
        start = trio.current_time()
        await forward(
            target_at(origin.port, timeout=30.0),
            request("POST"),
            body,
            RecordingSink(),
            limits=ForwardLimits(send_timeout=5.0),
        )
        assert trio.current_time() == start + 12.0

    assert only_body(origin.exchanges) == b"a" * 100 + b"b" * 100 + b"c" * 100


def only_body(exchanges: list[Exchange]) -> bytes:
    (exchange,) = exchanges
    return exchange.body


async def test_pieces_the_kernel_takes_are_written_without_a_send_phase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each piece goes straight to the plain socket: neither send_all
    # (which yields after writing) nor the send limit's phase is used.
    phases = phases_without_send_all(monkeypatch)
    pieces = [b"a" * 100, b"b" * CHUNK_SIZE, b"c" * 100]
    async with serve_origin() as origin:
        await forward(
            target_at(origin.port), request("POST"), body_of(*pieces), RecordingSink()
        )

    assert only_body(origin.exchanges) == b"".join(pieces)
    assert "sending the request" not in phases


async def test_streamed_body_the_target_does_not_read_times_out_at_the_send_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    piece = b"x" * (4 << 20)
    body = body_of(b"head", piece, piece, piece, piece)
    await times_out_at_the_send_limit(body, body.length)


async def test_body_that_stalls_midway_times_out_after_sending(
    autojump_clock: trio.abc.Clock,
) -> None:
    body = ScriptedBody(length=200, steps=[(0.0, b"a" * 100), (1000.0, b"b" * 100)])
    async with serve_origin(respond(b"")) as origin:
        error = await fails_after(body, origin.port, TimeoutAfterSending, 7.0)

    assert error.may_have_reached_target is True
    # Half a body: the origin never saw a complete request.
    assert origin.exchanges == []


async def test_broken_body_closes_the_target_connection_and_keeps_its_error() -> None:
    recorder = RawRecorder()
    body = ScriptedBody(
        length=300,
        steps=[(0.0, b"a" * 100), (0.0, StreamProtocolError("the hub broke it"))],
    )
    async with serve_origin(raw_handler=recorder.handler) as origin:
        with pytest.raises(StreamProtocolError) as caught:
            await forward(
                target_at(origin.port), request("POST"), body, RecordingSink()
            )
        with trio.fail_after(5):
            await recorder.closed.wait()

    assert str(caught.value).startswith("the hub broke it")
    assert caught.value.may_have_reached_target is True
    assert caught.value.request_id == "-"


async def test_body_broken_before_its_first_bytes_did_not_reach_the_target() -> None:
    recorder = RawRecorder()
    body = ScriptedBody(length=300, steps=[(0.0, StreamProtocolError("short"))])
    async with serve_origin(raw_handler=recorder.handler) as origin:
        with pytest.raises(StreamProtocolError) as caught:
            await forward(
                target_at(origin.port), request("POST"), body, RecordingSink()
            )

    assert caught.value.may_have_reached_target is False
    assert recorder.data == b""
