"""The websocket layer: handshakes, messages, control frames and closing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio
import trio.testing
import trio_websocket
from support.ports import LOOPBACK
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Ping, Pong, Request

from trustelem_relay._websocket import (
    ConnectionClosed,
    UpgradeFailed,
    WebSocket,
    accept,
    connect,
)

LIMIT = 1 << 20


async def open_pair(
    nursery: trio.Nursery, *, max_message_size: int = LIMIT
) -> tuple[WebSocket, WebSocket]:
    """A client and a server websocket over an in-memory stream pair."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    accepted: list[WebSocket | None] = []
    done = trio.Event()

    async def serve() -> None:
        accepted.append(
            await accept(
                server_stream,
                path="/v1/connect",
                max_message_size=max_message_size,
                timeout=5,
            )
        )
        done.set()

    nursery.start_soon(serve)
    client = await connect(
        client_stream,
        "hub.example",
        "/v1/connect?x=1",
        max_message_size=max_message_size,
        timeout=5,
    )
    await done.wait()
    server = accepted[0]
    assert server is not None
    return client, server


async def receive_all(ws: WebSocket, count: int) -> list[bytes]:
    received: list[bytes] = []
    while len(received) < count:
        received += await ws.receive_messages()
    return received


async def test_messages_cross_both_ways_and_arrive_together(
    nursery: trio.Nursery,
) -> None:
    client, server = await open_pair(nursery)

    await client.send_messages([b"one", b"two", b""])
    assert await server.receive_messages() == [b"one", b"two", b""]

    await server.send_message(b"back")
    assert await receive_all(client, 1) == [b"back"]


async def test_a_large_message_is_assembled_from_many_reads(
    nursery: trio.Nursery,
) -> None:
    client, server = await open_pair(nursery)
    server._receive_size = 1000
    body = bytes(range(256)) * 1024

    await client.send_message(body)
    assert await receive_all(server, 1) == [body]


async def test_a_message_over_the_limit_closes_with_1009(
    nursery: trio.Nursery,
) -> None:
    client, server = await open_pair(nursery, max_message_size=100)

    await client.send_message(b"x" * 101)
    with pytest.raises(ConnectionClosed) as caught:
        await receive_all(server, 1)
    assert caught.value.code == 1009
    with pytest.raises(ConnectionClosed) as seen:
        await receive_all(client, 1)
    assert seen.value.code == 1009


async def test_close_reaches_the_peer_with_its_code_and_reason(
    nursery: trio.Nursery,
) -> None:
    client, server = await open_pair(nursery)

    async def peer() -> None:
        with pytest.raises(ConnectionClosed) as caught:
            await receive_all(server, 1)
        assert (caught.value.code, caught.value.reason) == (4001, "replaced")

    nursery.start_soon(peer)
    await client.aclose(4001, "replaced")
    await client.aclose()
    assert client.closed is not None
    with pytest.raises(ConnectionClosed):
        await client.send_message(b"late")


async def test_messages_before_a_close_are_delivered_first(
    nursery: trio.Nursery,
) -> None:
    client, server = await open_pair(nursery)
    client.close_timeout = 0

    await client.send_message(b"last words")
    await client.aclose(4008, "dead")
    assert await server.receive_messages() == [b"last words"]
    with pytest.raises(ConnectionClosed) as caught:
        await server.receive_messages()
    assert caught.value.code == 4008


async def test_end_of_stream_is_an_abnormal_close(nursery: trio.Nursery) -> None:
    client, server = await open_pair(nursery)

    await client._stream.aclose()
    with pytest.raises(ConnectionClosed) as caught:
        await receive_all(server, 1)
    assert caught.value.code == 1006


async def test_ping_is_answered_by_the_reader() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = WSConnection(ConnectionType.CLIENT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            client_stream.send_all,
            peer.send(Request(host="h", target="/ws")),
        )
        server = await accept(
            server_stream, path="/ws", max_message_size=LIMIT, timeout=5
        )
    assert server is not None
    peer.receive_data(bytes(await client_stream.receive_some()))
    assert any(isinstance(e, AcceptConnection) for e in peer.events())

    await client_stream.send_all(peer.send(Ping(b"are you there")))
    assert await server.receive_messages() == []
    peer.receive_data(bytes(await client_stream.receive_some()))
    assert list(peer.events()) == [Pong(b"are you there")]


async def test_bytes_right_after_the_request_are_kept() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = WSConnection(ConnectionType.CLIENT)
    request = peer.send(Request(host="h", target="/ws"))
    # RFC 6455 section 5.2: FIN + binary, masked, length 5, a zero mask.
    frame = b"\x82\x85\x00\x00\x00\x00eager"

    await client_stream.send_all(request + frame)
    server = await accept(server_stream, path="/ws", max_message_size=LIMIT, timeout=5)
    assert server is not None
    assert await server.receive_messages() == [b"eager"]


async def test_wrong_path_is_refused_with_404(nursery: trio.Nursery) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    results: list[WebSocket | None] = []

    async def serve() -> None:
        results.append(
            await accept(server_stream, path="/ws", max_message_size=LIMIT, timeout=5)
        )

    nursery.start_soon(serve)
    with pytest.raises(UpgradeFailed) as caught:
        await connect(client_stream, "h", "/other", max_message_size=LIMIT, timeout=5)
    assert (caught.value.kind, caught.value.status_code) == ("refused", 404)
    assert results == [None]


async def test_silent_server_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, _server_stream = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(UpgradeFailed) as caught:
        await connect(client_stream, "h", "/", max_message_size=LIMIT, timeout=3)
    assert caught.value.kind == "timeout"
    assert trio.current_time() - start == pytest.approx(3)


async def test_silent_client_is_dropped_at_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _client_stream, server_stream = trio.testing.memory_stream_pair()
    start = trio.current_time()
    ws = await accept(server_stream, path="/", max_message_size=LIMIT, timeout=7)
    assert ws is None
    assert trio.current_time() - start == pytest.approx(7)


async def test_a_trio_websocket_client_talks_to_our_server(
    nursery: trio.Nursery,
) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        ws = await accept(stream, path="/ws", max_message_size=LIMIT, timeout=5)
        assert ws is not None
        try:
            while True:
                for message in await ws.receive_messages():
                    await ws.send_message(message[::-1])
        except ConnectionClosed:
            pass
        finally:
            await ws.aclose()

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    async with trio.open_nursery() as inner:
        client = await trio_websocket.wrap_client_stream(inner, stream, LOOPBACK, "/ws")
        await client.send_message(b"abc")
        assert await client.get_message() == b"cba"
        await client.aclose()
    await stream.aclose()


def test_the_package_never_loads_trio_websocket() -> None:
    code = (
        "import importlib, pkgutil, sys, trustelem_relay\n"
        "for module in pkgutil.iter_modules(trustelem_relay.__path__):\n"
        "    importlib.import_module('trustelem_relay.' + module.name)\n"
        "print('trio_websocket' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
