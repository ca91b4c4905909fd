"""A small HTTP/1.1 origin server that records exactly what it receives.

It listens on 127.0.0.1 only, over TCP or (given a server SSL context) TLS.
Each connection's request is read with h11 in the server role, so the test
sees both the parsed request and the raw bytes that arrived; the response is
whatever the test's handler writes, byte for byte, so a test can send framing
that a well-behaved server never would. Use it as::

    async with serve_origin(respond(b"HTTP/1.1 200 OK\\r\\n...")) as origin:
        ...  # dial 127.0.0.1:origin.port
    assert origin.exchanges[0].header(b"host") == [b"scim.corp.test"]
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import h11
import trio


@attrs.define
class Exchange:
    """One request as the origin received it."""

    #: The request line and headers, as h11 parsed them.
    request: h11.Request
    #: The request body, framing removed.
    body: bytes
    #: Every byte read for this request, from its first to the end of it.
    raw: bytes
    #: Which connection carried it: 1 for the first accepted, and so on.
    connection: int

    def header(self, name: bytes) -> list[bytes]:
        """All values of header *name* (lower case), in order."""
        return [value for key, value in self.request.headers if key == name]


#: Called with the connection and the request once it is complete.
Handler = Callable[[trio.abc.Stream, Exchange], Awaitable[None]]
#: Called with the connection before any HTTP parsing (after TLS, if any).
RawHandler = Callable[[trio.abc.Stream], Awaitable[None]]


def respond(data: bytes) -> Handler:
    """A handler that writes *data* as the whole response, then closes."""

    async def handler(stream: trio.abc.Stream, exchange: Exchange) -> None:
        await stream.send_all(data)

    return handler


OK = respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")


@attrs.define
class Origin:
    """What a running origin has seen so far."""

    port: int
    #: Connections accepted, whether or not a request followed.
    connections: int = 0
    #: Complete requests received, in order.
    exchanges: list[Exchange] = attrs.field(factory=list)
    #: Server names clients asked for with SNI (TLS only).
    server_names: list[str | None] = attrs.field(factory=list)
    #: Connections that ended in a TLS or HTTP error on the client's side.
    errors: list[BaseException] = attrs.field(factory=list)


async def _read_request(
    stream: trio.abc.Stream, connection: int, buffered: bytes
) -> tuple[Exchange, bytes] | None:
    """Read one request, starting with bytes already read off the stream.

    Returns it with whatever followed it, or None if the client closed the
    connection before completing a request.
    """
    conn = h11.Connection(our_role=h11.SERVER)
    raw = bytearray(buffered)
    if buffered:  # h11 takes an empty chunk to mean the end of the stream
        conn.receive_data(buffered)
    body = bytearray()
    request: h11.Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            raw += data
            conn.receive_data(bytes(data))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            rest = conn.trailing_data[0]
            exchange = Exchange(
                request=request,
                body=bytes(body),
                raw=bytes(raw[: len(raw) - len(rest)]),
                connection=connection,
            )
            return exchange, rest
        else:
            return None


@contextlib.asynccontextmanager
async def serve_origin(
    handler: Handler = OK,
    *,
    ssl_context: ssl.SSLContext | None = None,
    raw_handler: RawHandler | None = None,
    keep_alive: bool = False,
) -> AsyncIterator[Origin]:
    """Run an origin on 127.0.0.1 for the duration of the block.

    With *raw_handler* the connection is handed over before any HTTP is
    read. With *ssl_context* (server side) every connection is TLS, and the
    context's SNI callback is replaced to record the names clients send.
    Without *keep_alive* the origin closes each connection after one
    request; with it, it reads the next request once the handler returns
    (the handler's response must then not ask to close).
    """
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    origin = Origin(port=listeners[0].socket.getsockname()[1])

    if ssl_context is not None:

        def record_sni(
            sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext
        ) -> None:
            origin.server_names.append(name)

        ssl_context.sni_callback = record_sni

    async def serve_one(tcp: trio.SocketStream) -> None:
        origin.connections += 1
        number = origin.connections
        stream: trio.abc.Stream = tcp
        try:
            if ssl_context is not None:
                stream = trio.SSLStream(tcp, ssl_context, server_side=True)
                await stream.do_handshake()
            if raw_handler is not None:
                await raw_handler(stream)
                return
            buffered = b""
            while True:
                received = await _read_request(stream, number, buffered)
                if received is None:
                    return
                exchange, buffered = received
                origin.exchanges.append(exchange)
                await handler(stream, exchange)
                if not keep_alive:
                    return
        except (trio.BrokenResourceError, h11.RemoteProtocolError) as exc:
            origin.errors.append(exc)
        finally:
            await trio.aclose_forcefully(stream)

    # What the block raised is re-raised outside the nursery, so tests see
    # the exception itself rather than a group wrapping it.
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve_one, listeners)
        try:
            yield origin
        except BaseException as exc:
            failure = exc
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def wait_for_close(stream: trio.abc.Stream) -> None:
    """Read and discard until the client closes the connection."""
    while await stream.receive_some(65536):
        pass
