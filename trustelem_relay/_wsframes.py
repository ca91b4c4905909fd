"""RFC 6455 frames after the opening handshake, without I/O.

Theory of operation
-------------------
A :class:`FrameCodec` turns bytes read from the peer into complete
messages, and messages into bytes to write; the caller does the reading
and the writing (``_websocket`` in Trio). It is built for the relay's
traffic: many small binary messages per read, and 64 KiB ones in bulk, so
the work per message is kept to a header parse, one copy of the payload
and, from a client, one mask.

Receiving. :meth:`FrameCodec.receive_data` appends the read to a buffer
and parses it from an offset: headers with :mod:`struct`, each payload
copied out once (unmasked on the way by the server), and the buffer
trimmed once per read, not per frame. When the next frame is not all
there the codec remembers how many bytes it needs and does not parse again
before it has them. Fragmented messages (section 5.4) are accepted and
joined once complete; control frames may come between their fragments.
A ping is answered with a pong, queued for :meth:`FrameCodec.data_to_send`,
unless our close frame has gone: nothing may follow it.

Every rule the peer breaks ends the connection: the codec queues a close
frame with the code section 7.4.1 gives (1002 for a frame that breaks
section 5: reserved bits, unknown opcodes, control frames over 125 bytes
or fragmented, a masked frame to a client or an unmasked one to a server,
a continuation with nothing to continue, an invalid close payload; 1007
for text or a close reason that is not UTF-8; 1009 for a message over
``max_message_size``, known from the header, before its payload is
buffered) and sets :attr:`FrameCodec.close`. So does the peer's own close
frame (answered when we had not closed first, section 5.5.1) and the end of
the stream (1006). Once ``close`` is set nothing more is parsed.

Sending. :meth:`FrameCodec.send_messages` frames each message as one
unfragmented binary frame and joins headers and payloads into one
``bytes``. A client masks every frame (section 5.3) with a fresh key;
keys come from a pool of 4 KiB drawn from the random source at once, 1,024
keys per system call instead of one, each used once and unpredictable as
long as the source is (``os.urandom`` unless a test injects another).

Masking is the costliest step of a client's bulk transfer: the C function
of the ``websockets`` package (``websockets.speedups.apply_mask``) masks
at about 0.03 ms per MiB, where the best pure-Python masker measured here
takes 1.1 ms (see docs/performance.md). Without that package the codec
uses :func:`python_apply_mask`, which gives the same bytes.

Deliberately not done: extensions (so the reserved bits must be zero),
sending fragmented messages or pings, and any timing: the caller decides
how long to wait for the peer's close frame.
"""

from __future__ import annotations

import enum
import os
import struct
from collections.abc import Callable
from typing import NamedTuple

from ._errors import LocalProtocolError

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_NO_STATUS",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "Close",
    "CodecState",
    "FrameCodec",
    "apply_mask",
    "python_apply_mask",
]

#: Something that holds bytes: what reads return and masks accept.
Buffer = bytes | bytearray | memoryview

# Opcodes (section 5.2).
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Close codes (section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

#: Codes a close frame may carry below 3000 (section 7.4.1, and 1012-1014
#: from the IANA registry); 3000-4999 are all allowed.
_VALID_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})

#: Codes that describe a close but must never travel in a frame.
_LOCAL_ONLY_CODES = frozenset({CLOSE_NO_STATUS, CLOSE_ABNORMAL, 1015})

#: A control frame's payload limit (section 5.5); a close reason gets what
#: the two-byte code leaves.
_MAX_CONTROL = 125
_MAX_REASON = _MAX_CONTROL - 2

# First byte of an unfragmented binary frame: FIN and the opcode.
_FIN = 0x80
_FIN_BINARY = _FIN | OP_BINARY
_MASK_BIT = 0x80

# Headers by payload length: 7 bits, then 16, then 64 (section 5.2).
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_SHORT_MASKED = struct.Struct("!BB4s")
_MEDIUM_MASKED = struct.Struct("!BBH4s")
_LONG_MASKED = struct.Struct("!BBQ4s")
_UINT16 = struct.Struct("!H")
_UINT64 = struct.Struct("!Q")

#: Bytes of randomness drawn at once for masking keys.
KEY_POOL_SIZE = 4096

# ----------------------------------------------------------------------------
# Masking

#: The byte values 0-255 as one big integer.
_ALL_BYTES = int.from_bytes(bytes(range(256)), "big")

