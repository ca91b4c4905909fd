"""A whole relay in one test: hub, service, connect.toml and agent, on 127.0.0.1.

The pieces, usable on their own:

* :func:`start_hub` serves a :class:`Hub` on ``127.0.0.1:0`` (plain or TLS)
  in a nursery and creates one service;
* :func:`write_connect_toml` writes the agent's configuration, mode 0600
  since it holds the service_id, with the targets, hub URL, proxy and CA a
  test asks for;
* :func:`load_agent` builds an :class:`Agent` from that file.

The ``relay_kit`` fixture (a :class:`RelayKit` on the test's nursery) runs
them: ``await kit.start_agent(path)`` returns once the agent's first session
is up, ``kit.spawn_agent(path)`` starts one that is expected *not* to
connect, and ``await kit.start_relay(targets)`` starts a plain hub and an
agent and waits until the hub has registered it, so ``relay.request(...)``
works at once. When the test ends the kit drains every agent and waits for
each to stop before the nursery is cancelled, so the websockets close with
a proper handshake and no socket is left behind.

The ``relay_log`` fixture keeps everything logged under ``trustelem_relay``
at DEBUG and above. :meth:`RelayLog.wait_for` waits for a line (how a test
learns that an agent failed, without sleeping), and when the test ends none
of the strings given to :meth:`RelayLog.forbid`, nor any spelling of a
service_id given to :meth:`RelayLog.forbid_service_id`, may appear in it.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import tomlkit
import trio

from trustelem_relay import (
    Agent,
    AgentConfig,
    AgentSettings,
    Hub,
    Response,
    ServiceInfo,
)
from trustelem_relay._keys import service_psk

from .ports import LOOPBACK

#: One target's keys as connect.toml writes them (``addr`` is required).
TargetSpec = Mapping[str, Any]

#: Long enough for anything on loopback, short enough to fail fast.
WAIT = 10.0


# --------------------------------------------------------------------------
# The hub


@attrs.frozen
class RunningHub:
    """A hub serving agents on 127.0.0.1, with one service created."""

    hub: Hub
    port: int
    service: ServiceInfo
    #: Whether the agents' endpoint speaks TLS (wss).
    tls: bool

    @property
    def service_id(self) -> str:
        return self.service.service_id

    def url(self, host: str = LOOPBACK) -> str:
        """The agents' endpoint as connect.toml writes it, under *host*."""
        scheme = "wss" if self.tls else "ws"
        return f"{scheme}://{host}:{self.port}{self.hub.path}"


async def start_hub(
    nursery: trio.Nursery,
    *,
    ssl_context: ssl.SSLContext | None = None,
    service_name: str = "acme",
) -> RunningHub:
    """Serve a new in-memory hub on 127.0.0.1:0 and create a service."""
    hub = Hub()
    port = await nursery.start(
        functools.partial(hub.serve, ssl_context=ssl_context), LOOPBACK, 0
    )
    service = hub.create_service(service_name)
    return RunningHub(hub, port, service, ssl_context is not None)


# --------------------------------------------------------------------------
# The agent


def write_connect_toml(
    directory: Path,
    *,
    service_id: str,
    hub: str,
    targets: Mapping[str, TargetSpec],
    proxy: str | None = None,
    hub_ca_file: Path | None = None,
) -> Path:
    """Write ``directory/connect.toml`` (mode 0600) and return its path.

    The state directory is ``directory/state``, so agents configured in
    different directories have different agent ids. Path values in
    *targets* may be :class:`Path` objects.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    document: dict[str, Any] = {
        "service_id": service_id,
        "state_dir": "state",
        "hub": hub,
    }
    if proxy is not None:
        document["proxy"] = proxy
    if hub_ca_file is not None:
        document["hub_ca_file"] = str(hub_ca_file)
    document["target"] = {
        name: {key: str(v) if isinstance(v, Path) else v for key, v in spec.items()}
        for name, spec in targets.items()
    }
    path = directory / "connect.toml"
    # Created private: the file holds the service_id from its first byte.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        os.fchmod(stream.fileno(), 0o600)
        stream.write(tomlkit.dumps(document))
    return path


def load_agent(config_path: Path, settings: AgentSettings | None = None) -> Agent:
    """An agent built from the file, not yet running."""
    return Agent(AgentConfig.load(config_path), settings=settings)


# --------------------------------------------------------------------------
# Running them together


@attrs.frozen
class Relay:
    """A hub and one connected agent of its service."""

    running: RunningHub
    agent: Agent
    config_path: Path

    @property
    def hub(self) -> Hub:
        return self.running.hub

    @property
    def service_id(self) -> str:
        return self.running.service_id

    async def request(
        self, target: str, method: str, url: str, **options: Any
    ) -> Response:
        """``hub.request`` for this relay's service; options pass through."""
        return await self.hub.request(self.service_id, target, method, url, **options)


