"""The agent reaches the hub directly, over TLS, and through a CONNECT proxy.

Everything runs on real sockets on 127.0.0.1: a trio-websocket server as the
hub, the test proxy from ``support.proxy``, trustme certificates. A few
misbehaving peers (a proxy that hangs up, one that never answers) are
written inline with a bare trio listener.
"""

from __future__ import annotations

import base64
import functools
import logging
import pathlib
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from support.ports import LOOPBACK
from support.proxy import PROXY_USER, ConnectProxy, ConnectRecord
from support.tls import TEST_HOSTNAMES, TlsMaterial
from support.websocket import EchoWebsocketServer, UpgradeRecord

from trustelem_relay import ConfigError, RelayError
from trustelem_relay._dial import (
    HubConnectError,
    _parse_hub_url,
    _parse_proxy_url,
    hub_ssl_context,
    open_hub_stream,
    open_hub_websocket,
)
from trustelem_relay._netstream import NetStream

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

HUB_HOSTNAME = "hub.corp.test"
WRONG_PASSWORD = "n0t-the:r1ght%pass"


@pytest.fixture
async def hub(nursery: trio.Nursery) -> EchoWebsocketServer:
    server = EchoWebsocketServer()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def tls_hub(nursery: trio.Nursery, tls: TlsMaterial) -> EchoWebsocketServer:
    server = EchoWebsocketServer(tls.server_context())
    await nursery.start(server.serve)
    return server


