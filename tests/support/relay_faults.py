"""A real hub, real agents and a controllable TCP relay, for failure tests.

The failure-mode tests (``test_relay_faults.py``, ``test_relay_liveness.py``,
``test_relay_routing.py``) need the whole relay running on 127.0.0.1 and a
few ways to hurt it:

* :func:`open_world` runs a :class:`~trustelem_relay.Hub` with one service,
  ``acme``, and yields a :class:`World` that writes agents' ``connect.toml``
  files, starts agents in cancel scopes of their own (so that a test can
  kill one) and waits on the hub's registry;
* :class:`TcpRelay` sits between an agent and the hub and forwards bytes
  until the test freezes its connections (bytes stop flowing, nothing is
  closed: a link whose peer went silent) or cuts them (both sockets reset
  at once: a websocket that died abruptly);
* :class:`Gate` is an origin handler that holds every answer until the test
  releases it, so requests stay in flight as long as the test wants;
* :class:`Outcomes` collects what concurrent requests ended with, and
  :class:`TimedLog` records log lines with the (virtual) time they were
  written at.

Teardown order matters: agents are cancelled first, while the hub can still
answer their websocket close, and relays are cut at the same moment so that
an agent behind a frozen relay does not wait for a close that never comes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import trio

from trustelem_relay._agent import Agent, AgentSettings
from trustelem_relay._config import AgentConfig
from trustelem_relay._errors import RequestError
from trustelem_relay._hub import Hub
from trustelem_relay._hub_session import Response, ServiceInfo, Session
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
#: How long stopping the agents may take before they are cancelled.
_TEARDOWN = 5.0


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
# An origin that answers when told to, and what requests ended with


def http_answer(body: bytes = b"ok") -> bytes:
    """A whole HTTP/1.1 response with *body*, asking to close."""
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class Gate:
    """An origin handler that holds each answer until :meth:`release`.

    Pass :meth:`handler` to ``serve_origin`` (one gate may serve several
    origins). ``arrived`` counts requests that reached an origin whole;
    :meth:`wait_arrived` waits for a number of them.
    """

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer or http_answer()
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


class Outcomes:
    """What each of many concurrent requests ended with, in order of ending."""

    def __init__(self) -> None:
        self.results: list[Response | RequestError] = []
        self._changed = trio.Event()

    async def call(self, request: Callable[[], Awaitable[Response]]) -> None:
        """Run *request*; keep its response or its :class:`RequestError`."""
        result: Response | RequestError
        try:
            result = await request()
        except RequestError as exc:
            result = exc
        self.results.append(result)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_count(self, count: int) -> None:
        """Wait until *count* requests have ended."""
        while len(self.results) < count:
            await self._changed.wait()

    def errors(self) -> list[RequestError]:
        return [r for r in self.results if isinstance(r, RequestError)]

    def responses(self) -> list[Response]:
        return [r for r in self.results if isinstance(r, Response)]


class TimedLog(logging.Handler):
    """Log records under ``trustelem_relay``, each with ``trio.current_time()``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[tuple[float, logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:
            now = float("nan")
        self.entries.append((now, record))

    def times_of(self, logger: str, fragment: str) -> list[float]:
        """When *logger* wrote each line containing *fragment*."""
        return [
            at
            for at, record in self.entries
            if record.name == logger and fragment in record.getMessage()
        ]

    def lines(self, logger: str, level: int = logging.DEBUG) -> list[str]:
        """Messages of *logger* (or its children) at *level* or above."""
        return [
            record.getMessage()
            for _, record in self.entries
            if record.levelno >= level
            and (record.name == logger or record.name.startswith(logger + "."))
        ]


@contextlib.contextmanager
def timed_log() -> Iterator[TimedLog]:
    """Record everything ``trustelem_relay`` logs at DEBUG during the block."""
    logger = logging.getLogger("trustelem_relay")
    handler = TimedLog()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --------------------------------------------------------------------------
# A TCP relay the test can freeze or cut


class _Splice:
    """One client connection and its upstream, copied both ways."""

    def __init__(self, client: trio.SocketStream, upstream: trio.SocketStream):
        self.client = client
        self.upstream = upstream
        self.frozen = False
        self.closed = False

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

    Start it with ``port = await nursery.start(relay.serve)``; it listens on
    *port* (0: the kernel picks). ``accepted`` counts client connections and
    ``accepted_at`` holds when each came. :meth:`freeze` stops the bytes of
    the connections open now (new ones still flow); :meth:`cut` resets them.
    """

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self.accepted = 0
        #: ``trio.current_time()`` at each accepted connection.
        self.accepted_at: list[float] = []
        self._splices: list[_Splice] = []
        self._changed = trio.Event()
        # Frozen splices wait on this; it is never set.
        self._never = trio.Event()

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host=LOOPBACK)
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
        # serve_listeners closes the client's stream when this returns.
        self.accepted += 1
        self.accepted_at.append(trio.current_time())
        self._changed.set()
        self._changed = trio.Event()
        try:
            upstream = await trio.open_tcp_stream(LOOPBACK, self.upstream_port)
        except OSError:
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

    async def _pump(
        self,
        splice: _Splice,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        nursery: trio.Nursery,
    ) -> None:
        try:
            while True:
                data = await source.receive_some(_CHUNK)
                if not data:
                    break
                if splice.frozen:
                    await self._never.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------
# A hub, its service and its agents


class AgentRun:
    """An agent running in its own cancel scope."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        #: Cancel it to kill the agent without a goodbye.
        self.scope = trio.CancelScope()
        #: Set when ``agent.run()`` returned by itself (after a drain).
        self.returned = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with self.scope:
            await self.agent.run(task_status=task_status)
            self.returned.set()

    async def stop(self) -> None:
        """Drain the agent and wait until ``run()`` has returned."""
        await self.agent.drain()
        await self.returned.wait()


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
        self._runs: list[AgentRun] = []

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

    async def start_agent(self, agent: Agent) -> AgentRun:
        """Run *agent*; return once its first session is up."""
        run = AgentRun(agent)
        self._runs.append(run)
        await self._agents.start(run.run)
        return run

    def start_agent_soon(self, agent: Agent) -> AgentRun:
        """Run *agent* without waiting for a session (it may never get one)."""
        run = AgentRun(agent)
        self._runs.append(run)
        self._agents.start_soon(run.run)
        return run

    async def relay(self, *, port: int = 0) -> TcpRelay:
        """A running :class:`TcpRelay` to the hub, listening on *port*."""
        relay = TcpRelay(self.port, port)
        await self._nursery.start(relay.serve)
        self.relays.append(relay)
        return relay

    def sessions(self) -> list[Session]:
        """The hub's registered sessions of ``acme``, in registration order."""
        return list(self.hub._registry.get(self.service.name, []))

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until *condition* holds, re-checking on each registry change."""
        while not condition():
            await self.hub._wait_changed()

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
        url: str = URL,
        target: str = TARGET,
        body: bytes = b"",
        timeout: float | None = None,
    ) -> Response:
        """One relayed request to *target*."""
        return await self.hub.request(
            self.service_id, target, method, url, body=body, timeout=timeout
        )

    async def shut_down(self) -> None:
        """Stop every agent with a drain, then whatever is left by force.

        Relays are cut first: an agent behind a frozen one would otherwise
        wait for a close handshake that cannot arrive. Agents are drained
        rather than cancelled because a cancelled agent's websocket reader
        is cancelled too, and then waits out the close handshake's grace.
        """
        for relay in self.relays:
            relay.cut()
        with trio.move_on_after(_TEARDOWN):
            async with trio.open_nursery() as nursery:
                for run in self._runs:
                    if not run.scope.cancel_called:
                        nursery.start_soon(run.stop)
        self._agents.cancel_scope.cancel()


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
                with trio.CancelScope(shield=True):
                    await world.shut_down()
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
