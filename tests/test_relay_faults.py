"""What the relay does when things break around a request.

Everything is real: a hub and an agent on 127.0.0.1, an origin server the
agent dials, and where a fault needs one, a TCP relay between the agent and
the hub that the test cuts. Each test states one rule about failure: every
request gets exactly one typed outcome, limits refuse before sending, a
silent target times out at the deadline, garbage on the websocket ends only
that session.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
import trio
from support.listener import CountingListener
from support.origin import Exchange, serve_origin
from support.relay_faults import (
    TARGET,
    Gate,
    Outcomes,
    http_answer,
    never_answer,
    open_world,
    target_at,
    timed_log,
)

from trustelem_relay import AgentSettings
from trustelem_relay._errors import (
    DecryptionFailed,
    FrameTooLarge,
    MalformedFrame,
    NonceOutOfOrder,
    Overloaded,
    RemoteProtocolError,
    RequestTooLarge,
    ResponseTooLarge,
    SessionLost,
    TimeoutAfterSending,
)
from trustelem_relay._forward import ForwardLimits
from trustelem_relay._frames import MAX_FRAME_LENGTH
from trustelem_relay._hubconfig import HubLimits
from trustelem_relay._link import Link

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

#: Reconnect almost at once, for tests on the real clock.
FAST = AgentSettings(backoff_initial=0.01)
#: Long enough for anything on loopback; a hang fails instead of blocking.
WAIT = 10


async def sized_answers(stream: trio.abc.Stream, exchange: Exchange) -> None:
    """Answer ``/big/N`` with N body bytes, anything else with ``ok``."""
    path = exchange.request.target.decode("ascii")
    size = int(path.rsplit("/", 1)[1]) if path.startswith("/big/") else 0
    await stream.send_all(http_answer(b"x" * size if size else b"ok"))


# --------------------------------------------------------------------------
# The websocket dies with requests in flight


async def test_cut_websocket_gives_each_in_flight_request_one_outcome(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with serve_origin(gate.handler) as origin, open_world(tmp_path) as world:
        relay = await world.relay()
        agent = world.agent(
            "a", {TARGET: target_at(origin.port)}, settings=FAST, hub_port=relay.port
        )
        await world.start_agent(agent)
        first = (await world.hub.wait_agent(world.service_id)).session_id

        outcomes = Outcomes()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for number in range(20):
                    method = "POST" if number % 2 else "GET"
                    nursery.start_soon(
                        outcomes.call, lambda m=method: world.request(m, body=b"{}")
                    )
                await gate.wait_arrived(20)
                relay.cut()

        # Every request had reached the target: the outcome is unknown.
        assert len(outcomes.results) == 20
        errors = outcomes.errors()
        assert len(errors) == 20
        assert all(type(error) is SessionLost for error in errors), errors
        assert all(error.may_have_reached_target for error in errors)
        assert len({error.request_id for error in errors}) == 20

        # The agent comes back on a new connection and serves again.
        with trio.fail_after(WAIT):
            second = await world.wait_new_session(first)
        assert relay.accepted == 2
        assert agent.in_flight == 0
        gate.release()
        response = await world.request()
        assert response.status == 200
        assert response.request_id.startswith(second + ".")


async def test_requests_not_yet_sent_when_the_session_dies_did_not_reach(
    tmp_path: Path,
) -> None:
    # A POST whose REQUEST frame never left the hub fails as not reached.
    async with serve_origin() as origin, open_world(tmp_path) as world:
        agent = world.agent("a", {TARGET: target_at(origin.port)})
        await world.start_agent(agent)
        await world.hub.wait_agent(world.service_id)
        (session,) = world.sessions()

        session.link.close("closed by the test")
        with pytest.raises(SessionLost) as caught:
            await world.request("POST", body=b"{}")
        assert not caught.value.may_have_reached_target
        assert origin.connections == 0


# --------------------------------------------------------------------------
# A target that never answers


async def test_silent_target_times_out_after_sending_at_the_hub_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve_origin(never_answer) as origin, open_world(tmp_path) as world:
        await world.start_agent(world.agent("a", {TARGET: target_at(origin.port)}))
        await world.hub.wait_agent(world.service_id)

        start = trio.current_time()
        with pytest.raises(TimeoutAfterSending) as caught:
            await world.request("POST", body=b"{}", timeout=5)
        assert trio.current_time() == start + 5
        assert caught.value.may_have_reached_target
        assert len(origin.exchanges) == 1


async def test_each_request_times_out_at_its_own_hub_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # The hub's one deadline watcher, asleep towards the first request's
    # deadline, wakes for the earlier ones that come after it. The link
    # is frozen, so the hub's own deadlines end them, not the agent's.
    async with open_world(tmp_path) as world:
        relay = await world.relay()
        agent = world.agent("a", {TARGET: target_at(1)}, hub_port=relay.port)
        await world.start_agent(agent)
        await world.hub.wait_agent(world.service_id)
        relay.freeze()

        start = trio.current_time()
        ended: dict[int, float] = {}

        async def one(timeout: int) -> None:
            with pytest.raises(TimeoutAfterSending, match="no complete answer"):
                await world.request("POST", body=b"{}", timeout=timeout)
            ended[timeout] = trio.current_time() - start

        async with trio.open_nursery() as nursery:
            for timeout in (9, 3, 6):
                nursery.start_soon(one, timeout)
                await trio.testing.wait_all_tasks_blocked()
        assert ended == {3: 3, 6: 6, 9: 9}


async def test_target_timeout_on_the_agent_gives_its_typed_error(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve_origin(never_answer) as origin, open_world(tmp_path) as world:
        targets = {TARGET: target_at(origin.port, timeout=2)}
        await world.start_agent(world.agent("a", targets))
        await world.hub.wait_agent(world.service_id)

        start = trio.current_time()
        with pytest.raises(TimeoutAfterSending) as caught:
            await world.request("POST", body=b"{}", timeout=30)
        # The agent's 2 s, not the hub's 30 s; the agent said so itself.
        assert trio.current_time() == start + 2
        assert str(caught.value).startswith("the agent answered:")
        assert caught.value.may_have_reached_target
        assert len(origin.exchanges) == 1


# --------------------------------------------------------------------------
# Size limits


async def test_oversize_request_body_is_refused_before_anything_is_sent(
    tmp_path: Path, counting_listener: CountingListener
) -> None:
    async with open_world(tmp_path) as world:
        await world.start_agent(
            world.agent("a", {TARGET: target_at(counting_listener.port)})
        )
        await world.hub.wait_agent(world.service_id)
        (session,) = world.sessions()
        frames_before = session.link.frames_queued

        with pytest.raises(RequestTooLarge) as caught:
            await world.request("POST", body=b"x" * ((1 << 20) + 1))
        assert not caught.value.may_have_reached_target
        assert session.link.frames_queued == frames_before
        assert counting_listener.attempts() == 0


async def test_agent_refuses_a_body_over_its_own_limit_without_dialling(
    tmp_path: Path, counting_listener: CountingListener
) -> None:
    settings = AgentSettings(forward=ForwardLimits(max_request_body=1024))
    async with open_world(tmp_path) as world:
        agent = world.agent(
            "a", {TARGET: target_at(counting_listener.port)}, settings=settings
        )
        await world.start_agent(agent)
        await world.hub.wait_agent(world.service_id)

        with pytest.raises(RequestTooLarge) as caught:
            await world.request("POST", body=b"x" * 4096)
        assert str(caught.value).startswith("the agent answered:")
        assert not caught.value.may_have_reached_target
        assert counting_listener.attempts() == 0


async def test_response_over_the_agent_limit_fails_and_the_agent_serves_on(
    tmp_path: Path,
) -> None:
    settings = AgentSettings(forward=ForwardLimits(max_response_body=100_000))
    async with serve_origin(sized_answers) as origin, open_world(tmp_path) as world:
        agent = world.agent("a", {TARGET: target_at(origin.port)}, settings=settings)
        await world.start_agent(agent)
        await world.hub.wait_agent(world.service_id)

        with pytest.raises(ResponseTooLarge) as caught:
            await world.request(url="http://scim.corp.test/big/100001")
        assert str(caught.value).startswith("the agent answered:")
        assert caught.value.may_have_reached_target

        fits = await world.request(url="http://scim.corp.test/big/100000")
        assert fits.body == b"x" * 100_000
        assert (await world.request()).body == b"ok"


async def test_response_over_the_hub_limit_fails_and_the_agent_serves_on(
    tmp_path: Path,
) -> None:
    # Several frames' worth, so the hub cuts the stream in the middle.
    limits = HubLimits(max_response_body=150_000)
    async with (
        serve_origin(sized_answers) as origin,
        open_world(tmp_path, limits=limits) as world,
    ):
        agent = world.agent("a", {TARGET: target_at(origin.port)})
        await world.start_agent(agent)
        await world.hub.wait_agent(world.service_id)

        with pytest.raises(ResponseTooLarge) as caught:
            await world.request(url="http://scim.corp.test/big/400000")
        assert not str(caught.value).startswith("the agent answered:")
        assert caught.value.may_have_reached_target

        fits = await world.request(url="http://scim.corp.test/big/150000")
        assert len(fits.body) == 150_000
        assert len(world.sessions()) == 1


# --------------------------------------------------------------------------
# Concurrency limits


@pytest.mark.parametrize(
    ("settings", "keys", "limit", "says"),
    [
        (AgentSettings(max_in_flight=4), {}, 4, "4 requests already in flight"),
        (AgentSettings(), {"max_concurrent": 3}, 3, "target scim-server already"),
    ],
    ids=["agent-max-in-flight", "target-max-concurrent"],
)
async def test_requests_over_the_concurrency_limit_are_refused_at_once(
    tmp_path: Path,
    settings: AgentSettings,
    keys: dict[str, int],
    limit: int,
    says: str,
) -> None:
    gate = Gate()
    async with serve_origin(gate.handler) as origin, open_world(tmp_path) as world:
        agent = world.agent(
            "a", {TARGET: target_at(origin.port, **keys)}, settings=settings
        )
        await world.start_agent(agent)
        await world.hub.wait_agent(world.service_id)

        outcomes = Outcomes()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(outcomes.call, world.request)
                # The excess is refused while the others are still held.
                await gate.wait_arrived(limit)
                await outcomes.wait_count(10 - limit)
                refused = outcomes.errors()
                assert len(refused) == 10 - limit
                assert all(type(error) is Overloaded for error in refused)
                assert not any(error.may_have_reached_target for error in refused)
                assert all(says in str(error) for error in refused)
                assert agent.in_flight == limit
                gate.release()

        assert [r.status for r in outcomes.responses()] == [200] * limit
        assert origin.connections == limit


# --------------------------------------------------------------------------
# Garbage on the websocket


def _sealed_ping(link: Link) -> list[bytes]:
    """Have the hub seal a PING, and take it (and anything before it)."""
    link.conn.ping(b"injected")
    return link.conn.data_to_send()


async def _inject(link: Link, kind: str) -> None:
    # Frames the link's writer still holds would reach the agent after ours
    # and carry lower counters: let them out first.
    link.flush()
    await link.wait_written()
    ws = link.ws
    if kind == "short":
        await ws.send_message(struct.pack(">I", 4) + b"junk")
    elif kind == "huge":
        await ws.send_message(struct.pack(">I", MAX_FRAME_LENGTH + 1) + b"\0" * 64)
    elif kind == "tampered":
        *before, frame = _sealed_ping(link)
        for earlier in before:
            await ws.send_message(earlier)
        await ws.send_message(frame[:-1] + bytes([frame[-1] ^ 1]))
    else:
        frames = _sealed_ping(link)
        for frame in frames:
            await ws.send_message(frame)
        await ws.send_message(frames[-1])


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("short", MalformedFrame),
        ("huge", FrameTooLarge),
        ("tampered", DecryptionFailed),
        ("replayed", NonceOutOfOrder),
    ],
)
async def test_bad_frame_ends_the_session_and_the_agent_comes_back(
    tmp_path: Path, kind: str, error: type[RemoteProtocolError]
) -> None:
    async with serve_origin() as origin, open_world(tmp_path) as world:
        agent = world.agent("a", {TARGET: target_at(origin.port)}, settings=FAST)
        await world.start_agent(agent)
        first = (await world.hub.wait_agent(world.service_id)).session_id
        (session,) = world.sessions()

        with timed_log() as log, trio.fail_after(WAIT):
            await _inject(session.link, kind)
            second = await world.wait_new_session(first)

        # The agent names the error, and closes with its close code.
        ended = [
            line
            for line in log.lines("trustelem_relay.agent", logging.WARNING)
            if "protocol error" in line
        ]
        assert len(ended) == 1
        assert f"{error.__name__}:" in ended[0]
        disconnected = [
            line
            for line in log.lines("trustelem_relay.hub", logging.INFO)
            if f"[{first}] agent" in line and "disconnected" in line
        ]
        assert len(disconnected) == 1
        assert f"({error.close_code} " in disconnected[0]

        response = await world.request()
        assert response.status == 200
        assert response.request_id.startswith(second + ".")
