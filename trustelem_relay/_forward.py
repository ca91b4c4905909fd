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

Send the request
~~~~~~~~~~~~~~~~
1. Refuse what can be refused before the network is touched: a body or an
   encoded head over its limit, a head that breaks the HTTP grammar, a CA
   file that cannot be loaded. Nothing is dialled for these.
2. Build the outgoing head ourselves (:mod:`._forward_http`), because h11 as a
   client sends whatever framing it is given: hop-by-hop headers out, then
   ``Host`` from the URL's authority, exactly one ``Content-Length`` and
   ``Connection: close`` unless a pool keeps the connection. The head is
   laid out as h11 would write it, once; h11 is told only what its state
   machine acts on (the method and ``Connection: close``, see
   :func:`_announcement`), so that it reads the answer right and knows
   whether the connection may be kept.
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
Feed what the target sends to h11 and act on its events. Informational (1xx)
responses are skipped. The final response's status, reason and headers go to
``sink.send_head`` without hop-by-hop and framing headers (the relay frames
the body itself). Body bytes go to ``sink.send_data`` in chunks of at most
64 KiB, counted against the response limit; the end of the message ends the
call. A body framed by ``Content-Length`` alone is read past h11 once the
head is parsed, in reads of up to 256 KiB (h11 would copy every chunk into
its buffer and out again); h11's view of the head still decides
whether the connection may be kept. A head or a body (declared or
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

import functools
import logging
import math
import ssl
from collections.abc import Callable
from typing import Protocol

import attrs
import h11
import trio

from ._errors import (
    BadGateway,
    RequestError,
    RequestTooLarge,
    ResponseTooLarge,
    StreamProtocolError,
    TargetUnreachable,
    TimeoutAfterSending,
    TimeoutBeforeSending,
    TLSFailure,
)
from ._events import RequestHead, ResponseHead
from ._forward_http import (
    content_length,
    encode_request_head,
    host_of,
    relayed_response_headers,
    request_headers,
)
from ._forward_pool import ConnectionPool
from ._forward_tls import client_context, pin_matches
from ._policy import Target

__all__ = [
    "CHUNK_SIZE",
    "ConnectionPool",
    "ForwardLimits",
    "RequestBody",
    "ResponseSink",
    "forward",
]

log = logging.getLogger("trustelem_relay.forward")

#: Largest piece handed to ``sink.send_data`` (one DATA frame's worth), and
#: the size of each read that goes to h11. Larger ones cost h11 more than
#: they save: it copies them into its buffer and out again, and buffers
#: past 128 KiB are mapped and faulted in afresh by the allocator.
CHUNK_SIZE = 64 * 1024

#: The size of each read of a body read past h11 (a stream window's worth).
#: Each read yields to the scheduler, and the link's writer then sends the
#: frames sealed meanwhile in one write: four frames per write instead of
#: one, and as many fewer wake-ups of the hub (docs/performance.md).
BODY_READ_SIZE = 4 * CHUNK_SIZE

#: How long closing the target's connection may take once we are cancelled.
_CLOSE_GRACE = 1.0


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
    chunks of at most :data:`CHUNK_SIZE` bytes. The body is complete when
    :func:`forward` returns normally; if it raises instead, the answer is
    incomplete and must be abandoned.
    """

    async def send_head(self, head: ResponseHead) -> None:
        """Relay the status line and headers."""

    async def send_data(self, data: bytes) -> None:
        """Relay one body chunk; may block until the receiver has room."""


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
    wire = exchange.encode_request(body, keep_alive=pool is not None)
    context = exchange.ssl_context(ssl_context_factory) if exchange.tls else None

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
    """The state of one request: its target, its phase and its h11 machine."""

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
        # Once a body was read past h11: whether nothing followed it.
        self.read_past_h11: bool | None = None
        self.h11 = h11.Connection(
            our_role=h11.CLIENT, max_incomplete_event_size=limits.max_response_head
        )
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

    # ------------------------------------------------------------------
    # Send the request

    def encode_request(
        self, body: bytes | RequestBody, *, keep_alive: bool
    ) -> list[bytes]:
        """Check the request and return its bytes in the pieces to write: a
        large body is not copied behind the head. A streamed body is not
        among them: :meth:`send` writes it as it comes."""
        head = self.head
        limits = self.limits
        if isinstance(body, bytes):
            length = len(body)
        else:
            self.streamed, length, body = body, body.length, b""
        if length > limits.max_request_body:
            raise self.fail(
                RequestTooLarge,
                f"the request body has {length} bytes, over the limit of "
                f"{limits.max_request_body}; nothing was sent",
            )
        try:
            headers = request_headers(head, length, keep_alive=keep_alive)
        except ValueError as exc:
            raise self.invalid(str(exc)) from exc
        encoded = encode_request_head(head.method, head.path, headers)
        if len(encoded) > limits.max_request_head:
            raise self.fail(
                RequestTooLarge,
                f"the request head is over the limit of "
                f"{limits.max_request_head} bytes; nothing was sent",
            )
        try:
            self.h11.send(_announcement(head.method, keep_alive=keep_alive))
            self.h11.send(_END_OF_MESSAGE)
        except h11.LocalProtocolError as exc:
            # request_headers checked the method as h11 does: a backstop.
            raise self.fail(
                StreamProtocolError, "the request is not valid HTTP/1.1"
            ) from exc
        if len(body) <= CHUNK_SIZE:
            return [encoded + body]
        return [encoded, body]

    def invalid(self, reason: str) -> RequestError:
        """The hub asked for a request that cannot be written as HTTP/1.1."""
        return self.fail(StreamProtocolError, f"refused to forward: {reason}")

    def ssl_context(
        self, factory: Callable[[Target], ssl.SSLContext] | None
    ) -> ssl.SSLContext:
        """The context for this target, from *factory* or from the cache."""
        settings = self.target.tls
        if not settings.verify:
            log.warning(
                "[%s] TLS certificate verification is disabled for "
                "target %r; the connection is encrypted but the server is not "
                "authenticated",
                self.request_id,
                self.target.name,
            )
        if factory is not None:
            return factory(self.target)
        try:
            return client_context(settings.verify, settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise self.fail(
                TLSFailure,
                f"could not load the CA file {settings.ca_file} of target "
                f"{self.target.name!r}: {_describe(exc)}; check the target's "
                "ca_file setting",
            ) from exc

    async def run(
        self,
        wire: list[bytes],
        context: ssl.SSLContext | None,
        pool: ConnectionPool | None,
    ) -> None:
        """Connect (or reuse), send and receive; then close or keep the line."""
        # What a pooled connection was made for: the declaration it obeyed,
        # and for TLS the context and the name its certificate was checked for.
        name = self.server_hostname() if context is not None else None
        key = (self.target, self.head.scheme, name, context)
        stream = await pool.take(key) if pool is not None else None
        try:
            if stream is None:
                stream = await self.open(context)
            else:
                log.debug("[%s] reusing a kept-alive connection", self.request_id)
            await self.send(stream, wire)
            await self.receive(stream)
        except BaseException:
            if stream is not None:
                await _close(stream)
            raise
        # pool.put does not block (what it drops, it closes shielded), so a
        # kept connection needs no guard against a cancellation here.
        if pool is not None and self.can_reuse():
            await pool.put(key, stream)
        else:
            await _close(stream)

    async def open(self, context: ssl.SSLContext | None) -> trio.abc.Stream:
        """A new connection to the target, secured when *context* is given."""
        tcp = await self.connect()
        if context is None:
            return tcp
        try:
            # https_compatible: servers often close without close_notify, and
            # h11 knows from the framing where the body ends.
            tls = trio.SSLStream(
                tcp,
                context,
                server_hostname=self.server_hostname(),
                https_compatible=True,
            )
            await self.handshake(tls)
        except BaseException:
            # The TLS layer holds nothing but the socket, which must not leak.
            await _close(tcp)
            raise
        return tls

    async def connect(self) -> trio.SocketStream:
        """Open TCP to the declared address (never the URL's host)."""
        target = self.target
        log.debug(
            "[%s] connecting to target %r at %s:%d",
            self.request_id,
            target.name,
            target.host,
            target.port,
        )
        self.start_phase("connecting", self.limits.connect_timeout)
        try:
            return await trio.open_tcp_stream(target.host, target.port)
        except OSError as exc:
            raise self.fail(
                TargetUnreachable,
                f"could not connect to target {target.name!r} at "
                f"{target.host}:{target.port}: {_describe(exc)}; check that the "
                "service is running and that the declared address is right",
            ) from exc

    def server_hostname(self) -> str:
        """The name the certificate must match: configured, or the URL's."""
        configured: str | None = self.target.tls.server_name
        return configured or host_of(self.head.authority)

    async def handshake(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        """Run the TLS handshake, then check the pin if the target has one."""
        name = self.target.name
        self.start_phase("the TLS handshake", self.limits.tls_timeout)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            raise self.fail(
                TLSFailure,
                f"the TLS handshake with target {name!r} failed: "
                f"{_describe(exc.__cause__)}; check the server's certificate "
                "and the target's CA file and server name",
            ) from exc

        pin: bytes | None = self.target.tls.pin_sha256
        if pin is None:
            return
        try:
            matches = pin_matches(stream.getpeercert(binary_form=True) or b"", pin)
        except ValueError as exc:
            raise self.fail(
                TLSFailure, f"could not read the certificate of target {name!r}"
            ) from exc
        if not matches:
            raise self.fail(
                TLSFailure,
                f"the public key of target {name!r} does not match its "
                "pin_sha256; the server's key changed, or this is another server",
            )

    async def send(self, stream: trio.abc.Stream, wire: list[bytes]) -> None:
        """Write the whole request; from here on the target may have it."""
        body = self.streamed
        if body is not None:
            # Nothing is written before the body starts: one that never
            # comes leaves the target untouched (a timeout before sending),
            # and its first bytes leave with the head. The wait counts
            # against the deadline only, not the connect or TLS limits.
            self.end_phase()
            first = await self.next_piece(body)
            small = len(first) <= CHUNK_SIZE
            wire = [wire[0] + first] if small else [wire[0], first]
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "[%s] sending %s (%d bytes) to target %r",
                self.request_id,
                self.head.method,
                sum(map(len, wire)) if body is None else body.length,
                self.target.name,
            )
        # Counted as written before the call: a partial write cannot be told
        # from a complete one, and a false "may have reached" is the safe side.
        self.wrote_request = True
        started = trio.current_time()
        self.start_phase("sending the request", self.limits.send_timeout)
        for piece in wire:
            await self.write(stream, piece)
        if body is not None:
            await self.send_rest(stream, body, trio.current_time() - started)

    async def send_rest(
        self, stream: trio.abc.Stream, body: RequestBody, spent: float
    ) -> None:
        """Write a streamed body's bytes as they come, until its end.

        The send limit bounds the time spent writing (*spent* so far), as
        for a whole body; the waits for the hub's bytes count against the
        request's deadline only, as the wait for a whole body did.
        """
        limit = self.limits.send_timeout
        while True:
            self.end_phase()
            piece = await self.next_piece(body)
            if not piece:
                return
            began = trio.current_time()
            self.start_phase("sending the request", limit - spent, limit=limit)
            await self.write(stream, piece)
            spent += trio.current_time() - began

    async def next_piece(self, body: RequestBody) -> bytes:
        """The next bytes of a streamed body, its errors made this request's."""
        try:
            return await body.receive()
        except RequestError as exc:
            exc.may_have_reached_target = self.wrote_request
            exc.request_id = exc.request_id or self.request_id
            raise

    async def write(self, stream: trio.abc.Stream, data: bytes) -> None:
        """Write request bytes, a broken connection made a BadGateway."""
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, OSError) as exc:
            raise self.fail(
                BadGateway,
                f"target {self.target.name!r} closed the connection while the "
                "request was being sent",
            ) from exc

    # ------------------------------------------------------------------
    # Receive the response

    async def receive(self, stream: trio.abc.Stream) -> None:
        """Relay the response to the sink until the end of its body."""
        # Nothing was read yet, so h11 could only say that it needs data.
        self.h11.receive_data(await self.read(stream, first=True))
        relayed = 0  # body bytes handed to the sink
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise self.bad_response(exc) from exc

            # By exact type: h11's events derive from an ABC, whose
            # isinstance checks are slow, and h11 never subclasses them.
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.read(stream, first=False))
            elif type(event) is h11.Data:
                relayed += len(event.data)
                if relayed > self.limits.max_response_body:
                    raise self.body_too_large()
                await self.relay_data(event.data)
            elif type(event) is h11.Response:
                length = await self.relay_head(event)
                if length is not None:
                    await self.receive_body(stream, length)
                    return
            elif type(event) is h11.InformationalResponse:
                continue
            elif type(event) is h11.EndOfMessage:
                log.debug(
                    "[%s] target %r answered with %d body bytes",
                    self.request_id,
                    self.target.name,
                    relayed,
                )
                return
            else:
                # ConnectionClosed, or PAUSED, which only follows an end of
                # message we would already have returned on.
                raise self.bad_response(None)

    async def read(
        self, stream: trio.abc.Stream, *, first: bool, size: int = CHUNK_SIZE
    ) -> bytes:
        """One read of at most *size* bytes from the target, bounded by the
        limit of its phase."""
        limits = self.limits
        if first:
            self.start_phase("waiting for the answer", limits.first_byte_timeout)
        else:
            self.start_phase("waiting for more answer", limits.body_idle_timeout)
        try:
            return bytes(await stream.receive_some(size))
        except (trio.BrokenResourceError, OSError) as exc:
            raise self.fail(
                BadGateway,
                f"the connection to target {self.target.name!r} broke before "
                "the answer was complete",
            ) from exc

    async def relay_head(self, response: h11.Response) -> int | None:
        """Check the head's sizes, then pass the cleaned head to the sink.

        Returns the body's length when :meth:`receive_body` may read it
        past h11: framed by ``Content-Length`` alone, and a body at all.
        """
        # One pass over h11's header view, which is slow to iterate.
        received = list(response.headers)
        # h11 bounds a head that arrives over several reads; one that arrives
        # whole in a single read is measured here (lines plus CRLFs).
        size = len(response.reason) + 15
        size += sum(len(name) + len(value) + 4 for name, value in received)
        if size > self.limits.max_response_head:
            raise self.head_too_large()
        if response.status_code > 599:
            # h11 accepts any three digits; HTTP and the relay stop at 599.
            raise self.fail(
                BadGateway, f"target answered status {response.status_code}"
            )
        declared = content_length(received)
        if declared is not None and declared > self.limits.max_response_body:
            raise self.body_too_large()

        headers = relayed_response_headers(received)
        log.debug(
            "[%s] target %r answered %d",
            self.request_id,
            self.target.name,
            response.status_code,
        )
        # The sink's waits for flow control count against the deadline only.
        self.end_phase()
        await self.sink.send_head(
            ResponseHead(
                status=response.status_code,
                headers=headers,
                reason=bytes(response.reason),
            )
        )
        # h11 frames by Transfer-Encoding first; HEAD, CONNECT, 204 and 304
        # answers have no body whatever they declare.
        if (
            declared is None
            or self.head.method in _NO_BODY_METHODS
            or response.status_code in _NO_BODY_STATUSES
            or any(name == b"transfer-encoding" for name, _ in received)
        ):
            return None
        return declared

    async def receive_body(self, stream: trio.abc.Stream, length: int) -> None:
        """Relay a body of *length* bytes framed by ``Content-Length``.

        Read past h11, which would copy each chunk into its buffer and out
        again (about 0.4 ms per MiB): what h11 read beyond the head goes
        first, then reads of up to BODY_READ_SIZE and never past the bytes
        still due, cut into chunks by :meth:`relay_data`. h11 is left
        behind; :meth:`can_reuse` then decides from what it saw of the head
        and from what followed the body.
        """
        buffered, _ = self.h11.trailing_data
        if buffered:
            await self.relay_data(buffered[:length])
        remaining = length - min(length, len(buffered))
        while remaining:
            size = min(remaining, BODY_READ_SIZE)
            data = await self.read(stream, first=False, size=size)
            if not data:
                raise self.bad_response(None)
            remaining -= len(data)
            await self.relay_data(data)
        log.debug(
            "[%s] target %r answered with %d body bytes",
            self.request_id,
            self.target.name,
            length,
        )
        # Bytes past the body would be read as the next answer.
        self.read_past_h11 = len(buffered) <= length

    async def relay_data(self, data: bytes | bytearray) -> None:
        """Pass body bytes to the sink in chunks of at most CHUNK_SIZE.

        h11 hands the body as a fresh bytearray of up to a read's size;
        each chunk is copied out of it once, into the bytes the sink keeps.
        Bytes read past h11 are already bytes: a read that fits in one
        chunk passes as it is.
        """
        self.end_phase()
        if len(data) <= CHUNK_SIZE:
            await self.sink.send_data(bytes(data))
            return
        view = memoryview(data)
        for start in range(0, len(data), CHUNK_SIZE):
            await self.sink.send_data(bytes(view[start : start + CHUNK_SIZE]))

    def body_too_large(self) -> RequestError:
        return self.fail(
            ResponseTooLarge,
            f"the answer of target {self.target.name!r} is over the limit of "
            f"{self.limits.max_response_body} bytes",
        )

    def head_too_large(self) -> RequestError:
        return self.fail(
            ResponseTooLarge,
            f"the response head of target {self.target.name!r} is over the "
            f"limit of {self.limits.max_response_head} bytes",
        )

    def bad_response(self, exc: h11.RemoteProtocolError | None) -> RequestError:
        """Translate a broken answer; h11's text may quote the target's bytes."""
        # 431 is h11's hint for a head that outgrew max_incomplete_event_size.
        if exc is not None and exc.error_status_hint == 431:
            return self.head_too_large()
        return self.fail(
            BadGateway,
            f"target {self.target.name!r} closed the connection or sent "
            "something that is not HTTP/1.1 before the answer was complete",
        )

    def can_reuse(self) -> bool:
        """Whether the connection may carry another request after this one.

        Both sides must have finished cleanly without asking to close, and
        nothing may follow the response: a fresh h11 machine would read
        those bytes as the start of the next answer.
        """
        conn = self.h11
        if self.read_past_h11 is not None:
            # h11 stopped at the head; it said then whether either side
            # asked to close (our state is MUST_CLOSE if one did).
            return self.read_past_h11 and conn.our_state is h11.DONE
        return (
            conn.our_state is h11.DONE
            and conn.their_state is h11.DONE
            and conn.trailing_data == (b"", False)
        )


