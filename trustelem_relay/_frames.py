"""Frame layout: the envelope, the kinds, and the payload encodings.

Theory of operation
-------------------
The relay speaks in *frames*. Each websocket message carries exactly one, but
the layout is self-delimiting (a length prefix comes first), so the same codec
also runs over any byte stream and can be fed in arbitrary chunks.

Every frame starts with a fixed 20-byte header, then the target name, then
the body::

    length   u32   bytes after this field (header rest + target + body)
    version  u8    protocol version of the session (1)
    kind     u8    one of Kind
    flags    u8    bit 0: END_STREAM, bit 1: FROM_HUB
    stream   u32   stream (request) id; 0 for session-level frames
    counter  u64   sender's frame counter in this direction (0 in handshake)
    tlen     u8    length of the target name that follows
    target   tlen  ASCII target name, only on REQUEST frames

Handshake frames (HELLO, WELCOME, REJECT) carry their body in the clear.
Every other frame is *sealed*: the body is a NaCl secretbox of the header
bytes (from ``version`` to the end of ``target``) followed by the payload.
The receiver decrypts and checks that the sealed copy of the header equals
the one it parsed, which authenticates every envelope field although
secretbox has no associated data. This module only lays bytes out; the
sealing lives in :mod:`._session` and the rules in :mod:`._mux`.

Every integer is big-endian. All lengths are checked against fixed bounds
before any byte is buffered beyond them or decrypted.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

import attrs

from ._errors import FrameTooLarge, MalformedFrame, StreamErrorCode
from ._events import Headers, RequestHead, ResponseHead

#: Largest payload in one frame (a body chunk, a head, an info record).
MAX_PAYLOAD = 64 * 1024

#: Largest target name, in bytes.
MAX_TARGET = 63

#: Secretbox adds a 16-byte authenticator to what it seals.
MAC_SIZE = 16

#: ``length`` prefix, then version, kind, flags, stream, counter, tlen.
_PREFIX = struct.Struct(">I")
_HEADER = struct.Struct(">BBBIQB")
HEADER_SIZE = _PREFIX.size + _HEADER.size

#: The largest value the ``length`` field may take. A sealed frame carries
#: its header twice (once in the clear, once sealed), hence the doubling.
MAX_FRAME_LENGTH = 2 * (_HEADER.size + MAX_TARGET) + MAC_SIZE + MAX_PAYLOAD


class Kind(enum.IntEnum):
    """Frame kinds. Values below 0x10 are handshake frames, sent in clear."""

    HELLO = 0x01
    WELCOME = 0x02
    REJECT = 0x03
    CONFIRM = 0x10
    INFO = 0x11
    REQUEST = 0x20
    RESPONSE = 0x21
    DATA = 0x22
    RESET = 0x23
    WINDOW = 0x24
    PING = 0x30
    PONG = 0x31
    GOAWAY = 0x32


HANDSHAKE_KINDS = frozenset({Kind.HELLO, Kind.WELCOME, Kind.REJECT})

# Kind by wire value: a dict lookup, where calling Kind goes through the
# enum machinery on every frame.
_KINDS = {kind.value: kind for kind in Kind}

FLAG_END_STREAM = 0x01
FLAG_FROM_HUB = 0x02
_KNOWN_FLAGS = FLAG_END_STREAM | FLAG_FROM_HUB


class Envelope(NamedTuple):
    """A parsed frame header plus the raw body that followed it.

    ``header`` holds the bytes from ``version`` to the end of the target
    name: the part a sealed body must repeat. A named tuple, not a frozen
    attrs class: one is built per frame, and the frozen class's
    ``__init__`` took twice as long.
    """

    version: int
    kind: Kind
    flags: int
    stream_id: int
    counter: int
    target: str
    header: bytes
    body: bytes

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & FLAG_END_STREAM)


def encode_header(
    version: int,
    kind: Kind,
    flags: int,
    stream_id: int,
    counter: int,
    target: str = "",
) -> bytes:
    """Return the header bytes that follow the length prefix."""
    name = target.encode("ascii")
    return _HEADER.pack(version, kind, flags, stream_id, counter, len(name)) + name


def encode_frame(header: bytes, body: bytes) -> bytes:
    """Prefix ``header + body`` with its length."""
    return _PREFIX.pack(len(header) + len(body)) + header + body


class FrameReader:
    """Split a byte stream into :class:`Envelope` objects.

    Feed bytes with :meth:`feed`; each call returns the frames completed so
    far. An incomplete frame is kept until more bytes arrive ("need more
    data" is a normal outcome, not an error). A length prefix above
    :data:`MAX_FRAME_LENGTH` raises :class:`FrameTooLarge` as soon as the
    four bytes are seen, before anything else is buffered.
    """

    def __init__(self) -> None:
        # Bytes received but not yet parsed; never more than one frame.
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """How many bytes wait for the rest of their frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Envelope]:
        # Whole frames are parsed from ``data`` itself, and only what is
        # left of it (the start of a frame) is copied into the buffer; once
        # the buffer holds something, new bytes join it there.
        buffer = self._buffer
        source: bytes | bytearray = data
        if buffer:
            buffer += data
            source = buffer
        size = len(source)
        frames: list[Envelope] = []
        offset = 0

        # Parse as many whole frames as the bytes hold.
        while size - offset >= _PREFIX.size:
            (length,) = _PREFIX.unpack_from(source, offset)
            if length > MAX_FRAME_LENGTH:
                raise FrameTooLarge(
                    f"frame of {length} bytes announced, the limit is "
                    f"{MAX_FRAME_LENGTH}"
                )
            end = offset + _PREFIX.size + length
            if size < end:
                break
            frames.append(_parse(source, offset + _PREFIX.size, end))
            offset = end

        if source is buffer:
            del buffer[:offset]
        elif offset < size:
            buffer += data[offset:]
        return frames


