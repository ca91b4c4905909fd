"""Forwarding, the way there: encode the request, connect, secure, write.

Theory of operation
-------------------
This module owns everything the forwarder does before the target answers.
:func:`encode_request` and :func:`ssl_context` run before any DNS lookup and
refuse what can be refused without the network: a body or head over its
limit, a head :mod:`._forward_http` will not write, a CA file that does not
load. The encoded head is the relay's own; h11 only hears of the request
through :func:`._forward_http.announcement`, enough for it to read the
answer, and only when the answer is not plain.

:func:`open_stream` dials the target's declared address (never the URL's
host) and, for ``https``, wraps the socket in TLS, checking the certificate
for :func:`server_hostname` and then the SPKI pin (:mod:`._forward_tls`).
:func:`send` writes the request, whole or as a streamed body's bytes arrive;
the exchange counts it as written from the first byte handed to the socket.
On a plain connection the request (the head, with a streamed body's first
bytes), and then each later piece of a streamed body, is handed to the
socket at once, without trio's ``send_all``, which yields after every
write; only what the kernel does not take waits, under the send limit.

Each step opens its phase on the exchange's clock (connect, TLS, send) and
waits for the hub's body bytes outside of any phase. Failures become this
request's errors here: :class:`~trustelem_relay.TargetUnreachable`,
:class:`~trustelem_relay.TLSFailure` with a reason from :func:`_describe`
that quotes no secret, or :class:`~trustelem_relay.BadGateway` when the
connection breaks while writing. :func:`close_stream` is how every
connection of the forwarder is closed, cancelled or not.

The state is the exchange's (:class:`._forward._Exchange`); the functions
here act on it and keep none of their own.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import h11
import trio

from ._errors import (
    BadGateway,
    RequestError,
    RequestTooLarge,
    StreamProtocolError,
    TargetUnreachable,
    TLSFailure,
)
from ._forward_http import (
    announcement,
    encode_request_head,
    host_of,
    request_headers,
)
from ._forward_receive import CHUNK_SIZE
from ._forward_tls import client_context, pin_matches
from ._policy import Target

if TYPE_CHECKING:
    from ._forward import RequestBody, _Exchange

__all__ = [
    "close_stream",
    "encode_request",
    "open_stream",
    "send",
    "server_hostname",
    "ssl_context",
]

log = logging.getLogger("trustelem_relay.forward")

#: How long closing the target's connection may take once we are cancelled.
_CLOSE_GRACE = 1.0


# --------------------------------------------------------------------------
# Check and encode the request (no I/O)


def encode_request(
    exchange: _Exchange, body: bytes | RequestBody, *, keep_alive: bool
) -> list[bytes]:
    """Check the request and return its bytes in the pieces to write: a
    large body is not copied behind the head. A streamed body is not
    among them: :func:`send` writes it as it comes."""
    head = exchange.head
    limits = exchange.limits
    if isinstance(body, bytes):
        length = len(body)
    else:
        exchange.streamed, length, body = body, body.length, b""
    if length > limits.max_request_body:
        raise exchange.fail(
            RequestTooLarge,
            f"the request body has {length} bytes, over the limit of "
            f"{limits.max_request_body}; nothing was sent",
        )
    try:
        headers = request_headers(head, length, keep_alive=keep_alive)
    except ValueError as exc:
        raise _invalid(exchange, str(exc)) from exc
    encoded = encode_request_head(head.method, head.path, headers)
    if len(encoded) > limits.max_request_head:
        raise exchange.fail(
            RequestTooLarge,
            f"the request head is over the limit of "
            f"{limits.max_request_head} bytes; nothing was sent",
        )
    try:
        # Built (once per method) before anything is sent; h11 hears of
        # it only if the answer is not plain (_forward_receive).
        announcement(head.method, keep_alive=keep_alive)
    except h11.LocalProtocolError as exc:
        # request_headers checked the method as h11 does: a backstop.
        raise exchange.fail(
            StreamProtocolError, "the request is not valid HTTP/1.1"
        ) from exc
    exchange.keep_alive = keep_alive
    if len(body) <= CHUNK_SIZE:
        return [encoded + body]
    return [encoded, body]


def _invalid(exchange: _Exchange, reason: str) -> RequestError:
    """The hub asked for a request that cannot be written as HTTP/1.1."""
    return exchange.fail(StreamProtocolError, f"refused to forward: {reason}")


# --------------------------------------------------------------------------
# Connect and secure


def ssl_context(
    exchange: _Exchange, factory: Callable[[Target], ssl.SSLContext] | None
) -> ssl.SSLContext:
    """The context for this target, from *factory* or from the cache."""
    settings = exchange.target.tls
    if not settings.verify:
        log.warning(
            "[%s] TLS certificate verification is disabled for "
            "target %r; the connection is encrypted but the server is not "
            "authenticated",
            exchange.request_id,
            exchange.target.name,
        )
    if factory is not None:
        return factory(exchange.target)
    try:
        return client_context(settings.verify, settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise exchange.fail(
            TLSFailure,
            f"could not load the CA file {settings.ca_file} of target "
            f"{exchange.target.name!r}: {_describe(exc)}; check the target's "
            "ca_file setting",
        ) from exc


async def open_stream(
    exchange: _Exchange, context: ssl.SSLContext | None
) -> trio.abc.Stream:
    """A new connection to the target, secured when *context* is given."""
    tcp = await _connect(exchange)
    if context is None:
        return tcp
    try:
        # https_compatible: servers often close without close_notify, and
        # h11 knows from the framing where the body ends.
        tls = trio.SSLStream(
            tcp,
            context,
            server_hostname=server_hostname(exchange),
            https_compatible=True,
        )
        await _handshake(exchange, tls)
    except BaseException:
        # The TLS layer holds nothing but the socket, which must not leak.
        await close_stream(tcp)
        raise
    return tls


async def _connect(exchange: _Exchange) -> trio.SocketStream:
    """Open TCP to the declared address (never the URL's host)."""
    target = exchange.target
    log.debug(
        "[%s] connecting to target %r at %s:%d",
        exchange.request_id,
        target.name,
        target.host,
        target.port,
    )
    exchange.start_phase("connecting", exchange.limits.connect_timeout)
    try:
        return await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        raise exchange.fail(
            TargetUnreachable,
            f"could not connect to target {target.name!r} at "
            f"{target.host}:{target.port}: {_describe(exc)}; check that the "
            "service is running and that the declared address is right",
        ) from exc


def server_hostname(exchange: _Exchange) -> str:
    """The name the certificate must match: configured, or the URL's."""
    configured: str | None = exchange.target.tls.server_name
    return configured or host_of(exchange.head.authority)


async def _handshake(
    exchange: _Exchange, stream: trio.SSLStream[trio.SocketStream]
) -> None:
    """Run the TLS handshake, then check the pin if the target has one."""
    name = exchange.target.name
    exchange.start_phase("the TLS handshake", exchange.limits.tls_timeout)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        raise exchange.fail(
            TLSFailure,
            f"the TLS handshake with target {name!r} failed: "
            f"{_describe(exc.__cause__)}; check the server's certificate "
            "and the target's CA file and server name",
        ) from exc

    pin: bytes | None = exchange.target.tls.pin_sha256
    if pin is None:
        return
    try:
        matches = pin_matches(stream.getpeercert(binary_form=True) or b"", pin)
    except ValueError as exc:
        raise exchange.fail(
            TLSFailure, f"could not read the certificate of target {name!r}"
        ) from exc
    if not matches:
        raise exchange.fail(
            TLSFailure,
            f"the public key of target {name!r} does not match its "
            "pin_sha256; the server's key changed, or this is another server",
        )


# --------------------------------------------------------------------------
# Write the request


async def send(exchange: _Exchange, stream: trio.abc.Stream, wire: list[bytes]) -> None:
    """Write the whole request; from here on the target may have it."""
    body = exchange.streamed
    if body is not None:
        # Nothing is written before the body starts: one that never
        # comes leaves the target untouched (a timeout before sending),
        # and its first bytes leave with the head. The wait counts
        # against the deadline only, not the connect or TLS limits.
        exchange.end_phase()
        first = await _next_piece(exchange, body)
        small = len(first) <= CHUNK_SIZE
        wire = [wire[0] + first] if small else [wire[0], first]
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "[%s] sending %s (%d bytes) to target %r",
            exchange.request_id,
            exchange.head.method,
            sum(map(len, wire)) if body is None else body.length,
            exchange.target.name,
        )
    # Counted as written before the call: a partial write cannot be told
    # from a complete one, and a false "may have reached" is the safe side.
    exchange.wrote_request = True
    spent = await _write_pieces(exchange, stream, wire, 0.0)
    if body is not None:
        await _send_rest(exchange, stream, body, spent)


