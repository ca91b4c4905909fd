"""The frame layout and payload encodings (trustelem_relay._frames)."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustelem_relay._errors import (
    FrameTooLarge,
    MalformedFrame,
    StreamErrorCode,
)
from trustelem_relay._events import RequestHead, ResponseHead
from trustelem_relay._frames import (
    FLAG_END_STREAM,
    FLAG_FROM_HUB,
    HEADER_SIZE,
    MAC_SIZE,
    MAX_FRAME_LENGTH,
    MAX_PAYLOAD,
    MAX_TARGET,
    Envelope,
    FrameReader,
    Kind,
    Reset,
    _Reader,
    check_method,
    check_status,
    decode_goaway,
    decode_request_head,
    decode_reset,
    decode_response_head,
    decode_window,
    encode_frame,
    encode_goaway,
    encode_header,
    encode_request_head,
    encode_reset,
    encode_response_head,
    encode_window,
)

# --------------------------------------------------------------------------
# Strategies

targets = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    max_size=MAX_TARGET,
)
frames = st.builds(
    lambda version, kind, flags, stream, counter, target, body: Envelope(
        version=version,
        kind=kind,
        flags=flags,
        stream_id=stream,
        counter=counter,
        target=target,
        header=encode_header(version, kind, flags, stream, counter, target),
        body=body,
    ),
    st.integers(0, 255),
    st.sampled_from(Kind),
    st.sampled_from([0, FLAG_END_STREAM, FLAG_FROM_HUB, 3]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    targets,
    st.binary(max_size=300),
)
token = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    min_size=1,
    max_size=20,
)
ascii_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=200
)
headers = st.lists(
    st.tuples(st.binary(max_size=40), st.binary(max_size=200)), max_size=8
).map(tuple)
request_heads = st.builds(
    RequestHead,
    method=token,
    scheme=st.sampled_from(["http", "https"]),
    authority=ascii_text,
    path=ascii_text,
    headers=headers,
    timeout=st.one_of(st.none(), st.integers(1, 2**32 - 1).map(lambda ms: ms / 1000)),
)
response_heads = st.builds(
    ResponseHead,
    status=st.integers(100, 599),
    headers=headers,
    reason=st.binary(max_size=60),
)


def frame_bytes(envelope: Envelope) -> bytes:
    return encode_frame(envelope.header, envelope.body)


def cut(data: bytes, generator: random.Random) -> list[bytes]:
    """Cut ``data`` at random points, empty pieces included."""
    pieces = []
    offset = 0
    while offset < len(data):
        size = generator.randint(0, 40)
        pieces.append(data[offset : offset + size])
        offset += size
    return pieces


# --------------------------------------------------------------------------
# The envelope and the reader


@given(st.lists(frames, max_size=8), st.randoms(use_true_random=False))
def test_frames_survive_any_chunking(
    envelopes: list[Envelope], generator: random.Random
) -> None:
    stream = b"".join(frame_bytes(e) for e in envelopes)
    reader = FrameReader()
    parsed: list[Envelope] = []
    for piece in cut(stream, generator):
        parsed += reader.feed(piece)
    assert parsed == envelopes
    assert reader.buffered == 0


@given(frames)
def test_reader_keeps_an_incomplete_frame_until_the_rest_arrives(
    envelope: Envelope,
) -> None:
    data = frame_bytes(envelope)
    reader = FrameReader()
    assert reader.feed(data[:-1]) == []
    assert reader.buffered == len(data) - 1
    assert reader.feed(data[-1:]) == [envelope]
    assert reader.buffered == 0


def test_header_layout_matches_the_specification() -> None:
    header = encode_header(1, Kind.REQUEST, FLAG_END_STREAM, 7, 0x0102, "scim")
    frame = encode_frame(header, b"body")
    assert HEADER_SIZE == 20
    assert frame[:4] == (len(frame) - 4).to_bytes(4, "big")
    assert frame[4] == 1
    assert frame[5] == Kind.REQUEST
    assert frame[6] == FLAG_END_STREAM
    assert frame[7:11] == (7).to_bytes(4, "big")
    assert frame[11:19] == (0x0102).to_bytes(8, "big")
    assert frame[19] == 4
    assert frame[20:24] == b"scim"
    assert frame[24:] == b"body"


def test_frame_limit_covers_a_full_payload_with_the_longest_target() -> None:
    header_part = HEADER_SIZE - 4 + MAX_TARGET
    assert 2 * header_part + MAC_SIZE + MAX_PAYLOAD == MAX_FRAME_LENGTH


def test_oversized_length_is_refused_from_the_prefix_alone() -> None:
    reader = FrameReader()
    with pytest.raises(FrameTooLarge, match="limit"):
        reader.feed((MAX_FRAME_LENGTH + 1).to_bytes(4, "big"))


def test_largest_allowed_length_waits_for_its_bytes() -> None:
    reader = FrameReader()
    assert reader.feed(MAX_FRAME_LENGTH.to_bytes(4, "big")) == []
    assert reader.buffered == 4


def _raw(length_fix: int | None, rest: bytes) -> bytes:
    length = len(rest) if length_fix is None else length_fix
    return struct.pack(">I", length) + rest


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_raw(None, b"\x01\x20\x00"), "shorter than a header"),
        (_raw(None, struct.pack(">BBBIQB", 1, 0x7F, 0, 0, 0, 0)), "unknown frame kind"),
        (_raw(None, struct.pack(">BBBIQB", 1, 0x22, 0x04, 0, 0, 0)), "unknown flags"),
        (_raw(None, struct.pack(">BBBIQB", 1, 0x22, 0, 0, 0, 64)), "target name of 64"),
        (
            _raw(None, struct.pack(">BBBIQB", 1, 0x20, 0, 1, 0, 5) + b"ab"),
            "inside its target",
        ),
        (
            _raw(None, struct.pack(">BBBIQB", 1, 0x20, 0, 1, 0, 2) + b"\xc3\xa9"),
            "not ASCII",
        ),
    ],
)
def test_malformed_envelopes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(MalformedFrame, match=message):
        FrameReader().feed(data)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.randoms(use_true_random=False))
def test_random_bytes_give_envelopes_or_a_remote_error(
    data: bytes, generator: random.Random
) -> None:
    reader = FrameReader()
    try:
        for piece in cut(data, generator):
            for envelope in reader.feed(piece):
                assert isinstance(envelope, Envelope)
    except (MalformedFrame, FrameTooLarge):
        # The only two errors the reader may raise; anything else escapes.
        pass


def test_end_stream_property_reads_the_flag() -> None:
    (envelope,) = FrameReader().feed(
        encode_frame(encode_header(1, Kind.DATA, FLAG_END_STREAM, 1, 0), b"")
    )
    assert envelope.end_stream
    (envelope,) = FrameReader().feed(
        encode_frame(encode_header(1, Kind.DATA, FLAG_FROM_HUB, 1, 0), b"")
    )
    assert not envelope.end_stream


# --------------------------------------------------------------------------
# Payload encodings


@given(request_heads)
def test_request_head_round_trips(head: RequestHead) -> None:
    assert decode_request_head(encode_request_head(head)) == head


@given(response_heads)
def test_response_head_round_trips(head: ResponseHead) -> None:
    assert decode_response_head(encode_response_head(head)) == head


# Any head, well formed or not: what a sender might be asked to encode.
any_request_heads = st.builds(
    RequestHead,
    method=st.one_of(token, st.text(max_size=300)),
    scheme=st.sampled_from(["http", "https", "ftp"]),
    authority=st.text(max_size=50),
    path=st.text(max_size=50),
    headers=headers,
    timeout=st.one_of(st.none(), st.floats(allow_nan=False, min_value=0)),
)
any_response_heads = st.builds(
    ResponseHead,
    status=st.integers(-1, 70000),
    headers=headers,
    reason=st.binary(max_size=60),
)


def _sender_check_agrees_with_decoding(
    encode: Callable[[], bytes],
    check: Callable[[], None],
    decode: Callable[[bytes], object],
    refusal: str,
) -> None:
    """A head that encodes decodes, unless the sender's check refuses it,
    and then decoding refuses it too."""
    try:
        payload = encode()
    except (UnicodeEncodeError, OverflowError, ValueError):
        return
    try:
        check()
    except MalformedFrame:
        with pytest.raises(MalformedFrame, match=refusal):
            decode(payload)
    else:
        decode(payload)


@given(any_request_heads)
def test_a_request_head_that_encodes_decodes_unless_its_method_is_refused(
    head: RequestHead,
) -> None:
    # The sender checks the method instead of decoding its own head: no
    # other defect may reach the peer.
    _sender_check_agrees_with_decoding(
        lambda: encode_request_head(head),
        lambda: check_method(head.method.encode("ascii")),
        decode_request_head,
        "not an HTTP token",
    )


@given(any_response_heads)
def test_a_response_head_that_encodes_decodes_unless_its_status_is_refused(
    head: ResponseHead,
) -> None:
    _sender_check_agrees_with_decoding(
        lambda: encode_response_head(head),
        lambda: check_status(head.status),
        decode_response_head,
        "outside 100-599",
    )


def test_request_timeout_is_sent_in_whole_milliseconds_never_zero() -> None:
    head = RequestHead("GET", "https", "a", "/", timeout=0.0001)
    assert decode_request_head(encode_request_head(head)).timeout == 0.001
    huge = RequestHead("GET", "https", "a", "/", timeout=1e12)
    assert decode_request_head(encode_request_head(huge)).timeout == 0xFFFFFFFF / 1000


def test_request_head_layout_matches_the_specification() -> None:
    head = RequestHead(
        "GET", "https", "h:1", "/p", headers=((b"a", b"bc"),), timeout=1.5
    )
    assert encode_request_head(head) == (
        b"\x03GET" + b"\x01" + b"\x00\x03h:1" + b"\x00\x02/p"
        b"\x00\x00\x05\xdc" + b"\x00\x01" + b"\x00\x01a" + b"\x00\x02bc"
    )


def test_response_head_layout_matches_the_specification() -> None:
    head = ResponseHead(204, headers=((b"x", b""),), reason=b"No")
    assert encode_response_head(head) == (
        b"\x00\xcc" + b"\x00\x02No" + b"\x00\x01" + b"\x00\x01x" + b"\x00\x00"
    )


_GOOD_REQUEST = encode_request_head(RequestHead("GET", "http", "a", "/"))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "truncated"),
        (b"\x00" + _GOOD_REQUEST[4:], "not an HTTP token"),
        (b"\x03G T" + _GOOD_REQUEST[4:], "not an HTTP token"),
        (_GOOD_REQUEST[:4] + b"\x02" + _GOOD_REQUEST[5:], "scheme code 2"),
        (_GOOD_REQUEST + b"!", "trailing bytes"),
        (_GOOD_REQUEST[:-1], "truncated"),
        (_GOOD_REQUEST[:3], "truncated"),
        (_GOOD_REQUEST[:6], "truncated"),
        (_GOOD_REQUEST[:5] + b"\x00\x01\xff" + _GOOD_REQUEST[8:], "must be ASCII"),
    ],
)
def test_defective_request_heads_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(MalformedFrame, match=message):
        decode_request_head(payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x63\x00\x00\x00\x00", "outside 100-599"),
        (b"\x02\x58\x00\x00\x00\x00", "outside 100-599"),
        (b"\x00\xc8\x00\x05ab", "truncated"),
        (b"\x00\xc8\x00", "truncated"),
        (b"\x00\xc8\x00\x00\x00\x01\x00\x01a\x00\x02b", "truncated"),
        (b"\x00\xc8\x00\x00\x00\x00\x00", "trailing bytes"),
    ],
)
def test_defective_response_heads_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(MalformedFrame, match=message):
        decode_response_head(payload)


@given(
    st.sampled_from(StreamErrorCode),
    st.booleans(),
    st.text(max_size=200),
)
def test_reset_round_trips(code: StreamErrorCode, reached: bool, message: str) -> None:
    reset = Reset(code, reached, message)
    assert decode_reset(encode_reset(reset)) == reset


def test_reset_layout_and_message_bound() -> None:
    payload = encode_reset(Reset(StreamErrorCode.OVERLOADED, False, "x" * 2000))
    assert payload[:3] == b"\x00\x08\x00"
    assert len(payload) == 3 + 1024


def test_reset_with_an_unknown_code_reads_as_internal_error() -> None:
    reset = decode_reset(b"\x01\x00\x01gone")
    assert reset == Reset(StreamErrorCode.INTERNAL_ERROR, True, "gone")


def test_reset_with_invalid_utf8_keeps_the_outcome_flag() -> None:
    reset = decode_reset(b"\x00\x01\x00\xff")
    assert reset.code is StreamErrorCode.CANCELLED
    assert not reset.may_have_reached_target
    assert reset.message == "\ufffd"


@pytest.mark.parametrize("payload", [b"", b"\x00\x01", b"\x00\x01\x02"])
def test_defective_resets_are_refused(payload: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_reset(payload)


@given(st.integers(1, 2**32 - 1))
def test_window_round_trips(increment: int) -> None:
    assert decode_window(encode_window(increment)) == increment


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x00\x00\x00", "must not be zero"),
        (b"\x00\x00\x01", "truncated"),
        (b"\x00\x00\x00\x01\x00", "trailing"),
    ],
)
def test_defective_windows_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(MalformedFrame, match=message):
        decode_window(payload)


@given(st.integers(0, 2**32 - 1), st.text(max_size=100))
def test_goaway_round_trips(last: int, reason: str) -> None:
    assert decode_goaway(encode_goaway(last, reason)) == (last, reason)


def test_goaway_reason_is_bounded_and_truncated_payload_refused() -> None:
    assert len(encode_goaway(3, "r" * 5000)) == 4 + 1024
    with pytest.raises(MalformedFrame, match="GOAWAY payload is truncated"):
        decode_goaway(b"\x00\x01")


def test_payload_reader_refuses_invalid_utf8_text() -> None:
    reader = _Reader(b"ok\xff", "TEST")
    assert reader.text(2) == "ok"
    with pytest.raises(MalformedFrame, match="TEST payload has invalid UTF-8"):
        reader.text(1)
