"""A real HTTP CONNECT proxy for the tests, written with trio and h11.

It listens on 127.0.0.1 (a port the kernel picks), plain or over TLS, and
for each connection reads one request with h11 as a server would:

* anything but ``CONNECT`` gets 405;
* missing or wrong ``Proxy-Authorization: Basic`` gets 407 with a
  ``Proxy-Authenticate`` challenge;
* if :attr:`ConnectProxy.refuse_with` is set, that status (403, 502...);
* a destination that is not on the loopback interface, after looking its
  name up in :attr:`ConnectProxy.hosts`, gets 403: the tests never reach
  out of the machine, even by mistake;
* a destination that refuses the connection gets 502;
* otherwise 200, then bytes flow both ways until either side closes. Bytes
  the client sent right after its request (h11's trailing data) are
  forwarded first.

Refusals close the connection (``Connection: close``). Every CONNECT is
recorded in :attr:`ConnectProxy.records`, and every accepted connection
counted in :attr:`ConnectProxy.connections`, so a test can assert what the
agent asked for and how often it dialled.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import h11
import pytest
import trio

from .ports import LOOPBACK
from .streams import splice
from .tls import TEST_HOSTNAMES

#: The credentials of the ``connect_proxy`` fixture. The password holds a
#: colon and a percent sign so that encoding and decoding are exercised.
PROXY_USER = "agent"
PROXY_PASSWORD = "pr0xy:s3cret%"

_REASONS = {
    200: b"Connection established",
    403: b"Forbidden",
    405: b"Method Not Allowed",
    407: b"Proxy Authentication Required",
    502: b"Bad Gateway",
}


@dataclass(frozen=True)
class ConnectRecord:
    """One CONNECT request the proxy saw."""

    #: The request target, ``host:port`` as the client wrote it.
    authority: str
    #: Whether the Proxy-Authorization header carried the right credentials.
    auth_ok: bool
    #: The status the proxy answered.
    status: int


class ConnectProxy:
    """An HTTP CONNECT proxy requiring Basic credentials.

    Start it with ``port = await nursery.start(proxy.serve)``; it stops when
    the nursery is cancelled. ``ssl_context`` (a server context) makes it an
    ``https://`` proxy. ``hosts`` maps names to loopback addresses, as the
    proxy's own DNS would.
    """

    def __init__(
        self,
        username: str = PROXY_USER,
        password: str = PROXY_PASSWORD,
        *,
        ssl_context: ssl.SSLContext | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.username = username
        self.password = password
        self.ssl_context = ssl_context
        self.hosts = dict(hosts or {})
        #: When set, every CONNECT with good credentials gets this status.
        self.refuse_with: int | None = None
        self.records: list[ConnectRecord] = []
        self.connections = 0
        self.port: int | None = None
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._expected = f"Basic {token}".encode()

    @property
    def url(self) -> str:
        """The proxy URL with the right credentials, as the agent config has it."""
        return self.url_with(self.username, self.password)

    def url_with(self, username: str, password: str) -> str:
        """The proxy URL with the given credentials, percent-encoded."""
        assert self.port is not None, "start the proxy first"
        scheme = "https" if self.ssl_context is not None else "http"
        user = urllib.parse.quote(username, safe="")
        secret = urllib.parse.quote(password, safe="")
        return f"{scheme}://{user}:{secret}@{LOOPBACK}:{self.port}"

    async def serve(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled; report the port to ``start``."""
        tcp_listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        listeners: list[trio.abc.Listener[trio.abc.Stream]] = list(tcp_listeners)
        if self.ssl_context is not None:
            listeners = [
                trio.SSLListener(listener, self.ssl_context, https_compatible=True)
                for listener in tcp_listeners
            ]
        self.port = tcp_listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            await self._handle_one(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            # A client that hangs up or speaks nonsense only ends its own
            # connection; the proxy goes on serving.
            pass

    async def _handle_one(self, stream: trio.abc.Stream) -> None:
        server = h11.Connection(h11.SERVER)
        request = await _read_request(server, stream)
        if request is None:
            return

        authority = request.target.decode("ascii", "replace")
        auth = next((v for k, v in request.headers if k == b"proxy-authorization"), b"")
        auth_ok = hmac.compare_digest(auth, self._expected)
        upstream: trio.SocketStream | None = None
        if request.method != b"CONNECT":
            status = 405
        elif not auth_ok:
            status = 407
        elif self.refuse_with is not None:
            status = self.refuse_with
        else:
            status, upstream = await self._dial(authority)
        self.records.append(ConnectRecord(authority, auth_ok, status))

        if upstream is None:
            await _refuse(server, stream, status)
            return
        async with upstream:
            answer = h11.Response(status_code=200, headers=[], reason=_REASONS[200])
            await stream.send_all(_h11_bytes(server, answer))
            early, _ = server.trailing_data
            if early:
                await upstream.send_all(early)
            await splice(stream, upstream)

    async def _dial(self, authority: str) -> tuple[int, trio.SocketStream | None]:
        host, _, port = authority.rpartition(":")
        host = self.hosts.get(host.strip("[]"), host.strip("[]"))
        if host == "localhost":
            host = LOOPBACK
        try:
            allowed = ipaddress.ip_address(host).is_loopback and port.isdigit()
        except ValueError:
            allowed = False
        if not allowed:
            return 403, None
        try:
            return 200, await trio.open_tcp_stream(host, int(port))
        except OSError:
            return 502, None


async def _read_request(
    server: h11.Connection, stream: trio.abc.Stream
) -> h11.Request | None:
    while True:
        event = server.next_event()
        if event is h11.NEED_DATA:
            server.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Request):
            return event
        else:
            return None


async def _refuse(server: h11.Connection, stream: trio.abc.Stream, status: int) -> None:
    body = f"proxy refused: {status}\n".encode()
    headers = [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
    ]
    if status == 407:
        headers.append(("Proxy-Authenticate", 'Basic realm="test proxy"'))
    reason = _REASONS.get(status, b"Refused")
    data = _h11_bytes(
        server, h11.Response(status_code=status, headers=headers, reason=reason)
    )
    data += _h11_bytes(server, h11.Data(data=body))
    data += _h11_bytes(server, h11.EndOfMessage())
    await stream.send_all(data)


def _h11_bytes(connection: h11.Connection, event: h11.Event) -> bytes:
    data = connection.send(event)
    assert data is not None
    return data


@pytest.fixture
async def connect_proxy(nursery: trio.Nursery) -> ConnectProxy:
    """A running plain-HTTP :class:`ConnectProxy` with the default credentials.

    Its host table maps the test host names to 127.0.0.1.
    """
    proxy = ConnectProxy(hosts=dict.fromkeys(TEST_HOSTNAMES, LOOPBACK))
    await nursery.start(proxy.serve)
    return proxy
