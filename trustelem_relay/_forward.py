"""Forwarding: perform one relayed request against a declared target.

Theory of operation
-------------------
The runtime hands :func:`forward` a request that the target policy has
already accepted: the target (a declared name, address and TLS settings), the
request head as the hub sent it, the request body (whole, or a
:class:`RequestBody` of known length whose bytes are still arriving), and a
sink that carries the answer back towards the hub. :func:`forward` opens a connection
to the target (or reuses one from a :class:`ConnectionPool`), speaks HTTP/1.1
over it with h11 and streams the answer into the sink. It returns normally
once the whole response body has been handed to the sink; every failure is a
:class:`~trustelem_relay.RequestError` that says whether the target may have
seen the request.

Where the code is
~~~~~~~~~~~~~~~~~
This module holds the entry point, the exchange's state and its clock (the
phases and the one cancel scope), and runs the exchange. Sending the
request, from the checks made before dialling to its last byte written, is
:mod:`._forward_send`; receiving the response is :mod:`._forward_receive`.
The head rules, the TLS contexts with the pin and the pool of kept
connections are :mod:`._forward_http`, :mod:`._forward_tls` and
:mod:`._forward_pool`.

Send the request
~~~~~~~~~~~~~~~~
1. Refuse what can be refused before the network is touched: a body or an
   encoded head over its limit, a head that breaks the HTTP grammar, a CA
   file that cannot be loaded. Nothing is dialled for these.
2. Build the outgoing head ourselves (:mod:`._forward_http`), because h11 as a
   client sends whatever framing it is given: hop-by-hop headers out, then
   ``Host`` from the URL's authority, exactly one ``Content-Length`` and
   ``Connection: close`` unless a pool keeps the connection. The head is
   laid out as h11 would write it, once; h11, when it reads the answer, is
   told only what its state machine acts on (the method and ``Connection:
   close``, see :func:`._forward_http.announcement`), so that it reads the
   answer right and knows whether the connection may be kept.
3. Dial the target's declared ``host:port`` and nothing else. The URL's host
   only goes into ``Host``, into SNI and into the certificate check.
4. For ``https``, run the TLS handshake, verifying the certificate for the
   URL's host (or the target's ``server_name``), then compare the SPKI pin if
   one is set (:mod:`._forward_tls`). Only then write the request: whole,
   or for a streamed body the head with the body's first bytes once they
   are there, then the rest as it comes. The send limit counts the time
   spent writing; the waits for the body count against the deadline only.

Receive the response
~~~~~~~~~~~~~~~~~~~~
A plain answer (HTTP/1.1, a final status, one ``Content-Length``, the whole
head in the first read, nothing h11 would read differently; see
:func:`._forward_http.plain_response_head`) is read without h11: its head
is checked against the same limits and relayed, and its body read as below.
Anything else goes to h11: feed it what the target sends and act on its
events. Informational (1xx)
responses are skipped. The final response's status, reason and headers go to
``sink.send_head`` without hop-by-hop and framing headers (the relay frames
the body itself). Body bytes go to ``sink.send_data`` as they were read, at
most 256 KiB at a time, counted against the response limit; the end of the
message ends the call. A body framed by ``Content-Length`` alone is read
past h11 once the head is parsed, in reads of up to 256 KiB (h11 would copy
every chunk into its buffer and out again); the head (h11's view of it, or
the plain head's ``Connection``) still decides whether the connection may
be kept. A head or a body (declared or
counted) over its limit is :class:`~trustelem_relay.ResponseTooLarge`;
anything h11 cannot parse, or a close before the end, is
:class:`~trustelem_relay.BadGateway`.

Time
~~~~
Each phase has its own limit (connect, TLS, send, first byte, gap between
reads) and the whole exchange has a deadline: the smaller of the hub's
``timeout`` and the target's. One cancel scope inside this function carries
both: its deadline is the request's, moved earlier to the end of each phase
as the phase starts, and back before the sink is called (the sink's waits
count against the deadline only). The exchange remembers which phase set
the deadline, so a timeout names the limit that ran out (the deadline, when
both run out at once) and is classified by what was done: before the first
byte of the request was written it is
:class:`~trustelem_relay.TimeoutBeforeSending` (safe to retry), afterwards
:class:`~trustelem_relay.TimeoutAfterSending`. The request counts as written
from the moment its bytes are handed to the socket: when in doubt, say the
target may have seen it. A phase whose operation completes only once its
limit has passed is not forgiven: trio delivers the cancellation at the next
checkpoint, and the error names that phase. A cancellation from outside is
not translated; the connection is closed on the way out.

Deliberately not done
~~~~~~~~~~~~~~~~~~~~~
Redirects are relayed, never followed. Nothing is retried, not even on a
kept-alive connection that the target closed just as it was reused. There is
no ``Via`` or ``X-Forwarded-*`` header, no HTTP/2, no ``Upgrade`` and no
``Expect: 100-continue`` (the body is sent at once, or as it arrives).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Callable
from typing import Protocol

import attrs
import h11
import trio

from ._errors import RequestError, TimeoutAfterSending, TimeoutBeforeSending
from ._events import RequestHead, ResponseHead
from ._forward_pool import ConnectionPool
from ._forward_receive import BODY_READ_SIZE, CHUNK_SIZE, can_reuse, receive
from ._forward_send import (
    close_stream,
    encode_request,
    open_stream,
    send,
    server_hostname,
    ssl_context,
)
from ._policy import Target

__all__ = [
    "BODY_READ_SIZE",
    "CHUNK_SIZE",
    "ConnectionPool",
    "ForwardLimits",
    "RequestBody",
    "ResponseSink",
    "forward",
]

log = logging.getLogger("trustelem_relay.forward")


@attrs.frozen
class ForwardLimits:
    """Size and time limits for one forwarded request.

    Sizes are bytes, times are seconds. The time limits apply per phase; the
    request's overall deadline (the smaller of the hub's ``timeout`` and the
    target's) applies on top of them.
    """

    #: Largest request body; a larger one is refused before dialling.
    max_request_body: int = 1 << 20
    #: Largest encoded request head (request line and headers).
    max_request_head: int = 16 << 10
    #: Largest response body, counted as it arrives.
    max_response_body: int = 16 << 20
    #: Largest response head (status line and headers).
    max_response_head: int = 16 << 10
    #: From the DNS lookup until the TCP connection is up.
    connect_timeout: float = 10.0
    #: The TLS handshake, certificate checks included.
    tls_timeout: float = 10.0
    #: Writing the whole request.
    send_timeout: float = 30.0
    #: From the end of the request until the first byte of the response.
    first_byte_timeout: float = 55.0
    #: Largest gap between two reads once the response has started.
    body_idle_timeout: float = 30.0


_DEFAULT_LIMITS = ForwardLimits()


class RequestBody(Protocol):
    """A request body that is still arriving while it is forwarded.

    ``length`` is exactly how many bytes ``receive`` will return in all;
    the forwarder writes it as the request's ``Content-Length``.
    """

    @property
    def length(self) -> int:
        """The body's length, known before its bytes."""

    async def receive(self) -> bytes:
        """The next bytes of the body, ``b""`` after the last.

        A call says that what the previous one returned has been written.
        Raises a :class:`~trustelem_relay.RequestError` when the body
        cannot be completed; the forwarder decides whether the target may
        have seen the request.
        """


