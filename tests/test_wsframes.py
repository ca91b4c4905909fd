"""The websocket frame codec: framing, masking, violations and closing.

wsproto serves as the independent reference: it decodes the frames our
client and server write, and writes frames for ours to decode.
"""

from __future__ import annotations

import importlib.util
import random
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from trustelem_relay import _wsframes
from trustelem_relay._errors import LocalProtocolError
from trustelem_relay._wsframes import (
    KEY_POOL_SIZE,
    Close,
    CodecState,
    FrameCodec,
    apply_mask,
    python_apply_mask,
)

LIMIT = 1 << 20

#: Lengths around each boundary of the three length encodings, and a
#: large one that the 64-bit encoding carries.
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 65537, 300_000]

messages = st.lists(
    st.one_of(
        st.binary(max_size=300),
        st.sampled_from(SIZES).map(lambda size: bytes(i % 251 for i in range(size))),
    ),
    max_size=6,
)


def cut(data: bytes, generator: random.Random) -> list[bytes]:
    """Cut ``data`` at random points, from single bytes to large pieces."""
    pieces = []
    offset = 0
    while offset < len(data):
        size = generator.choice([1, 2, 7, 100, 5000, 70_000, 1 << 20])
        pieces.append(data[offset : offset + size])
        offset += size
    return pieces


def pair(limit: int = LIMIT) -> tuple[FrameCodec, FrameCodec]:
    """A client codec and a server codec."""
    client = FrameCodec(client=True, max_message_size=limit)
    server = FrameCodec(client=False, max_message_size=limit)
    return client, server


def frame(
    first: int,
    payload: bytes = b"",
    *,
    key: bytes | None = None,
    length: bytes | None = None,
) -> bytes:
    """A raw frame: first byte, length (or ``length`` as given), payload.

    With ``key`` the frame is masked with it (what a client sends).
    """
    mask_bit = 0x80 if key is not None else 0
    if length is None:
        size = len(payload)
        if size < 126:
            length = bytes([mask_bit | size])
        elif size < 0x10000:
            length = bytes([mask_bit | 126]) + struct.pack("!H", size)
        else:
            length = bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if key is None:
        return bytes([first]) + length + payload
    return bytes([first]) + length + key + python_apply_mask(payload, key)


def to_server(first: int, payload: bytes = b"", **kwargs: bytes) -> bytes:
    """A raw frame as a client sends it: masked."""
    return frame(first, payload, key=b"\x12\x34\x56\x78", **kwargs)


def close_frame_of(data: bytes) -> tuple[int, bytes]:
    """Decode one close frame a codec queued: its code and reason."""
    reader = Connection(ConnectionType.CLIENT)
    if data[1] & 0x80:
        reader = Connection(ConnectionType.SERVER)
    reader.receive_data(data)
    (event,) = list(reader.events())
    assert isinstance(event, CloseConnection)
    return event.code, (event.reason or "").encode()


# --------------------------------------------------------------------------
# Round trips


@settings(max_examples=60, deadline=None)
@given(messages, st.randoms(use_true_random=False), st.booleans())
def test_messages_survive_any_chunking_both_ways(
    sent: list[bytes], generator: random.Random, from_client: bool
) -> None:
    client, server = pair()
    writer, reader = (client, server) if from_client else (server, client)
    received: list[bytes] = []
    for piece in cut(writer.send_messages(sent), generator):
        # Reads from TLS come as bytearrays, from TCP as bytes.
        data = bytearray(piece) if generator.random() < 0.5 else piece
        received += reader.receive_data(data)
    assert received == sent
    assert reader.data_to_send() == b""
    assert reader.close is None


@pytest.mark.parametrize("size", SIZES)
def test_a_frame_short_of_one_byte_waits_for_it(size: int) -> None:
    client, server = pair()
    message = bytes(size)
    data = client.send_messages([message])
    assert server.receive_data(data[:-1]) == []
    assert server.receive_data(data[-1:]) == [message]


def test_many_reads_of_one_large_frame_parse_it_once_complete() -> None:
    client, server = pair()
    data = client.send_messages([b"x" * 100_000, b"tail"])
    assert server.receive_data(data[:3]) == []
    # The last 12 bytes: the end of the large frame and the tail's 10.
    middle = data[3:-12]
    for offset in range(0, len(middle), 16384):
        assert server.receive_data(middle[offset : offset + 16384]) == []
    received = server.receive_data(data[-12:])
    assert received == [b"x" * 100_000, b"tail"]


