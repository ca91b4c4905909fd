"""Forwarding, the way back: read the target's answer and relay it to the sink.

Theory of operation
-------------------
:func:`receive` takes over once the request is written. A plain answer
(:func:`._forward_http.plain_response_head`: the common case, read the way
h11 reads it) needs no h11 at all. For any other, it makes an h11 machine,
feeds it the bytes the target sends and acts on the events that come out,
until the final response is complete: 1xx answers are passed over. The
final head, either way, is measured against its limit, cleaned of
hop-by-hop and framing headers (:mod:`._forward_http`) and handed to the
sink; body bytes follow as they were read, at most :data:`BODY_READ_SIZE`
at a time. When the head frames the body by ``Content-Length`` alone
(a plain answer's always does), h11 stops after the head and the body is
read straight from the stream, :data:`BODY_READ_SIZE` at a time.

Every read opens the phase it belongs to on the exchange's clock (the
first byte, then the gap between two reads); every call into the sink
closes it, so the sink's waits count against the request's deadline only.
The errors raised here all come after the request was written: a broken
or unparsable answer is a :class:`~trustelem_relay.BadGateway`, one over a
size limit a :class:`~trustelem_relay.ResponseTooLarge`. Afterwards
:func:`can_reuse` says whether the connection ended cleanly enough to carry
another request.

The state (limits, sink, h11 machine, clock) is the exchange's
(:class:`._forward._Exchange`); the functions here act on it and keep none
of their own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h11
import trio

from ._errors import BadGateway, RequestError, ResponseTooLarge
from ._events import ResponseHead
from ._forward_http import (
    NO_BODY_STATUSES,
    announcement,
    content_length,
    plain_response_head,
    relayed_response_headers,
)
from ._netstream import receive_from

if TYPE_CHECKING:
    from ._forward import _Exchange

__all__ = ["BODY_READ_SIZE", "CHUNK_SIZE", "can_reuse", "receive"]

log = logging.getLogger("trustelem_relay.forward")

#: One DATA frame's worth of body, and the size of each read that goes to
#: h11. Larger ones cost h11 more than they save: it copies them into its
#: buffer and out again, and buffers past 128 KiB are mapped and faulted in
#: afresh by the allocator.
CHUNK_SIZE = 64 * 1024

#: The size of each read of a body read past h11 (a stream window's worth),
#: and the largest piece handed to ``sink.send_data``. The sink frames a
#: read's bytes and sends the frames in one write: four frames per write
#: instead of one, and as many fewer wake-ups of the hub
#: (docs/performance.md).
BODY_READ_SIZE = 4 * CHUNK_SIZE


#: Requests whose answers carry no body whatever their head declares (a
#: 2xx answer to CONNECT switches protocols instead); the statuses that
#: carry none are NO_BODY_STATUSES.
_NO_BODY_METHODS = frozenset({"HEAD", "CONNECT"})

_END_OF_MESSAGE = h11.EndOfMessage()


async def receive(exchange: _Exchange, stream: trio.abc.Stream) -> None:
    """Relay the response to the sink until the end of its body."""
    data = await _read(exchange, stream, first=True)
    if exchange.head.method not in _NO_BODY_METHODS:
        plain = plain_response_head(data)
        if plain is not None:
            exchange.plain_keep_alive = plain.keep_alive
            await _relay_head(
                exchange, plain.status, plain.reason, plain.headers, plain.length
            )
            buffered = data[plain.body_start :]
            await _receive_body(exchange, stream, plain.length, buffered)
            return

    conn = _start_h11(exchange)
    conn.receive_data(data)
    relayed = 0  # body bytes handed to the sink
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise _bad_response(exchange, exc) from exc

        # By exact type: h11's events derive from an ABC, whose
        # isinstance checks are slow, and h11 never subclasses them.
        if event is h11.NEED_DATA:
            conn.receive_data(await _read(exchange, stream, first=False))
        elif type(event) is h11.Data:
            relayed += len(event.data)
            if relayed > exchange.limits.max_response_body:
                raise _body_too_large(exchange)
            await _relay_data(exchange, event.data)
        elif type(event) is h11.Response:
            # One pass over h11's header view, which is slow to iterate.
            received = list(event.headers)
            length = content_length(received)
            await _relay_head(
                exchange, event.status_code, bytes(event.reason), received, length
            )
            if length is not None and _framed_by_length(exchange, event, received):
                buffered, _ = conn.trailing_data
                await _receive_body(exchange, stream, length, buffered)
                return
        elif type(event) is h11.InformationalResponse:
            continue
        elif type(event) is h11.EndOfMessage:
            log.debug(
                "[%s] target %r answered with %d body bytes",
                exchange.request_id,
                exchange.target.name,
                relayed,
            )
            return
        else:
            # ConnectionClosed, or PAUSED, which only follows an end of
            # message we would already have returned on.
            raise _bad_response(exchange, None)


async def _read(
    exchange: _Exchange, stream: trio.abc.Stream, *, first: bool, size: int = CHUNK_SIZE
) -> bytes:
    """One read of at most *size* bytes from the target, bounded by the
    limit of its phase."""
    limits = exchange.limits
    if first:
        exchange.start_phase("waiting for the answer", limits.first_byte_timeout)
    else:
        exchange.start_phase("waiting for more answer", limits.body_idle_timeout)
    try:
        if type(stream) is trio.SocketStream:
            # The same read without trio's layers around it (_netstream).
            return await receive_from(stream, size)
        return bytes(await stream.receive_some(size))
    except (trio.BrokenResourceError, OSError) as exc:
        raise exchange.fail(
            BadGateway,
            f"the connection to target {exchange.target.name!r} broke before "
            "the answer was complete",
        ) from exc


async def _relay_head(
    exchange: _Exchange,
    status: int,
    reason: bytes,
    received: list[tuple[bytes, bytes]],
    declared: int | None,
) -> None:
    """Check the head's sizes, then pass the cleaned head to the sink.

    *received* is every header, names in lower case; *declared* the
    length the head declares, if any.
    """
    # h11 bounds a head that arrives over several reads; one that arrives
    # whole in a single read is measured here (lines plus CRLFs).
    size = len(reason) + 15
    size += sum(len(name) + len(value) + 4 for name, value in received)
    if size > exchange.limits.max_response_head:
        raise _head_too_large(exchange)
    if status > 599:
        # h11 accepts any three digits; HTTP and the relay stop at 599.
        raise exchange.fail(BadGateway, f"target answered status {status}")
    if declared is not None and declared > exchange.limits.max_response_body:
        raise _body_too_large(exchange)

    headers = relayed_response_headers(received)
    log.debug(
        "[%s] target %r answered %d",
        exchange.request_id,
        exchange.target.name,
        status,
    )
    # The sink's waits for flow control count against the deadline only.
    exchange.end_phase()
    await exchange.sink.send_head(
        ResponseHead(status=status, headers=headers, reason=reason)
    )


def _framed_by_length(
    exchange: _Exchange, response: h11.Response, received: list[tuple[bytes, bytes]]
) -> bool:
    """Whether h11 frames the answer's body by its ``Content-Length``.

    h11 frames by Transfer-Encoding first; HEAD, CONNECT, 204 and 304
    answers have no body whatever they declare.
    """
    return not (
        exchange.head.method in _NO_BODY_METHODS
        or response.status_code in NO_BODY_STATUSES
        or any(name == b"transfer-encoding" for name, _ in received)
    )


async def _receive_body(
    exchange: _Exchange, stream: trio.abc.Stream, length: int, buffered: bytes
) -> None:
    """Relay a body of *length* bytes framed by ``Content-Length``.

    Read past h11, which would copy each chunk into its buffer and out
    again (about 0.4 ms per MiB): *buffered*, what was read beyond the
    head, goes first, then reads of up to BODY_READ_SIZE and never past
    the bytes still due, cut into chunks by :func:`_relay_data`. h11, if
    it read the head, is left behind; :func:`can_reuse` then decides from
    the head and from what followed the body.
    """
    if buffered:
        await _relay_data(exchange, buffered[:length])
    remaining = length - min(length, len(buffered))
    while remaining:
        size = min(remaining, BODY_READ_SIZE)
        data = await _read(exchange, stream, first=False, size=size)
        if not data:
            raise _bad_response(exchange, None)
        remaining -= len(data)
        await _relay_data(exchange, data)
    log.debug(
        "[%s] target %r answered with %d body bytes",
        exchange.request_id,
        exchange.target.name,
        length,
    )
    # Bytes past the body would be read as the next answer.
    exchange.nothing_after_body = len(buffered) <= length


async def _relay_data(exchange: _Exchange, data: bytes | bytearray) -> None:
    """Pass the body bytes of one read to the sink, in one call.

    h11 hands the body as a fresh bytearray of up to a read's size, copied
    once into the bytes the sink keeps; bytes read past h11 are already
    bytes and pass as they are.
    """
    exchange.end_phase()
    await exchange.sink.send_data(bytes(data))


def _body_too_large(exchange: _Exchange) -> RequestError:
    return exchange.fail(
        ResponseTooLarge,
        f"the answer of target {exchange.target.name!r} is over the limit of "
        f"{exchange.limits.max_response_body} bytes",
    )


def _head_too_large(exchange: _Exchange) -> RequestError:
    return exchange.fail(
        ResponseTooLarge,
        f"the response head of target {exchange.target.name!r} is over the "
        f"limit of {exchange.limits.max_response_head} bytes",
    )


def _bad_response(
    exchange: _Exchange, exc: h11.RemoteProtocolError | None
) -> RequestError:
    """Translate a broken answer; h11's text may quote the target's bytes."""
    # 431 is h11's hint for a head that outgrew max_incomplete_event_size.
    if exc is not None and exc.error_status_hint == 431:
        return _head_too_large(exchange)
    return exchange.fail(
        BadGateway,
        f"target {exchange.target.name!r} closed the connection or sent "
        "something that is not HTTP/1.1 before the answer was complete",
    )


def can_reuse(exchange: _Exchange) -> bool:
    """Whether the connection may carry another request after this one.

    Both sides must have finished cleanly without asking to close, and
    nothing may follow the response: a fresh h11 machine would read
    those bytes as the start of the next answer.
    """
    conn = exchange.h11
    if conn is None:
        # A plain answer, read without h11: neither side may have asked
        # to close, and nothing may have followed its body.
        return bool(
            exchange.nothing_after_body
            and exchange.keep_alive
            and exchange.plain_keep_alive
        )
    if exchange.nothing_after_body is not None:
        # h11 stopped at the head; it said then whether either side
        # asked to close (our state is MUST_CLOSE if one did).
        return exchange.nothing_after_body and conn.our_state is h11.DONE
    return (
        conn.our_state is h11.DONE
        and conn.their_state is h11.DONE
        and conn.trailing_data == (b"", False)
    )


def _start_h11(exchange: _Exchange) -> h11.Connection:
    """An h11 machine for an answer that is not plain, told of the request."""
    conn = h11.Connection(
        our_role=h11.CLIENT,
        max_incomplete_event_size=exchange.limits.max_response_head,
    )
    conn.send(announcement(exchange.head.method, keep_alive=exchange.keep_alive))
    conn.send(_END_OF_MESSAGE)
    exchange.h11 = conn
    return conn
