"""NetStream: writes that leave at once, in order, over TCP and over TLS.

Every test runs over a real TCP connection on 127.0.0.1; the TLS ones use
the session's trustme certificate and talk to trio's own ``SSLStream`` on
the other side, so the two TLS implementations check each other.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from support.tls import TlsMaterial

from trustelem_relay._netstream import NetStream, receive_from


@pytest.fixture
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A connected (client, server) pair of TCP streams on 127.0.0.1."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    try:
        yield client, server
    finally:
        await client.aclose()
        await server.aclose()


async def read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"end of stream after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def shrink_buffers(sock: trio.socket.SocketType) -> None:
    """Small kernel buffers, so that a few hundred KiB fill them."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)


# --------------------------------------------------------------------------
# Plain TCP


async def test_nowait_and_send_all_keep_the_order_they_were_called_in(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    stream = NetStream(client)
    pieces = [os.urandom(n) for n in (1, 100, 5000, 70_000, 3)]

    assert stream.send_nowait(pieces[0])
    await stream.send_all(pieces[1])
    assert stream.send_nowait(pieces[2])
    assert stream.send_nowait(pieces[3])
    await stream.send_all(pieces[4])

    expected = b"".join(pieces)
    assert await read_exactly(server, len(expected)) == expected
    assert not stream.needs_flush


async def test_what_the_kernel_refuses_waits_for_send_all(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    shrink_buffers(client.socket)
    stream = NetStream(client)
    payload = os.urandom(4 << 20)

    # Nobody reads yet: the kernel takes part, the rest waits, in order.
    assert stream.send_nowait(payload[: 2 << 20])
    assert stream.needs_flush
    assert stream.send_nowait(payload[2 << 20 :])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"")
        received = await read_exactly(server, len(payload))
    assert received == payload
    assert not stream.needs_flush


async def test_nowait_refuses_while_send_all_is_writing(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    shrink_buffers(client.socket)
    stream = NetStream(client)
    big = os.urandom(4 << 20)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, big)
        await trio.testing.wait_all_tasks_blocked()
        # send_all is blocked on a full buffer: jumping the queue would
        # put these bytes in the middle of its own.
        assert not stream.send_nowait(b"late")
        received = await read_exactly(server, len(big))
    assert received == big


async def test_received_bytes_come_before_the_socket_s(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    stream = NetStream(client, received=b"already read")
    await server.send_all(b" and then more")

    assert await stream.receive_some(7) == b"already"
    assert await stream.receive_some() == b" read"
    assert await read_exactly(stream, 14) == b" and then more"


async def test_a_failed_nowait_write_is_raised_by_the_next_send_all(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    stream = NetStream(client)
    # An abortive close: the next writes get ECONNRESET or EPIPE.
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    await server.aclose()

    for _ in range(3):
        stream.send_nowait(b"x" * 1000)
    assert stream.needs_flush
    assert not stream.send_nowait(b"more")
    with pytest.raises(trio.BrokenResourceError) as caught:
        await stream.send_all(b"")
    assert isinstance(caught.value.__cause__, OSError)


# --------------------------------------------------------------------------
# receive_from: trio's SocketStream.receive_some, its layers left out


async def test_receive_from_reads_what_arrived_up_to_the_bound(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    await server.send_all(b"hello world")
    await trio.testing.wait_all_tasks_blocked()
    # A cancelled caller reads nothing.
    with trio.CancelScope() as scope:
        scope.cancel()
        await receive_from(client, 100)
    assert scope.cancelled_caught
    # Bytes already there are read at once and the call still yields.
    with trio.testing.assert_checkpoints():
        assert await receive_from(client, 5) == b"hello"
    assert await receive_from(client, 100) == b" world"
    with pytest.raises(ValueError, match="max_bytes"):
        await receive_from(client, 0)


async def test_receive_from_waits_for_bytes_then_the_end(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    got: list[bytes] = []

    async def read() -> None:
        got.append(await receive_from(client, 100))
        got.append(await receive_from(client, 100))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await server.send_all(b"late")
        await server.aclose()
    assert got == [b"late", b""]


async def test_receive_from_errors_are_trio_s(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    # The server's close will be abortive: a reset.
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")

    async def read_until_closed() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await receive_from(server, 100)

    async with trio.open_nursery() as nursery:
        # Closed by another task while waiting: ClosedResourceError.
        nursery.start_soon(read_until_closed)
        await trio.testing.wait_all_tasks_blocked()
        await server.aclose()
    # Reset by the peer: BrokenResourceError, caused by the OSError.
    with pytest.raises(trio.BrokenResourceError) as caught:
        await receive_from(client, 100)
    assert isinstance(caught.value.__cause__, OSError)


async def test_closed_stream_refuses_everything(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, _ = tcp_pair
    stream = NetStream(client)
    await stream.aclose()
    await stream.aclose()  # a second close does nothing

    assert not stream.send_nowait(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await stream.wait_send_all_might_not_block()


async def test_wait_send_all_might_not_block_returns_when_writable(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    stream = NetStream(tcp_pair[0])
    with trio.fail_after(5):
        await stream.wait_send_all_might_not_block()
    assert stream.getpeercert() is None


# --------------------------------------------------------------------------
# TLS, against trio's SSLStream on the other side


def tls_client_and_trio_server(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> tuple[NetStream, trio.SSLStream[trio.SocketStream]]:
    """A TLS NetStream client and trio's TLS server, over ``tcp_pair``."""
    client, server = tcp_pair
    stream = NetStream(
        client, ssl_context=tls.client_context(), server_hostname="localhost"
    )
    return stream, trio.SSLStream(server, tls.server_context(), server_side=True)


async def handshake_both(
    stream: NetStream, peer: trio.SSLStream[trio.SocketStream]
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.do_handshake)
        await stream.do_handshake()


async def test_tls_client_talks_to_trio_server_both_ways(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    stream, peer = tls_client_and_trio_server(tcp_pair, tls)
    upstream = os.urandom(3 << 20)
    downstream = os.urandom(1 << 20)

    # Before the handshake nothing can leave at once.
    assert not stream.send_nowait(b"too early")

    async def server_side() -> None:
        assert await read_exactly(peer, len(upstream)) == upstream
        await peer.send_all(downstream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        await stream.do_handshake()
        await stream.do_handshake()  # once is enough; again does nothing
        assert stream.send_nowait(upstream[:100])
        await stream.send_all(upstream[100 : 1 << 20])
        assert stream.send_nowait(upstream[1 << 20 :])
        await stream.send_all(b"")
        assert await read_exactly(stream, len(downstream)) == downstream

    certificate = stream.getpeercert(binary_form=True)
    assert certificate == ssl.PEM_cert_to_DER_cert(
        tls.cert.cert_chain_pems[0].bytes().decode()
    )
    assert stream.getpeercert(binary_form=False) is None


async def test_tls_server_talks_to_trio_client_and_handshakes_on_first_read(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    client, server = tcp_pair
    stream = NetStream(server, ssl_context=tls.server_context(), server_side=True)
    peer = trio.SSLStream(client, tls.client_context(), server_hostname="localhost")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.send_all, b"hello")
        assert await read_exactly(stream, 5) == b"hello"
        assert stream.send_nowait(b"world")
        assert await read_exactly(peer, 5) == b"world"

        # trio's client says close_notify: the end of the stream.
        nursery.start_soon(peer.aclose)
        assert await stream.receive_some() == b""


async def test_tls_send_all_runs_the_handshake_itself(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    stream, peer = tls_client_and_trio_server(tcp_pair, tls)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, b"first")
        assert await read_exactly(peer, 5) == b"first"


async def test_tls_end_without_close_notify_is_the_end_of_the_stream(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    stream, peer = tls_client_and_trio_server(tcp_pair, tls)
    await handshake_both(stream, peer)
    await tcp_pair[1].aclose()  # the TCP connection only, no close_notify

    assert await stream.receive_some() == b""
    assert await stream.receive_some() == b""


async def test_tls_close_says_close_notify(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    stream, peer = tls_client_and_trio_server(tcp_pair, tls)
    await handshake_both(stream, peer)
    await stream.aclose()

    # trio's SSLStream reports a close_notify as the end of the stream; a
    # bare TCP close would be an error for it (not https_compatible).
    assert await peer.receive_some() == b""


async def test_tls_refuses_a_certificate_it_does_not_trust(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
    tls: TlsMaterial,
    other_tls: TlsMaterial,
) -> None:
    client, server = tcp_pair
    stream = NetStream(
        client, ssl_context=other_tls.client_context(), server_hostname="localhost"
    )
    peer = trio.SSLStream(server, tls.server_context(), server_side=True)

    async def server_side() -> None:
        with pytest.raises(trio.BrokenResourceError):
            await peer.do_handshake()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        with pytest.raises(trio.BrokenResourceError) as caught:
            await stream.do_handshake()
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    # Broken for good: nothing more goes out.
    assert not stream.send_nowait(b"x")


async def test_tls_handshake_cut_short_is_broken(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    stream, _ = tls_client_and_trio_server(tcp_pair, tls)
    await tcp_pair[1].aclose()
    with pytest.raises(trio.BrokenResourceError) as caught:
        await stream.receive_some()
    assert isinstance(caught.value.__cause__, ssl.SSLError)


async def test_tls_garbage_after_the_handshake_breaks_the_stream(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    client, server = tcp_pair
    stream = NetStream(server, ssl_context=tls.server_context(), server_side=True)
    peer = trio.SSLStream(client, tls.client_context(), server_hostname="localhost")
    await handshake_both(stream, peer)
    # A record header that announces an impossible record.
    await client.send_all(b"\x17\x03\x03\xff\xff" + b"\0" * 64)
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()


async def test_tls_server_takes_handshake_bytes_read_ahead_by_someone_else(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    # As behind a proxy's tunnel: the first bytes were read by another layer.
    client, server = tcp_pair
    peer = trio.SSLStream(client, tls.client_context(), server_hostname="localhost")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.send_all, b"through")
        hello = await server.receive_some()
        stream = NetStream(
            server, ssl_context=tls.server_context(), server_side=True, received=hello
        )
        assert await read_exactly(stream, 7) == b"through"


async def test_empty_send_all_with_nothing_pending_writes_nothing(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream],
) -> None:
    client, server = tcp_pair
    stream = NetStream(client)
    await stream.send_all(b"")
    assert stream.send_nowait(b"")
    await stream.send_all(b"end")
    assert await read_exactly(server, 3) == b"end"


async def test_tls_read_hands_over_every_record_already_received(
    tcp_pair: tuple[trio.SocketStream, trio.SocketStream], tls: TlsMaterial
) -> None:
    # The ssl module gives one 16 KiB record per read; one receive_some
    # gives all the records its socket read brought (up to max_bytes).
    stream, peer = tls_client_and_trio_server(tcp_pair, tls)
    await handshake_both(stream, peer)
    payload = os.urandom(100_000)
    await peer.send_all(payload)

    first = await stream.receive_some(1 << 20)
    assert len(first) > 16384
    assert first + await read_exactly(stream, len(payload) - len(first)) == payload
    # max_bytes still bounds what one call returns.
    await peer.send_all(payload)
    assert len(await stream.receive_some(20_000)) <= 20_000