async def _send_rest(
    exchange: _Exchange, stream: trio.abc.Stream, body: RequestBody, spent: float
) -> None:
    """Write a streamed body's bytes as they come, until its end.

    The send limit bounds the time spent writing (*spent* so far), as
    for a whole body; the waits for the hub's bytes count against the
    request's deadline only, as the wait for a whole body did.
    """
    while True:
        exchange.end_phase()
        piece = await _next_piece(exchange, body)
        if not piece:
            return
        spent = await _write_pieces(exchange, stream, [piece], spent)


async def _write_pieces(
    exchange: _Exchange, stream: trio.abc.Stream, pieces: list[bytes], spent: float
) -> float:
    """Write *pieces*; return the send limit's time spent, *spent* before.

    What the kernel takes at once spends nothing; only what it leaves
    opens the send phase, with what is left of the limit.
    """
    rest = await _write_at_once(exchange, stream, pieces)
    if not rest:
        return spent
    limit = exchange.limits.send_timeout
    began = trio.current_time()
    exchange.start_phase("sending the request", limit - spent, limit=limit)
    for part in rest:
        await _write(exchange, stream, part)
    return spent + trio.current_time() - began


async def _next_piece(exchange: _Exchange, body: RequestBody) -> bytes:
    """The next bytes of a streamed body, its errors made this request's."""
    try:
        return await body.receive()
    except RequestError as exc:
        exc.may_have_reached_target = exchange.wrote_request
        exc.request_id = exc.request_id or exchange.request_id
        raise