async def start_raw_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> int:
    """Serve ``handler`` on 127.0.0.1 for a peer that misbehaves on purpose."""
    serve = functools.partial(trio.serve_tcp, handler, 0, host=LOOPBACK)
    listeners = await nursery.start(serve)
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def read_head(stream: trio.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        head += chunk
    return head


async def assert_echoes(stream: trio.abc.Stream, url: str) -> None:
    """Open the websocket over ``stream`` and see a message come back."""
    async with trio.open_nursery() as nursery:
        ws = await open_hub_websocket(
            nursery, stream, url, max_message_size=1 << 20, receive_buffer_size=65536
        )
        try:
            await ws.send_message(b"hello hub")
            received: list[bytes] = []
            while not received:
                received += await ws.receive_messages()
            assert received == [b"hello hub"]
        finally:
            await ws.aclose()


def texts_of(exc: BaseException) -> list[str]:
    """str and repr of an exception and of everything chained to it."""
    texts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(texts) < 40:
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return texts


# --------------------------------------------------------------------------
# Direct


async def test_direct_ws_reaches_the_hub(hub: EchoWebsocketServer) -> None:
    stream = await open_hub_stream(hub.url())
    assert isinstance(stream, NetStream)
    await assert_echoes(stream, hub.url())
    assert hub.upgrades == [UpgradeRecord("/v1/connect")]


async def test_direct_wss_verifies_the_hub_with_the_ca_file(
    tls_hub: EchoWebsocketServer, ca_file: pathlib.Path
) -> None:
    url = tls_hub.url(host="localhost")
    stream = await open_hub_stream(url, ssl_context=hub_ssl_context(ca_file))
    # The relay's own TLS stream, which can send frames at once.
    assert isinstance(stream, NetStream)
    assert stream.getpeercert() is not None
    await assert_echoes(stream, url)


async def test_wss_signed_by_an_unknown_ca_is_a_permanent_failure(
    tls_hub: EchoWebsocketServer, other_tls: TlsMaterial
) -> None:
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(tls_hub.url(), ssl_context=other_tls.client_context())
    assert caught.value.permanent
    assert "certificate verification failed" in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_wss_with_the_system_cas_refuses_a_private_ca(
    tls_hub: EchoWebsocketServer,
) -> None:
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(tls_hub.url())
    assert caught.value.permanent


async def test_wss_accepts_the_pinned_public_key(
    tls_hub: EchoWebsocketServer, tls: TlsMaterial
) -> None:
    stream = await open_hub_stream(
        tls_hub.url(), ssl_context=tls.client_context(), pin_sha256=tls.spki_sha256()
    )
    await assert_echoes(stream, tls_hub.url())


async def test_wss_refuses_another_public_key_than_the_pin(
    tls_hub: EchoWebsocketServer, tls: TlsMaterial, other_tls: TlsMaterial
) -> None:
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(
            tls_hub.url(),
            ssl_context=tls.client_context(),
            pin_sha256=other_tls.spki_sha256(),
        )
    assert caught.value.permanent
    assert "pin" in str(caught.value)


async def test_a_pin_needs_a_wss_hub(hub: EchoWebsocketServer) -> None:
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(hub.url(), pin_sha256=bytes(32))
    assert caught.value.permanent


async def test_refused_connection_is_not_permanent(closed_port: int) -> None:
    port = closed_port
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(f"ws://{LOOPBACK}:{port}/v1/connect")
    assert not caught.value.permanent
    assert isinstance(caught.value, RelayError)
    assert str(caught.value) == (
        f"cannot connect to the hub at {LOOPBACK}:{port}: Connection refused"
    )
    assert isinstance(caught.value.__cause__, OSError)


# --------------------------------------------------------------------------
# Through the proxy


async def test_ws_through_the_proxy(
    hub: EchoWebsocketServer,
    connect_proxy: ConnectProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trustelem_relay")

    stream = await open_hub_stream(hub.url(), proxy=connect_proxy.url)
    # The tunnel over plain TCP is handed over to the relay's own stream.
    assert isinstance(stream, NetStream)
    await assert_echoes(stream, hub.url())

    assert connect_proxy.records == [
        ConnectRecord(f"{LOOPBACK}:{hub.port}", auth_ok=True, status=200)
    ]
    assert f"{PROXY_USER}:***@" in caplog.text
    assert connect_proxy.password not in caplog.text
    assert basic_token(connect_proxy.password) not in caplog.text


async def test_wss_through_the_proxy_verifies_the_hub_not_the_proxy(
    tls_hub: EchoWebsocketServer, connect_proxy: ConnectProxy, tls: TlsMaterial
) -> None:
    url = tls_hub.url(host=HUB_HOSTNAME)
    stream = await open_hub_stream(
        url, proxy=connect_proxy.url, ssl_context=tls.client_context()
    )
    assert isinstance(stream, NetStream)
    await assert_echoes(stream, url)

    authority = f"{HUB_HOSTNAME}:{tls_hub.port}"
    assert connect_proxy.records == [ConnectRecord(authority, True, 200)]
    assert tls_hub.upgrades == [UpgradeRecord("/v1/connect")]


@pytest.mark.parametrize("hub_scheme", ["ws", "wss"])
async def test_https_proxy_runs_tls_to_the_proxy_then_to_the_hub(
    nursery: trio.Nursery, tls: TlsMaterial, hub_scheme: str
) -> None:
    context = tls.server_context() if hub_scheme == "wss" else None
    hub = EchoWebsocketServer(context)
    await nursery.start(hub.serve)
    proxy = ConnectProxy(
        ssl_context=tls.server_context(),
        hosts=dict.fromkeys(TEST_HOSTNAMES, LOOPBACK),
    )
    await nursery.start(proxy.serve)
    assert proxy.url.startswith("https://")

    url = hub.url(host=HUB_HOSTNAME)
    stream = await open_hub_stream(
        url, proxy=proxy.url, ssl_context=tls.client_context()
    )
    # TLS inside TLS: trio's stream, which can wrap any stream.
    assert not isinstance(stream, NetStream)
    await assert_echoes(stream, url)
    assert proxy.records == [ConnectRecord(f"{HUB_HOSTNAME}:{hub.port}", True, 200)]


async def test_https_proxy_with_an_untrusted_certificate_is_permanent(
    hub: EchoWebsocketServer,
    nursery: trio.Nursery,
    tls: TlsMaterial,
    other_tls: TlsMaterial,
) -> None:
    proxy = ConnectProxy(ssl_context=other_tls.server_context())
    await nursery.start(proxy.serve)

    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(
            hub.url(), proxy=proxy.url, proxy_ssl_context=tls.client_context()
        )
    assert caught.value.permanent
    assert f"TLS handshake with the proxy https://{PROXY_USER}:***@" in str(
        caught.value
    )
    assert proxy.records == []


def basic_token(password: str) -> str:
    return base64.b64encode(f"{PROXY_USER}:{password}".encode()).decode()


async def test_bad_proxy_credentials_are_permanent_and_never_shown(
    hub: EchoWebsocketServer,
    connect_proxy: ConnectProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy_url = connect_proxy.url_with(PROXY_USER, WRONG_PASSWORD)

    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(hub.url(), proxy=proxy_url)

    error = caught.value
    assert error.permanent
    assert str(error) == (
        f"proxy http://{PROXY_USER}:***@{LOOPBACK}:{connect_proxy.port} "
        "refused the credentials (407)"
    )
    assert connect_proxy.records == [
        ConnectRecord(f"{LOOPBACK}:{hub.port}", auth_ok=False, status=407)
    ]
    secrets = [
        WRONG_PASSWORD,
        urllib.parse.quote(WRONG_PASSWORD, safe=""),
        basic_token(WRONG_PASSWORD),
    ]
    logged = [caplog.text] + [record.getMessage() for record in caplog.records]
    for text in texts_of(error) + logged:
        for secret in secrets:
            assert secret not in text


@pytest.mark.parametrize(("status", "permanent"), [(403, True), (502, False)])
async def test_proxy_refusal_names_the_status(
    hub: EchoWebsocketServer, connect_proxy: ConnectProxy, status: int, permanent: bool
) -> None:
    connect_proxy.refuse_with = status
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(hub.url(), proxy=connect_proxy.url)
    assert f"HTTP {status}" in str(caught.value)
    assert f"to {LOOPBACK}:{hub.port}" in str(caught.value)
    assert caught.value.permanent is permanent
    assert connect_proxy.password not in str(caught.value)


async def test_unreachable_proxy_is_not_permanent_and_redacted(
    closed_port: int,
) -> None:
    port = closed_port
    proxy = (
        f"http://{PROXY_USER}:{urllib.parse.quote(WRONG_PASSWORD)}@{LOOPBACK}:{port}"
    )
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream("wss://hub.example:443/v1/connect", proxy=proxy)
    assert not caught.value.permanent
    assert str(caught.value) == (
        f"cannot connect to the proxy http://{PROXY_USER}:***@{LOOPBACK}:{port}: "
        "Connection refused"
    )


async def test_bytes_after_the_proxy_answer_belong_to_the_tunnel(
    nursery: trio.Nursery,
) -> None:
    async def eager_proxy(stream: trio.SocketStream) -> None:
        await read_head(stream)
        # The answer and the tunnel's first bytes leave in one segment.
        await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\nfirst bytes")
        async for data in stream:
            await stream.send_all(data)

    port = await start_raw_server(nursery, eager_proxy)
    stream = await open_hub_stream(
        "ws://hub.example/v1/connect", proxy=f"http://{LOOPBACK}:{port}"
    )
    assert isinstance(stream, NetStream)
    async with stream:
        assert await stream.receive_some(5) == b"first"
        assert await stream.receive_some() == b" bytes"
        await stream.send_all(b"echo")
        assert await stream.receive_some() == b"echo"


async def test_proxy_that_hangs_up_without_answering(nursery: trio.Nursery) -> None:
    async def rude_proxy(stream: trio.SocketStream) -> None:
        await read_head(stream)

    port = await start_raw_server(nursery, rude_proxy)
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream("ws://hub.example/", proxy=f"http://{LOOPBACK}:{port}")
    assert not caught.value.permanent
    assert "closed the connection without answering CONNECT" in str(caught.value)


async def test_proxy_that_speaks_garbage(nursery: trio.Nursery) -> None:
    async def confused_proxy(stream: trio.SocketStream) -> None:
        await read_head(stream)
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    port = await start_raw_server(nursery, confused_proxy)
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream("ws://hub.example/", proxy=f"http://{LOOPBACK}:{port}")
    assert "malformed HTTP response" in str(caught.value)


async def test_timeout_names_the_step_it_stopped_at(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def silent_proxy(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    port = await start_raw_server(nursery, silent_proxy)
    start = trio.current_time()
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(
            "ws://hub.example:80/",
            proxy=f"http://{LOOPBACK}:{port}",
            connect_timeout=7,
        )
    assert trio.current_time() - start == pytest.approx(7)
    assert str(caught.value) == (
        f"timed out after 7 s waiting for the proxy http://{LOOPBACK}:{port} "
        "to open a tunnel to hub.example:80"
    )
    assert isinstance(caught.value.__cause__, trio.TooSlowError)


# --------------------------------------------------------------------------
# The websocket handshake


async def test_hub_refusing_the_upgrade_is_reported_not_raised_in_the_nursery(
    hub: EchoWebsocketServer,
) -> None:
    hub.reject_with = 404
    stream = await open_hub_stream(hub.url())
    async with trio.open_nursery() as nursery:
        with pytest.raises(HubConnectError) as caught:
            await open_hub_websocket(
                nursery,
                stream,
                hub.url(),
                max_message_size=1024,
                receive_buffer_size=4096,
            )
    assert caught.value.permanent
    assert str(caught.value) == (
        f"the hub at {LOOPBACK}:{hub.port} refused the websocket upgrade of "
        "/v1/connect: HTTP 404"
    )


async def test_hub_hanging_up_during_the_handshake(nursery: trio.Nursery) -> None:
    heads: list[bytes] = []

    async def hang_up(stream: trio.SocketStream) -> None:
        heads.append(await read_head(stream))

    port = await start_raw_server(nursery, hang_up)
    url = f"ws://{LOOPBACK}:{port}/v1/connect?agent=1"
    stream = await open_hub_stream(url)
    with pytest.raises(HubConnectError) as caught:
        await open_hub_websocket(
            nursery, stream, url, max_message_size=1024, receive_buffer_size=4096
        )
    assert not caught.value.permanent
    assert "closed the connection during the websocket handshake" in str(caught.value)
    # The upgrade asked for the URL's path and query, and named the hub.
    request_line, *header_lines = heads[0].decode().split("\r\n")
    assert request_line == "GET /v1/connect?agent=1 HTTP/1.1"
    assert f"host: {LOOPBACK}:{port}" in [line.lower() for line in header_lines]


@pytest.mark.parametrize(
    ("url", "host", "resource"),
    [
        ("wss://hub.example/v1/connect", "hub.example", "/v1/connect"),
        ("wss://hub.example:443/v1/connect", "hub.example", "/v1/connect"),
        ("wss://hub.example:8443", "hub.example:8443", "/"),
        ("ws://hub.example:80/a?b=c", "hub.example", "/a?b=c"),
        ("ws://[::1]:8080/x", "[::1]:8080", "/x"),
    ],
)
def test_upgrade_names_the_host_as_http_does(
    url: str, host: str, resource: str
) -> None:
    address = _parse_hub_url(url)
    assert (address.host_header, address.resource) == (host, resource)


async def test_hub_that_never_answers_the_upgrade(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    port = await start_raw_server(nursery, silent)
    url = f"ws://{LOOPBACK}:{port}/"
    stream = await open_hub_stream(url)
    with pytest.raises(HubConnectError) as caught:
        await open_hub_websocket(
            nursery,
            stream,
            url,
            max_message_size=1024,
            receive_buffer_size=4096,
            handshake_timeout=3,
        )
    assert "did not complete the websocket handshake within 3 s" in str(caught.value)


# --------------------------------------------------------------------------
# Configuration mistakes


@pytest.mark.parametrize(
    "url", ["https://hub.example/", "hub.example:443", "wss://:443/", "ws://h:x/"]
)
async def test_invalid_hub_url_is_permanent(url: str) -> None:
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream(url)
    assert caught.value.permanent


@pytest.mark.parametrize(
    "proxy",
    [
        "socks5://agent:pa55word@127.0.0.1:1080",
        "http://agent:pa55word@127.0.0.1",  # no port
        "http://agent:pa55/word@127.0.0.1:3128",  # unencoded slash
        "http://agent:pa55word@127.0.0.1:3128/path",
        "http://agent:pa55#word@127.0.0.1:3128",
    ],
)
async def test_invalid_proxy_url_is_permanent_and_not_echoed(proxy: str) -> None:
    with pytest.raises(HubConnectError) as caught:
        await open_hub_stream("wss://hub.example/", proxy=proxy)
    assert caught.value.permanent
    for text in texts_of(caught.value):
        assert "pa55" not in text


def test_parsed_proxy_hides_the_password_in_its_repr() -> None:
    proxy = _parse_proxy_url(f"https://{PROXY_USER}:s%3Acret@proxy.corp:3128")
    assert proxy.authorization == f"Basic {basic_token('s:cret')}"
    assert proxy.display == f"https://{PROXY_USER}:***@proxy.corp:3128"
    assert "cret" not in repr(proxy)
    assert basic_token("s:cret") not in repr(proxy)


def test_hub_ssl_context_with_a_missing_bundle(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the CA bundle"):
        hub_ssl_context(tmp_path / "missing.pem")


def test_hub_ssl_context_verifies_by_default(ca_file: pathlib.Path) -> None:
    for context in (hub_ssl_context(None), hub_ssl_context(ca_file)):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
