"""The agent's target policy, end to end: what is refused is never dialled.

A :class:`CountingListener` stands where a request would go if the agent
dialled the URL's host, or dialled for a name it should have refused; it
must see no connection at all. Refusals come back to the hub's caller as
typed errors saying the target was not reached.
"""

from __future__ import annotations

import pytest
from support.listener import CountingListener
from support.origin import serve_origin
from support.relay import RelayKit, RelayLog

from trustelem_relay import RefusedByPolicy, UndeclaredTarget

pytestmark = pytest.mark.usefixtures("no_resource_warnings")


async def test_agent_refuses_undeclared_target_and_dials_nothing(
    counting_listener: CountingListener, relay_kit: RelayKit, relay_log: RelayLog
) -> None:
    # The URL names the listener; the only declared target is elsewhere.
    url = f"http://{counting_listener.address}/v2/Users"
    async with serve_origin() as origin:
        relay = await relay_kit.start_relay(
            {"scim-server": {"addr": f"127.0.0.1:{origin.port}"}}
        )
        relay_log.forbid_service_id(relay.service_id)

        with pytest.raises(UndeclaredTarget) as caught:
            await relay.request("billing", "GET", url)
        # The declared name, same URL: the declared address is dialled.
        response = await relay.request("scim-server", "GET", url)

    assert caught.value.may_have_reached_target is False
    assert "billing" in str(caught.value)
    assert counting_listener.attempts() == 0
    assert response.status == 200
    assert origin.connections == 1
    assert origin.exchanges[0].header(b"host") == [counting_listener.address.encode()]


@pytest.mark.parametrize(
    "name",
    ["Scim-server", "SCIM-SERVER", "scim-server.", "scim_server", " scim-server"],
)
async def test_agent_refuses_near_miss_target_names(
    name: str,
    counting_listener: CountingListener,
    relay_kit: RelayKit,
    relay_log: RelayLog,
) -> None:
    relay = await relay_kit.start_relay(
        {"scim-server": {"addr": counting_listener.address}}
    )
    relay_log.forbid_service_id(relay.service_id)

    with pytest.raises(UndeclaredTarget) as caught:
        await relay.request(name, "GET", "http://scim.corp.test/v2/Users", timeout=5)

    assert caught.value.may_have_reached_target is False
    assert counting_listener.attempts() == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/v2/Users/1"),
        ("POST", "/v2/Users"),
        ("GET", "/admin"),
        ("GET", "/v2x/Users"),
        ("GET", "/v2/../admin"),
        ("GET", "/v2/%2e%2e/admin"),
    ],
)
async def test_target_limits_refuse_other_methods_and_paths_before_dialling(
    method: str, path: str, relay_kit: RelayKit, relay_log: RelayLog
) -> None:
    async with serve_origin() as origin:
        target = {
            "addr": f"127.0.0.1:{origin.port}",
            "methods": ["GET"],
            "path_prefix": "/v2",
        }
        relay = await relay_kit.start_relay({"scim-server": target})
        relay_log.forbid_service_id(relay.service_id)
        url = f"http://scim.corp.test{path}"

        with pytest.raises(RefusedByPolicy) as caught:
            await relay.request("scim-server", method, url, timeout=5)
        refused_connections = origin.connections
        # What the limits allow still goes through.
        allowed = await relay.request("scim-server", "GET", "http://x.test/v2/Users")

    assert caught.value.may_have_reached_target is False
    assert refused_connections == 0
    assert allowed.status == 200
    assert origin.connections == 1
