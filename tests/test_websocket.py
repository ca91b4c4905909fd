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
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
)

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


async def open_raw_client() -> tuple[WSConnection, trio.abc.Stream, WebSocket]:
    """Our server, and a wsproto client whose bytes the test writes itself."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = WSConnection(ConnectionType.CLIENT)
    await client_stream.send_all(peer.send(Request(host="h", target="/ws")))
    server = await accept(server_stream, path="/ws", max_message_size=LIMIT, timeout=5)
    assert server is not None
    peer.receive_data(bytes(await client_stream.receive_some()))
    assert any(isinstance(e, AcceptConnection) for e in peer.events())
    return peer, client_stream, server


async def test_a_fragmented_message_with_a_ping_inside_is_joined() -> None:
    peer, stream, server = await open_raw_client()

    await stream.send_all(
        peer.send(BytesMessage(b"first, ", message_finished=False))
        + peer.send(Ping(b"meanwhile"))
        + peer.send(BytesMessage(b"second"))
    )
    assert await server.receive_messages() == [b"first, second"]
    peer.receive_data(bytes(await stream.receive_some()))
    assert list(peer.events()) == [Pong(b"meanwhile")]


async def test_an_unmasked_frame_from_a_client_closes_with_1002() -> None:
    peer, stream, server = await open_raw_client()

    # RFC 6455 section 5.1: a server must refuse what a client did not mask.
    await stream.send_all(b"\x82\x03abc")
    with pytest.raises(ConnectionClosed) as caught:
        await server.receive_messages()
    assert caught.value.code == 1002
    peer.receive_data(bytes(await stream.receive_some()))
    (event,) = peer.events()
    assert isinstance(event, CloseConnection)
    assert event.code == 1002
    with pytest.raises(ConnectionClosed):
        await server.send_message(b"late")
    await server.aclose()


async def test_a_close_from_the_peer_during_aclose_ends_the_wait(
    nursery: trio.Nursery,
) -> None:
    client, server = await open_pair(nursery)

    async def peer() -> None:
        with pytest.raises(ConnectionClosed) as caught:
            await receive_all(server, 1)
        assert caught.value.code == 1001

    nursery.start_soon(peer)
    start = trio.current_time()
    await client.aclose(1001, "going away")
    assert trio.current_time() - start < client.close_timeout
    assert client.closed is not None
    assert client.closed.code == 1001


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


async def test_a_close_right_after_the_request_is_seen_by_aclose(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    peer = WSConnection(ConnectionType.CLIENT)
    request = peer.send(Request(host="h", target="/ws"))
    # FIN + close, masked, length 2, a zero mask: code 1000.
    frame = b"\x88\x82\x00\x00\x00\x00\x03\xe8"

    await client_stream.send_all(request + frame)
    server = await accept(server_stream, path="/ws", max_message_size=LIMIT, timeout=5)
    assert server is not None
    start = trio.current_time()
    await server.aclose(1001)
    # The close frame was already there: no wait for a reply.
    assert trio.current_time() == start


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


async def test_a_text_message_from_trio_websocket_arrives_as_utf8(
    nursery: trio.Nursery,
) -> None:
    received: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        ws = await accept(stream, path="/ws", max_message_size=LIMIT, timeout=5)
        assert ws is not None
        received.extend(await receive_all(ws, 2))
        await ws.send_message(b"done")
        await ws.aclose()

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    async with trio.open_nursery() as inner:
        client = await trio_websocket.wrap_client_stream(inner, stream, LOOPBACK, "/ws")
        await client.send_message("d\u00e9j\u00e0 vu")
        await client.send_message(bytes(range(256)) * 300)
        assert await client.get_message() == b"done"
        await client.aclose()
    await stream.aclose()
    assert received == ["d\u00e9j\u00e0 vu".encode(), bytes(range(256)) * 300]


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