async def _write_at_once(
    exchange: _Exchange, stream: trio.abc.Stream, wire: list[bytes]
) -> list[bytes | memoryview]:
    """Hand request bytes to a plain socket now; return what it did not take.

    trio's ``send_all`` yields to the scheduler after every write, however
    small, and goes through a wrapper per call; bytes that the kernel
    takes whole (a small request's always are) need neither, nor the send
    phase's deadline: nothing waits. What is left, and every write on a
    TLS stream, goes through ``send_all`` under the send limit. A
    cancelled exchange writes nothing, as with ``send_all``.
    """
    if type(stream) is not trio.SocketStream:
        return list(wire)
    await trio.lowlevel.checkpoint_if_cancelled()
    fd = stream.socket.fileno()
    for index, piece in enumerate(wire):
        try:
            sent = os.write(fd, piece)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _broken_while_sending(exchange) from exc
        if sent < len(piece):
            return [memoryview(piece)[sent:], *wire[index + 1 :]]
    return []


async def _write(
    exchange: _Exchange, stream: trio.abc.Stream, data: bytes | memoryview
) -> None:
    """Write request bytes, a broken connection made a BadGateway."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, OSError) as exc:
        raise _broken_while_sending(exchange) from exc


def _broken_while_sending(exchange: _Exchange) -> RequestError:
    return exchange.fail(
        BadGateway,
        f"target {exchange.target.name!r} closed the connection while the "
        "request was being sent",
    )


# --------------------------------------------------------------------------
# Helpers


async def close_stream(stream: trio.abc.Stream) -> None:
    """Close *stream*, even if our caller is being cancelled, within a bound.

    Shielded so that a cancelled request still releases its socket, bounded
    so that a stuck peer cannot hold us here.
    """
    with trio.move_on_after(_CLOSE_GRACE, shield=True):
        await stream.aclose()


def _describe(exc: BaseException | None) -> str:
    """A short, secret-free reason for a socket or TLS error."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError):
        # open_tcp_stream reports every attempt in a group under its cause.
        cause = exc.__cause__
        if exc.strerror is None and isinstance(cause, BaseExceptionGroup):
            return "; ".join(_describe(e) for e in cause.exceptions)
        return exc.strerror or str(exc)
    if exc is None:
        return "the connection was closed during the handshake"
    return type(exc).__name__
