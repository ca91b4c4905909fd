"""Keep-alive reuse of target connections through a ConnectionPool."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from support.forwarding import HOSTNAME, RecordingSink, request, target_at
from support.origin import Exchange, respond, serve_origin, wait_for_close
from support.tls import TlsMaterial

from trustelem_relay import BadGateway
from trustelem_relay._forward import forward
from trustelem_relay._forward_pool import ConnectionPool
from trustelem_relay._policy import TLSSettings

pytestmark = pytest.mark.usefixtures("no_resource_warnings")

#: A response that lets the connection live on.
KEEP = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def forward_twice(pool: ConnectionPool, port: int) -> None:
    for _ in range(2):
        sink = RecordingSink()
        await forward(target_at(port), request(), b"", sink, pool=pool)
        assert sink.body == b"ok"


async def test_pool_reuses_the_connection_for_the_same_destination() -> None:
    async with serve_origin(KEEP, keep_alive=True) as origin, ConnectionPool() as pool:
        await forward_twice(pool, origin.port)
        assert len(pool) == 1

    assert origin.connections == 1
    assert [e.connection for e in origin.exchanges] == [1, 1]
    for exchange in origin.exchanges:
        assert exchange.header(b"connection") == []


async def test_without_a_pool_each_request_asks_to_close() -> None:
    async with serve_origin(KEEP, keep_alive=True) as origin:
        for _ in range(2):
            await forward(target_at(origin.port), request(), b"", RecordingSink())

    assert origin.connections == 2
    assert [e.header(b"connection") for e in origin.exchanges] == [[b"close"]] * 2


async def test_pool_does_not_keep_a_connection_the_target_closes() -> None:
    # The default answer says "Connection: close".
    async with serve_origin(keep_alive=True) as origin, ConnectionPool() as pool:
        await forward_twice(pool, origin.port)
        assert len(pool) == 0

    assert origin.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["bytes-past-the-body", "http-1.0"],
)
async def test_pool_does_not_keep_a_connection_h11_would_not_reuse(
    answer: bytes,
) -> None:
    # The body is read past h11, which must still have its say.
    async with (
        serve_origin(respond(answer), keep_alive=True) as origin,
        ConnectionPool() as pool,
    ):
        sink = RecordingSink()
        await forward(target_at(origin.port), request(), b"", sink, pool=pool)
        assert sink.body == b"ok"
        assert len(pool) == 0


async def test_pool_drops_a_connection_closed_while_idle() -> None:
    # Answers without "Connection: close", then closes anyway.
    async with serve_origin(KEEP) as origin, ConnectionPool() as pool:
        await forward(
            target_at(origin.port), request(), b"", RecordingSink(), pool=pool
        )
        await trio.testing.wait_all_tasks_blocked()
        assert len(pool) == 1
        await forward(
            target_at(origin.port), request(), b"", RecordingSink(), pool=pool
        )

    assert origin.connections == 2
    assert origin.errors == []


async def test_pool_drops_connections_idle_for_too_long(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with (
        serve_origin(KEEP, keep_alive=True) as origin,
        ConnectionPool(idle_timeout=4.0) as pool,
    ):
        await forward(
            target_at(origin.port), request(), b"", RecordingSink(), pool=pool
        )
        await trio.sleep(3.9)
        await forward(
            target_at(origin.port), request(), b"", RecordingSink(), pool=pool
        )
        await trio.sleep(4.0)
        await forward(
            target_at(origin.port), request(), b"", RecordingSink(), pool=pool
        )

    assert [e.connection for e in origin.exchanges] == [1, 1, 2]


async def test_pool_never_shares_a_connection_across_server_names(
    tls: TlsMaterial, ca_file: Path
) -> None:
    settings = TLSSettings(ca_file=ca_file)
    async with (
        serve_origin(KEEP, ssl_context=tls.server_context(), keep_alive=True) as origin,
        ConnectionPool() as pool,
    ):
        target = target_at(origin.port, tls=settings)
        for authority in (HOSTNAME, "hub.corp.test", HOSTNAME, "hub.corp.test"):
            head = request(scheme="https", authority=authority)
            await forward(target, head, b"", RecordingSink(), pool=pool)

    # One handshake per name, each verified for that name, then reuse.
    assert origin.server_names == [HOSTNAME, "hub.corp.test"]
    assert [e.connection for e in origin.exchanges] == [1, 2, 1, 2]


async def test_pool_never_shares_a_connection_across_targets() -> None:
    async with serve_origin(KEEP, keep_alive=True) as origin, ConnectionPool() as pool:
        first = target_at(origin.port)
        second = target_at(origin.port, timeout=30.0)  # declared differently
        for target in (first, second, first):
            await forward(target, request(), b"", RecordingSink(), pool=pool)

    assert [e.connection for e in origin.exchanges] == [1, 2, 1]


async def test_pool_keeps_at_most_max_idle_connections() -> None:
    both_arrived = trio.Event()
    arrived = 0

    async def answer_together(stream: trio.abc.Stream, exchange: Exchange) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_arrived.set()
        await both_arrived.wait()
        await KEEP(stream, exchange)

    async with (
        serve_origin(answer_together, keep_alive=True) as origin,
        ConnectionPool(max_idle=1) as pool,
    ):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(
                    forward, target_at(origin.port), request(), b"", RecordingSink()
                )
        assert len(pool) == 0  # not given to forward: nothing kept

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(
                    lambda: forward(
                        target_at(origin.port),
                        request(),
                        b"",
                        RecordingSink(),
                        pool=pool,
                    )
                )
        assert len(pool) == 1


async def test_cancelled_request_is_not_returned_to_the_pool() -> None:
    got_request = trio.Event()
    saw_close = trio.Event()

    async def hold(stream: trio.abc.Stream, exchange: Exchange) -> None:
        got_request.set()
        await wait_for_close(stream)
        saw_close.set()

    async with serve_origin(hold) as origin, ConnectionPool() as pool:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: forward(
                    target_at(origin.port), request(), b"", RecordingSink(), pool=pool
                )
            )
            await got_request.wait()
            nursery.cancel_scope.cancel()
        with trio.fail_after(2):
            await saw_close.wait()
        assert len(pool) == 0


async def test_a_reused_connection_that_breaks_may_have_reached_the_target() -> None:
    answered = 0

    async def once_then_hang_up(stream: trio.abc.Stream, exchange: Exchange) -> None:
        nonlocal answered
        answered += 1
        if answered == 1:
            await KEEP(stream, exchange)
        else:
            # Read the second request, then close without a word: the
            # target may have acted on it, so no retry and no "not sent".
            await trio.aclose_forcefully(stream)

    async with (
        serve_origin(once_then_hang_up, keep_alive=True) as origin,
        ConnectionPool() as pool,
    ):
        await forward(
            target_at(origin.port), request(), b"", RecordingSink(), pool=pool
        )
        with pytest.raises(BadGateway) as caught:
            await forward(
                target_at(origin.port),
                request("POST"),
                b"{}",
                RecordingSink(),
                pool=pool,
            )

    assert caught.value.may_have_reached_target is True
    assert origin.connections == 1
    assert len(origin.exchanges) == 2


async def test_closed_pool_closes_what_it_is_given() -> None:
    async with serve_origin(KEEP, keep_alive=True) as origin:
        pool = ConnectionPool()
        await forward(
            target_at(origin.port), request(), b"", RecordingSink(), pool=pool
        )
        await pool.aclose()
        assert len(pool) == 0
        await forward(
            target_at(origin.port), request(), b"", RecordingSink(), pool=pool
        )
        assert len(pool) == 0

    assert origin.connections == 2


def test_pool_limits_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        ConnectionPool(max_idle=-1)


async def test_pool_never_reuses_a_connection_it_cannot_check() -> None:
    # Only a socket can be asked whether the target closed it; anything
    # else, or a socket already closed, is dropped rather than trusted.
    left, right = trio.testing.memory_stream_pair()
    sock, peer = trio.socket.socketpair()
    closed = trio.SocketStream(sock)
    await closed.aclose()
    async with ConnectionPool() as pool:
        await pool.put("memory", left)
        await pool.put("closed", closed)
        assert len(pool) == 2

        assert await pool.take("memory") is None
        assert await pool.take("closed") is None
        assert len(pool) == 0
    await right.aclose()
    peer.close()