def test_server_frames_are_unmasked_and_client_frames_masked() -> None:
    client, server = pair()
    assert server.send_messages([b"abc"]) == b"\x82\x03abc"
    data = client.send_messages([b"abc"])
    assert data[:2] == b"\x82\x83"
    assert python_apply_mask(data[6:], data[2:6]) == b"abc"


def test_each_frame_has_its_own_key_from_a_pool_drawn_at_once() -> None:
    draws: list[int] = []
    generator = random.Random(7)

    def random_bytes(size: int) -> bytes:
        draws.append(size)
        return generator.randbytes(size)

    client = FrameCodec(client=True, max_message_size=LIMIT, random_bytes=random_bytes)
    count = KEY_POOL_SIZE // 4 + 1
    data = client.send_messages([b""] * count)
    keys = [data[i + 2 : i + 6] for i in range(0, len(data), 6)]
    assert len(set(keys)) == count
    assert draws == [KEY_POOL_SIZE, KEY_POOL_SIZE]


# --------------------------------------------------------------------------
# Against wsproto, both ways


@settings(max_examples=30, deadline=None)
@given(messages)
def test_wsproto_reads_what_our_client_and_server_write(sent: list[bytes]) -> None:
    client, server = pair()
    for codec, kind in [
        (client, ConnectionType.SERVER),
        (server, ConnectionType.CLIENT),
    ]:
        reference = Connection(kind)
        reference.receive_data(codec.send_messages(sent))
        received: list[bytes] = []
        parts: list[bytes] = []
        for event in reference.events():
            # wsproto may hand a large payload over in parts.
            assert isinstance(event, BytesMessage)
            parts.append(bytes(event.data))
            if event.message_finished:
                received.append(b"".join(parts))
                parts = []
        assert received == sent


@settings(max_examples=30, deadline=None)
@given(messages, st.randoms(use_true_random=False))
def test_we_read_what_wsproto_clients_and_servers_write(
    sent: list[bytes], generator: random.Random
) -> None:
    client, server = pair()
    for codec, kind in [
        (server, ConnectionType.CLIENT),
        (client, ConnectionType.SERVER),
    ]:
        reference = Connection(kind)
        data = b"".join(reference.send(BytesMessage(m)) for m in sent)
        received: list[bytes] = []
        for piece in cut(data, generator):
            received += codec.receive_data(piece)
        assert received == sent


def test_wsproto_fragments_with_a_ping_between_them_are_joined() -> None:
    _, server = pair()
    reference = Connection(ConnectionType.CLIENT)
    data = (
        reference.send(BytesMessage(b"first ", message_finished=False))
        + reference.send(Ping(b"still there?"))
        + reference.send(BytesMessage(b"second ", message_finished=False))
        + reference.send(Pong(b"unasked"))
        + reference.send(BytesMessage(b"third"))
        + reference.send(TextMessage("caf\u00e9"))
    )
    assert server.receive_data(data) == [b"first second third", "caf\u00e9".encode()]

    reference.receive_data(server.data_to_send())
    assert list(reference.events()) == [Pong(b"still there?")]


def test_a_text_message_split_inside_a_character_is_accepted() -> None:
    _, server = pair()
    text = "\u20ac".encode()
    data = to_server(0x01, text[:1]) + to_server(0x80, text[1:])
    assert server.receive_data(data) == [text]


def test_a_ping_to_the_client_gets_a_masked_pong() -> None:
    client, _ = pair()
    assert client.receive_data(frame(0x89, b"hello")) == []
    reference = Connection(ConnectionType.SERVER)
    reference.receive_data(client.data_to_send())
    assert list(reference.events()) == [Pong(b"hello")]


# --------------------------------------------------------------------------
# Masking


@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_the_fallback_masker_equals_the_c_one(data: bytes, key: bytes) -> None:
    assert python_apply_mask(data, key) == apply_mask(data, key)
    assert python_apply_mask(memoryview(data), bytearray(key)) == apply_mask(data, key)


def test_the_fallback_masker_is_right_for_every_key_byte_and_value() -> None:
    data = bytes(range(256)) * 4
    for value in range(256):
        key = bytes([value, 255 - value, value ^ 0x5A, 7])
        assert python_apply_mask(data, key) == apply_mask(data, key)