class ResponseSink(Protocol):
    """Where :func:`forward` delivers the target's answer.

    ``send_head`` is called once, then ``send_data`` zero or more times with
    the body bytes of one read each, at most :data:`BODY_READ_SIZE` (the
    sink cuts them into its frames). The body is complete when
    :func:`forward` returns normally; if it raises instead, the answer is
    incomplete and must be abandoned.
    """

    async def send_head(self, head: ResponseHead) -> None:
        """Relay the status line and headers."""

    async def send_data(self, data: bytes) -> None:
        """Relay the bytes of one read; may block until the receiver has room."""


async def forward(
    target: Target,
    head: RequestHead,
    body: bytes | RequestBody,
    sink: ResponseSink,
    *,
    limits: ForwardLimits = _DEFAULT_LIMITS,
    request_id: str = "-",
    ssl_context_factory: Callable[[Target], ssl.SSLContext] | None = None,
    pool: ConnectionPool | None = None,
) -> None:
    """Perform one request against *target* and stream the answer to *sink*.

    The caller has already checked the request against the target's policy.
    *body* is the whole body, or a :class:`RequestBody` whose bytes are
    written to the target as they come.
    ``ssl_context_factory``, when given, replaces the built-in (cached)
    construction of the SSL context; hostname checking and the SPKI pin still
    follow the target's settings. With a *pool*, the connection is kept
    alive and reused by later requests to the same destination; without one,
    each request opens and closes its own.

    Raises a :class:`~trustelem_relay.RequestError` subclass on any failure
    (see ``docs/forwarding.md`` for the mapping); a cancellation from outside
    propagates unchanged after the connection is closed.
    """
    exchange = _Exchange(target, head, sink, limits, request_id)

    # Everything that can be refused is refused here, before any DNS lookup.
    wire = encode_request(exchange, body, keep_alive=pool is not None)
    context = ssl_context(exchange, ssl_context_factory) if exchange.tls else None

    timeout = (
        target.timeout if head.timeout is None else min(head.timeout, target.timeout)
    )
    # One scope for the whole exchange: the deadline, lowered to the end of
    # each phase while that phase runs (see _Exchange.start_phase).
    exchange.deadline = trio.current_time() + max(timeout, 0.0)
    with trio.CancelScope(deadline=exchange.deadline) as scope:
        exchange.scope = scope
        await exchange.run(wire, context, pool)
    if scope.cancelled_caught:
        raise exchange.timed_out(timeout)


