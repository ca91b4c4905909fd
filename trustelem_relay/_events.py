"""What the protocol core hands out: request and response heads, and events.

:meth:`Connection.receive_data <trustelem_relay.Connection.receive_data>`
turns bytes into a list of these events. They are plain immutable records;
nothing here does I/O.
"""

from __future__ import annotations

import attrs

from ._errors import StreamErrorCode

#: A header list as it travels on the wire: lower-cased names, raw values.
Headers = tuple[tuple[bytes, bytes], ...]


@attrs.frozen
class RequestHead:
    """The head of a request the hub asks an agent to forward.

    ``authority`` is the URL's ``host[:port]`` (used for the Host header and
    for TLS verification, never for dialling); ``target`` in the HTTP sense
    is ``path`` (path and query). ``timeout`` is the number of seconds the
    hub still allows, or None for the agent's default.
    """

    method: str
    scheme: str
    authority: str
    path: str
    headers: Headers = ()
    timeout: float | None = None


@attrs.frozen
class ResponseHead:
    """The head of the target's answer, as the agent relays it."""

    status: int
    headers: Headers = ()
    reason: bytes = b""


@attrs.frozen
class Event:
    """Base class of everything :meth:`Connection.receive_data` returns."""


@attrs.frozen
class HandshakeComplete(Event):
    """Keys are agreed and both ends proved they hold the service secret.

    ``lookup_id`` names the service (hex); ``version`` is the protocol
    version in use.
    """

    lookup_id: str
    version: int


@attrs.frozen
class InfoReceived(Event):
    """The peer described itself (agent version, hostname, target names)."""

    info: dict[str, object]


@attrs.frozen
class RequestReceived(Event):
    """(agent side) The hub opened a stream asking to forward a request.

    ``end_stream`` says the request has no body; a :class:`StreamEnded`
    event follows in that case too.
    """

    stream_id: int
    target: str
    head: RequestHead
    end_stream: bool


@attrs.frozen
class ResponseReceived(Event):
    """(hub side) The agent relayed the head of the target's answer."""

    stream_id: int
    head: ResponseHead
    end_stream: bool


@attrs.frozen
class DataReceived(Event):
    """A chunk of a body. Call ``acknowledge_data`` once it is consumed.

    The end of the body is a separate :class:`StreamEnded` event.
    """

    stream_id: int
    data: bytes


@attrs.frozen
class StreamEnded(Event):
    """The peer finished its side of the stream: its body is complete."""

    stream_id: int


@attrs.frozen
class StreamReset(Event):
    """The peer abandoned the stream with a typed reason."""

    stream_id: int
    code: StreamErrorCode
    message: str
    may_have_reached_target: bool


@attrs.frozen
class WindowUpdated(Event):
    """More may now be sent on the stream (0 means the whole session)."""

    stream_id: int


@attrs.frozen
class PingReceived(Event):
    """The peer sent a ping; the core has already queued the pong."""

    payload: bytes


@attrs.frozen
class PongReceived(Event):
    """The answer to one of our pings."""

    payload: bytes


@attrs.frozen
class GoAwayReceived(Event):
    """The peer opens no more streams and wants none opened to it.

    Streams up to ``last_stream_id`` still run to completion.
    """

    last_stream_id: int
    reason: str