#: For each key byte, the table that XORs a byte with it. Built with one
#: big-integer XOR each: 0.2 ms at import, against 4 ms byte by byte.
_XOR_TABLES = [
    (_ALL_BYTES ^ int.from_bytes(bytes((key,)) * 256, "big")).to_bytes(256, "big")
    for key in range(256)
]

#: Below this length one big-integer XOR beats four ``translate`` calls.
_SMALL_MASK = 512


def python_apply_mask(data: Buffer, key: bytes | bytearray) -> bytes:
    """XOR ``data`` with the 4-byte ``key`` repeated (section 5.3).

    The fallback when ``websockets.speedups`` is missing. Measured on the
    benchmark machine: for 64 KiB, translating each of the four byte lanes
    through a table takes 71 µs, one XOR of two big integers 184 µs; for
    16 bytes the integers win (0.45 against 1.1 µs), so both are used.
    """
    size = len(data)
    if size < _SMALL_MASK:
        if not size:
            return b""
        repeated = key * (size // 4 + 1)
        value = int.from_bytes(data, "little") ^ int.from_bytes(
            repeated[:size], "little"
        )
        return value.to_bytes(size, "little")
    # Byte i is XORed with key[i % 4]: each lane of every fourth byte is
    # one translate through its key byte's table.
    masked = bytearray(data)
    for lane in range(4):
        masked[lane::4] = masked[lane::4].translate(_XOR_TABLES[key[lane]])
    return bytes(masked)


apply_mask: Callable[[Buffer, bytes | bytearray], bytes]
try:
    # About 35 times faster than the fallback for 64 KiB (module docstring).
    from websockets.speedups import apply_mask
except ImportError:  # The test suite covers this branch in a copy of the module.
    apply_mask = python_apply_mask


# ----------------------------------------------------------------------------
# The codec


class CodecState(enum.Enum):
    """Where the close handshake stands (section 7)."""

    #: Messages flow both ways.
    OPEN = "open"
    #: We sent a close frame; the peer's has not arrived yet.
    CLOSING = "closing"
    #: Nothing more is sent or parsed.
    CLOSED = "closed"


class Close(NamedTuple):
    """How receiving ended: the peer's close frame, a violation or the end."""

    code: int
    reason: str


class _Violation(Exception):
    """The peer broke RFC 6455; ``code`` is the close code it earns."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameCodec:
    """One end of an open websocket's frame layer; see the module docstring.

    After :meth:`receive_data`, the caller writes :meth:`data_to_send` and
    then looks at :attr:`close`; :meth:`send_messages` and
    :meth:`send_close` return bytes for the caller to write, in the order
    of the calls.
    """

    def __init__(
        self,
        *,
        client: bool,
        max_message_size: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        #: True at the end that must mask its frames (the client's).
        self.client = client
        self._wrong_mask = (
            "masked frame to a client" if client else "unmasked frame to a server"
        )
        self.state = CodecState.OPEN
        #: Set once receiving ended; :attr:`state` is then CLOSED.
        self.close: Close | None = None
        self._max_message_size = max_message_size
        self._random_bytes = random_bytes
        # Unparsed input is _buffer[_offset:]; _owned says whether _buffer
        # is ours to grow (a read handed in is not) and _need how many
        # bytes from _offset the next parse waits for.
        self._buffer: bytes | bytearray = b""
        self._offset = 0
        self._owned = False
        self._need = 2
        # The fragmented message being received: its opcode (0 when there
        # is none), its payloads and their total length.
        self._fragment_opcode = 0
        self._fragments: list[bytes] = []
        self._fragment_size = 0
        # Frames the codec itself wants sent: pongs and the close reply.
        self._outgoing: list[bytes] = []
        # Masking keys: _keys[_key_offset:] are still unused.
        self._keys = b""
        self._key_offset = 0

    # ------------------------------------------------------------------
    # Receiving

    def receive_data(self, data: bytes | bytearray) -> list[bytes]:
        """Take one read from the peer; return the messages it completed.

        Empty ``data`` means the stream ended. Text messages are returned
        as their UTF-8 bytes. Once :attr:`close` is set, data is ignored.
        """
        if self.close is not None:
            return []
        if not data:
            self._end(Close(CLOSE_ABNORMAL, ""))
            return []

        # Append to what is left over, or parse the read where it lies.
        offset = self._offset
        buffer = self._buffer
        if offset < len(buffer):
            if isinstance(buffer, bytearray) and self._owned:
                del buffer[:offset]
            else:
                buffer = bytearray(memoryview(buffer)[offset:])
                self._owned = True
            buffer += data
        else:
            buffer = data
            self._owned = False
        self._buffer = buffer
        self._offset = 0
        if len(buffer) < self._need:
            return []

        messages: list[bytes] = []
        try:
            self._parse(messages)
        except _Violation as exc:
            self._fail(exc.code, exc.reason)
        if self._offset >= len(self._buffer):
            self._buffer = b""
            self._offset = 0
            self._owned = False
        return messages

    def _parse(self, messages: list[bytes]) -> None:
        """Parse every complete frame from ``_offset`` on."""
        buffer = self._buffer
        end = len(buffer)
        offset = self._offset
        expect_mask = 0 if self.client else _MASK_BIT
        unmask = apply_mask
        with memoryview(buffer) as view:
            while True:
                # The fixed two bytes, then the length and the key.
                if end - offset < 2:
                    self._need = 2
                    break
                first = buffer[offset]
                second = buffer[offset + 1]
                length = second & 0x7F
                header = 6 if second & _MASK_BIT else 2
                if length == 126:
                    header += 2
                elif length == 127:
                    header += 8
                if end - offset < header:
                    self._need = header
                    break
                if length == 126:
                    (length,) = _UINT16.unpack_from(buffer, offset + 2)
                    if length < 126:
                        raise _Violation(CLOSE_PROTOCOL_ERROR, "overlong length")
                elif length == 127:
                    (length,) = _UINT64.unpack_from(buffer, offset + 2)
                    if length < 0x10000 or length >> 63:
                        raise _Violation(CLOSE_PROTOCOL_ERROR, "bad 64-bit length")
                if second & _MASK_BIT != expect_mask:
                    raise _Violation(CLOSE_PROTOCOL_ERROR, self._wrong_mask)
                opcode = first & 0x0F
                if first != _FIN_BINARY or self._fragment_opcode:
                    self._check_header(first, opcode, length)
                elif length > self._max_message_size:
                    raise self._too_big()

                # The payload, copied out once (and unmasked on the way).
                total = header + length
                if end - offset < total:
                    self._need = total
                    break
                start = offset + header
                offset += total
                if expect_mask:
                    payload = unmask(view[start:offset], buffer[start - 4 : start])
                else:
                    payload = bytes(view[start:offset])

                if opcode == OP_BINARY and first & _FIN:
                    messages.append(payload)
                elif opcode < OP_CLOSE:
                    self._data_frame(first, opcode, payload, messages)
                else:
                    self._control_frame(opcode, payload)
                    if self.close is not None:
                        break
        self._offset = offset

    def _check_header(self, first: int, opcode: int, length: int) -> None:
        """The rules of section 5 for all but a lone binary frame."""
        if first & 0x70:
            raise _Violation(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise _Violation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if not first & _FIN:
                raise _Violation(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > _MAX_CONTROL:
                raise _Violation(CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes")
            return
        if opcode > OP_BINARY:
            raise _Violation(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if opcode == OP_CONTINUATION:
            if not self._fragment_opcode:
                raise _Violation(CLOSE_PROTOCOL_ERROR, "continuation of nothing")
            length += self._fragment_size
        elif self._fragment_opcode:
            raise _Violation(
                CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one"
            )
        if length > self._max_message_size:
            raise self._too_big()

    def _too_big(self) -> _Violation:
        return _Violation(CLOSE_TOO_BIG, f"message over {self._max_message_size} bytes")

    def _data_frame(
        self, first: int, opcode: int, payload: bytes, messages: list[bytes]
    ) -> None:
        """A text frame, or a fragment; the header is known to be valid."""
        if opcode != OP_CONTINUATION:
            if first & _FIN:
                _check_text(payload)
                messages.append(payload)
                return
            self._fragment_opcode = opcode
            self._fragments = [payload]
            self._fragment_size = len(payload)
            return
        self._fragments.append(payload)
        self._fragment_size += len(payload)
        if first & _FIN:
            message = b"".join(self._fragments)
            if self._fragment_opcode == OP_TEXT:
                _check_text(message)
            self._fragment_opcode = 0
            self._fragments = []
            self._fragment_size = 0
            messages.append(message)

    def _control_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            # Nothing follows our close frame, not even a pong.
            if self.state is CodecState.OPEN:
                self._outgoing.append(self._frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            close = _parse_close(payload)
            if self.state is CodecState.OPEN:
                # Section 5.5.1: answer with the same code (and reason).
                reply = _close_payload(close.code, close.reason)
                self._outgoing.append(self._frame(OP_CLOSE, reply))
            self._end(close)
        # A pong needs nothing: the relay does not send pings.

    def _fail(self, code: int, reason: str) -> None:
        """Close because of what the peer sent (section 7.1.7)."""
        if self.state is CodecState.OPEN:
            self._outgoing.append(self._frame(OP_CLOSE, _close_payload(code, reason)))
        self._end(Close(code, reason))

    def _end(self, close: Close) -> None:
        self.close = close
        self.state = CodecState.CLOSED
        # Nothing more is parsed: let the input go.
        self._buffer = b""
        self._fragments = []

    def data_to_send(self) -> bytes:
        """Frames the codec queued while receiving; empty if none."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing = []
        return data

    # ------------------------------------------------------------------
    # Sending

    def send_messages(self, messages: list[bytes]) -> bytes:
        """Frame each of ``messages`` as one binary message; join them.

        Raises :class:`LocalProtocolError` unless the codec is open.
        """
        if self.state is not CodecState.OPEN:
            raise LocalProtocolError(f"no message can be sent: {self.state.value}")
        pieces: list[bytes] = []
        append = pieces.append
        if not self.client:
            for message in messages:
                length = len(message)
                if length < 126:
                    append(_SHORT.pack(_FIN_BINARY, length))
                elif length < 0x10000:
                    append(_MEDIUM.pack(_FIN_BINARY, 126, length))
                else:
                    append(_LONG.pack(_FIN_BINARY, 127, length))
                append(message)
            return b"".join(pieces)
        mask = apply_mask
        next_key = self._next_key
        for message in messages:
            key = next_key()
            length = len(message)
            if length < 126:
                append(_SHORT_MASKED.pack(_FIN_BINARY, _MASK_BIT | length, key))
            elif length < 0x10000:
                append(_MEDIUM_MASKED.pack(_FIN_BINARY, _MASK_BIT | 126, length, key))
            else:
                append(_LONG_MASKED.pack(_FIN_BINARY, _MASK_BIT | 127, length, key))
            append(mask(message, key))
        return b"".join(pieces)

    def send_close(self, code: int = CLOSE_NORMAL, reason: str = "") -> bytes:
        """Start the close handshake; return the close frame to write.

        A code that must not travel (1005, 1006, 1015) is sent as 1000;
        the reason is cut to fit 123 bytes of UTF-8. Raises
        :class:`LocalProtocolError` unless the codec is open.
        """
        if self.state is not CodecState.OPEN:
            raise LocalProtocolError(f"the websocket is already {self.state.value}")
        self.state = CodecState.CLOSING
        return self._frame(OP_CLOSE, _close_payload(code, reason))

    def _next_key(self) -> bytes:
        """A masking key never used before, from the pool."""
        start = self._key_offset
        if start >= len(self._keys):
            self._keys = self._random_bytes(KEY_POOL_SIZE)
            start = 0
        self._key_offset = start + 4
        return self._keys[start : start + 4]

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        """One control frame (payload up to 125 bytes), masked by a client."""
        if not self.client:
            return _SHORT.pack(_FIN | opcode, len(payload)) + payload
        key = self._next_key()
        header = _SHORT_MASKED.pack(_FIN | opcode, _MASK_BIT | len(payload), key)
        return header + apply_mask(payload, key)


def _check_text(payload: bytes) -> None:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _Violation(CLOSE_INVALID_DATA, "text message not UTF-8") from None


def _parse_close(payload: bytes) -> Close:
    """The code and reason of a close frame (section 5.5.1)."""
    if not payload:
        return Close(CLOSE_NO_STATUS, "")
    if len(payload) == 1:
        raise _Violation(CLOSE_PROTOCOL_ERROR, "close payload of one byte")
    (code,) = _UINT16.unpack_from(payload)
    if code not in _VALID_CODES and not 3000 <= code <= 4999:
        raise _Violation(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise _Violation(CLOSE_INVALID_DATA, "close reason not UTF-8") from None
    return Close(code, reason)


def _close_payload(code: int, reason: str) -> bytes:
    if code == CLOSE_NO_STATUS:
        return b""
    if code in _LOCAL_ONLY_CODES:
        code = CLOSE_NORMAL
    # Cut at 123 bytes, dropping a character the cut split.
    encoded = reason.encode("utf-8")[:_MAX_REASON]
    return _UINT16.pack(code) + encoded.decode("utf-8", "ignore").encode("utf-8")
