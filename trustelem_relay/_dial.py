"""How the agent reaches the hub: TCP, the proxy's tunnel, TLS, then websocket.

Theory of operation
-------------------

:func:`open_hub_stream` builds the byte stream that the agent's websocket
runs over, in up to five steps, all under one deadline (``connect_timeout``):

1. TCP to the hub, or to the proxy when one is configured;
2. for an ``https://`` proxy, TLS to the proxy, verified for the proxy's host;
3. through a proxy, ``CONNECT host:port HTTP/1.1`` (RFC 9110, section 9.3.6)
   with ``Proxy-Authorization: Basic`` (RFC 7617) built from the proxy URL's
   percent-decoded user and password. h11 parses the proxy's answer as a
   client would: a 2xx opens the tunnel, 407 means the credentials were
   refused, anything else is a refusal that names the status;
4. for a ``wss://`` hub, TLS to the hub inside the tunnel (so TLS in TLS
   with an ``https://`` proxy), with SNI and verification for the hub's host,
   never the proxy's;
5. optionally, the SHA-256 of the hub certificate's DER SubjectPublicKeyInfo
   compared with a pin.

Bytes that the proxy sent after the blank line ending its 2xx answer are
already the hub's: h11 keeps them as trailing data, and the tunnel stream
hands them out first, before reading the socket again. Nothing is dropped
and nothing is refused; a hub that speaks first (or a proxy that forwards
eagerly) works. The proxy's part (its URL, the CONNECT exchange and the
tunnel stream) lives in :mod:`._proxy`, loaded only when a proxy is used.

Every failure comes out as :class:`HubConnectError`, one readable line,
with the low-level error chained; ``permanent`` says when retrying soon is
pointless (refused credentials, a certificate that does not verify or does
not match the pin, a URL that cannot work). The proxy's password and the
``Proxy-Authorization`` value appear in no message, log line or repr: the
proxy is always shown as ``scheme://user:***@host:port``.

:func:`open_hub_websocket` then runs the websocket opening handshake over
that stream with :func:`._websocket.connect`; the websocket it returns owns
the stream and closes it. A refused upgrade, a hub that hangs up during the
handshake or one that does not answer in time is turned into
:class:`HubConnectError`.

Deliberately not done: proxy schemes other than Basic (no NTLM or
Negotiate), a second CONNECT on the same connection after a 407, proxy
settings from ``HTTPS_PROXY`` and friends (the agent's configuration names
its proxy explicitly), and hub URLs other than ``ws``/``wss``. With an
``http://`` proxy the Basic credentials cross the local network in clear,
as they do for every client of such a proxy; an ``https://`` proxy avoids
that.

Logger ``trustelem_relay.dial``: DEBUG only; the runtime decides what an
operator sees.
"""

from __future__ import annotations

import logging
import os
import pathlib
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
import trio

from ._errors import ConfigError, RelayError
from ._forward_tls import pin_matches
from ._netstream import NetStream
from ._websocket import UpgradeFailed, WebSocket, connect

if TYPE_CHECKING:
    from ._proxy import _parse_proxy_url as _parse_proxy_url
    from ._proxy import _ProxyAddress

__all__ = [
    "HubConnectError",
    "hub_ssl_context",
    "open_hub_stream",
    "open_hub_websocket",
]

logger = logging.getLogger("trustelem_relay.dial")

_DEFAULT_PORTS = {"ws": 80, "wss": 443}


