"""A small websocket layer, driven by the caller's own tasks.

Theory of operation
-------------------
After the opening handshake, :class:`~._wsframes.FrameCodec` turns bytes
into messages and messages into bytes; this module adds the I/O, and
nothing else. wsproto does the opening handshake only: its frame layer
cost the relay a tenth of its CPU per small request and masked a MiB in
about 1 ms where the codec's masker takes 0.03 ms (docs/performance.md,
step 8).

A :class:`WebSocket` has no task of its own: whoever reads calls
:meth:`WebSocket.receive_messages`, which does one ``receive_some`` and
returns every binary message that read completed, in order (often
several, sometimes none). Whoever writes calls
:meth:`WebSocket.send_messages`, which frames all its messages and writes
them with one ``send_all``. A library with a reader task of its own hands
every message to the consumer through a channel: two task switches per
message on each side, which is what the relay's profile was made of.

Control frames are answered by the reader itself: a Ping gets its Pong, a
Close gets its reply (RFC 6455, section 5.5.1) and then raises
:class:`ConnectionClosed`. Since the reader may thus write while the
writer writes, every write goes through one FIFO lock, and a message is
framed under that lock, so that nothing is framed after a close frame.

A frame that breaks RFC 6455 closes the connection with the code the
codec chose (1002, 1007, or 1009 for a message over ``max_message_size``,
section 7.4.1); messages completed before it are handed over first. A
text message is handed over encoded as UTF-8: the relay's peers send only
binary messages, and the frame layer refuses what is not one of its frames.

The opening handshake is :func:`connect` (client) and :func:`accept`
(server), on wsproto. Bytes the peer sent right after its half of the
handshake are kept: h11 holds them once the protocol switched, and the
first :meth:`WebSocket.receive_messages` parses them before reading.

Deliberately not done: extensions (permessage-deflate would cost CPU on
sealed, incompressible frames), subprotocols, sending fragmented messages,
and a close timeout other than the caller's: :meth:`WebSocket.aclose`
waits at most ``close_timeout`` seconds for the peer's reply.
"""

from __future__ import annotations

import urllib.parse
from typing import cast

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from ._netstream import NetStream
from ._wsframes import CLOSE_ABNORMAL, CodecState, FrameCodec

__all__ = ["ConnectionClosed", "UpgradeFailed", "WebSocket", "accept", "connect"]

#: Bytes asked of the stream per read.
RECEIVE_SIZE = 256 * 1024

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


