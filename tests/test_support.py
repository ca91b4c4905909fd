"""The shared test servers do what the other tests rely on.

Each helper in ``support`` is checked against an independent client: raw
bytes for the proxy, h11 and the ssl module for the SCIM server and its TLS
front. The code under test (trustelem_relay) is not used here.
"""

from __future__ import annotations

import base64
import functools
import json
import socket
import ssl

import pytest
import trio
from support.http1 import http_request
from support.listener import CountingListener
from support.ports import LOOPBACK, free_port, refusing_port
from support.proxy import PROXY_PASSWORD, PROXY_USER, ConnectProxy, ConnectRecord
from support.scim import SCIM_TOKEN, ScimServer, ScimTlsServer
from support.tls import TlsMaterial

pytestmark = pytest.mark.usefixtures("no_resource_warnings")


async def echo(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def start_echo_server(nursery: trio.Nursery) -> int:
    serve = functools.partial(trio.serve_tcp, echo, 0, host=LOOPBACK)
    listeners = await nursery.start(serve)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def send_connect(
    stream: trio.abc.Stream, authority: str, credentials: tuple[str, str] | None
) -> tuple[int, bytes]:
    """Send a CONNECT by hand; return the status and the response head."""
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1]), head


async def test_proxy_tunnels_bytes_both_ways(
    connect_proxy: ConnectProxy, nursery: trio.Nursery
) -> None:
    echo_port = await start_echo_server(nursery)
    assert connect_proxy.port is not None

    async with await trio.open_tcp_stream(LOOPBACK, connect_proxy.port) as stream:
        status, _ = await send_connect(
            stream, f"{LOOPBACK}:{echo_port}", (PROXY_USER, PROXY_PASSWORD)
        )
        assert status == 200
        await stream.send_all(b"through the tunnel")
        assert await stream.receive_some(100) == b"through the tunnel"

    assert connect_proxy.records == [
        ConnectRecord(f"{LOOPBACK}:{echo_port}", auth_ok=True, status=200)
    ]
    assert connect_proxy.connections == 1


@pytest.mark.parametrize(
    "credentials", [None, (PROXY_USER, "wrong"), ("someone", PROXY_PASSWORD)]
)
async def test_proxy_refuses_bad_credentials_with_407(
    connect_proxy: ConnectProxy,
    nursery: trio.Nursery,
    credentials: tuple[str, str] | None,
) -> None:
    echo_port = await start_echo_server(nursery)
    assert connect_proxy.port is not None

    async with await trio.open_tcp_stream(LOOPBACK, connect_proxy.port) as stream:
        status, head = await send_connect(
            stream, f"{LOOPBACK}:{echo_port}", credentials
        )

    assert status == 407
    assert b'proxy-authenticate: basic realm="test proxy"' in head.lower()
    assert connect_proxy.records == [
        ConnectRecord(f"{LOOPBACK}:{echo_port}", auth_ok=False, status=407)
    ]


@pytest.mark.parametrize("status", [403, 502])
async def test_proxy_can_be_told_to_refuse(
    connect_proxy: ConnectProxy, status: int
) -> None:
    connect_proxy.refuse_with = status
    assert connect_proxy.port is not None

    async with await trio.open_tcp_stream(LOOPBACK, connect_proxy.port) as stream:
        answered, _ = await send_connect(
            stream, f"{LOOPBACK}:1", (PROXY_USER, PROXY_PASSWORD)
        )

    assert answered == status
    assert connect_proxy.records[0].auth_ok


@pytest.mark.parametrize(
    ("destination", "status"),
    [
        ("example.com:443", 403),  # not loopback: never leaves the machine
        ("10.0.0.12:443", 403),
        (None, 502),  # a loopback port where nothing listens
    ],
)
async def test_proxy_refuses_destinations_it_cannot_or_may_not_reach(
    connect_proxy: ConnectProxy, destination: str | None, status: int
) -> None:
    assert connect_proxy.port is not None
    with refusing_port() as closed:
        async with await trio.open_tcp_stream(LOOPBACK, connect_proxy.port) as stream:
            answered, _ = await send_connect(
                stream,
                destination or f"{LOOPBACK}:{closed}",
                (PROXY_USER, PROXY_PASSWORD),
            )
    assert answered == status


