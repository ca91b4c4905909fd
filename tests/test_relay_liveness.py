"""Liveness: dead links are noticed, the agent comes back, and never gives up.

These tests run on pytest-trio's ``autojump_clock``: the sockets are real
(127.0.0.1), the waiting is virtual, so minutes of heartbeats and backoff
take milliseconds and the times asserted are exact. A link "goes silent"
through a TCP relay that stops forwarding bytes without closing anything,
as a dead NAT entry or a suspended peer would. The agent's jitter is
replaced by a recorder that returns three quarters of each ceiling, so the
delays are known and distinguishable from the ceilings themselves.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from support.origin import serve_origin
from support.ports import refusing_port
from support.relay_faults import TARGET, open_world, target_at, timed_log

from trustelem_relay import _agent

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

#: DESIGN section 8: heartbeat every 15 s, answer due within 10 s.
HEARTBEAT = 15.0
DEADLINE = 10.0
#: How long a link closing on its own waits for the websocket close reply.
CLOSE_GRACE = 2.0
#: The share of each backoff ceiling that the recorder draws.
DRAW = 0.75
#: A target that the liveness tests never ask for.
UNUSED = {TARGET: target_at(9)}


class RecordingJitter:
    """Stands in for the agent's ``random`` module.

    Each ``uniform(low, high)`` call is recorded with the virtual time it
    was made at, and answers ``DRAW * high``.
    """

    def __init__(self) -> None:
        #: (trio.current_time(), low, high) of each call.
        self.calls: list[tuple[float, float, float]] = []
        self._called = trio.Event()

    def uniform(self, low: float, high: float) -> float:
        self.calls.append((trio.current_time(), low, high))
        self._called.set()
        self._called = trio.Event()
        return DRAW * high

    async def wait_calls(self, count: int) -> None:
        while len(self.calls) < count:
            await self._called.wait()


@pytest.fixture
def jitter(monkeypatch: pytest.MonkeyPatch) -> RecordingJitter:
    recorder = RecordingJitter()
    monkeypatch.setattr(_agent, "random", recorder)
    return recorder


# --------------------------------------------------------------------------
# Dead links


@pytest.mark.parametrize("quiet_after", [0.0, 14.0, 16.0])
async def test_silent_link_is_found_dead_within_30_seconds_and_replaced(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    jitter: RecordingJitter,
    quiet_after: float,
) -> None:
    async with open_world(tmp_path) as world:
        relay = await world.relay()
        agent = world.agent("a", UNUSED, hub_port=relay.port)
        with timed_log() as log:
            await world.start_agent(agent)
            first = (await world.hub.wait_agent(world.service_id)).session_id
            up = trio.current_time()

            # Heartbeats were answered until the link went silent.
            await trio.sleep(quiet_after)
            relay.freeze()
            frozen = trio.current_time()
            with trio.fail_after(60):
                second = await world.wait_new_session(first)

        # The last ping answered went out at `last`; the next one gets no
        # answer, and its deadline ends the link on both sides.
        last = up + HEARTBEAT * (quiet_after // HEARTBEAT)
        dead = last + HEARTBEAT + DEADLINE
        agent_ended = log.times_of(
            "trustelem_relay.agent", "session ended: no answer to a heartbeat"
        )
        hub_ended = log.times_of(
            "trustelem_relay.hub", f"[{first}] agent {agent.agent_id} disconnected"
        )
        assert agent_ended == [dead + CLOSE_GRACE]
        assert hub_ended == [dead + CLOSE_GRACE]
        assert dead - frozen <= HEARTBEAT + DEADLINE

        # Then the first backoff step: a draw from [0, 1 s].
        assert [(low, high) for _, low, high in jitter.calls] == [(0, 1)]
        assert relay.accepted_at[1] == agent_ended[0] + DRAW * 1
        assert relay.accepted_at[1] - frozen <= 30
        assert second != first
        assert [s.session_id for s in world.sessions()] == [second]


async def test_reconnect_backoff_is_full_jitter_capped_at_60_s_and_never_ends(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    jitter: RecordingJitter,
) -> None:
    with contextlib.ExitStack() as refusing:
        closed = refusing.enter_context(refusing_port())
        async with open_world(tmp_path) as world:
            agent = world.agent("a", UNUSED, hub_port=closed)
            run = world.start_agent_soon(agent)
            await jitter.wait_calls(10)

            # Each failed attempt draws from [0, min(60, 2**attempt)].
            ceilings = [high for _, _, high in jitter.calls]
            assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
            assert all(low == 0 for _, low, _ in jitter.calls)
            # ... and waits exactly the draw before the next attempt.
            times = [at for at, _, _ in jitter.calls]
            gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
            assert gaps == [DRAW * high for high in ceilings[:-1]]

            # Ten minutes of refusals later the hub appears, and the agent,
            # still trying, connects on its next attempt. The port is let
            # go for the hub to take.
            refusing.close()
            relay = await world.relay(port=closed)
            info = await world.hub.wait_agent(world.service_id, timeout=120)
            assert relay.accepted_at == [times[-1] + DRAW * 60]
            assert info.agent_id == agent.agent_id
            assert not run.returned.is_set()


# --------------------------------------------------------------------------
# The same agent again


async def test_new_session_of_the_same_agent_replaces_the_stale_one_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with serve_origin() as origin, open_world(tmp_path) as world:
        targets = {TARGET: target_at(origin.port)}
        relay = await world.relay()
        stale = world.agent("a", targets, hub_port=relay.port)
        stale_run = await world.start_agent(stale)
        old = (await world.hub.wait_agent(world.service_id)).session_id
        (old_session,) = world.sessions()

        # The old process hangs (its link goes silent, the hub cannot know)
        # and a new one starts from the same state directory.
        relay.freeze()
        restarted = trio.current_time()
        fresh = world.agent("a", targets)
        assert fresh.agent_id == stale.agent_id
        await world.start_agent(fresh)
        await world.wait_for(lambda: old_session not in world.sessions())

        # Replaced without waiting for a heartbeat to fail.
        assert trio.current_time() - restarted < 1
        (session,) = world.sessions()
        assert session.session_id != old
        assert session.agent_id == fresh.agent_id
        assert old_session.link.closed_reason == "replaced by a new session"
        assert [info.session_id for info in world.hub.agents(world.service_id)] == [
            session.session_id
        ]
        response = await world.request()
        assert response.request_id.startswith(session.session_id + ".")
        stale_run.scope.cancel()


# --------------------------------------------------------------------------
# A rotated service_id


async def test_rotated_service_id_is_reported_once_and_retried_every_5_minutes(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    jitter: RecordingJitter,
) -> None:
    async with open_world(tmp_path) as world:
        relay = await world.relay()
        agent = world.agent("a", UNUSED, hub_port=relay.port)
        with timed_log() as log:
            await world.start_agent(agent)
            await world.hub.wait_agent(world.service_id)
            rotated = trio.current_time()
            world.hub.rotate_service("acme")
            await world.wait_for(lambda: not world.sessions())
            assert trio.current_time() == rotated
            await trio.sleep(4 * 300 + 10)

        # One quick reconnect after the close, then one attempt every
        # 5 minutes: the handshake cannot succeed with the old id.
        assert relay.accepted_at[1:] == [rotated + DRAW * 1 + 300 * i for i in range(5)]
        assert world.sessions() == []
        assert agent.status.last_error is not None
        assert agent.status.last_error.startswith("handshake failed")

        # The close is said once; the refusal once at ERROR, then only at
        # DEBUG on each retry.
        problems = log.lines("trustelem_relay.agent", logging.WARNING)
        assert problems[0] == (
            "session ended: websocket closed by the peer (4002 service_id rotated)"
        )
        problems = problems[1:]
        assert len(problems) == 1, problems
        assert problems[0].startswith("handshake failed: ")
        assert len(log.times_of("trustelem_relay.agent", "still failing")) == 4
