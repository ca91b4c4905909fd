"""A SCIM user's whole life through the relay, against a real scim2-server.

The hub calls ``hub.request``; the agent forwards to the declared address
of ``scim-server``, over plain HTTP or over TLS through the trustme-certified
front; scim2-server does what it does. The URL's host, ``scim.corp.test``,
resolves nowhere: only the declared address is ever dialled, and the host
only reaches the server in the Host header (scim2-server builds its
``Location`` from it) and in the certificate check.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from support.listener import CountingListener
from support.relay import Relay, RelayKit, RelayLog
from support.scim import (
    SCIM_HOSTNAME,
    SCIM_TOKEN,
    ScimServer,
    ScimTlsServer,
    TlsFront,
)
from support.tls import TlsMaterial

from trustelem_relay import Response, TLSFailure

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

SCIM_JSON = [("content-type", "application/scim+json")]
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


def header(response: Response, name: str) -> str | None:
    """The first value of header *name* in a relayed response."""
    return next((v for k, v in response.headers if k.lower() == name), None)


def scim_body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


async def create_user(relay: Relay, base_url: str, user_name: str) -> dict[str, Any]:
    response = await relay.request(
        "scim-server",
        "POST",
        f"{base_url}/Users",
        headers=SCIM_JSON,
        body=scim_body(schemas=[USER_SCHEMA], userName=user_name, displayName="B"),
    )
    assert response.status == 201, response.body
    created: dict[str, Any] = json.loads(response.body)
    return created


async def user_lifecycle(relay: Relay, base_url: str, port: int) -> None:
    """Create, read, list, patch and delete a user through *relay*."""
    user = await create_user(relay, base_url, "bjensen")
    await create_user(relay, base_url, "jsmith")
    user_url = f"{base_url}/Users/{user['id']}"
    assert user["userName"] == "bjensen"

    # Read it back by id; the server saw the URL's host, not the address.
    read = await relay.request("scim-server", "GET", user_url)
    assert read.status == 200
    assert json.loads(read.body)["id"] == user["id"]
    assert header(read, "content-type") == "application/scim+json"
    location = header(read, "location") or ""
    assert f"//{SCIM_HOSTNAME}:{port}/v2/Users/{user['id']}" in location

    # List with a filter and a page size: only the one user matches.
    query = "filter=userName%20eq%20%22bjensen%22&count=5"
    listed = await relay.request("scim-server", "GET", f"{base_url}/Users?{query}")
    assert listed.status == 200
    page = json.loads(listed.body)
    assert page["totalResults"] == 1
    assert [r["id"] for r in page["Resources"]] == [user["id"]]

    # Patch: 204 without a body, and the change is there.
    operation = {"op": "replace", "path": "displayName", "value": "Babs"}
    patched = await relay.request(
        "scim-server",
        "PATCH",
        user_url,
        headers=SCIM_JSON,
        body=scim_body(schemas=[PATCH_SCHEMA], Operations=[operation]),
    )
    assert (patched.status, patched.body) == (204, b"")
    reread = await relay.request("scim-server", "GET", user_url)
    assert json.loads(reread.body)["displayName"] == "Babs"

    # Delete: 204, then the user is gone.
    deleted = await relay.request("scim-server", "DELETE", user_url)
    assert (deleted.status, deleted.body) == (204, b"")
    gone = await relay.request("scim-server", "GET", user_url)
    assert gone.status == 404
    assert json.loads(gone.body)["schemas"] == [ERROR_SCHEMA]


async def test_scim_user_lifecycle_through_the_relay_over_http(
    scim_server: ScimServer,
    relay_kit: RelayKit,
    relay_log: RelayLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = await relay_kit.start_relay({"scim-server": {"addr": scim_server.address}})
    relay_log.forbid_service_id(relay.service_id)
    base_url = f"http://{SCIM_HOSTNAME}:{scim_server.port}/v2"

    await user_lifecycle(relay, base_url, scim_server.port)

    # The requests were logged at DEBUG, and the service_id never was.
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    assert "PATCH /v2/Users/" in caplog.text
    assert relay.service_id not in caplog.text


async def test_scim_user_lifecycle_through_the_relay_over_tls(
    scim_tls_server: ScimTlsServer,
    ca_file: Path,
    relay_kit: RelayKit,
    relay_log: RelayLog,
) -> None:
    target = {"addr": scim_tls_server.address, "ca_file": ca_file}
    relay = await relay_kit.start_relay({"scim-server": target})
    relay_log.forbid_service_id(relay.service_id)
    assert scim_tls_server.base_url.startswith(f"https://{SCIM_HOSTNAME}:")

    await user_lifecycle(relay, scim_tls_server.base_url, scim_tls_server.port)

    assert scim_tls_server.front.failed_handshakes == 0
    assert scim_tls_server.front.connections >= 1


async def test_target_signed_by_another_ca_is_a_tls_failure_before_sending(
    tls: TlsMaterial,
    other_tls: TlsMaterial,
    counting_listener: CountingListener,
    relay_kit: RelayKit,
    relay_log: RelayLog,
) -> None:
    # The TLS front alone: whatever passed it would reach the listener.
    front = TlsFront(counting_listener.port, tls.server_context())
    port = await relay_kit.nursery.start(front.serve)
    other_ca = other_tls.write_ca_bundle(relay_kit.directory / "other-ca.pem")
    target = {"addr": f"127.0.0.1:{port}", "ca_file": other_ca}
    relay = await relay_kit.start_relay({"scim-server": target})
    relay_log.forbid_service_id(relay.service_id)
    url = f"https://{SCIM_HOSTNAME}:{port}/v2/Users"

    with pytest.raises(TLSFailure) as caught:
        await relay.request("scim-server", "GET", url, timeout=5)

    assert caught.value.may_have_reached_target is False
    assert "certificate verify failed" in str(caught.value)
    with trio.fail_after(5):
        await front.handshake_failed.wait()
    assert front.failed_handshakes == front.connections == 1
    assert counting_listener.attempts() == 0


async def test_bearer_token_reaches_the_target_and_never_the_log(
    scim_server_with_token: ScimServer,
    relay_kit: RelayKit,
    relay_log: RelayLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = scim_server_with_token
    relay = await relay_kit.start_relay({"scim-server": {"addr": server.address}})
    relay_log.forbid_service_id(relay.service_id)
    relay_log.forbid(SCIM_TOKEN)
    users_url = f"http://{SCIM_HOSTNAME}:{server.port}/v2/Users"

    without = await relay.request("scim-server", "GET", users_url)
    with_token = await relay.request(
        "scim-server", "GET", users_url, headers=server.auth_headers()
    )

    assert without.status == 401
    assert with_token.status == 200
    assert json.loads(with_token.body)["totalResults"] == 0
    assert "GET /v2/Users" in caplog.text
    assert SCIM_TOKEN not in caplog.text