def _parse(source: bytes | bytearray, start: int, end: int) -> Envelope:
    """Parse the frame at ``source[start:end]`` (after its length prefix)."""
    if end - start < _HEADER.size:
        raise MalformedFrame(f"frame of {end - start} bytes is shorter than a header")
    version, raw_kind, flags, stream_id, counter, tlen = _HEADER.unpack_from(
        source, start
    )

    kind = _KINDS.get(raw_kind)
    if kind is None:
        raise MalformedFrame(f"unknown frame kind 0x{raw_kind:02x}")
    if flags & ~_KNOWN_FLAGS:
        raise MalformedFrame(f"unknown flags 0x{flags:02x} on a {kind.name} frame")
    if tlen > MAX_TARGET:
        raise MalformedFrame(f"target name of {tlen} bytes, the limit is {MAX_TARGET}")

    header_end = start + _HEADER.size + tlen
    if end < header_end:
        raise MalformedFrame("frame ends inside its target name")
    try:
        target = source[start + _HEADER.size : header_end].decode("ascii")
    except UnicodeDecodeError:
        raise MalformedFrame("target name is not ASCII") from None

    # bytes() of a slice of bytes is that slice: no copy but the slice's.
    return Envelope(
        version=version,
        kind=kind,
        flags=flags,
        stream_id=stream_id,
        counter=counter,
        target=target,
        header=bytes(source[start:header_end]),
        body=bytes(source[header_end:end]),
    )


# --------------------------------------------------------------------------
# Payload encodings. Each ``decode_*`` raises MalformedFrame on any defect,
# including trailing bytes.


