"""RelayTransport: a real httpx.AsyncClient talking to scim2-server via the relay.

The client is built exactly as an application would build it, with the
relay as its transport and the application's base URL; nothing in httpx is
patched. Relay failures come out of ``client.get`` and friends as the
relay's own :class:`RequestError` subclasses, not as httpx errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
import trio
from support.listener import CountingListener
from support.relay import Relay, RelayKit, RelayLog
from support.scim import SCIM_HOSTNAME, SCIM_TOKEN, ScimServer, run_scim_server

from trustelem_relay import (
    RelayTransport,
    RequestError,
    TargetUnreachable,
    TimeoutAfterSending,
    UndeclaredTarget,
)

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

SCIM_JSON = "application/scim+json"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


@pytest.fixture(scope="module")
def shared_scim_server() -> Iterator[ScimServer]:
    """One scim2-server for the tests here that only add distinct users."""
    with run_scim_server() as server:
        yield server


def scim_client(
    relay: Relay,
    port: int,
    target: str = "scim-server",
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """An httpx client for ``http://scim.corp.test:PORT/v2`` over the relay."""
    transport = RelayTransport(relay.hub, relay.service_id, target)
    return httpx.AsyncClient(
        transport=transport,
        base_url=f"http://{SCIM_HOSTNAME}:{port}/v2",
        headers=headers,
        timeout=5,
        trust_env=False,
    )


async def scim_relay(kit: RelayKit, log: RelayLog, server: ScimServer) -> Relay:
    relay = await kit.start_relay({"scim-server": {"addr": server.address}})
    log.forbid_service_id(relay.service_id)
    return relay


async def test_transport_round_trips_scim_json(
    shared_scim_server: ScimServer, relay_kit: RelayKit, relay_log: RelayLog
) -> None:
    relay = await scim_relay(relay_kit, relay_log, shared_scim_server)
    user: dict[str, Any] = {"schemas": [USER_SCHEMA], "userName": "ann"}

    async with scim_client(relay, shared_scim_server.port) as client:
        created = await client.post(
            "/Users", json=user, headers={"content-type": SCIM_JSON}
        )
        user_id = created.json()["id"]
        fetched = await client.get(f"/Users/{user_id}")

    assert created.status_code == 201
    assert created.headers["content-type"] == SCIM_JSON
    assert created.headers["location"].endswith(f"/v2/Users/{user_id}")
    assert fetched.status_code == 200
    assert fetched.json()["userName"] == "ann"
    assert fetched.extensions["trustelem_request_id"]


async def test_transport_passes_the_content_type_the_server_insists_on(
    shared_scim_server: ScimServer, relay_kit: RelayKit, relay_log: RelayLog
) -> None:
    relay = await scim_relay(relay_kit, relay_log, shared_scim_server)
    user = {"schemas": [USER_SCHEMA], "userName": "bob"}

    body = json.dumps(user).encode()

    async with scim_client(relay, shared_scim_server.port) as client:
        wrong = await client.post(
            "/Users", content=body, headers={"content-type": "text/plain"}
        )
        right = await client.post(
            "/Users", content=body, headers={"content-type": SCIM_JSON}
        )

    assert wrong.status_code == 415
    assert right.status_code == 201
    assert right.json()["userName"] == "bob"


async def test_transport_passes_the_authorization_header(
    scim_server_with_token: ScimServer,
    relay_kit: RelayKit,
    relay_log: RelayLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = scim_server_with_token
    relay = await scim_relay(relay_kit, relay_log, server)
    relay_log.forbid(SCIM_TOKEN)
    bearer = dict(server.auth_headers())

    async with scim_client(relay, server.port, headers=bearer) as client:
        allowed = await client.get("/Users", params={"count": 1})
    async with scim_client(relay, server.port) as client:
        denied = await client.get("/Users", params={"count": 1})

    assert allowed.status_code == 200
    assert allowed.json()["totalResults"] == 0
    assert denied.status_code == 401
    assert SCIM_TOKEN not in caplog.text


async def test_transport_raises_relay_errors_as_request_errors(
    counting_listener: CountingListener,
    relay_kit: RelayKit,
    relay_log: RelayLog,
    closed_port: int,
) -> None:
    relay = await relay_kit.start_relay({"gone": {"addr": f"127.0.0.1:{closed_port}"}})
    relay_log.forbid_service_id(relay.service_id)

    async with scim_client(relay, counting_listener.port, target="nope") as client:
        with pytest.raises(UndeclaredTarget) as undeclared:
            await client.get("/Users")
    async with scim_client(relay, closed_port, target="gone") as client:
        with pytest.raises(TargetUnreachable) as unreachable:
            await client.post("/Users", json={"userName": "x"})

    for caught in (undeclared, unreachable):
        assert isinstance(caught.value, RequestError)
        assert not isinstance(caught.value, httpx.HTTPError)
        assert caught.value.may_have_reached_target is False
    assert counting_listener.attempts() == 0


async def test_transport_takes_its_deadline_from_the_httpx_timeout(
    counting_listener: CountingListener, relay_kit: RelayKit, relay_log: RelayLog
) -> None:
    # The listener accepts and never answers: only the deadline ends this.
    relay = await relay_kit.start_relay({"silent": {"addr": counting_listener.address}})
    relay_log.forbid_service_id(relay.service_id)
    transport = RelayTransport(relay.hub, relay.service_id, "silent")
    client = httpx.AsyncClient(
        transport=transport, base_url="http://silent.test", timeout=0.3
    )

    async with client:
        started = trio.current_time()
        with pytest.raises(TimeoutAfterSending) as caught:
            await client.get("/Users")
        waited = trio.current_time() - started

    assert 0.3 <= waited < 2
    assert caught.value.may_have_reached_target is True
    assert counting_listener.attempts() == 1