class HubConnectError(RelayError):
    """Could not open the connection to the hub.

    ``permanent`` says whether retrying soon is pointless: True for refused
    proxy credentials (407), a hub certificate that fails verification or
    does not match its pin, a proxy that forbids the tunnel (4xx) and a URL
    that cannot work; False for everything that may heal by itself
    (refused or timed-out connections, 5xx from the proxy, a hub that hung
    up). The message is one line and never holds the proxy's password.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# --------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True)
class _HubAddress:
    tls: bool
    host: str
    port: int
    # Path and query, what the websocket request line asks for.
    resource: str

    @property
    def authority(self) -> str:
        return _authority(self.host, self.port)

    @property
    def host_header(self) -> str:
        # RFC 9110 section 7.2: the port is left out when it is the default.
        if self.port == _DEFAULT_PORTS["wss" if self.tls else "ws"]:
            return _bracketed(self.host)
        return self.authority


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _authority(host: str, port: int) -> str:
    return f"{_bracketed(host)}:{port}"


def _parse_hub_url(hub_url: str) -> _HubAddress:
    parts: urllib.parse.SplitResult | None
    try:
        parts = urllib.parse.urlsplit(hub_url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise HubConnectError(
            f"hub URL {hub_url!r} is not valid: expected "
            "ws://host[:port]/path or wss://host[:port]/path",
            permanent=True,
        )
    resource = parts.path or "/"
    if parts.query:
        resource = f"{resource}?{parts.query}"
    return _HubAddress(
        tls=parts.scheme == "wss",
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORTS[parts.scheme],
        resource=resource,
    )


# --------------------------------------------------------------------------
# TLS


def hub_ssl_context(ca_file: pathlib.Path | None) -> ssl.SSLContext:
    """Return a client TLS context for the hub (and an ``https://`` proxy).

    It trusts the system's CAs, or only the PEM bundle ``ca_file`` when one
    is given; it verifies certificates and host names and refuses anything
    older than TLS 1.2. Raises :class:`ConfigError` if the bundle cannot be
    read.
    """
    try:
        if ca_file is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(ca_file)
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the CA bundle {ca_file}: {_reason(exc)}"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Load balancers in front of a hub route on ALPN; the websocket upgrade
    # is an HTTP/1.1 request.
    context.set_alpn_protocols(["http/1.1"])
    return context


# --------------------------------------------------------------------------
# Opening the stream


async def open_hub_stream(
    hub_url: str,
    *,
    proxy: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    proxy_ssl_context: ssl.SSLContext | None = None,
    pin_sha256: bytes | None = None,
    connect_timeout: float = 15.0,
) -> trio.abc.Stream:
    """Open the byte stream to the hub that the websocket will run over.

    ``hub_url`` is ``ws://`` or ``wss://``. ``proxy`` is ``http://`` or
    ``https://[user:password@]host:port``; the hub is then reached through
    ``CONNECT``. ``ssl_context`` verifies the hub (default: system CAs, see
    :func:`hub_ssl_context`); ``proxy_ssl_context`` verifies an ``https://``
    proxy and defaults to ``ssl_context``, since a corporate CA usually
    signs both. ``pin_sha256`` is the SHA-256 of the hub certificate's DER
    SubjectPublicKeyInfo (32 bytes). ``connect_timeout`` bounds all the
    steps together.

    The caller owns the returned stream and must close it. Raises
    :class:`HubConnectError`; nothing stays open after a failure.
    """
    from ._proxy import _parse_proxy_url

    hub = _parse_hub_url(hub_url)
    proxy_address = None if proxy is None else _parse_proxy_url(proxy)
    if pin_sha256 is not None and (not hub.tls or len(pin_sha256) != 32):
        raise HubConnectError(
            "a hub certificate pin needs a wss:// hub URL and 32 bytes of SHA-256",
            permanent=True,
        )
    if hub.tls and ssl_context is None:
        ssl_context = hub_ssl_context(None)
    if proxy_address is not None and proxy_address.tls and proxy_ssl_context is None:
        proxy_ssl_context = ssl_context or hub_ssl_context(None)
    dialer = _Dialer(
        hub=hub,
        proxy=proxy_address,
        ssl_context=ssl_context,
        proxy_ssl_context=proxy_ssl_context,
        pin_sha256=pin_sha256,
    )
    try:
        with trio.fail_after(connect_timeout):
            return await dialer.run()
    except trio.TooSlowError as exc:
        raise HubConnectError(
            f"timed out after {connect_timeout:g} s {dialer.step}"
        ) from exc


class _Dialer:
    """One attempt at :func:`open_hub_stream`, one step after the other.

    ``step`` names what is under way, for the timeout message; ``stream`` is
    the outermost stream opened so far, closed if anything fails.
    """

    def __init__(
        self,
        *,
        hub: _HubAddress,
        proxy: _ProxyAddress | None,
        ssl_context: ssl.SSLContext | None,
        proxy_ssl_context: ssl.SSLContext | None,
        pin_sha256: bytes | None,
    ) -> None:
        self.hub = hub
        self.proxy = proxy
        self.ssl_context = ssl_context
        self.proxy_ssl_context = proxy_ssl_context
        self.pin_sha256 = pin_sha256
        self.step = "before starting"
        self.stream: trio.abc.Stream | None = None

    async def run(self) -> trio.abc.Stream:
        try:
            return await self._steps()
        except BaseException:
            if self.stream is not None:
                await trio.aclose_forcefully(self.stream)
            raise

    async def _steps(self) -> trio.abc.Stream:
        hub, proxy = self.hub, self.proxy

        # TCP, to the proxy if there is one, else to the hub itself.
        if proxy is None:
            where = f"the hub at {hub.authority}"
            host, port = hub.host, hub.port
        else:
            where = f"the proxy {proxy.display}"
            host, port = proxy.host, proxy.port
            logger.debug("reaching the hub at %s through %s", hub.authority, where)
        self.step = f"connecting to {where}"
        with _translate(f"cannot connect to {where}"):
            self.stream = await trio.open_tcp_stream(host, port)

        if proxy is not None:
            from ._proxy import _open_tunnel

            # TLS to the proxy itself, then the tunnel through it.
            if proxy.tls:
                assert self.proxy_ssl_context is not None
                self.stream = await self._tls(
                    self.stream, self.proxy_ssl_context, proxy.host, where
                )
            self.step = f"waiting for {where} to open a tunnel to {hub.authority}"
            self.stream = await _open_tunnel(self.stream, proxy, hub.authority)
            logger.debug("tunnel to %s open through %s", hub.authority, where)

        if hub.tls:
            # TLS to the hub, verified for the hub's name, inside the tunnel.
            assert self.ssl_context is not None
            tls = await self._tls(
                self.stream, self.ssl_context, hub.host, f"the hub at {hub.authority}"
            )
            self.stream = tls
            if self.pin_sha256 is not None:
                self._check_pin(tls.getpeercert(binary_form=True))
        else:
            self.stream = _net_stream(self.stream, None, None) or self.stream
        return self.stream

    async def _tls(
        self, stream: trio.abc.Stream, context: ssl.SSLContext, host: str, who: str
    ) -> NetStream | trio.SSLStream[trio.abc.Stream]:
        self.step = f"during the TLS handshake with {who}"
        tls: NetStream | trio.SSLStream[trio.abc.Stream] | None
        tls = _net_stream(stream, context, host)
        if tls is None:
            # https_compatible: peers that close without close_notify are
            # common (NetStream treats them alike).
            tls = trio.SSLStream(
                stream, context, server_hostname=host, https_compatible=True
            )
        self.stream = tls
        with _translate(f"TLS handshake with {who} failed"):
            await tls.do_handshake()
        return tls

    def _check_pin(self, certificate: bytes | None) -> None:
        assert self.pin_sha256 is not None
        try:
            if certificate is None:
                raise ValueError("no certificate")
            matches = pin_matches(certificate, self.pin_sha256)
        except ValueError as exc:
            raise HubConnectError(
                f"cannot read the public key of the hub's certificate: {exc}",
                permanent=True,
            ) from exc
        if not matches:
            raise HubConnectError(
                f"the hub's certificate at {self.hub.authority} does not match the "
                "configured public key pin",
                permanent=True,
            )


def _net_stream(
    stream: trio.abc.Stream, context: ssl.SSLContext | None, host: str | None
) -> NetStream | None:
    """``stream`` as a NetStream (TLS with ``context``), when it is plain TCP
    or a tunnel over plain TCP; None when it is anything else."""
    from ._proxy import _TunnelStream

    received = b""
    if isinstance(stream, _TunnelStream):
        detached = stream.detach()
        if detached is None:
            return None
        stream, received = detached
    if not isinstance(stream, trio.SocketStream):
        return None
    return NetStream(
        stream, ssl_context=context, server_hostname=host, received=received
    )


@contextmanager
def _translate(what: str) -> Iterator[None]:
    """Turn the errors of sockets, TLS and h11 into HubConnectError."""
    try:
        yield
    except HubConnectError:
        raise
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        verification = _find_cause(exc, ssl.SSLCertVerificationError)
        raise HubConnectError(
            f"{what}: {_reason(exc)}", permanent=verification is not None
        ) from exc
    except h11.ProtocolError as exc:
        # h11's message may quote the proxy's bytes; it stays in the chain.
        raise HubConnectError(f"{what}: malformed HTTP response") from exc


def _find_cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _reason(exc: BaseException) -> str:
    """A short, one-line account of a low-level error."""
    # trio reports TLS failures as BrokenResourceError caused by the SSLError.
    detail = _find_cause(exc, ssl.SSLError) or exc
    if isinstance(detail, ssl.SSLCertVerificationError) and detail.verify_message:
        text = f"certificate verification failed: {detail.verify_message}"
    elif isinstance(detail, ssl.SSLError) and detail.reason:
        text = detail.reason.replace("_", " ").lower()
    elif isinstance(detail, OSError) and isinstance(detail.__cause__, ExceptionGroup):
        # trio's "all attempts to connect failed" hides each attempt's errno.
        errors = [_os_reason(e) for e in detail.__cause__.exceptions]
        text = "; ".join(dict.fromkeys(errors)) or str(detail)
    elif isinstance(detail, OSError):
        text = _os_reason(detail)
    elif isinstance(exc, trio.BrokenResourceError) and not str(exc):
        text = "the connection was closed"
    else:
        text = str(detail) or type(detail).__name__
    return " ".join(text.split())


def _os_reason(exc: BaseException) -> str:
    # trio's strerror repeats the address ("Error connecting to (...): ..."),
    # which the message already names; the errno's own text is enough.
    if not isinstance(exc, OSError):
        return str(exc) or type(exc).__name__
    if exc.errno and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno)
    if exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------
# The websocket


async def open_hub_websocket(
    nursery: trio.Nursery | None,
    stream: trio.abc.Stream,
    hub_url: str,
    *,
    max_message_size: int,
    receive_buffer_size: int,
    handshake_timeout: float = 15.0,
) -> WebSocket:
    """Run the websocket opening handshake over ``stream``; return the socket.

    ``stream`` comes from :func:`open_hub_stream`; this function owns it from
    now on: on failure it is closed, on success the websocket closes it.
    ``nursery`` is no longer used (the websocket has no task of its own) and
    is kept for callers written against the earlier signature. Close the
    websocket with ``await ws.aclose()`` in a ``finally``: that also closes
    the stream, even when cancelled. ``receive_buffer_size`` is the size of
    each read from the stream.

    Raises :class:`HubConnectError` when the hub refuses the upgrade (4xx
    other than 408 and 429 are permanent), hangs up during the handshake or
    does not answer within ``handshake_timeout`` seconds.
    """
    hub = _parse_hub_url(hub_url)
    where = f"the hub at {hub.authority}"
    try:
        ws = await connect(
            stream,
            hub.host_header,
            hub.resource,
            max_message_size=max_message_size,
            timeout=handshake_timeout,
            receive_size=receive_buffer_size,
        )
    except UpgradeFailed as exc:
        await trio.aclose_forcefully(stream)
        status = exc.status_code
        if exc.kind == "timeout":
            raise HubConnectError(
                f"{where} did not complete the websocket handshake "
                f"within {handshake_timeout:g} s"
            ) from exc.__cause__
        if status is not None:
            raise HubConnectError(
                f"{where} refused the websocket upgrade of {hub.resource}: "
                f"HTTP {status}",
                permanent=400 <= status < 500 and status not in (408, 429),
            ) from exc
        if exc.kind == "closed":
            raise HubConnectError(
                f"{where} closed the connection during the websocket handshake"
            ) from exc
        raise HubConnectError(
            f"{where} sent an invalid answer to the websocket upgrade"
        ) from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    logger.debug("websocket to %s%s open", hub.authority, hub.resource)
    return ws


def __getattr__(name: str) -> Any:
    # ._proxy builds on this module (HubConnectError, _authority,
    # _translate), so it is loaded on first use; the name stays importable
    # from here as it was before the split.
    if name == "_parse_proxy_url":
        from . import _proxy

        return _proxy._parse_proxy_url
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