# --------------------------------------------------------------------------
# Helpers

_END_OF_MESSAGE = h11.EndOfMessage()

#: Requests and answers that carry no body whatever their head declares
#: (a 2xx answer to CONNECT switches protocols instead).
_NO_BODY_METHODS = frozenset({"HEAD", "CONNECT"})
_NO_BODY_STATUSES = frozenset({204, 304})


@functools.lru_cache(maxsize=64)
def _announcement(method: str, *, keep_alive: bool) -> h11.Request:
    """What h11 is told of a request whose bytes the relay wrote itself.

    h11's state machine acts on the method (HEAD and CONNECT change how the
    answer is read) and on ``Connection: close``; ``request_headers`` has
    dropped every other header h11 acts on (``Expect``, ``Upgrade``,
    ``Transfer-Encoding``). The body needs no help from h11: the relay
    writes it after the head, framed by the ``Content-Length`` it wrote. So
    a request with the same method and connection handling, no body and a
    placeholder target and host, leaves h11 in the state the real one
    would. It saves validating and encoding the head a second time, and is
    built once per method.
    """
    headers = [(b"host", b"target")]
    if not keep_alive:
        headers.append((b"connection", b"close"))
    return h11.Request(method=method, target="/", headers=headers)


async def _close(stream: trio.abc.Stream) -> None:
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