class ConnectionClosed(Exception):
    """The websocket is closed; ``code`` and ``reason`` are the close frame's.

    1006 means the connection ended without a close frame.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"websocket closed ({code} {reason})".replace(" )", ")"))
        self.code = code
        self.reason = reason


class UpgradeFailed(Exception):
    """The opening handshake did not complete.

    ``kind`` says how: ``"refused"`` (``status_code`` is the HTTP status),
    ``"closed"`` (the peer hung up), ``"timeout"`` or ``"invalid"`` (the
    answer broke RFC 6455, section 4).
    """

    def __init__(self, message: str, kind: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code


class WebSocket:
    """An open websocket over a trio stream; see the module docstring.

    One task at a time may call :meth:`receive_messages`; any task may send.
    The websocket owns the stream: :meth:`aclose` closes it.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        codec: FrameCodec,
        *,
        receive_size: int = RECEIVE_SIZE,
        trailing: bytes = b"",
    ) -> None:
        self._stream = stream
        self._codec = codec
        self._receive_size = receive_size
        # Held while framing and writing, by the writer or by the reader's
        # answers to control frames.
        self._send_lock = trio.StrictFIFOLock()
        # Set once the websocket is closed, by either side or by a failure.
        self._closed: ConnectionClosed | None = None
        self._stream_closed = False
        # Bytes that followed the handshake, parsed before the first read.
        self._trailing = trailing
        #: Messages of :meth:`send_messages` whose write has begun (all of
        #: a write that failed part-way count: any may have left).
        self.messages_sent = 0
        #: Seconds :meth:`aclose` waits for the peer's close frame.
        self.close_timeout = 2.0
        self._remote = _peer_name(stream)

    @property
    def closed(self) -> ConnectionClosed | None:
        """How the websocket closed, or None while it is open."""
        return self._closed

    @property
    def remote(self) -> str:
        """The peer's ``address:port``, or ``unknown``."""
        return self._remote

    # ------------------------------------------------------------------
    # Receiving

    async def receive_messages(self) -> list[bytes]:
        """Read once; return the messages that read completed, maybe none.

        Raises :class:`ConnectionClosed` once the websocket is closed: by
        the peer's close frame (after replying), by the end of the stream
        (1006) or by a frame that breaks the protocol (1002, 1007) or the
        size limit (1009), after sending a close frame with that code.
        """
        if self._closed is not None:
            raise ConnectionClosed(self._closed.code, self._closed.reason)
        if self._trailing:
            data: bytes | bytearray = self._trailing
            self._trailing = b""
            messages = await self._process(data)
            if messages:
                return messages
        try:
            data = await self._stream.receive_some(self._receive_size)
        except _STREAM_ERRORS:
            data = b""
        return await self._process(data)

    async def _process(self, data: bytes | bytearray) -> list[bytes]:
        """Parse one read; write the codec's answers; raise once closed."""
        codec = self._codec
        messages = codec.receive_data(data)
        answers = codec.data_to_send()
        close = codec.close
        if close is None:
            if answers:
                await self._send_raw(answers)
            return messages

        # The peer's close frame, a violation or the end of the stream.
        self._closed = ConnectionClosed(close.code, close.reason)
        if answers:
            try:
                await self._send_raw(answers)
            except ConnectionClosed:
                pass
        if messages:
            # Hand these over first; the next call raises.
            return messages
        raise ConnectionClosed(close.code, close.reason)

    # ------------------------------------------------------------------
    # Sending

    async def send_messages(self, messages: list[bytes]) -> None:
        """Send each of ``messages`` as one binary message, in one write.

        Raises :class:`ConnectionClosed` if the websocket is closed before
        or during the write; once the write began, any message of it may
        have reached the peer.
        """
        async with self._send_lock:
            if self._closed is not None or self._codec.state is not CodecState.OPEN:
                raise ConnectionClosed(*self._close_args())
            data = self._codec.send_messages(messages)
            self.messages_sent += len(messages)
            await self._write(data)

    def send_messages_nowait(self, messages: list[bytes]) -> bool:
        """Send ``messages`` as :meth:`send_messages` would, without waiting.

        Only over a :class:`~._netstream.NetStream`, and only while no other
        write is under way; False means nothing was sent and the caller
        should use :meth:`send_messages`. After True, a call to
        :meth:`send_messages` must follow while :attr:`needs_flush` is true.
        """
        stream = self._stream
        if (
            not isinstance(stream, NetStream)
            or self._send_lock.locked()
            or self._closed is not None
            or self._codec.state is not CodecState.OPEN
        ):
            return False
        data = self._codec.send_messages(messages)
        if not stream.send_nowait(data):
            return False
        self.messages_sent += len(messages)
        return True

    @property
    def needs_flush(self) -> bool:
        """Whether bytes of :meth:`send_messages_nowait` (or its failure)
        wait for the next :meth:`send_messages`."""
        stream = self._stream
        return isinstance(stream, NetStream) and stream.needs_flush

    async def send_message(self, message: bytes) -> None:
        """Send one binary message."""
        await self.send_messages([message])

    async def _send_raw(self, data: bytes) -> None:
        """Write the codec's own frames (answers and close frames)."""
        async with self._send_lock:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        # Called with the send lock held.
        try:
            await self._stream.send_all(data)
        except _STREAM_ERRORS:
            if self._closed is None:
                self._closed = ConnectionClosed(CLOSE_ABNORMAL, "connection lost")
            raise ConnectionClosed(*self._close_args()) from None

    def _close_args(self) -> tuple[int, str]:
        if self._closed is None:
            return CLOSE_ABNORMAL, "connection lost"
        return self._closed.code, self._closed.reason

    # ------------------------------------------------------------------
    # Closing

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the websocket and its stream; calling it again does nothing.

        Sends a close frame with ``code`` if the websocket is still open,
        waits up to :attr:`close_timeout` seconds for the peer's reply (not
        when another task is reading), then closes the stream, always.
        """
        if self._stream_closed:
            return
        codec = self._codec
        try:
            if self._closed is None and codec.state is CodecState.OPEN:
                sent = False
                try:
                    async with self._send_lock:
                        # The reader may have seen the peer's close meanwhile.
                        if codec.state is CodecState.OPEN:
                            await self._write(codec.send_close(code, reason))
                            sent = True
                except ConnectionClosed:
                    pass
                if sent:
                    self._closed = ConnectionClosed(code, reason)
                    with trio.move_on_after(self.close_timeout):
                        await self._wait_close_reply()
        finally:
            self._closed = self._closed or ConnectionClosed(code, reason)
            self._stream_closed = True
            with trio.move_on_after(self.close_timeout):
                # trio closes the stream even when this is cancelled.
                await self._stream.aclose()

    async def _wait_close_reply(self) -> None:
        # Messages that cross our close frame are dropped, and so are the
        # pongs the codec would send.
        codec = self._codec
        if self._trailing:
            codec.receive_data(self._trailing)
            self._trailing = b""
        while codec.state is CodecState.CLOSING:
            try:
                data = await self._stream.receive_some(self._receive_size)
            except (*_STREAM_ERRORS, trio.BusyResourceError):
                return
            if not data:
                return
            codec.receive_data(data)
            codec.data_to_send()


def _peer_name(stream: trio.abc.Stream) -> str:
    inner: object = stream
    if isinstance(inner, NetStream):
        inner = inner.transport
    while isinstance(inner, trio.SSLStream):
        inner = inner.transport_stream
    if not isinstance(inner, trio.SocketStream):
        return "unknown"
    try:
        peer = inner.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer) or "unknown"


# --------------------------------------------------------------------------
# The opening handshake


async def connect(
    stream: trio.abc.Stream,
    host: str,
    resource: str,
    *,
    max_message_size: int,
    timeout: float,
    receive_size: int = RECEIVE_SIZE,
) -> WebSocket:
    """Ask for the upgrade of ``resource`` on ``host``; return the websocket.

    Raises :class:`UpgradeFailed` when the server refuses, hangs up, sends
    something that is not a valid answer, or does not answer within
    ``timeout`` seconds. The caller still owns ``stream`` after a failure.
    """
    protocol = WSConnection(ConnectionType.CLIENT)
    data: bytes | bytearray = b"-"
    try:
        with trio.fail_after(timeout):
            await stream.send_all(protocol.send(Request(host=host, target=resource)))
            while True:
                data = await stream.receive_some(receive_size)
                protocol.receive_data(cast("bytes", data))
                for event in protocol.events():
                    if isinstance(event, AcceptConnection):
                        codec = FrameCodec(
                            client=True, max_message_size=max_message_size
                        )
                        return WebSocket(
                            stream,
                            codec,
                            receive_size=receive_size,
                            trailing=_trailing_data(protocol),
                        )
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        raise UpgradeFailed(
                            f"upgrade refused: HTTP {status}", "refused", status
                        )
                if not data:
                    raise UpgradeFailed("closed during the handshake", "closed")
    except trio.TooSlowError as exc:
        raise UpgradeFailed(f"no answer within {timeout:g} s", "timeout") from exc
    except _STREAM_ERRORS as exc:
        raise UpgradeFailed("closed during the handshake", "closed") from exc
    except RemoteProtocolError as exc:
        # h11 calls the end of the stream before a full answer an error.
        kind = "invalid" if data else "closed"
        raise UpgradeFailed(f"{kind} answer: {exc}", kind) from exc


async def accept(
    stream: trio.abc.Stream,
    *,
    path: str,
    max_message_size: int,
    timeout: float,
    receive_size: int = RECEIVE_SIZE,
) -> WebSocket | None:
    """Answer a client's upgrade request; return the websocket, or None.

    A request for another path than ``path`` (the query is ignored) gets a
    404, a malformed one a 400; a client that hangs up or does not finish
    its request within ``timeout`` seconds gets nothing. None means no
    websocket: the caller closes ``stream``.
    """
    protocol = WSConnection(ConnectionType.SERVER)
    with trio.move_on_after(timeout):
        try:
            while True:
                data = await stream.receive_some(receive_size)
                protocol.receive_data(cast("bytes", data))
                for event in protocol.events():
                    if isinstance(event, Request):
                        return await _answer(
                            stream, protocol, event, path, max_message_size
                        )
                if not data:
                    return None
        except _STREAM_ERRORS:
            return None
        except RemoteProtocolError as exc:
            try:
                await stream.send_all(protocol.send(exc.event_hint or _bad_request()))
            except (*_STREAM_ERRORS, LocalProtocolError):
                pass
            return None
    return None


def _bad_request() -> RejectConnection:
    return RejectConnection(status_code=400)


async def _answer(
    stream: trio.abc.Stream,
    protocol: WSConnection,
    request: Request,
    path: str,
    max_message_size: int,
) -> WebSocket | None:
    if urllib.parse.urlsplit(request.target).path != path:
        await stream.send_all(protocol.send(RejectConnection(status_code=404)))
        return None
    await stream.send_all(protocol.send(AcceptConnection()))
    codec = FrameCodec(client=False, max_message_size=max_message_size)
    return WebSocket(stream, codec, trailing=_trailing_data(protocol))


def _trailing_data(protocol: WSConnection) -> bytes:
    """What the peer sent after its half of the handshake.

    h11 keeps it once the protocol switched, on both ends; wsproto's own
    frame layer is not used (module docstring), so the bytes are taken
    from h11 and the rest of the handshake's state goes with ``protocol``.
    """
    trailing, _ = protocol.handshake._h11_connection.trailing_data
    return bytes(trailing)