class RelayKit:
    """Starts hubs and agents in one nursery, and stops the agents gracefully.

    Agents are drained by :meth:`aclose` (the ``relay_kit`` fixture calls it
    when the test ends), before the nursery is cancelled: an agent cancelled
    together with its hub would wait for a websocket close handshake that
    neither side is left to answer.
    """

    def __init__(self, nursery: trio.Nursery, directory: Path) -> None:
        self.nursery = nursery
        self.directory = directory
        # Each agent with the event its run() sets when it returns.
        self._agents: list[tuple[Agent, trio.Event]] = []

    async def start_hub(
        self, *, ssl_context: ssl.SSLContext | None = None
    ) -> RunningHub:
        """See :func:`start_hub`."""
        return await start_hub(self.nursery, ssl_context=ssl_context)

    async def _run(
        self,
        agent: Agent,
        stopped: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await agent.run(task_status=task_status)
        finally:
            stopped.set()

    def _track(self, agent: Agent) -> trio.Event:
        stopped = trio.Event()
        self._agents.append((agent, stopped))
        return stopped

    async def start_agent(
        self, config_path: Path, settings: AgentSettings | None = None
    ) -> Agent:
        """Run an agent from *config_path*; return once its first session is up."""
        agent = load_agent(config_path, settings)
        stopped = self._track(agent)
        with trio.fail_after(WAIT):
            await self.nursery.start(self._run, agent, stopped)
        return agent

    def spawn_agent(
        self, config_path: Path, settings: AgentSettings | None = None
    ) -> Agent:
        """Run an agent without waiting for it: for one that cannot connect."""
        agent = load_agent(config_path, settings)
        self.nursery.start_soon(self._run, agent, self._track(agent))
        return agent

    async def start_relay(
        self,
        targets: Mapping[str, TargetSpec],
        *,
        name: str = "agent",
        settings: AgentSettings | None = None,
    ) -> Relay:
        """A plain hub and an agent with *targets*, ready for requests.

        The agent's files are in ``directory/name``.
        """
        running = await self.start_hub()
        config_path = write_connect_toml(
            self.directory / name,
            service_id=running.service_id,
            hub=running.url(),
            targets=targets,
        )
        agent = await self.start_agent(config_path, settings)
        await running.hub.wait_agent(running.service_id, timeout=WAIT)
        return Relay(running, agent, config_path)

    async def aclose(self) -> None:
        """Drain every agent and wait until each one's run() has returned."""
        with trio.fail_after(WAIT):
            for agent, stopped in self._agents:
                await agent.drain()
                await stopped.wait()


@pytest.fixture
async def relay_kit(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[RelayKit]:
    """A :class:`RelayKit` on the test's nursery, with ``tmp_path`` for files."""
    kit = RelayKit(nursery, tmp_path)
    yield kit
    await kit.aclose()


# --------------------------------------------------------------------------
# Logs


_BASE32_RUN = re.compile(r"[A-Za-z2-7]{32,}")
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{64,}")


def service_id_spellings(service_id: str) -> set[str]:
    """The ways a service_id, or the key derived from it, could leak."""
    raw = base64.b32decode(service_id.upper())
    psk = service_psk(service_id)
    return {
        service_id,
        service_id.upper(),
        raw.hex(),
        psk.hex(),
        base64.b64encode(psk).decode(),
    }


class RelayLog(logging.Handler):
    """Everything logged under ``trustelem_relay`` during one test."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.records: list[logging.LogRecord] = []
        self._lines: list[str] = []
        self._secrets: set[str] = set()
        self._service_ids: set[str] = set()
        self._arrived = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        # Formatted now, tracebacks included: they may carry secrets too.
        self._lines.append(self.format(record))
        self.records.append(record)
        self._arrived.set()
        self._arrived = trio.Event()

    @property
    def text(self) -> str:
        """Every line so far, one per record, with its traceback if any."""
        return "\n".join(self._lines)

    async def wait_for(self, fragment: str, *, timeout: float = WAIT) -> str:
        """Wait until a line containing *fragment* is logged; return it."""
        seen = 0
        with trio.fail_after(timeout):
            while True:
                for line in self._lines[seen:]:
                    if fragment in line:
                        return line
                seen = len(self._lines)
                await self._arrived.wait()

    def forbid(self, *secrets: str) -> None:
        """Fail the test if any of *secrets* is ever logged."""
        self._secrets.update(s for s in secrets if s)

    def forbid_service_id(self, service_id: str) -> None:
        """Fail the test if the service_id, or its key, is ever logged."""
        self._service_ids.add(service_id)
        self.forbid(*service_id_spellings(service_id))

    def leaks(self) -> list[str]:
        """The forbidden strings that appear in the log (empty is good)."""
        text = self.text
        found = sorted(s for s in self._secrets if s in text)
        # Any run of base32 or hex long enough to be an id or a key is
        # compared whole, case-insensitively, with the ids and their keys.
        lowered = {s.lower() for s in self._secrets}
        for run in _BASE32_RUN.findall(text) + _HEX_RUN.findall(text):
            if run.lower() in lowered or run.lower() in self._service_ids:
                found.append(run)
        return found


@pytest.fixture
def relay_log(caplog: pytest.LogCaptureFixture) -> Iterator[RelayLog]:
    """A :class:`RelayLog` on ``trustelem_relay`` at DEBUG for the test.

    The level is set through ``caplog``, so ``caplog.text`` holds the same
    records. After the test (teardown included) nothing forbidden may have
    been logged.
    """
    caplog.set_level(logging.DEBUG, logger="trustelem_relay")
    handler = RelayLog()
    logger = logging.getLogger("trustelem_relay")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    leaks = handler.leaks()
    assert not leaks, f"secrets in the log: {len(leaks)} occurrence(s)"
