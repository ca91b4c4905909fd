"""The agents' endpoint over TLS: a trusted hub works, an untrusted one is named.

The hub serves ``wss://`` with the trustme server certificate, valid for
``localhost`` and ``127.0.0.1`` among others; the agent trusts the CA given
in ``hub_ca_file``. An agent given another CA refuses the hub: it says so in
its status and its log, and the hub never sees it as connected.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.origin import serve_origin
from support.relay import RelayKit, RelayLog, write_connect_toml
from support.tls import TlsMaterial

from trustelem_relay import AgentUnavailable

pytestmark = pytest.mark.usefixtures("no_resource_warnings")


@pytest.mark.parametrize("hub_host", ["localhost", "127.0.0.1"])
async def test_agent_relays_through_a_hub_it_trusts_over_tls(
    hub_host: str,
    tls: TlsMaterial,
    ca_file: Path,
    relay_kit: RelayKit,
    relay_log: RelayLog,
) -> None:
    running = await relay_kit.start_hub(ssl_context=tls.server_context())
    relay_log.forbid_service_id(running.service_id)
    hub_url = running.url(hub_host)
    assert hub_url.startswith("wss://")

    async with serve_origin() as origin:
        config = write_connect_toml(
            relay_kit.directory / "agent",
            service_id=running.service_id,
            hub=hub_url,
            hub_ca_file=ca_file,
            targets={"app": {"addr": f"127.0.0.1:{origin.port}"}},
        )
        agent = await relay_kit.start_agent(config)
        await running.hub.wait_agent(running.service_id, timeout=5)
        response = await running.hub.request(
            running.service_id, "app", "GET", "http://app.corp.test/ping"
        )

    assert (response.status, response.body) == (200, b"ok")
    assert agent.status.connected
    assert agent.status.last_error is None
    assert origin.exchanges[0].header(b"host") == [b"app.corp.test"]


async def test_agent_that_does_not_trust_the_hub_says_why_and_never_joins(
    tls: TlsMaterial,
    other_tls: TlsMaterial,
    ca_file: Path,
    relay_kit: RelayKit,
    relay_log: RelayLog,
) -> None:
    running = await relay_kit.start_hub(ssl_context=tls.server_context())
    relay_log.forbid_service_id(running.service_id)
    other_ca = other_tls.write_ca_bundle(relay_kit.directory / "other-ca.pem")
    targets = {"app": {"addr": "127.0.0.1:9"}}
    config = write_connect_toml(
        relay_kit.directory / "untrusting",
        service_id=running.service_id,
        hub=running.url("localhost"),
        hub_ca_file=other_ca,
        targets=targets,
    )

    agent = relay_kit.spawn_agent(config)
    line = await relay_log.wait_for("cannot reach the hub")

    assert line.startswith("ERROR trustelem_relay.agent")
    assert "certificate verif" in line
    assert agent.status.connected is False
    assert "certificate verification failed" in (agent.status.last_error or "")
    with pytest.raises(AgentUnavailable) as caught:
        await running.hub.wait_agent(running.service_id, timeout=0.2)
    assert caught.value.may_have_reached_target is False
    assert running.hub.agents(running.service_id) == []

    # The failed handshake did not hurt the hub: an agent that trusts it
    # joins at once.
    config = write_connect_toml(
        relay_kit.directory / "trusting",
        service_id=running.service_id,
        hub=running.url("localhost"),
        hub_ca_file=ca_file,
        targets=targets,
    )
    good = await relay_kit.start_agent(config)
    info = await running.hub.wait_agent(running.service_id, timeout=5)
    assert info.agent_id == good.agent_id != agent.agent_id
    assert agent.status.connected is False


async def test_status_file_records_the_hub_certificate_failure(
    tls: TlsMaterial,
    other_tls: TlsMaterial,
    relay_kit: RelayKit,
    relay_log: RelayLog,
) -> None:
    running = await relay_kit.start_hub(ssl_context=tls.server_context())
    relay_log.forbid_service_id(running.service_id)
    other_ca = other_tls.write_ca_bundle(relay_kit.directory / "other-ca.pem")
    config = write_connect_toml(
        relay_kit.directory / "agent",
        service_id=running.service_id,
        hub=running.url("localhost"),
        hub_ca_file=other_ca,
        targets={"app": {"addr": "127.0.0.1:9"}},
    )
    agent = relay_kit.spawn_agent(config)
    await relay_log.wait_for("cannot reach the hub")

    # Draining makes run() return, writing the status one last time.
    await relay_kit.aclose()

    status = json.loads((agent.state_dir / "status.json").read_text())
    assert status["connected"] is False
    assert "certificate verification failed" in status["last_error"]
    assert status["hub"] == running.url("localhost")
    assert running.service_id not in json.dumps(status)