def test_the_c_masker_is_used_when_websockets_is_installed() -> None:
    assert apply_mask is not python_apply_mask


def test_without_websockets_the_fallback_masks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A second copy of the module, loaded with the C masker unavailable.
    monkeypatch.setitem(sys.modules, "websockets.speedups", None)
    spec = importlib.util.spec_from_file_location(
        "trustelem_relay._wsframes_fallback", _wsframes.__file__
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "trustelem_relay"
    spec.loader.exec_module(module)
    assert module.apply_mask is module.python_apply_mask


# --------------------------------------------------------------------------
# Violations


def _to_server(first: int, payload: bytes = b"", **kwargs: bytes) -> tuple[bool, bytes]:
    return True, to_server(first, payload, **kwargs)


def _close(code: int, reason: bytes = b"") -> tuple[bool, bytes]:
    return _to_server(0x88, struct.pack("!H", code) + reason)


#: (what, to_server, data, close code); limit is 100 bytes.
VIOLATIONS = [
    ("RSV1", *_to_server(0xC2, b"x"), 1002),
    ("RSV2", *_to_server(0xA2, b"x"), 1002),
    ("RSV3", *_to_server(0x92, b"x"), 1002),
    ("reserved bit on a ping", *_to_server(0xC9), 1002),
    *[(f"opcode {op}", *_to_server(0x80 | op), 1002) for op in [3, 4, 5, 6, 7]],
    *[(f"opcode {op}", *_to_server(0x80 | op), 1002) for op in range(11, 16)],
    ("fragmented ping", *_to_server(0x09, b"x"), 1002),
    ("fragmented close", *_to_server(0x08), 1002),
    ("ping of 126 bytes", *_to_server(0x89, b"x" * 126), 1002),
    ("close of 126 bytes", *_close(1000, b"x" * 124), 1002),
    ("continuation of nothing", *_to_server(0x80, b"x"), 1002),
    ("fin continuation of nothing", *_to_server(0x00, b"x"), 1002),
    ("binary inside a fragmented", True, to_server(0x02) + to_server(0x82), 1002),
    ("text inside a fragmented", True, to_server(0x01) + to_server(0x81), 1002),
    ("unmasked to the server", True, frame(0x82, b"x"), 1002),
    ("masked to the client", False, to_server(0x82, b"x"), 1002),
    ("16-bit length under 126", *_to_server(0x82, b"x", length=b"\xfe\x00\x01"), 1002),
    ("64-bit length under 65536", *_to_server(0x82, length=b"\xff" + bytes(8)), 1002),
    ("64-bit length with the top bit", True, b"\x82\xff\x80" + bytes(11), 1002),
    ("close of one byte", *_to_server(0x88, b"\x03"), 1002),
    *[(f"close code {c}", *_close(c), 1002) for c in [0, 999, 1004, 1005, 1006]],
    *[(f"close code {c}", *_close(c), 1002) for c in [1015, 1016, 2999, 5000]],
    ("close reason not UTF-8", *_close(1000, b"\xff"), 1007),
    ("text not UTF-8", *_to_server(0x81, b"\xc3"), 1007),
    ("text not UTF-8 at the end", *_to_server(0x81, b"ok\xff"), 1007),
    ("binary over the limit", True, to_server(0x82, b"x" * 101)[:8], 1009),
    ("text over the limit", True, to_server(0x81, b"x" * 65536)[:14], 1009),
    ("first fragment over the limit", True, to_server(0x02, b"x" * 101)[:8], 1009),
]


@pytest.mark.parametrize(
    ("to_the_server", "data", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in VIOLATIONS],
)
def test_a_violation_closes_with_its_code(
    to_the_server: bool, data: bytes, code: int
) -> None:
    codec = FrameCodec(client=not to_the_server, max_message_size=100)
    assert codec.receive_data(data) == []
    assert codec.close is not None
    assert codec.close.code == code
    assert codec.state is CodecState.CLOSED
    assert close_frame_of(codec.data_to_send())[0] == code
    # Nothing more is parsed or answered.
    assert codec.receive_data(to_server(0x82, b"late")) == []
    assert codec.data_to_send() == b""


def test_a_fragmented_message_over_the_limit_is_refused_at_its_header() -> None:
    _, server = pair(limit=100)
    assert server.receive_data(to_server(0x02, b"x" * 60)) == []
    # Only the header of the second fragment: its length is enough.
    assert server.receive_data(to_server(0x80, b"x" * 41)[:6]) == []
    assert server.close == Close(1009, "message over 100 bytes")


def test_fragments_within_the_limit_are_accepted() -> None:
    _, server = pair(limit=100)
    data = to_server(0x02, b"x" * 60) + to_server(0x80, b"y" * 40)
    assert server.receive_data(data) == [b"x" * 60 + b"y" * 40]


def test_messages_before_a_violation_are_returned() -> None:
    _, server = pair()
    data = to_server(0x82, b"one") + to_server(0x82, b"two") + to_server(0xC2)
    assert server.receive_data(data) == [b"one", b"two"]
    assert server.close is not None
    assert server.close.code == 1002


def test_a_valid_close_code_from_the_private_range_is_accepted() -> None:
    for code in [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999]:
        _, server = pair()
        server.receive_data(to_server(0x88, struct.pack("!H", code)))
        assert server.close == Close(code, "")


@settings(max_examples=300)
@given(st.binary(max_size=300), st.randoms(use_true_random=False), st.booleans())
def test_random_bytes_give_messages_or_a_close_nothing_else(
    data: bytes, generator: random.Random, client: bool
) -> None:
    codec = FrameCodec(client=client, max_message_size=200)
    for piece in cut(data, generator):
        for message in codec.receive_data(piece):
            assert isinstance(message, bytes)
    if codec.close is not None:
        assert codec.state is CodecState.CLOSED


# --------------------------------------------------------------------------
# Closing


def test_the_peers_close_is_answered_with_its_code_and_reason() -> None:
    client, server = pair()
    data = client.send_messages([b"last"]) + client.send_close(4001, "replaced")
    assert server.receive_data(data) == [b"last"]
    assert server.close == Close(4001, "replaced")
    assert server.state is CodecState.CLOSED

    assert client.receive_data(server.data_to_send()) == []
    assert client.close == Close(4001, "replaced")
    assert client.state is CodecState.CLOSED
    assert client.data_to_send() == b""


def test_an_empty_close_is_1005_and_answered_empty() -> None:
    client, server = pair()
    server.receive_data(client.send_close(1005))
    assert server.close == Close(1005, "")
    assert server.data_to_send() == b"\x88\x00"


def test_codes_that_must_not_travel_are_sent_as_1000() -> None:
    for code in [1006, 1015]:
        client, server = pair()
        server.receive_data(client.send_close(code, "gone"))
        assert server.close == Close(1000, "gone")


def test_a_long_reason_is_cut_between_characters() -> None:
    _, server = pair()
    data = server.send_close(1000, "\u00e9" * 100)
    assert len(data) == 2 + 2 + 122
    assert close_frame_of(data) == (1000, "\u00e9".encode() * 61)


def test_nothing_is_sent_once_closing() -> None:
    client, _ = pair()
    client.send_close()
    assert client.state is CodecState.CLOSING
    with pytest.raises(LocalProtocolError):
        client.send_messages([b"late"])
    with pytest.raises(LocalProtocolError):
        client.send_close()


def test_a_ping_after_our_close_gets_no_pong() -> None:
    client, server = pair()
    server.send_close()
    assert server.receive_data(client.send_messages([b"crossing"])) == [b"crossing"]
    server.receive_data(to_server(0x89, b"ping"))
    assert server.data_to_send() == b""
    assert server.state is CodecState.CLOSING


def test_frames_after_the_close_frame_are_ignored() -> None:
    client, server = pair()
    data = client.send_close() + to_server(0x82, b"after")
    assert server.receive_data(data) == []
    assert server.close == Close(1000, "")
    assert server.receive_data(b"more") == []


def test_the_end_of_the_stream_is_1006() -> None:
    client, server = pair()
    assert server.receive_data(client.send_messages([b"x" * 300])[:50]) == []
    assert server.receive_data(b"") == []
    assert server.close == Close(1006, "")
    assert server.data_to_send() == b""


def test_a_violation_while_closing_sends_no_second_close() -> None:
    client, _ = pair()
    client.send_close()
    assert client.receive_data(b"\xc2\x00") == []
    assert client.close is not None
    assert client.close.code == 1002
    assert client.data_to_send() == b""