# --------------------------------------------------------------------------
# One exchange


class _Exchange:
    """The state of one request: its target, its phase and its h11 machine.

    The functions of :mod:`._forward_send` and :mod:`._forward_receive` act
    on it; :meth:`run` calls them in turn.
    """

    #: The one cancel scope of the exchange. Its deadline is the request's
    #: deadline, or the end of the phase under way if that comes first.
    scope: trio.CancelScope

    def __init__(
        self,
        target: Target,
        head: RequestHead,
        sink: ResponseSink,
        limits: ForwardLimits,
        request_id: str,
    ) -> None:
        self.target = target
        self.head = head
        self.sink = sink
        self.limits = limits
        self.request_id = request_id
        self.tls = head.scheme == "https"
        # Set the moment request bytes are handed to the socket, and never
        # cleared: from then on every failure may have reached the target.
        self.wrote_request = False
        # A body still arriving, written after the head as it comes.
        self.streamed: RequestBody | None = None
        # Whether the request lets the connection be kept (no close asked).
        self.keep_alive = False
        # Once the relay read a body by its Content-Length itself (past
        # h11, or with no h11 at all): whether nothing followed it.
        self.nothing_after_body: bool | None = None
        # h11's machine, made only for an answer that is not plain
        # (_forward_receive); a plain one's head says if it lets us keep
        # the connection.
        self.h11: h11.Connection | None = None
        self.plain_keep_alive = False
        # The request's deadline; set, with the scope, when the clock starts.
        self.deadline = math.inf
        # The latest phase, its limit and when it runs out; no name before
        # the first phase, nor once a phase ends early. A phase whose end is
        # not before the deadline does not bound anything.
        self.phase: str | None = None
        self.phase_limit = 0.0
        self.phase_end = math.inf

    def fail(self, cls: type[RequestError], message: str) -> RequestError:
        """An error of *cls* about this request, reached-flag from the phase."""
        return cls(
            message,
            may_have_reached_target=self.wrote_request,
            request_id=self.request_id,
        )

    def timeout(self, message: str) -> RequestError:
        """The timeout error that fits the phase we are in."""
        if self.wrote_request:
            return self.fail(TimeoutAfterSending, message)
        return self.fail(TimeoutBeforeSending, message)

    def start_phase(
        self, what: str, seconds: float, *, limit: float | None = None
    ) -> None:
        """Bound what follows by *seconds* as well, until the next phase.

        *limit*, when given, is the phase's whole limit as a timeout names
        it: *seconds* is then what is left of it (a phase in several parts).
        """
        scope = self.scope
        now = trio.current_time()
        if now >= scope.deadline:
            # The bound in force ran out just as its operation completed: the
            # cancellation comes at the next checkpoint, and must name it.
            return
        end = now + seconds
        self.phase, self.phase_end = what, end
        self.phase_limit = seconds if limit is None else limit
        bound = min(end, self.deadline)
        if bound != scope.deadline:
            # Moving a deadline costs trio some work; often it is unchanged.
            scope.deadline = bound

    def end_phase(self) -> None:
        """Bound what follows by the request's deadline alone."""
        scope = self.scope
        if scope.deadline < self.deadline and trio.current_time() < scope.deadline:
            self.phase = None
            scope.deadline = self.deadline

    def timed_out(self, seconds: float) -> RequestError:
        """Translate the end of the scope: a phase's limit, or the deadline.

        When both run out at once the deadline is named, as it would be by
        two nested scopes (the outer one catches the cancellation).
        """
        if self.phase is not None and self.phase_end < self.deadline:
            return self.timeout(f"{self.phase} took longer than {self.phase_limit:g} s")
        return self.timeout(f"the request's deadline of {seconds:g} s passed")

    async def run(
        self,
        wire: list[bytes],
        context: ssl.SSLContext | None,
        pool: ConnectionPool | None,
    ) -> None:
        """Connect (or reuse), send and receive; then close or keep the line."""
        # What a pooled connection was made for: the declaration it obeyed,
        # and for TLS the context and the name its certificate was checked for.
        name = server_hostname(self) if context is not None else None
        key = (self.target, self.head.scheme, name, context)
        stream = await pool.take(key) if pool is not None else None
        try:
            if stream is None:
                stream = await open_stream(self, context)
            else:
                log.debug("[%s] reusing a kept-alive connection", self.request_id)
            await send(self, stream, wire)
            await receive(self, stream)
        except BaseException:
            if stream is not None:
                await close_stream(stream)
            raise
        # pool.put does not block (what it drops, it closes shielded), so a
        # kept connection needs no guard against a cancellation here.
        if pool is not None and can_reuse(self):
            await pool.put(key, stream)
        else:
            await close_stream(stream)
