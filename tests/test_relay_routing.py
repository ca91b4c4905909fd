"""Which agent a request goes through, and how one request is traced.

A service may have several agents; the hub sends each request to the least
busy one that is not draining, and stops using one that died or said
GOAWAY. Each agent here dials its own origin, so the origin that saw a
request tells which agent forwarded it. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from support.origin import serve_origin
from support.relay_faults import (
    TARGET,
    Gate,
    Outcomes,
    open_world,
    target_at,
    timed_log,
)

from trustelem_relay._errors import AgentUnavailable, UndeclaredTarget

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

#: Long enough for anything on loopback; a hang fails instead of blocking.
WAIT = 10


async def test_requests_spread_over_two_agents_and_move_to_the_survivor(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with (
        serve_origin(gate.handler) as origin_a,
        serve_origin(gate.handler) as origin_b,
        open_world(tmp_path) as world,
    ):
        # Agent a is killed later: its connection goes through a relay that
        # drops it at the same moment, as when the process dies.
        relay = await world.relay()
        agent_a = world.agent(
            "a", {TARGET: target_at(origin_a.port)}, hub_port=relay.port
        )
        agent_b = world.agent("b", {TARGET: target_at(origin_b.port)})
        assert agent_a.agent_id != agent_b.agent_id
        run_a = await world.start_agent(agent_a)
        await world.start_agent(agent_b)
        await world.wait_for(lambda: sum(s.usable() for s in world.sessions()) == 2)

        # Both alive: ten requests held at the origins split five and five.
        outcomes = Outcomes()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(outcomes.call, world.request)
                await gate.wait_arrived(10)
                in_flight = [
                    info.in_flight for info in world.hub.agents(world.service_id)
                ]
                assert in_flight == [5, 5]
                assert (agent_a.in_flight, agent_b.in_flight) == (5, 5)
                gate.release()
        assert [r.status for r in outcomes.responses()] == [200] * 10
        assert (len(origin_a.exchanges), len(origin_b.exchanges)) == (5, 5)

        # Agent a dies: once the hub noticed, everything goes through b.
        run_a.scope.cancel()
        relay.cut()
        with trio.fail_after(WAIT):
            await world.wait_for(lambda: len(world.sessions()) == 1)
        for _ in range(4):
            response = await world.request("POST", body=b"{}")
            assert response.status == 200
        assert (len(origin_a.exchanges), len(origin_b.exchanges)) == (5, 9)
        assert [info.agent_id for info in world.hub.agents(world.service_id)] == [
            agent_b.agent_id
        ]


# --------------------------------------------------------------------------
# Drain


async def test_drain_finishes_the_request_in_flight_and_takes_no_new_one(
    tmp_path: Path,
) -> None:
    gate = Gate()
    async with serve_origin(gate.handler) as origin, open_world(tmp_path) as world:
        agent = world.agent("a", {TARGET: target_at(origin.port)})
        run = await world.start_agent(agent)
        await world.hub.wait_agent(world.service_id)
        (session,) = world.sessions()

        outcomes = Outcomes()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(outcomes.call, world.request)
                await gate.wait_arrived(1)
                nursery.start_soon(agent.drain)

                # GOAWAY reached the hub: it routes nothing more there.
                await world.wait_for(lambda: session.draining)
                with pytest.raises(AgentUnavailable) as caught:
                    await world.request("POST", body=b"{}")
                assert not caught.value.may_have_reached_target
                assert not run.returned.is_set()

                gate.release()
                await run.returned.wait()

        # The request in flight completed normally; the new one never left.
        assert [r.status for r in outcomes.responses()] == [200]
        assert outcomes.errors() == []
        assert gate.arrived == 1
        assert len(origin.exchanges) == 1
        assert world.sessions() == []


async def test_drain_sends_new_requests_to_the_other_agent(tmp_path: Path) -> None:
    gate = Gate()
    async with (
        serve_origin(gate.handler) as origin_a,
        serve_origin(gate.handler) as origin_b,
        open_world(tmp_path) as world,
    ):
        agent_a = world.agent("a", {TARGET: target_at(origin_a.port)})
        agent_b = world.agent("b", {TARGET: target_at(origin_b.port)})
        run_a = await world.start_agent(agent_a)
        await world.start_agent(agent_b)
        await world.wait_for(lambda: sum(s.usable() for s in world.sessions()) == 2)
        session_a = next(s for s in world.sessions() if s.agent_id == agent_a.agent_id)

        outcomes = Outcomes()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                # The first request goes to a (registered first, both idle).
                nursery.start_soon(outcomes.call, world.request)
                await gate.wait_arrived(1)
                assert len(origin_a.exchanges) == 1
                nursery.start_soon(agent_a.drain)
                await world.wait_for(lambda: session_a.draining)

                # While a drains, even the least busy pick is b.
                for _ in range(3):
                    nursery.start_soon(outcomes.call, world.request)
                await gate.wait_arrived(4)
                assert (len(origin_a.exchanges), len(origin_b.exchanges)) == (1, 3)
                gate.release()
                await run_a.returned.wait()

        assert [r.status for r in outcomes.responses()] == [200] * 4
        assert [info.agent_id for info in world.hub.agents(world.service_id)] == [
            agent_b.agent_id
        ]


# --------------------------------------------------------------------------
# Request ids


async def test_one_request_id_names_the_request_in_hub_and_agent_logs(
    tmp_path: Path,
) -> None:
    async with serve_origin() as origin, open_world(tmp_path) as world:
        await world.start_agent(world.agent("a", {TARGET: target_at(origin.port)}))
        await world.hub.wait_agent(world.service_id)

        with timed_log() as log:
            response = await world.request("POST", body=b'{"userName": "bjensen"}')
            with pytest.raises(UndeclaredTarget) as caught:
                await world.request(target="no-such-target")

    ids = (response.request_id, caught.value.request_id)
    assert ids[0] != ids[1]
    for request_id in ids:
        assert request_id
        tag = f"[{request_id}]"
        hub = [line for line in log.lines("trustelem_relay.hub") if tag in line]
        agent = [line for line in log.lines("trustelem_relay.agent") if tag in line]
        assert hub, f"no hub line for {request_id}"
        assert agent, f"no agent line for {request_id}"

    # The forwarded one also names its id where the target is dialled.
    forward = [line for line in log.lines("trustelem_relay.forward") if ids[0] in line]
    assert forward
    # A request's lines name the request, never its body.
    assert not any("bjensen" in record.getMessage() for _, record in log.entries)
    assert all(record.levelno < logging.ERROR for _, record in log.entries), (
        "a normal request and a refusal log no error"
    )
