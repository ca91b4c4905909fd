"""The HTTP CONNECT proxy between the agent and the hub.

Theory of operation
-------------------

A proxy URL is ``http://`` or ``https://[user:password@]host:port``.
:func:`_parse_proxy_url` percent-decodes the user and password once, turns
them into a ``Proxy-Authorization: Basic`` value (RFC 7617) and forgets
them: what remains is the address, that header value (left out of every
repr) and a display form with the password replaced by ``***``. A URL that
does not parse gets one fixed message that quotes none of it.

:func:`_open_tunnel` sends ``CONNECT host:port HTTP/1.1`` (RFC 9110,
section 9.3.6) on a stream that :mod:`._dial` has already opened to the
proxy, and lets h11 read the answer as a client would. A 2xx opens the
tunnel, 407 is refused credentials, anything else a refusal naming the
status; 4xx other than 408 and 429 are permanent. Bytes that followed the
answer are already the hub's, so :class:`_TunnelStream` hands them out
before reading the socket again.

This module builds on :mod:`._dial` (its error type and error translation)
and :mod:`._dial` loads it only when a proxy is used, so the import goes one
way. Deliberately not done: see :mod:`._dial`.
"""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from ._dial import HubConnectError, _authority, _translate
from ._version import __version__

# The proxy's answer to CONNECT is a short header block; h11 caps it at 16 KiB.
_PROXY_READ_SIZE = 4096


@dataclass(frozen=True)
class _ProxyAddress:
    tls: bool
    host: str
    port: int
    # How messages name the proxy: user shown, password replaced by ***.
    display: str
    # The header value is as secret as the password it encodes.
    authorization: str | None = field(repr=False)


def _parse_proxy_url(proxy: str) -> _ProxyAddress:
    # The URL holds a password: no part of it may reach an error message, so
    # every problem gets the same fixed sentence and nothing is chained.
    invalid = HubConnectError(
        "proxy URL is not valid: expected http:// or https://"
        "[user:password@]host:port, with reserved characters in the user and "
        "password percent-encoded",
        permanent=True,
    )
    parts: urllib.parse.SplitResult | None
    try:
        parts = urllib.parse.urlsplit(proxy)
        port = parts.port
    except ValueError:
        # Raised below, outside this block, so that not even __context__
        # keeps urllib's message (which quotes the URL).
        parts, port = None, None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise invalid

    authorization = None
    display = f"{parts.scheme}://{_authority(parts.hostname, port)}"
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}"
        display = (
            f"{parts.scheme}://{parts.username}:***@{_authority(parts.hostname, port)}"
        )
    return _ProxyAddress(
        tls=parts.scheme == "https",
        host=parts.hostname,
        port=port,
        display=display,
        authorization=authorization,
    )


async def _open_tunnel(
    stream: trio.abc.Stream, proxy: _ProxyAddress, target: str
) -> trio.abc.Stream:
    """Ask the proxy on ``stream`` for a tunnel to ``target`` (host:port).

    Return the stream through the tunnel, which replays any bytes the proxy
    sent after its answer; raise :class:`HubConnectError` if it refuses.
    """
    headers = [("Host", target), ("User-Agent", f"trustelem-relay/{__version__}")]
    if proxy.authorization is not None:
        headers.append(("Proxy-Authorization", proxy.authorization))
    client = h11.Connection(h11.CLIENT)

    # Send the request.
    with _translate(f"the proxy {proxy.display} failed"):
        request = _h11_bytes(
            client, h11.Request(method="CONNECT", target=target, headers=headers)
        )
        await stream.send_all(request + _h11_bytes(client, h11.EndOfMessage()))

        # Read the answer up to the end of its head.
        response = await _receive_response(client, stream, proxy)

    # Judge it.
    status = response.status_code
    if 200 <= status < 300:
        leftover, _ = client.trailing_data
        return _TunnelStream(stream, leftover)
    reason = _printable(response.reason)
    if status == 407:
        raise HubConnectError(
            f"proxy {proxy.display} refused the credentials (407)", permanent=True
        )
    # A 4xx is the proxy's policy (forbidden destination, bad request);
    # 408, 429 and 5xx can pass.
    permanent = 400 <= status < 500 and status not in (408, 429)
    raise HubConnectError(
        f"proxy {proxy.display} refused the tunnel to {target}: "
        f"HTTP {status} {reason}".rstrip(),
        permanent=permanent,
    )


async def _receive_response(
    client: h11.Connection, stream: trio.abc.Stream, proxy: _ProxyAddress
) -> h11.Response:
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_PROXY_READ_SIZE)
            if not data:
                # h11 would call this a protocol error; it is a plain hang-up.
                raise HubConnectError(
                    f"the proxy {proxy.display} closed the connection without "
                    "answering CONNECT"
                )
            client.receive_data(bytes(data))
        elif isinstance(event, h11.Response):
            return event
        elif not isinstance(event, h11.InformationalResponse):
            raise HubConnectError(
                f"the proxy {proxy.display} sent {type(event).__name__} instead of "
                "an answer to CONNECT"
            )


def _h11_bytes(connection: h11.Connection, event: h11.Event) -> bytes:
    data = connection.send(event)
    assert data is not None  # only ConnectionClosed gives None
    return data


def _printable(reason: bytes) -> str:
    # The reason phrase is the proxy's free text: keep one short, plain line.
    text = reason.decode("ascii", "replace")[:80]
    return "".join(ch if ch.isprintable() else "?" for ch in text)


class _TunnelStream(trio.abc.Stream):
    """The stream through the proxy's tunnel.

    It first hands out the bytes the proxy sent after its answer (which h11
    had already read), then reads the underlying stream. One reader at a
    time, as for any trio stream.
    """

    def __init__(self, transport: trio.abc.Stream, leftover: bytes) -> None:
        self.transport = transport
        self._leftover = leftover

    @property
    def socket(self) -> trio.socket.SocketType:
        """The TCP socket to the proxy, for trio-websocket's endpoint display."""
        stream: Any = self.transport
        while not isinstance(stream, trio.SocketStream):
            stream = stream.transport_stream
        return stream.socket

    def detach(self) -> tuple[trio.SocketStream, bytes] | None:
        """The TCP stream under a plain tunnel and the bytes read ahead on
        it, handing both over; None (and nothing changes) when the proxy
        itself is reached over TLS."""
        if not isinstance(self.transport, trio.SocketStream):
            return None
        leftover, self._leftover = self._leftover, b""
        return self.transport, leftover

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if not self._leftover:
            return await self.transport.receive_some(max_bytes)
        # Checkpoint before taking the bytes, so a cancellation loses none.
        await trio.lowlevel.checkpoint()
        size = len(self._leftover) if max_bytes is None else max_bytes
        chunk, self._leftover = self._leftover[:size], self._leftover[size:]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._leftover = b""
        await self.transport.aclose()
