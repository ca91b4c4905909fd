"""A real hub, real agents and a controllable TCP relay, for failure tests.

The failure-mode tests (``test_relay_faults.py``, ``test_relay_liveness.py``,
``test_relay_routing.py``) need the whole relay running on 127.0.0.1 and a
few ways to hurt it:

* :func:`open_world` runs a :class:`~trustelem_relay.Hub` with one service,
  ``acme``, and yields a :class:`World` that writes agents' ``connect.toml``
  files, starts agents in cancel scopes of their own (so a test can kill
  one) and waits on the hub's registry;
* :class:`TcpRelay` sits between an agent and the hub and forwards bytes
  until the test freezes its connections (bytes stop flowing, nothing is
  closed: a link whose peer went silent) or cuts them (both sockets reset
  at once: a websocket that died abruptly);
* :class:`Gate` is an origin handler that holds every answer until the test
  releases it, so requests stay in flight as long as the test wants.

Teardown order matters: agents are cancelled first, while the hub can still
answer their websocket close, and relays are cut at the same moment so that
an agent behind a frozen relay does not wait for a close that never comes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import trio

from trustelem_relay._agent import Agent, AgentSettings
from trustelem_relay._config import AgentConfig
from trustelem_relay._hub import Hub, Response, ServiceInfo, _Session
from trustelem_relay._hubconfig import HubLimits

from .origin import Exchange
from .ports import LOOPBACK

#: The target name every agent here declares.
TARGET = "scim-server"
#: The application URL the tests ask for; the agent dials the declared address.
URL = "http://scim.corp.test/scim/v2/Users"

#: A target's keys as written under ``[target.NAME]`` in connect.toml.
TargetKeys = Mapping[str, str | int | float]

_CHUNK = 65536


def target_at(port: int, **keys: str | int | float) -> dict[str, str | int | float]:
    """The keys of a target declared at 127.0.0.1:*port*, plus *keys*."""
    return {"addr": f"{LOOPBACK}:{port}", **keys}


def _toml_value(value: str | int | float) -> str:
    # JSON strings of plain ASCII are valid TOML basic strings.
    return json.dumps(value) if isinstance(value, str) else repr(value)


def write_agent_config(
    directory: Path,
    *,
    service_id: str,
    hub_port: int,
    targets: Mapping[str, TargetKeys],
) -> AgentConfig:
    """Write ``directory/connect.toml`` (mode 0600) and load it.

    The agent's state directory is ``directory/state``: two configurations
    written in the same directory make two processes of the same agent.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        f'service_id = "{service_id}"',
        'state_dir = "state"',
        f'hub = "ws://{LOOPBACK}:{hub_port}/v1/connect"',
    ]
    for name, keys in targets.items():
        lines.append(f"[target.{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in keys.items())
    path = directory / "connect.toml"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return AgentConfig.load(path)


# --------------------------------------------------------------------------
# An origin that answers when told to


class Gate:
    """An origin handler that holds each answer until :meth:`release`.

    Pass :meth:`handler` to ``serve_origin``. ``arrived`` counts requests
    that reached the origin whole; :meth:`wait_arrived` waits for a number
    of them.
    """

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer or (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        self.arrived = 0
        self._arrival = trio.Event()
        self._released = trio.Event()

    async def handler(self, stream: trio.abc.Stream, exchange: Exchange) -> None:
        self.arrived += 1
        self._arrival.set()
        self._arrival = trio.Event()
        await self._released.wait()
        await stream.send_all(self.answer)

    async def wait_arrived(self, count: int) -> None:
        """Wait until *count* requests have reached the origin."""
        while self.arrived < count:
            await self._arrival.wait()

    def release(self) -> None:
        """Let every held answer, and every later one, go."""
        self._released.set()


async def never_answer(stream: trio.abc.Stream, exchange: Exchange) -> None:
    """An origin handler that reads the request and then says nothing."""
    await trio.sleep_forever()


# --------------------------------------------------------------------------
# A TCP relay the test can freeze or cut


class _Splice:
    """One client connection and its upstream, copied both ways."""

    def __init__(self, client: trio.SocketStream, upstream: trio.SocketStream):
        self.client = client
        self.upstream = upstream
        self.frozen = False
        self.closed = False
        self._thawed = trio.Event()

    async def flowing(self) -> None:
        while self.frozen:
            await self._thawed.wait()

    def abort(self) -> None:
        # SO_LINGER 0 turns close into a reset: the peer sees the connection
        # die at once, as when a middlebox drops it.
        if self.closed:
            return
        self.closed = True
        for stream in (self.client, self.upstream):
            try:
                stream.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            except OSError:
                pass
            stream.socket.close()


class TcpRelay:
    """Forwards TCP connections to ``upstream_port`` on 127.0.0.1.

    Start it with ``port = await nursery.start(relay.serve)``. ``accepted``
    counts client connections; :meth:`wait_accepted` waits for a number of
    them. :meth:`freeze` stops the bytes of the connections open now (new
    ones still flow); :meth:`cut` resets them.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.accepted = 0
        #: ``trio.current_time()`` at each accepted connection.
        self.accepted_at: list[float] = []
        self._splices: list[_Splice] = []
        self._changed = trio.Event()

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started(self.port)
        finally:
            self.cut()

    async def wait_accepted(self, count: int) -> None:
        """Wait until *count* client connections have been accepted."""
        while self.accepted < count:
            await self._changed.wait()

    def freeze(self) -> None:
        """Stop forwarding on every connection open now, closing nothing."""
        for splice in self._splices:
            splice.frozen = True

    def cut(self) -> None:
        """Reset both sockets of every connection open now."""
        for splice in self._splices:
            splice.abort()
        self._splices.clear()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        self.accepted_at.append(trio.current_time())
        self._changed.set()
        self._changed = trio.Event()
        try:
            upstream = await trio.open_tcp_stream(LOOPBACK, self.upstream_port)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        splice = _Splice(client, upstream)
        self._splices.append(splice)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, splice, client, upstream, nursery)
                nursery.start_soon(self._pump, splice, upstream, client, nursery)
        finally:
            splice.abort()
            if splice in self._splices:
                self._splices.remove(splice)

    @staticmethod
    async def _pump(
        splice: _Splice,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        nursery: trio.Nursery,
    ) -> None:
        try:
            while True:
                await splice.flowing()
                data = await source.receive_some(_CHUNK)
                if not data:
                    break
                await splice.flowing()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------
# A hub, its service and its agents


class World:
    """A running hub with the service ``acme``; see :func:`open_world`."""

    def __init__(
        self,
        hub: Hub,
        port: int,
        service: ServiceInfo,
        root: Path,
        nursery: trio.Nursery,
        agents: trio.Nursery,
    ) -> None:
        self.hub = hub
        self.port = port
        self.service = service
        self.root = root
        self._nursery = nursery
        self._agents = agents
        self.relays: list[TcpRelay] = []

    @property
    def service_id(self) -> str:
        return self.service.service_id

    def agent(
        self,
        name: str,
        targets: Mapping[str, TargetKeys],
        *,
        settings: AgentSettings | None = None,
        hub_port: int | None = None,
    ) -> Agent:
        """An agent whose files live in ``root/name`` (same name, same id)."""
        config = write_agent_config(
            self.root / name,
            service_id=self.service_id,
            hub_port=self.port if hub_port is None else hub_port,
            targets=targets,
        )
        return Agent(config, settings=settings)

    async def start_agent(self, agent: Agent) -> trio.CancelScope:
        """Run *agent* until its scope is cancelled; return once it is up."""
        scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await agent.run(task_status=task_status)

        await self._agents.start(run)
        return scope

    def start_agent_soon(self, agent: Agent) -> trio.CancelScope:
        """Run *agent* without waiting for a session (it may never get one)."""
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await agent.run()

        self._agents.start_soon(run)
        return scope

    async def relay(self, upstream_port: int | None = None) -> TcpRelay:
        """A running :class:`TcpRelay` to the hub (or to *upstream_port*)."""
        relay = TcpRelay(self.port if upstream_port is None else upstream_port)
        await self._nursery.start(relay.serve)
        self.relays.append(relay)
        return relay

    def sessions(self) -> list[_Session]:
        """The hub's registered sessions of ``acme``, in registration order."""
        return list(self.hub._registry.get(self.service.name, []))

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until *condition* holds, re-checking on each registry change."""
        while not condition():
            await self.hub._changed_event.wait()

    async def wait_new_session(self, old: str) -> str:
        """Wait for a usable session other than *old*; return its id."""
        await self.wait_for(
            lambda: any(s.usable() and s.session_id != old for s in self.sessions())
        )
        return next(s.session_id for s in self.sessions() if s.session_id != old)

    async def request(
        self,
        method: str = "GET",
        *,
        target: str = TARGET,
        body: bytes = b"",
        timeout: float | None = None,
    ) -> Response:
        """One relayed request to *target*."""
        return await self.hub.request(
            self.service_id, target, method, URL, body=body, timeout=timeout
        )

    def shut_down(self) -> None:
        """Cancel every agent and reset every relayed connection."""
        self._agents.cancel_scope.cancel()
        for relay in self.relays:
            relay.cut()


@contextlib.asynccontextmanager
async def open_world(
    root: Path, *, limits: HubLimits | None = None
) -> AsyncIterator[World]:
    """Run a hub on 127.0.0.1 for the block; agents stop first on the way out.

    What the block raises is re-raised as is, not inside an exception group.
    """
    hub = Hub(limits=limits)
    service = hub.create_service("acme")
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        port = await nursery.start(hub.serve, LOOPBACK, 0)
        async with trio.open_nursery() as agents:
            world = World(hub, port, service, root, nursery, agents)
            try:
                yield world
            except BaseException as exc:
                failure = exc
            finally:
                world.shut_down()
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
