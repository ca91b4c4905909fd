"""What the relay does when things break while requests are in flight.

Everything is real: a hub and an agent on 127.0.0.1, an origin server the
agent dials, and where a fault needs one, a TCP relay between the agent and
the hub that the test cuts. Each test states one rule about failure: every
request gets exactly one typed outcome, limits refuse before sending,
garbage on the websocket ends only that session.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from support.listener import CountingListener
from support.origin import serve_origin
from support.relay_faults import (
    TARGET,
    Gate,
    never_answer,
    open_world,
    target_at,
)

from trustelem_relay import AgentSettings
from trustelem_relay._errors import (
    DecryptionFailed,
    MalformedFrame,
    NonceOutOfOrder,
    Overloaded,
    RemoteProtocolError,
    RequestError,
    RequestTooLarge,
    ResponseTooLarge,
    SessionLost,
    TimeoutAfterSending,
)
from trustelem_relay._forward import ForwardLimits
from trustelem_relay._hub import Response
from trustelem_relay._hubconfig import HubLimits

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

#: Reconnect at once in tests that run on the real clock.
FAST = AgentSettings(backoff_initial=0.01)


def answer_of(size: int) -> bytes:
    """An HTTP response whose body is *size* bytes."""
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    return head.encode() + b"x" * size


# --------------------------------------------------------------------------
# The websocket dies with requests in flight


async def test_cut_websocket_gives_each_request_one_outcome(tmp_path: Path) -> None:
    gate = Gate()
    async with serve_origin(gate.handler) as origin, open_world(tmp_path) as world:
        relay = await world.relay()
        agent = world.agent(
            "a", {TARGET: target_at(origin.port)}, settings=FAST, hub_port=relay.port
        )
        await world.start_agent(agent)
        first = (await world.hub.wait_agent(world.service_id)).session_id

        outcomes: dict[int, list[Response | RequestError]] = {i: [] for i in range(20)}

        async def one(number: int) -> None:
            method = "POST" if number % 2 else "GET"
            try:
                outcomes[number].append(await world.request(method, body=b"{}"))
            except RequestError as exc:
                outcomes[number].append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for number in range(20):
                    nursery.start_soon(one, number)
                await gate.wait_arrived(20)
                relay.cut()

        # One outcome each: the session was lost after every request was sent.
        assert all(len(outcome) == 1 for outcome in outcomes.values())
        errors = [outcome[0] for outcome in outcomes.values()]
        assert all(isinstance(error, SessionLost) for error in errors), errors
        assert all(error.may_have_reached_target for error in errors)  # type: ignore[union-attr]
        assert not world.sessions() or world.sessions()[0].session_id != first

        # The agent comes back on a new connection and serves again.
        with trio.fail_after(10):
            second = await world.wait_new_session(first)
        assert second != first
        assert relay.accepted == 2
        gate.release()
        response = await world.request()
        assert response.status == 200
        assert response.request_id.startswith(second + ".")