async def test_proxy_resolves_test_hostnames_to_loopback(
    connect_proxy: ConnectProxy, nursery: trio.Nursery
) -> None:
    echo_port = await start_echo_server(nursery)
    assert connect_proxy.port is not None

    async with await trio.open_tcp_stream(LOOPBACK, connect_proxy.port) as stream:
        status, _ = await send_connect(
            stream, f"hub.corp.test:{echo_port}", (PROXY_USER, PROXY_PASSWORD)
        )
        assert status == 200
        await stream.send_all(b"ping")
        assert await stream.receive_some(100) == b"ping"


async def test_https_proxy_speaks_tls_before_connect(
    tls: TlsMaterial, nursery: trio.Nursery
) -> None:
    echo_port = await start_echo_server(nursery)
    proxy = ConnectProxy(ssl_context=tls.server_context())
    port = await nursery.start(proxy.serve)
    assert proxy.url.startswith(f"https://{PROXY_USER}:")

    tcp = await trio.open_tcp_stream(LOOPBACK, port)
    async with trio.SSLStream(tcp, tls.client_context(), server_hostname=LOOPBACK) as s:
        status, _ = await send_connect(
            s, f"{LOOPBACK}:{echo_port}", (PROXY_USER, PROXY_PASSWORD)
        )
        assert status == 200
        await s.send_all(b"inside TLS")
        assert await s.receive_some(100) == b"inside TLS"


async def test_scim_server_answers_discovery(scim_server: ScimServer) -> None:
    assert scim_server.base_url == f"http://{LOOPBACK}:{scim_server.port}/v2"

    async with await trio.open_tcp_stream(LOOPBACK, scim_server.port) as stream:
        response = await http_request(
            stream, "GET", scim_server.address, "/v2/ServiceProviderConfig"
        )

    assert response.status == 200
    document = json.loads(response.body)
    assert document["schemas"] == [
        "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
    ]


async def test_scim_server_with_token_requires_it(
    scim_server_with_token: ScimServer,
) -> None:
    server = scim_server_with_token
    assert server.bearer_token == SCIM_TOKEN
    statuses = []
    for headers in ([], server.auth_headers()):
        async with await trio.open_tcp_stream(LOOPBACK, server.port) as stream:
            response = await http_request(
                stream, "GET", server.address, "/v2/Users", headers=headers
            )
            statuses.append(response.status)
    assert statuses == [401, 200]


async def test_scim_tls_front_serves_clients_that_trust_the_ca(
    scim_tls_server: ScimTlsServer,
) -> None:
    server = scim_tls_server
    assert server.base_url == f"https://scim.corp.test:{server.port}/v2"

    # Dial the declared address, verify the certificate for the URL's name.
    tcp = await trio.open_tcp_stream(LOOPBACK, server.port)
    context = server.tls.client_context()
    async with trio.SSLStream(tcp, context, server_hostname=server.server_name) as s:
        response = await http_request(
            s, "GET", f"{server.server_name}:{server.port}", "/v2/ServiceProviderConfig"
        )

    assert response.status == 200
    assert b"ServiceProviderConfig" in response.body


async def test_scim_tls_front_fails_clients_that_do_not(
    scim_tls_server: ScimTlsServer, other_tls: TlsMaterial
) -> None:
    server = scim_tls_server
    tcp = await trio.open_tcp_stream(LOOPBACK, server.port)
    context = other_tls.client_context()
    async with trio.SSLStream(tcp, context, server_hostname=server.server_name) as s:
        with pytest.raises(trio.BrokenResourceError) as caught:
            await s.do_handshake()
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)

    # The front sees the failure when the client's alert reaches it.
    with trio.fail_after(5):
        await server.front.handshake_failed.wait()
    assert server.front.failed_handshakes == 1


def test_counting_listener_counts_each_attempt(
    counting_listener: CountingListener,
) -> None:
    assert counting_listener.attempts() == 0
    for _ in range(2):
        with socket.create_connection((LOOPBACK, counting_listener.port)):
            pass
    assert counting_listener.attempts() == 2
    assert counting_listener.attempts() == 2


def test_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, free_port()))


def test_refusing_port_refuses_while_held() -> None:
    with refusing_port() as port, socket.socket() as client:
        with pytest.raises(ConnectionRefusedError):
            client.connect((LOOPBACK, port))
        # Held: no other socket can take the port meanwhile.
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind((LOOPBACK, port))
