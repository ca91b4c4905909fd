"""The path from agent to hub: a real CONNECT proxy with Basic auth, and drain.

The hub is ``wss://hub.corp.test:PORT``: a name that only the proxy's host
table resolves (to 127.0.0.1), so the agent cannot have gone around the
proxy. With the right credentials requests flow; with wrong ones the agent
says 407 once, never reaches the hub, and the password is nowhere: not in
the log, the status, the status file or any repr.

An agent told to drain while it is not connected (waiting to retry, or with
its websocket still opening) stops there: it never starts a new session.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import urllib.parse
from pathlib import Path

import pytest
import trio
from support.origin import serve_origin
from support.proxy import PROXY_PASSWORD, PROXY_USER, ConnectProxy, ConnectRecord
from support.relay import RelayKit, RelayLog, RunningHub, write_connect_toml
from support.streams import splice
from support.tls import TlsMaterial

from trustelem_relay import AgentUnavailable

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

WRONG_PASSWORD = "n0t-th3:r1ght%one"


def password_spellings(user: str, password: str) -> list[str]:
    """The password as written, percent-encoded and inside a Basic token."""
    return [
        password,
        urllib.parse.quote(password, safe=""),
        base64.b64encode(f"{user}:{password}".encode()).decode(),
    ]


def agent_config(
    kit: RelayKit, running: RunningHub, ca_file: Path, proxy: str, app_port: int
) -> Path:
    return write_connect_toml(
        kit.directory / "agent",
        service_id=running.service_id,
        hub=running.url("hub.corp.test"),
        hub_ca_file=ca_file,
        proxy=proxy,
        targets={"app": {"addr": f"127.0.0.1:{app_port}"}},
    )


async def test_agent_reaches_the_hub_through_the_proxy_with_basic_credentials(
    connect_proxy: ConnectProxy,
    tls: TlsMaterial,
    ca_file: Path,
    relay_kit: RelayKit,
    relay_log: RelayLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await relay_kit.start_hub(ssl_context=tls.server_context())
    relay_log.forbid_service_id(running.service_id)
    relay_log.forbid(*password_spellings(PROXY_USER, PROXY_PASSWORD))

    async with serve_origin() as origin:
        config = agent_config(
            relay_kit, running, ca_file, connect_proxy.url, origin.port
        )
        agent = await relay_kit.start_agent(config)
        await running.hub.wait_agent(running.service_id, timeout=5)
        response = await running.hub.request(
            running.service_id, "app", "GET", "http://app.corp.test/health"
        )

    assert (response.status, response.body) == (200, b"ok")
    assert connect_proxy.records == [
        ConnectRecord(f"hub.corp.test:{running.port}", auth_ok=True, status=200)
    ]
    assert agent.status.connected
    for secret in password_spellings(PROXY_USER, PROXY_PASSWORD):
        assert secret not in caplog.text
        assert secret not in repr(agent.config)


async def test_refused_proxy_credentials_are_named_and_never_reach_the_hub(
    connect_proxy: ConnectProxy,
    tls: TlsMaterial,
    ca_file: Path,
    relay_kit: RelayKit,
    relay_log: RelayLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    running = await relay_kit.start_hub(ssl_context=tls.server_context())
    relay_log.forbid_service_id(running.service_id)
    relay_log.forbid(*password_spellings(PROXY_USER, WRONG_PASSWORD))
    relay_log.forbid(*password_spellings(PROXY_USER, PROXY_PASSWORD))
    proxy_url = connect_proxy.url_with(PROXY_USER, WRONG_PASSWORD)
    config = agent_config(relay_kit, running, ca_file, proxy_url, 9)

    agent = relay_kit.spawn_agent(config)
    line = await relay_log.wait_for("refused the credentials (407)")

    # One clear error, naming the proxy with its password masked.
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in errors] == [logging.ERROR]
    assert "refused the credentials (407)" in line
    assert f"{PROXY_USER}:***@127.0.0.1:{connect_proxy.port}" in line
    assert "refused the credentials (407)" in (agent.status.last_error or "")

    # The proxy turned it away, so nothing reached the hub.
    assert connect_proxy.records == [
        ConnectRecord(f"hub.corp.test:{running.port}", auth_ok=False, status=407)
    ]
    with pytest.raises(AgentUnavailable):
        await running.hub.wait_agent(running.service_id, timeout=0.2)
    assert agent.status.connected is False

    # Stop it, so that the status file is final, then look everywhere.
    await relay_kit.aclose()
    status_file = (agent.state_dir / "status.json").read_text()
    assert json.loads(status_file)["connected"] is False
    shown = [caplog.text, status_file, repr(agent), repr(agent.config)]
    shown.append(repr(agent.status))
    for secret in password_spellings(PROXY_USER, WRONG_PASSWORD):
        assert not [text for text in shown if secret in text]


async def test_draining_agent_waiting_to_reconnect_never_dials_again(
    connect_proxy: ConnectProxy,
    tls: TlsMaterial,
    ca_file: Path,
    relay_kit: RelayKit,
    relay_log: RelayLog,
) -> None:
    running = await relay_kit.start_hub(ssl_context=tls.server_context())
    relay_log.forbid_service_id(running.service_id)
    connect_proxy.refuse_with = 403
    config = agent_config(relay_kit, running, ca_file, connect_proxy.url, 9)
    agent = relay_kit.spawn_agent(config)
    await relay_log.wait_for("refused the tunnel")

    # The proxy would let it through now, but the agent is told to stop
    # while it waits out its (long) delay after a permanent refusal.
    connect_proxy.refuse_with = None
    with trio.fail_after(5):
        await relay_kit.aclose()

    assert [r.status for r in connect_proxy.records] == [403]
    assert running.hub.agents(running.service_id) == []
    assert agent.status.connected is False


async def test_drain_while_the_hub_is_still_answering_stops_the_new_session(
    relay_kit: RelayKit, relay_log: RelayLog
) -> None:
    running = await relay_kit.start_hub()
    relay_log.forbid_service_id(running.service_id)
    arrived = trio.Event()
    gate = trio.Event()

    # A slow path to the hub: the agent's connection is accepted at once,
    # but nothing is passed on until the test opens the gate.
    async def hold_then_pass(client: trio.SocketStream) -> None:
        arrived.set()
        await gate.wait()
        async with await trio.open_tcp_stream("127.0.0.1", running.port) as hub:
            await splice(client, hub)

    listeners = await relay_kit.nursery.start(
        functools.partial(trio.serve_tcp, hold_then_pass, 0, host="127.0.0.1")
    )
    gate_port = listeners[0].socket.getsockname()[1]
    config = write_connect_toml(
        relay_kit.directory / "agent",
        service_id=running.service_id,
        hub=f"ws://127.0.0.1:{gate_port}/v1/connect",
        targets={"app": {"addr": "127.0.0.1:9"}},
    )
    agent = relay_kit.spawn_agent(config)
    with trio.fail_after(5):
        await arrived.wait()

    # Drained while its websocket is half open; the hub then answers.
    await agent.drain()
    gate.set()
    with trio.fail_after(5):
        await relay_kit.aclose()

    assert agent.status.connected is False
    assert running.hub.agents(running.service_id) == []
