"""Request bodies streamed through the relay, hub to agent to target.

A real hub and agent on 127.0.0.1 and an origin the agent dials. The hub
announces each body's length in the head; the agent writes the body to the
target as it arrives, credits the hub no further ahead of its writes than a
bound, and checks the body against the announced length.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import attrs
import pytest
import trio
from support.origin import Exchange, serve_origin
from support.relay_faults import TARGET, Outcomes, http_answer, open_world, target_at

from trustelem_relay import AgentSettings, StreamProtocolError
from trustelem_relay._agent_body import AHEAD
from trustelem_relay._events import RequestHead
from trustelem_relay._forward import ForwardLimits
from trustelem_relay._hubconfig import HubLimits
from trustelem_relay._streams import Settings

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

#: Long enough for anything on loopback; a hang fails instead of blocking.
WAIT = 10


async def digest_answer(stream: trio.abc.Stream, exchange: Exchange) -> None:
    """Answer with the SHA-256 of the request body, in hex."""
    await stream.send_all(
        http_answer(hashlib.sha256(exchange.body).hexdigest().encode())
    )


async def test_bodies_stream_to_the_target_intact_among_other_requests(
    tmp_path: Path,
) -> None:
    bodies = [bytes([n]) * (300_000 + n) for n in range(4)]
    async with serve_origin(digest_answer) as origin, open_world(tmp_path) as world:
        await world.start_agent(world.agent("a", {TARGET: target_at(origin.port)}))
        await world.hub.wait_agent(world.service_id)

        outcomes = Outcomes()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for body in bodies:
                    nursery.start_soon(
                        outcomes.call, lambda b=body: world.request("POST", body=b)
                    )
                    nursery.start_soon(outcomes.call, world.request)

    assert outcomes.errors() == []
    answers = sorted(r.body for r in outcomes.responses())
    empty = hashlib.sha256(b"").hexdigest().encode()
    expected = [hashlib.sha256(b).hexdigest().encode() for b in bodies]
    assert answers == sorted(expected + [empty] * 4)
    for exchange in origin.exchanges:
        assert exchange.header(b"content-length") == (
            [b"%d" % len(exchange.body)] if exchange.body else []
        )


async def test_agent_holds_at_most_a_window_of_a_body_its_target_reads_slowly(
    tmp_path: Path,
) -> None:
    size = 4 << 20
    window = Settings().stream_window
    received = bytearray()

    async def slow_reader(stream: trio.abc.Stream) -> None:
        # Parse just enough HTTP: the head, then Content-Length bytes.
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(16384)
        received.extend(data.split(b"\r\n\r\n", 1)[1])
        while len(received) < size:
            await trio.sleep(0.001)
            received.extend(await stream.receive_some(16384))
        await stream.send_all(http_answer(b"read"))

    settings = AgentSettings(forward=ForwardLimits(max_request_body=size))
    limits = HubLimits(max_request_body=size)
    async with (
        serve_origin(raw_handler=slow_reader) as origin,
        open_world(tmp_path, limits=limits) as world,
    ):
        agent = world.agent("a", {TARGET: target_at(origin.port)}, settings=settings)
        await world.start_agent(agent)
        await world.hub.wait_agent(world.service_id)

        most = 0

        async def watch() -> None:
            nonlocal most
            while True:
                for exchange in agent._exchanges.values():
                    if exchange.streamed is not None:
                        most = max(most, exchange.streamed.buffered)
                await trio.sleep(0.0005)

        body = bytes(range(256)) * (size // 256)
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                response = await world.request("POST", body=body)
                nursery.cancel_scope.cancel()

    assert response.body == b"read"
    assert bytes(received) == body
    # The body was streamed (seen in the agent), and the agent held no more
    # of it than the hub's window and what it credits ahead of writing.
    assert 0 < most <= window + AHEAD


@attrs.define
class RawTarget:
    """An origin's raw handler: keeps each connection's bytes until it closes."""

    received: list[bytearray] = attrs.field(factory=list)
    #: Set once a connection has been read to its end.
    closed: trio.Event = attrs.field(factory=trio.Event)

    async def handler(self, stream: trio.abc.Stream) -> None:
        data = bytearray()
        self.received.append(data)
        while chunk := await stream.receive_some(65536):
            data += chunk
        self.closed.set()


@pytest.mark.parametrize(
    ("size", "error"),
    [(100, +10), (100, -10), (300_000, +10), (300_000, -10)],
    ids=["small-short", "small-long", "large-short", "large-long"],
)
async def test_body_that_breaks_the_announced_length_is_a_protocol_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, error: int
) -> None:
    from trustelem_relay import _hub

    announce = _hub._request_head

    def wrong_length(
        method: str, url: str, headers: object, body_length: int = 0
    ) -> RequestHead:
        # A hub that announces *error* bytes more (or fewer) than it sends.
        head = announce(method, url, (), body_length)
        fields = tuple(f for f in head.headers if f[0] != b"content-length")
        length = b"%d" % (body_length + error)
        return attrs.evolve(head, headers=(*fields, (b"content-length", length)))

    broken = RawTarget()
    async with (
        serve_origin(raw_handler=broken.handler) as target,
        serve_origin(digest_answer) as other,
        open_world(tmp_path) as world,
    ):
        targets = {TARGET: target_at(target.port), "other": target_at(other.port)}
        await world.start_agent(world.agent("a", targets))
        await world.hub.wait_agent(world.service_id)

        with monkeypatch.context() as patched:
            patched.setattr(_hub, "_request_head", wrong_length)
            with trio.fail_after(WAIT), pytest.raises(StreamProtocolError) as caught:
                await world.request("POST", body=b"x" * size)
        # The agent dialled once (before the body's first bytes), then
        # closed that connection.
        with trio.fail_after(WAIT):
            await broken.closed.wait()
        assert target.connections == 1
        assert "Content-Length announced" in str(caught.value)

        # The flag says whether any byte was written: a small body is
        # judged before its first write; a large one may be judged after.
        written = b"".join(broken.received)
        assert caught.value.may_have_reached_target is bool(written)
        if size == 100:
            assert written == b""
        assert len(written) < size

        # The session and the agent serve on.
        with trio.fail_after(WAIT):
            answer = await world.request("POST", target="other", body=b"fine")
        assert answer.body == hashlib.sha256(b"fine").hexdigest().encode()
        assert len(world.sessions()) == 1
