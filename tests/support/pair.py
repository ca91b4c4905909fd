"""Two connected sans-IO ends, an agent and a hub, for synchronous tests.

:func:`make_pair` builds both :class:`~trustelem_relay._mux.Connection`
objects with deterministic randomness (a seeded generator, so every run sees
the same ephemerals) and a :class:`FakeClock`, and by default runs the
handshake. :class:`Pair` then moves queued frames from one end to the other:

* :meth:`Pair.to_hub` / :meth:`Pair.to_agent` deliver what one side queued;
* :meth:`Pair.pump` goes back and forth until neither side has anything left.

Frames can be cut into random chunks on the way (``chunker``) and rewritten
(``tamper``), and every frame that crossed is kept in :attr:`Pair.wire` so
that tests can look at the exact bytes. Events are returned by each call and
also accumulated in :attr:`Pair.agent_events` / :attr:`Pair.hub_events`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Literal

from trustelem_relay._events import Event
from trustelem_relay._keys import lookup_id, service_psk
from trustelem_relay._mux import Connection, ConnectionState, Role, Settings

#: A well-formed service id used by default (never a real one).
SERVICE_ID = "2jy34wpcohrhdytr6hutym6qfi2l7nnw"

#: Another well-formed id, for "wrong service" tests.
OTHER_SERVICE_ID = "abcdefghijklmnopqrstuvwxyz234567"

Direction = Literal["to_hub", "to_agent"]

#: Cuts one frame into the pieces handed to ``receive_data``.
Chunker = Callable[[bytes], list[bytes]]

#: Rewrites a frame on its way; may return it unchanged.
Tamper = Callable[[Direction, bytes], bytes]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def seeded_random(seed: int) -> Callable[[int], bytes]:
    """Return a ``random_bytes`` function that repeats for a given seed."""
    generator = random.Random(seed)
    return generator.randbytes


def resolver(*service_ids: str) -> Callable[[bytes], bytes | None]:
    """The hub's lookup: lookup id -> psk for the given services."""
    table = {lookup_id(sid): service_psk(sid) for sid in service_ids}
    return table.get


def random_chunker(generator: random.Random, max_size: int = 64) -> Chunker:
    """Cut each frame at random points into pieces of 1..max_size bytes."""

    def cut(frame: bytes) -> list[bytes]:
        pieces = []
        offset = 0
        while offset < len(frame):
            size = generator.randint(1, max_size)
            pieces.append(frame[offset : offset + size])
            offset += size
        return pieces

    return cut


def whole(frame: bytes) -> list[bytes]:
    """The default chunker: one frame, one call."""
    return [frame]


class Pair:
    """An agent and a hub connected back to back; see the module docstring."""

    def __init__(
        self,
        agent: Connection,
        hub: Connection,
        clock: FakeClock,
        *,
        chunker: Chunker = whole,
        tamper: Tamper | None = None,
    ) -> None:
        self.agent = agent
        self.hub = hub
        self.clock = clock
        self.chunker = chunker
        self.tamper = tamper
        #: Every frame delivered, in order, as (direction, bytes after tamper).
        self.wire: list[tuple[Direction, bytes]] = []
        #: Every event each side produced so far.
        self.agent_events: list[Event] = []
        self.hub_events: list[Event] = []

    def __iter__(self) -> Iterator[Connection]:
        return iter((self.agent, self.hub))

    def _deliver(self, direction: Direction) -> list[Event]:
        if direction == "to_hub":
            sender, receiver, log = self.agent, self.hub, self.hub_events
        else:
            sender, receiver, log = self.hub, self.agent, self.agent_events
        events: list[Event] = []
        for frame in sender.data_to_send():
            if self.tamper is not None:
                frame = self.tamper(direction, frame)
            self.wire.append((direction, frame))
            for piece in self.chunker(frame):
                events += receiver.receive_data(piece)
        log += events
        return events

    def to_hub(self) -> list[Event]:
        """Deliver everything the agent queued; return the hub's events."""
        return self._deliver("to_hub")

    def to_agent(self) -> list[Event]:
        """Deliver everything the hub queued; return the agent's events."""
        return self._deliver("to_agent")

    def pump(self, rounds: int = 100) -> tuple[list[Event], list[Event]]:
        """Deliver both ways until quiet; return (agent events, hub events).

        A closed side is skipped (its peer's frames have nowhere to go), so
        a pump after a failure ends instead of raising LocalProtocolError.
        """
        agent_events: list[Event] = []
        hub_events: list[Event] = []
        for _ in range(rounds):
            moved = False
            if self.hub.state is not ConnectionState.CLOSED:
                before = len(self.wire)
                hub_events += self.to_hub()
                moved = moved or len(self.wire) > before
            if self.agent.state is not ConnectionState.CLOSED:
                before = len(self.wire)
                agent_events += self.to_agent()
                moved = moved or len(self.wire) > before
            if not moved:
                return agent_events, hub_events
        raise AssertionError(f"the pair still talks after {rounds} rounds")


def make_pair(
    *,
    service_id: str = SERVICE_ID,
    known: tuple[str, ...] | None = None,
    resolve: Callable[[bytes], bytes | None] | None = None,
    settings: Settings | None = None,
    agent_settings: Settings | None = None,
    hub_settings: Settings | None = None,
    seed: int = 0,
    chunker: Chunker = whole,
    tamper: Tamper | None = None,
    handshake: bool = True,
) -> Pair:
    """Build an agent and a hub; run the handshake unless told not to.

    The hub knows the services in ``known`` (by default the agent's own) or
    uses ``resolve`` when given. ``settings`` applies to both ends unless
    ``agent_settings`` / ``hub_settings`` override it. The two ends draw
    from different seeded generators so their ephemerals differ.
    """
    clock = FakeClock()
    if resolve is None:
        resolve = resolver(*(known if known is not None else (service_id,)))
    agent = Connection(
        Role.AGENT,
        service_id=service_id,
        settings=agent_settings or settings,
        random_bytes=seeded_random(2 * seed),
        clock=clock,
    )
    hub = Connection(
        Role.HUB,
        resolve=resolve,
        settings=hub_settings or settings,
        random_bytes=seeded_random(2 * seed + 1),
        clock=clock,
    )
    pair = Pair(agent, hub, clock, chunker=chunker, tamper=tamper)
    if handshake:
        pair.pump()
        assert agent.state is ConnectionState.OPEN
        assert hub.state is ConnectionState.OPEN
    return pair