class _Reader:
    """A cursor over a payload that raises MalformedFrame when it runs dry."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise MalformedFrame(f"{self._what} payload is truncated")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def rest(self) -> bytes:
        chunk = self._data[self._offset :]
        self._offset = len(self._data)
        return chunk

    def finish(self) -> None:
        if self._offset != len(self._data):
            raise MalformedFrame(f"{self._what} payload has trailing bytes")

    def text(self, size: int) -> str:
        try:
            return self.take(size).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedFrame(f"{self._what} payload has invalid UTF-8") from None


_SCHEMES = ("http", "https")
# The characters of an HTTP token: deleting them from a method must leave
# nothing.
_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TOKEN_CHARS += b"abcdefghijklmnopqrstuvwxyz"

# The heads are read with ``struct`` at running offsets rather than through
# _Reader: they are decoded twice per request (a check before sending, then
# by the peer), and the cursor's method calls were most of that time. A
# field cut short shows as ``struct.error`` from the next read, or as an end
# offset past the payload, both reported as truncation.
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
# Request head: scheme code and authority length; response head: status
# and reason length.
_SCHEME_AUTHORITY = struct.Struct(">BH")
_STATUS_REASON = struct.Struct(">HH")


def _encode_headers(headers: Headers) -> bytes:
    parts = [len(headers).to_bytes(2, "big")]
    for name, value in headers:
        parts += (len(name).to_bytes(2, "big"), name)
        parts += (len(value).to_bytes(2, "big"), value)
    return b"".join(parts)


def check_method(method: bytes) -> None:
    """Raise MalformedFrame unless ``method`` is an HTTP token.

    With :func:`check_status`, the only defects a decoder finds in a head
    that encoded: the sender checks these two instead of decoding its own
    head (a test holds the claim).
    """
    if not method or method.translate(None, _TOKEN_CHARS):
        raise MalformedFrame("REQUEST method is not an HTTP token")


def check_status(status: int) -> None:
    """Raise MalformedFrame unless ``status`` is within 100-599."""
    if not 100 <= status <= 599:
        raise MalformedFrame(f"RESPONSE status {status} is outside 100-599")


def _decode_headers(payload: bytes, offset: int, what: str) -> Headers:
    """Decode the header list that starts at ``offset`` and ends the payload."""
    unpack = _U16.unpack_from
    headers: list[tuple[bytes, bytes]] = []
    try:
        (count,) = unpack(payload, offset)
        offset += 2
        for _ in range(count):
            (size,) = unpack(payload, offset)
            start = offset + 2
            name_end = start + size
            (size,) = unpack(payload, name_end)
            offset = name_end + 2 + size
            headers.append((payload[start:name_end], payload[name_end + 2 : offset]))
    except struct.error:
        raise MalformedFrame(f"{what} payload is truncated") from None
    # Only the last value can end past the payload without a read failing.
    if offset > len(payload):
        raise MalformedFrame(f"{what} payload is truncated")
    if offset < len(payload):
        raise MalformedFrame(f"{what} payload has trailing bytes")
    return tuple(headers)


def encode_request_head(head: RequestHead) -> bytes:
    method = head.method.encode("ascii")
    authority = head.authority.encode("ascii")
    path = head.path.encode("ascii")
    timeout_ms = 0 if head.timeout is None else max(1, round(head.timeout * 1000))
    return b"".join(
        (
            bytes((len(method),)),
            method,
            bytes((_SCHEMES.index(head.scheme),)),
            len(authority).to_bytes(2, "big"),
            authority,
            len(path).to_bytes(2, "big"),
            path,
            min(timeout_ms, 0xFFFFFFFF).to_bytes(4, "big"),
            _encode_headers(head.headers),
        )
    )


def decode_request_head(payload: bytes) -> RequestHead:
    offset = 1 + payload[0] if payload else 1
    method = payload[1:offset]
    if offset > len(payload):
        raise MalformedFrame("REQUEST payload is truncated")
    check_method(method)
    try:
        scheme, size = _SCHEME_AUTHORITY.unpack_from(payload, offset)
        if scheme >= len(_SCHEMES):
            raise MalformedFrame(f"REQUEST scheme code {scheme} is unknown")
        offset += 3
        authority = payload[offset : offset + size]
        offset += size
        (size,) = _U16.unpack_from(payload, offset)
        offset += 2
        path = payload[offset : offset + size]
        offset += size
        (timeout_ms,) = _U32.unpack_from(payload, offset)
    except struct.error:
        raise MalformedFrame("REQUEST payload is truncated") from None
    headers = _decode_headers(payload, offset + 4, "REQUEST")
    if not authority.isascii() or not path.isascii():
        raise MalformedFrame("REQUEST authority and path must be ASCII")
    return RequestHead(
        method=method.decode("ascii"),
        scheme=_SCHEMES[scheme],
        authority=authority.decode("ascii"),
        path=path.decode("ascii"),
        headers=headers,
        timeout=timeout_ms / 1000 if timeout_ms else None,
    )


def encode_response_head(head: ResponseHead) -> bytes:
    return b"".join(
        (
            head.status.to_bytes(2, "big"),
            len(head.reason).to_bytes(2, "big"),
            head.reason,
            _encode_headers(head.headers),
        )
    )


def decode_response_head(payload: bytes) -> ResponseHead:
    try:
        status, size = _STATUS_REASON.unpack_from(payload)
    except struct.error:
        raise MalformedFrame("RESPONSE payload is truncated") from None
    check_status(status)
    reason = payload[4 : 4 + size]
    headers = _decode_headers(payload, 4 + size, "RESPONSE")
    return ResponseHead(status=status, headers=headers, reason=reason)


@attrs.frozen
class Reset:
    """The payload of a RESET frame."""

    code: StreamErrorCode
    may_have_reached_target: bool
    message: str


def encode_reset(reset: Reset) -> bytes:
    message = reset.message.encode("utf-8")[:1024]
    reached = 1 if reset.may_have_reached_target else 0
    return int(reset.code).to_bytes(2, "big") + bytes((reached,)) + message


def decode_reset(payload: bytes) -> Reset:
    reader = _Reader(payload, "RESET")
    raw_code = reader.u16()
    reached = reader.u8()
    if reached > 1:
        raise MalformedFrame("RESET outcome flag must be 0 or 1")
    message = reader.rest().decode("utf-8", errors="replace")
    try:
        code = StreamErrorCode(raw_code)
    except ValueError:
        # A newer peer may know more reasons; the outcome flag still holds.
        code = StreamErrorCode.INTERNAL_ERROR
    return Reset(code, bool(reached), message)


def encode_window(increment: int) -> bytes:
    return increment.to_bytes(4, "big")


def decode_window(payload: bytes) -> int:
    reader = _Reader(payload, "WINDOW")
    increment = reader.u32()
    reader.finish()
    if increment == 0:
        raise MalformedFrame("WINDOW increment must not be zero")
    return increment


def encode_goaway(last_stream_id: int, reason: str) -> bytes:
    return last_stream_id.to_bytes(4, "big") + reason.encode("utf-8")[:1024]


def decode_goaway(payload: bytes) -> tuple[int, str]:
    reader = _Reader(payload, "GOAWAY")
    last_stream_id = reader.u32()
    return last_stream_id, reader.rest().decode("utf-8", errors="replace")
