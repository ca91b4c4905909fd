"""The sans-IO connection: handshake, streams and flow control over frames.

Theory of operation
-------------------
A :class:`Connection` is one end of one session. It does no I/O: bytes that
arrive go into :meth:`Connection.receive_data`, which returns events; the
methods that send (``open_stream``, ``send_data``, ``reset_stream``...) queue
whole frames that :meth:`Connection.data_to_send` hands out, one frame per
websocket message. Time and randomness come from the caller.

Only the hub opens streams; each stream carries one request and its answer.
The hub sends REQUEST (the head, with the target name in the envelope), DATA
chunks and an END_STREAM flag; the agent answers with RESPONSE, DATA and
END_STREAM, or with a RESET carrying a :class:`StreamErrorCode` and whether
the target may have seen the request. Either end may RESET at any time.

Stream states follow a table keyed by (state, input), as in h2: anything
missing from :data:`._streams._TRANSITIONS` is illegal. A local violation raises
:class:`LocalProtocolError` and changes nothing; a remote violation inside a
stream resets that stream with PROTOCOL_ERROR and the session goes on; a
violation of the envelope, the crypto or the session rules raises a
:class:`RemoteProtocolError` and the session is over.

Flow control
------------
DATA counts against two windows of credit granted by the receiver: one per
stream and one for the whole session. The receiver returns credit with a
WINDOW frame only after its user calls :meth:`Connection.acknowledge_data`
for bytes it has consumed, so a slow consumer stops the sender and the bytes
buffered anywhere never exceed the windows, whatever the size of a body.
Credit is returned in batches (a quarter of the window) to save frames.
:mod:`._streams` describes the table and the credit fields in detail.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Callable

from ._errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedFrame,
    RemoteProtocolError,
    StreamErrorCode,
)
from ._events import (
    DataReceived,
    Event,
    GoAwayReceived,
    HandshakeComplete,
    InfoReceived,
    PingReceived,
    PongReceived,
    RequestHead,
    RequestReceived,
    ResponseHead,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from ._frames import (
    FLAG_END_STREAM,
    HANDSHAKE_KINDS,
    MAC_SIZE,
    MAX_PAYLOAD,
    MAX_TARGET,
    Envelope,
    FrameReader,
    Kind,
    Reset,
    check_method,
    check_status,
    decode_goaway,
    decode_request_head,
    decode_reset,
    decode_response_head,
    decode_window,
    encode_goaway,
    encode_request_head,
    encode_reset,
    encode_response_head,
    encode_window,
)
from ._handshake import AgentHandshake, Established, HubHandshake
from ._session import Opener, Sealer
from ._streams import (
    _TRANSITIONS,
    MAX_WINDOW,
    FlowControlError,
    Settings,
    StreamState,
    _Input,
    _Stream,
)

__all__ = [
    "MAX_PING",
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "_TRANSITIONS",
    "Connection",
    "ConnectionState",
    "FlowControlError",
    "Role",
    "Settings",
    "StreamState",
    "_Input",
]

#: Largest PING payload.
MAX_PING = 64

#: Largest stream id (the envelope's field is 32 bits).
MAX_STREAM_ID = (1 << 32) - 1

# Short names for the stream table's states and inputs, as in _streams.
_S = StreamState
_I = _Input


class Role(enum.Enum):
    AGENT = "agent"
    HUB = "hub"


class ConnectionState(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


class Connection:
    """One end of a relay session; see the module docstring.

    The agent's connection queues HELLO as soon as it is built; the hub's
    waits for it. Call :meth:`data_to_send` after every call that may queue
    frames and send each returned frame as one websocket message.

    After :meth:`receive_data` raises a :class:`RemoteProtocolError`, send
    what :meth:`data_to_send` still returns (a REJECT, at most), then close
    the websocket with the error's ``close_code``.
    """

    def __init__(
        self,
        role: Role,
        *,
        service_id: str | None = None,
        resolve: Callable[[bytes], bytes | None] | None = None,
        settings: Settings | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.role = role
        self.settings = settings = settings or Settings()
        self._clock = clock
        self._reader = FrameReader()
        self._outbox: list[bytes] = []
        self._streams: dict[int, _Stream] = {}
        self._sealer: Sealer | None = None
        self._opener: Opener | None = None

        #: Where the session is; CLOSED after any session-level error.
        self.state = ConnectionState.HANDSHAKE
        #: Negotiated protocol version, once the handshake is done.
        self.version = 0
        #: Hex lookup id of the service, once the handshake is done.
        self.lookup_id = ""
        #: Clock reading when the last whole frame arrived.
        self.last_received = clock()
        #: True once we sent GOAWAY, or the peer did.
        self.local_going_away = False
        self.remote_going_away = False

        # Session-level credit, mirrored from the stream fields.
        self._send_credit = settings.session_window
        self._recv_credit = settings.session_window
        self._pending_ack = 0
        # Highest stream id opened so far; ids only grow.
        self._last_stream_id = 0

        self._agent_handshake: AgentHandshake | None = None
        self._hub_handshake: HubHandshake | None = None
        self._hello_answered = False
        if role is Role.AGENT:
            if service_id is None:
                raise LocalProtocolError("an agent connection needs a service_id")
            self._agent_handshake = AgentHandshake(
                service_id, versions=settings.versions, random_bytes=random_bytes
            )
            self._outbox.append(self._agent_handshake.hello)
        else:
            if resolve is None:
                raise LocalProtocolError("a hub connection needs a resolve callback")
            self._hub_handshake = HubHandshake(
                resolve=resolve, versions=settings.versions, random_bytes=random_bytes
            )

    def __repr__(self) -> str:
        return (
            f"<Connection {self.role.value} {self.state.value} "
            f"streams={len(self._streams)}>"
        )

    # ------------------------------------------------------------------
    # Inspection

    @property
    def open_streams(self) -> int:
        """Streams not yet closed in both directions."""
        return sum(1 for s in self._streams.values() if s.state is not _S.CLOSED)

    @property
    def buffered(self) -> int:
        """Bytes received inside frames not yet complete."""
        return self._reader.buffered

    def stream_state(self, stream_id: int) -> StreamState | None:
        """The state of a stream, or None if it is gone (or never was)."""
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.state

    def send_window(self, stream_id: int) -> int:
        """How many body bytes :meth:`send_data` accepts now (≤ one frame)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return max(0, min(stream.send_credit, self._send_credit, MAX_PAYLOAD))

    def unacknowledged(self, stream_id: int) -> int:
        """Bytes received on a stream and not yet acknowledged."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.unacked

    # ------------------------------------------------------------------
    # Bytes in, bytes out

    def data_to_send(self) -> list[bytes]:
        """Take the frames queued so far, each to go in one message."""
        out, self._outbox = self._outbox, []
        return out

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; return the events they complete.

        Raises a :class:`RemoteProtocolError` when the peer broke the
        session's rules; the connection is then CLOSED.
        """
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("the connection is closed")
        events: list[Event] = []
        try:
            envelopes = self._reader.feed(data)
            if envelopes:
                self.last_received = self._clock()
            for envelope in envelopes:
                self._dispatch(envelope, events)
        except RemoteProtocolError as exc:
            # Nothing queued before the error leaves, except a REJECT.
            self.state = ConnectionState.CLOSED
            self._outbox.clear()
            if exc.reply is not None:
                self._outbox.append(exc.reply)
            raise
        return events

    def receive_message(self, message: bytes) -> list[Event]:
        """Feed one websocket message; it must end where a frame ends.

        The same as :meth:`receive_data`, plus the rule that a message holds
        whole frames: one whose last frame is cut short (a length prefix
        that announces more bytes than the message has, such as a tampered
        one) raises :class:`MalformedFrame` now, instead of waiting for
        bytes that belong to the next message.
        """
        events = self.receive_data(message)
        if self._reader.buffered:
            self.state = ConnectionState.CLOSED
            self._outbox.clear()
            raise MalformedFrame(
                f"a websocket message ends {self._reader.buffered} bytes into "
                "a frame; each message must hold whole frames"
            )
        return events

    def close(self) -> None:
        """Mark the session over; nothing more is accepted or sent."""
        self.state = ConnectionState.CLOSED
        self._outbox.clear()

    # ------------------------------------------------------------------
    # Receiving

    def _dispatch(self, envelope: Envelope, events: list[Event]) -> None:
        if envelope.kind in HANDSHAKE_KINDS or self.state is ConnectionState.HANDSHAKE:
            self._handshake(envelope, events)
            return
        if envelope.version != self.version:
            raise MalformedFrame(
                f"frame of protocol version {envelope.version} in a version "
                f"{self.version} session"
            )
        assert self._opener is not None
        # The length prefix alone allows a payload up to 126 bytes over
        # MAX_PAYLOAD when the target is short; hold every sealed payload to
        # the documented bound before spending time on decryption.
        if len(envelope.body) > len(envelope.header) + MAC_SIZE + MAX_PAYLOAD:
            raise FrameTooLarge(
                f"{envelope.kind.name} frame carries more than {MAX_PAYLOAD} "
                "bytes of payload"
            )
        payload = self._opener.open(envelope)
        if envelope.target and envelope.kind is not Kind.REQUEST:
            raise MalformedFrame(f"{envelope.kind.name} frame names a target")

        kind = envelope.kind
        if kind is Kind.DATA:
            self._receive_data_frame(envelope, payload, events)
        elif kind is Kind.REQUEST:
            self._receive_request(envelope, payload, events)
        elif kind is Kind.RESPONSE:
            self._receive_response(envelope, payload, events)
        elif kind is Kind.RESET:
            self._receive_reset(envelope, payload, events)
        elif kind is Kind.WINDOW:
            self._receive_window(envelope, payload, events)
        else:
            self._receive_session_frame(envelope, payload, events)

    def _handshake(self, envelope: Envelope, events: list[Event]) -> None:
        if self.state is not ConnectionState.HANDSHAKE:
            raise MalformedFrame(f"{envelope.kind.name} frame after the handshake")
        if envelope.kind in HANDSHAKE_KINDS and envelope.version != 1:
            raise MalformedFrame("handshake frames use envelope version 1")

        if self._agent_handshake is not None:
            established, confirm = self._agent_handshake.receive(envelope)
            self._agent_handshake = None
            self._outbox.append(confirm)
            self._establish(established, events)
            return

        hub = self._hub_handshake
        assert hub is not None
        if not self._hello_answered:
            self._outbox.append(hub.receive_hello(envelope))
            self._hello_answered = True
            return
        self._establish(hub.receive_confirm(envelope), events)
        self._hub_handshake = None

    def _establish(self, established: Established, events: list[Event]) -> None:
        self._sealer = established.sealer
        self._opener = established.opener
        self.version = established.version
        self.lookup_id = established.lookup_id.hex()
        self.state = ConnectionState.OPEN
        events.append(HandshakeComplete(self.lookup_id, self.version))

    def _receive_session_frame(
        self, envelope: Envelope, payload: bytes, events: list[Event]
    ) -> None:
        kind = envelope.kind
        if envelope.stream_id != 0:
            raise MalformedFrame(f"{kind.name} frame on stream {envelope.stream_id}")
        if kind is Kind.PING or kind is Kind.PONG:
            if len(payload) > MAX_PING:
                raise MalformedFrame(f"{kind.name} payload over {MAX_PING} bytes")
            if kind is Kind.PING:
                self._seal(Kind.PONG, payload)
                events.append(PingReceived(payload))
            else:
                events.append(PongReceived(payload))
        elif kind is Kind.GOAWAY:
            last, reason = decode_goaway(payload)
            self.remote_going_away = True
            events.append(GoAwayReceived(last, reason))
        elif kind is Kind.INFO:
            try:
                info = json.loads(payload)
            except (ValueError, RecursionError):
                # Deeply nested arrays exhaust the decoder's recursion limit.
                raise MalformedFrame("INFO payload is not JSON") from None
            if not isinstance(info, dict):
                raise MalformedFrame("INFO payload is not a JSON object")
            events.append(InfoReceived(info))
        else:
            # CONFIRM after the handshake, or a kind sent the wrong way.
            raise MalformedFrame(f"unexpected {kind.name} frame")

    def _receive_request(
        self, envelope: Envelope, payload: bytes, events: list[Event]
    ) -> None:
        if self.role is not Role.AGENT:
            raise MalformedFrame("REQUEST frame sent to the hub")
        stream_id = envelope.stream_id
        if stream_id <= self._last_stream_id:
            raise MalformedFrame(f"REQUEST reuses stream id {stream_id}")
        self._last_stream_id = stream_id

        # Refuse at once, keeping no state, when we cannot take it. A head
        # that does not decode (or names no target) is refused the same way:
        # nothing was forwarded, so the hub may safely retry, and the user
        # hears of no stream it was never told about.
        refusal: tuple[StreamErrorCode, str] | None = None
        head: RequestHead | None = None
        if self.local_going_away:
            refusal = StreamErrorCode.DRAINING, "the agent is draining"
        elif (
            # Counting the open streams walks the table; it holds no more
            # than that count plus finished streams with unacknowledged bytes.
            len(self._streams) >= self.settings.max_open_streams
            and self.open_streams >= self.settings.max_open_streams
        ):
            refusal = StreamErrorCode.OVERLOADED, "too many streams open"
        elif not envelope.target:
            refusal = StreamErrorCode.PROTOCOL_ERROR, "REQUEST names no target"
        else:
            try:
                head = decode_request_head(payload)
            except MalformedFrame as exc:
                refusal = StreamErrorCode.PROTOCOL_ERROR, str(exc)
        if head is None:
            assert refusal is not None
            code, message = refusal
            # DATA already behind it is dropped as late, returning its credit.
            self._seal_reset(stream_id, Reset(code, False, message))
            return

        stream = self._streams[stream_id] = _Stream(
            stream_id, self.settings.stream_window
        )
        stream.remote_head = True
        events.append(
            RequestReceived(stream_id, envelope.target, head, envelope.end_stream)
        )
        if envelope.end_stream:
            self._transition(stream, _I.RECV_END)
            events.append(StreamEnded(stream_id))

    def _receive_response(
        self, envelope: Envelope, payload: bytes, events: list[Event]
    ) -> None:
        if self.role is not Role.HUB:
            raise MalformedFrame("RESPONSE frame sent to the agent")
        stream = self._known_stream(envelope.stream_id)
        if stream is None:
            return
        if stream.remote_head or (stream.state, _I.RECV_DATA) not in _TRANSITIONS:
            self._stream_violation(stream, "RESPONSE out of turn", events)
            return
        try:
            head = decode_response_head(payload)
        except MalformedFrame as exc:
            self._stream_violation(stream, str(exc), events)
            return
        stream.remote_head = True
        events.append(ResponseReceived(stream.id, head, envelope.end_stream))
        if envelope.end_stream:
            self._transition(stream, _I.RECV_END)
            events.append(StreamEnded(stream.id))

    def _receive_data_frame(
        self, envelope: Envelope, payload: bytes, events: list[Event]
    ) -> None:
        size = len(payload)
        if size > self._recv_credit:
            raise FlowControlError(
                f"{size} bytes of DATA with {self._recv_credit} of session credit"
            )
        self._recv_credit -= size

        stream = self._known_stream(envelope.stream_id)
        if stream is None:
            # Late data for a stream already gone: drop it, return the credit.
            self._acknowledge_session(size)
            return
        if size > stream.recv_credit:
            raise FlowControlError(
                f"{size} bytes of DATA on stream {stream.id} with "
                f"{stream.recv_credit} of stream credit"
            )
        stream.recv_credit -= size
        stream.unacked += size
        if not stream.remote_head or (stream.state, _I.RECV_DATA) not in _TRANSITIONS:
            self._stream_violation(stream, "DATA out of turn", events)
            return

        if payload:
            events.append(DataReceived(stream.id, payload))
        if envelope.end_stream:
            self._transition(stream, _I.RECV_END)
            events.append(StreamEnded(stream.id))

    def _receive_reset(
        self, envelope: Envelope, payload: bytes, events: list[Event]
    ) -> None:
        reset = decode_reset(payload)
        stream = self._known_stream(envelope.stream_id)
        if stream is None or stream.state is _S.CLOSED:
            return
        self._drop(stream)
        events.append(
            StreamReset(
                stream.id, reset.code, reset.message, reset.may_have_reached_target
            )
        )

    def _receive_window(
        self, envelope: Envelope, payload: bytes, events: list[Event]
    ) -> None:
        increment = decode_window(payload)
        if envelope.stream_id == 0:
            self._send_credit += increment
            if self._send_credit > MAX_WINDOW:
                raise FlowControlError("session window grew past 2**31-1")
            events.append(WindowUpdated(0))
            return
        stream = self._known_stream(envelope.stream_id)
        if stream is None:
            return
        stream.send_credit += increment
        if stream.send_credit > MAX_WINDOW:
            raise FlowControlError(f"stream {stream.id} window grew past 2**31-1")
        events.append(WindowUpdated(stream.id))

    def _known_stream(self, stream_id: int) -> _Stream | None:
        """The stream a frame is about, or None for one already gone.

        A stream id never opened is a session error: it cannot be a race.
        """
        if stream_id == 0 or stream_id > self._last_stream_id:
            raise MalformedFrame(f"frame for stream {stream_id}, never opened")
        return self._streams.get(stream_id)

    def _stream_violation(
        self, stream: _Stream, message: str, events: list[Event]
    ) -> None:
        """The peer broke a stream's rules: reset it, keep the session."""
        reset = Reset(StreamErrorCode.PROTOCOL_ERROR, True, message)
        self._seal_reset(stream.id, reset)
        self._drop(stream)
        events.append(StreamReset(stream.id, reset.code, message, True))

    # ------------------------------------------------------------------
    # Sending

    def _seal(
        self, kind: Kind, payload: bytes, stream_id: int = 0, flags: int = 0
    ) -> None:
        sealer = self._sealer
        assert sealer is not None
        self._outbox.append(
            sealer.seal(kind, payload, stream_id=stream_id, flags=flags)
        )

    def _seal_reset(self, stream_id: int, reset: Reset) -> None:
        self._seal(Kind.RESET, encode_reset(reset), stream_id)

    def _require_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"the session is {self.state.value}")

    def _local_stream(self, stream_id: int, what: str) -> _Stream:
        self._require_open()
        stream = self._streams.get(stream_id)
        if stream is None or stream.state is _S.CLOSED:
            raise LocalProtocolError(f"cannot {what} on stream {stream_id}: not open")
        return stream

    def _transition(self, stream: _Stream, event: _Input) -> None:
        new = _TRANSITIONS.get((stream.state, event))
        if new is None:
            raise LocalProtocolError(
                f"cannot {event.value} on stream {stream.id} in state "
                f"{stream.state.value}"
            )
        stream.state = new
        if new is _S.CLOSED and stream.unacked == 0:
            del self._streams[stream.id]

    def open_stream(
        self, target: str, head: RequestHead, *, end_stream: bool = False
    ) -> int:
        """(hub) Send a request head to ``target``; return the stream id."""
        self._require_open()
        if self.role is not Role.HUB:
            raise LocalProtocolError("only the hub opens streams")
        if self.local_going_away or self.remote_going_away:
            raise LocalProtocolError("the session is going away; open no streams")
        try:
            name = target.encode("ascii")
            payload = encode_request_head(head)
            # Refuse here what the agent would refuse (a method that is not
            # an HTTP token), rather than spend a stream on it.
            check_method(head.method.encode("ascii"))
        except (UnicodeEncodeError, OverflowError, ValueError) as exc:
            raise LocalProtocolError(f"request head cannot be encoded: {exc}") from exc
        except MalformedFrame as exc:
            raise LocalProtocolError(f"request head is invalid: {exc}") from exc
        if not 0 < len(name) <= MAX_TARGET:
            raise LocalProtocolError(f"target name must be 1-{MAX_TARGET} bytes")
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError("request head is larger than one frame")

        stream_id = self._last_stream_id + 1
        if stream_id > MAX_STREAM_ID:
            # The id field is 32 bits; a session this old must be replaced.
            raise LocalProtocolError("stream ids are used up; open a new session")
        self._last_stream_id = stream_id
        stream = self._streams[stream_id] = _Stream(
            stream_id, self.settings.stream_window
        )
        stream.local_head = True
        assert self._sealer is not None
        flags = FLAG_END_STREAM if end_stream else 0
        self._outbox.append(
            self._sealer.seal(
                Kind.REQUEST, payload, stream_id=stream_id, flags=flags, target=target
            )
        )
        if end_stream:
            self._transition(stream, _I.SEND_END)
        return stream_id

    def send_response(
        self, stream_id: int, head: ResponseHead, *, end_stream: bool = False
    ) -> None:
        """(agent) Send the head of the target's answer."""
        if self.role is not Role.AGENT:
            raise LocalProtocolError("only the agent sends responses")
        stream = self._local_stream(stream_id, "send a response")
        if stream.local_head or (stream.state, _I.SEND_DATA) not in _TRANSITIONS:
            raise LocalProtocolError(f"response already sent on stream {stream_id}")
        try:
            payload = encode_response_head(head)
            # Refuse here what the hub would refuse (a status outside
            # 100-599), rather than have the hub reset the stream.
            check_status(head.status)
        except (OverflowError, ValueError) as exc:
            raise LocalProtocolError(f"response head cannot be encoded: {exc}") from exc
        except MalformedFrame as exc:
            raise LocalProtocolError(f"response head is invalid: {exc}") from exc
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError("response head is larger than one frame")
        stream.local_head = True
        self._seal(
            Kind.RESPONSE, payload, stream_id, FLAG_END_STREAM if end_stream else 0
        )
        if end_stream:
            self._transition(stream, _I.SEND_END)

    def send_data(
        self, stream_id: int, data: bytes, *, end_stream: bool = False
    ) -> None:
        """Send a body chunk of at most :meth:`send_window` bytes."""
        stream = self._local_stream(stream_id, "send data")
        if not stream.local_head:
            raise LocalProtocolError(f"no head sent yet on stream {stream_id}")
        size = len(data)
        if size > self.send_window(stream_id):
            raise LocalProtocolError(
                f"{size} bytes exceed the send window of stream {stream_id} "
                f"({self.send_window(stream_id)})"
            )
        event = _I.SEND_END if end_stream else _I.SEND_DATA
        if (stream.state, event) not in _TRANSITIONS:
            raise LocalProtocolError(
                f"cannot send data on stream {stream_id} in state {stream.state.value}"
            )
        stream.send_credit -= size
        self._send_credit -= size
        self._seal(Kind.DATA, data, stream_id, FLAG_END_STREAM if end_stream else 0)
        self._transition(stream, event)

    def end_stream(self, stream_id: int) -> None:
        """Finish our side of the stream with an empty DATA frame."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(
        self,
        stream_id: int,
        code: StreamErrorCode,
        message: str = "",
        *,
        may_have_reached_target: bool = True,
    ) -> None:
        """Abandon a stream; the peer gets a StreamReset.

        Resetting a stream that is already gone does nothing, so both ends
        may cancel at the same time without error.
        """
        self._require_open()
        stream = self._streams.get(stream_id)
        if stream is None or stream.state is _S.CLOSED:
            if stream is None and not 0 < stream_id <= self._last_stream_id:
                raise LocalProtocolError(f"stream {stream_id} was never opened")
            if stream is not None:
                # Finished both ways but kept for unacknowledged bytes: send
                # nothing, but release them, or their session credit leaks.
                self._drop(stream)
            return
        self._seal_reset(stream_id, Reset(code, may_have_reached_target, message))
        self._drop(stream)

    def _drop(self, stream: _Stream) -> None:
        """Forget a stream; bytes it held unacknowledged go back to the
        session window, since nobody will consume them now."""
        self._streams.pop(stream.id, None)
        stream.state = _S.CLOSED
        if stream.unacked:
            unacked, stream.unacked = stream.unacked, 0
            self._acknowledge_session(unacked)

    def acknowledge_data(self, stream_id: int, size: int) -> None:
        """Say that ``size`` received bytes of a stream were consumed.

        The credit goes back to the peer in batches. Acknowledging a stream
        that was reset does nothing (its bytes were returned then).
        """
        if size < 0:
            raise LocalProtocolError("cannot acknowledge a negative size")
        stream = self._streams.get(stream_id)
        if stream is None or self.state is not ConnectionState.OPEN:
            return
        if size > stream.unacked:
            raise LocalProtocolError(
                f"acknowledging {size} bytes on stream {stream_id}, only "
                f"{stream.unacked} arrived"
            )
        stream.unacked -= size
        self._acknowledge_session(size)

        if stream.state is _S.CLOSED:
            if stream.unacked == 0:
                del self._streams[stream_id]
            return
        if stream.state is _S.HALF_CLOSED_REMOTE:
            return  # nothing more will come; no credit to return
        stream.pending_ack += size
        if stream.pending_ack >= self.settings.stream_window // 4:
            increment, stream.pending_ack = stream.pending_ack, 0
            stream.recv_credit += increment
            self._seal(Kind.WINDOW, encode_window(increment), stream_id)

    def _acknowledge_session(self, size: int) -> None:
        self._pending_ack += size
        if self._pending_ack >= self.settings.session_window // 4:
            increment, self._pending_ack = self._pending_ack, 0
            self._recv_credit += increment
            self._seal(Kind.WINDOW, encode_window(increment))

    def send_info(self, info: dict[str, object]) -> None:
        """Describe this end to the peer (a small JSON object)."""
        self._require_open()
        try:
            # Strict JSON (no NaN): the peer may not be this implementation.
            text = json.dumps(info, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise LocalProtocolError(f"info record is not JSON: {exc}") from exc
        payload = text.encode("utf-8")
        if len(payload) > MAX_PAYLOAD:
            raise LocalProtocolError("info record is larger than one frame")
        self._seal(Kind.INFO, payload)

    def ping(self, payload: bytes) -> None:
        """Send a PING; the peer echoes ``payload`` in a PONG."""
        self._require_open()
        if len(payload) > MAX_PING:
            raise LocalProtocolError(f"ping payload over {MAX_PING} bytes")
        self._seal(Kind.PING, payload)

    def go_away(self, reason: str = "") -> None:
        """Announce that this end opens and accepts no new streams."""
        self._require_open()
        self.local_going_away = True
        self._seal(Kind.GOAWAY, encode_goaway(self._last_stream_id, reason))
