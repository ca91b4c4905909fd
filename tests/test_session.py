"""Sealing, opening and the nonce rule (trustelem_relay._session).

Also, over whole connections: any single-bit change to a sealed frame is
refused with a typed remote error, replayed / reordered / dropped /
reflected frames are refused, and (key, nonce) pairs never repeat.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_secretbox_open_easy
from support.pair import Pair, make_pair

from trustelem_relay import _session
from trustelem_relay._errors import (
    DecryptionFailed,
    FrameTooLarge,
    HandshakeError,
    MalformedFrame,
    NonceOutOfOrder,
    ReflectedFrame,
    RemoteProtocolError,
    StreamErrorCode,
)
from trustelem_relay._events import (
    PingReceived,
    RequestHead,
    ResponseHead,
)
from trustelem_relay._frames import (
    FLAG_END_STREAM,
    FLAG_FROM_HUB,
    HEADER_SIZE,
    MAX_FRAME_LENGTH,
    Envelope,
    FrameReader,
    Kind,
)
from trustelem_relay._mux import Connection, ConnectionState, Settings
from trustelem_relay._session import (
    Opener,
    Sealer,
    SessionKeys,
    kdf,
    same,
    transcript_hash,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

#: The errors a tampered frame may raise; anything else is a bug.
TAMPER_ERRORS = (
    DecryptionFailed,
    NonceOutOfOrder,
    ReflectedFrame,
    MalformedFrame,
    FrameTooLarge,
)


def one(frame: bytes) -> Envelope:
    (envelope,) = FrameReader().feed(frame)
    return envelope


# --------------------------------------------------------------------------
# The primitives


def test_kdf_is_keyed_blake2b_with_the_requested_size() -> None:
    a = kdf(b"x", key=KEY, person=b"p")
    assert len(a) == 32
    assert len(kdf(b"x", key=KEY, person=b"p", size=64)) == 64
    assert a != kdf(b"x", key=OTHER_KEY, person=b"p")
    assert a != kdf(b"x", key=KEY, person=b"q")


def test_transcript_hash_depends_on_every_byte() -> None:
    assert transcript_hash(b"ab", b"c") == transcript_hash(b"abc")
    assert transcript_hash(b"abc") != transcript_hash(b"abd")


def test_session_keys_are_four_distinct_values_and_never_printed() -> None:
    keys = SessionKeys(KEY, OTHER_KEY, bytes(32))
    values = {keys.agent_to_hub, keys.hub_to_agent, keys.hub_confirm}
    values.add(keys.agent_confirm)
    assert len(values) == 4
    assert repr(keys) == "<SessionKeys (hidden)>"


def test_same_compares_bytes() -> None:
    assert same(b"abc", b"abc")
    assert not same(b"abc", b"abd")


def test_sealer_and_opener_reprs_show_only_the_counter() -> None:
    sealer = Sealer(KEY, from_hub=True, version=1)
    opener = Opener(KEY, peer_is_hub=True)
    assert repr(sealer) == "<Sealer counter=0>"
    assert repr(opener) == "<Opener counter=0>"
    assert KEY.hex() not in repr(sealer) + repr(opener)


# --------------------------------------------------------------------------
# Sealing and opening


def test_sealed_frame_opens_in_the_peer_direction() -> None:
    sealer = Sealer(KEY, from_hub=True, version=1)
    opener = Opener(KEY, peer_is_hub=True)
    for n in range(3):
        frame = sealer.seal(Kind.DATA, b"chunk %d" % n, stream_id=5)
        assert opener.open(one(frame)) == b"chunk %d" % n
    assert sealer.counter == opener.counter == 3


def test_nonce_is_the_counter_followed_by_sixteen_zero_bytes() -> None:
    sealer = Sealer(KEY, from_hub=False, version=1)
    for counter in range(4):
        envelope = one(sealer.seal(Kind.PING, b"p", flags=FLAG_END_STREAM))
        assert envelope.counter == counter
        nonce = counter.to_bytes(8, "big") + bytes(16)
        plain = crypto_secretbox_open_easy(envelope.body, nonce, KEY)
        assert plain == envelope.header + b"p"
        assert envelope.flags == FLAG_END_STREAM


def test_replayed_frame_is_refused() -> None:
    sealer = Sealer(KEY, from_hub=False, version=1)
    opener = Opener(KEY, peer_is_hub=False)
    frame = sealer.seal(Kind.PING, b"")
    opener.open(one(frame))
    with pytest.raises(NonceOutOfOrder, match="replayed"):
        opener.open(one(frame))


def test_dropped_frame_is_refused() -> None:
    sealer = Sealer(KEY, from_hub=False, version=1)
    opener = Opener(KEY, peer_is_hub=False)
    sealer.seal(Kind.PING, b"")
    with pytest.raises(NonceOutOfOrder, match="dropped"):
        opener.open(one(sealer.seal(Kind.PING, b"")))
    assert opener.counter == 0


def test_reflected_frame_is_refused_before_decryption() -> None:
    hub_sealer = Sealer(KEY, from_hub=True, version=1)
    hub_opener = Opener(KEY, peer_is_hub=False)
    with pytest.raises(ReflectedFrame, match="reflected"):
        hub_opener.open(one(hub_sealer.seal(Kind.PING, b"")))
    agent_sealer = Sealer(KEY, from_hub=False, version=1)
    agent_opener = Opener(KEY, peer_is_hub=True)
    with pytest.raises(ReflectedFrame):
        agent_opener.open(one(agent_sealer.seal(Kind.PING, b"")))


def test_frame_sealed_under_another_key_is_refused() -> None:
    frame = Sealer(OTHER_KEY, from_hub=True, version=1).seal(Kind.PING, b"")
    with pytest.raises(DecryptionFailed, match="failed to authenticate"):
        Opener(KEY, peer_is_hub=True).open(one(frame))


def test_box_shorter_than_its_authenticator_is_refused() -> None:
    sealer = Sealer(KEY, from_hub=True, version=1)
    short = one(sealer.seal(Kind.DATA, b"x", stream_id=1))._replace(body=bytes(15))
    with pytest.raises(DecryptionFailed, match="failed to authenticate"):
        Opener(KEY, peer_is_hub=True).open(short)


def test_keys_of_another_size_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes, not 31"):
        Sealer(KEY[:31], from_hub=True, version=1)
    with pytest.raises(ValueError, match="32 bytes, not 33"):
        Opener(KEY + b"!", peer_is_hub=True)


def test_sealed_header_that_differs_from_the_clear_one_is_refused() -> None:
    # Seal a frame for stream 1, then swap in the clear header of stream 2
    # while keeping the box: the box opens, the comparison fails.
    sealer = Sealer(KEY, from_hub=True, version=1)
    good = one(sealer.seal(Kind.DATA, b"x", stream_id=1))
    header = bytearray(good.header)
    header[3:7] = (2).to_bytes(4, "big")
    forged = good._replace(stream_id=2, header=bytes(header))
    with pytest.raises(DecryptionFailed, match="sealed header differs"):
        Opener(KEY, peer_is_hub=True).open(forged)


# --------------------------------------------------------------------------
# Tampering with whole connections

_SMALL = Settings(stream_window=64 * 1024, session_window=64 * 1024)


def _exchange(pair: Pair) -> None:
    """Handshake plus one frame of every kind, pumped step by step."""
    hub, agent = pair.hub, pair.agent
    pair.pump()
    agent.send_info({"version": "1"})
    stream = hub.open_stream("scim-server", RequestHead("POST", "https", "h", "/u"))
    hub.send_data(stream, b"request body", end_stream=True)
    cancelled = hub.open_stream("scim-server", RequestHead("GET", "https", "h", "/"))
    hub.ping(b"12345678")
    pair.pump()
    hub.reset_stream(cancelled, StreamErrorCode.CANCELLED, "no longer needed")
    agent.send_response(stream, ResponseHead(200, ((b"a", b"b"),)))
    agent.send_data(stream, b"x" * 20000)
    pair.pump()
    hub.acknowledge_data(stream, 20000)
    agent.ping(b"")
    pair.pump()
    agent.end_stream(stream)
    hub.go_away("bye")
    pair.pump()


class _FlipOne:
    """A tamper function that flips one bit of the n-th frame on the wire."""

    def __init__(self, index: int, position: int, bit: int) -> None:
        self.index = index
        self.position = position
        self.bit = bit
        self.seen = 0
        self.direction: str | None = None
        self.kind = 0
        self.grew = False

    def __call__(self, direction: str, frame: bytes) -> bytes:
        self.seen += 1
        if self.seen - 1 != self.index:
            return frame
        self.direction = direction
        self.kind = frame[5]
        tampered = bytearray(frame)
        tampered[self.position % len(frame)] ^= 1 << self.bit
        if int.from_bytes(tampered[:4], "big") > len(frame) - 4:
            # A larger length prefix swallows whatever follows on the wire:
            # stand for those bytes with filler, enough to reach any length.
            self.grew = True
            return bytes(tampered) + bytes(MAX_FRAME_LENGTH)
        return bytes(tampered)


def _recorded_exchange() -> list[tuple[str, bytes]]:
    pair = make_pair(settings=_SMALL, handshake=False)
    _exchange(pair)
    return list(pair.wire)


_WIRE = _recorded_exchange()


def test_exchange_covers_every_frame_kind() -> None:
    kinds = {Kind(frame[5]) for _, frame in _WIRE}
    assert kinds == set(Kind) - {Kind.REJECT}


def _assert_refused(index: int, position: int, bit: int) -> None:
    flip = _FlipOne(index, position, bit)
    pair = make_pair(settings=_SMALL, handshake=False, tamper=flip)
    with pytest.raises(RemoteProtocolError) as caught:
        _exchange(pair)
    assert not flip.grew or flip.position % len(_WIRE[index][1]) < 4

    error = caught.value
    if flip.kind in (Kind.HELLO, Kind.WELCOME, Kind.CONFIRM):
        # A handshake frame may pass its receiver (a HELLO with another
        # ephemeral is still a HELLO), but then the handshake fails at the
        # next step: the transcripts or the keys differ.
        assert isinstance(error, (*TAMPER_ERRORS, HandshakeError))
        assert len(pair.wire) <= index + 2
    else:
        # A sealed frame is refused by its receiver, at once.
        assert isinstance(error, TAMPER_ERRORS)
        assert len(pair.wire) == index + 1
    assert ConnectionState.CLOSED in (pair.agent.state, pair.hub.state)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(0, len(_WIRE) - 1),
    st.integers(0, MAX_FRAME_LENGTH),
    st.integers(0, 7),
)
def test_flipping_any_bit_of_any_frame_is_refused(
    index: int, position: int, bit: int
) -> None:
    _assert_refused(index, position, bit)


def test_flipping_any_bit_of_any_envelope_byte_is_refused() -> None:
    # Exhaustive over the envelope (length, header, target) of every frame
    # of the exchange; the property above samples the bodies as well.
    for index, (_, frame) in enumerate(_WIRE):
        for position in range(HEADER_SIZE + frame[19]):
            for bit in range(8):
                _assert_refused(index, position, bit)


def test_frame_with_a_grown_length_prefix_is_never_accepted_alone() -> None:
    pair = make_pair()
    pair.hub.ping(b"abc")
    (frame,) = pair.hub.data_to_send()
    grown = (int.from_bytes(frame[:4], "big") + 1).to_bytes(4, "big") + frame[4:]
    assert pair.agent.receive_data(grown) == []
    assert pair.agent.buffered == len(grown)
    with pytest.raises(DecryptionFailed):
        pair.agent.receive_data(b"\x00")


def test_frame_with_a_grown_length_prefix_fails_at_once_as_a_message() -> None:
    pair = make_pair()
    pair.hub.ping(b"abc")
    (frame,) = pair.hub.data_to_send()
    for grown_by in (1, 256, 65536):
        length = int.from_bytes(frame[:4], "big") + grown_by
        grown = length.to_bytes(4, "big") + frame[4:]
        agent = make_pair().agent
        with pytest.raises(MalformedFrame, match=f"ends {len(frame)} bytes into"):
            agent.receive_message(grown)
        assert agent.state is ConnectionState.CLOSED


def test_whole_frames_pass_as_messages() -> None:
    pair = make_pair()
    pair.hub.ping(b"a")
    pair.hub.ping(b"b")
    first, second = pair.hub.data_to_send()
    assert pair.agent.receive_message(first) == [PingReceived(b"a")]
    # Several whole frames in one message are still whole frames.
    pair.hub.ping(b"c")
    (third,) = pair.hub.data_to_send()
    events = pair.agent.receive_message(second + third)
    assert events == [PingReceived(b"b"), PingReceived(b"c")]


def test_untouched_exchange_completes() -> None:
    pair = make_pair(settings=_SMALL, handshake=False, tamper=_FlipOne(-1, 0, 0))
    _exchange(pair)
    assert pair.agent.state is pair.hub.state is ConnectionState.OPEN


def test_replayed_frame_on_a_connection_is_refused() -> None:
    pair = make_pair()
    pair.hub.ping(b"a")
    (frame,) = pair.hub.data_to_send()
    assert pair.agent.receive_data(frame) == [PingReceived(b"a")]
    with pytest.raises(NonceOutOfOrder, match="replayed"):
        pair.agent.receive_data(frame)


def test_reordered_frames_on_a_connection_are_refused() -> None:
    pair = make_pair()
    pair.hub.ping(b"a")
    pair.hub.ping(b"b")
    first, second = pair.hub.data_to_send()
    with pytest.raises(NonceOutOfOrder, match="expected"):
        pair.agent.receive_data(second + first)


def test_dropped_frame_on_a_connection_is_refused() -> None:
    pair = make_pair()
    pair.agent.ping(b"a")
    pair.agent.ping(b"b")
    _, second = pair.agent.data_to_send()
    with pytest.raises(NonceOutOfOrder, match="dropped"):
        pair.hub.receive_data(second)


def test_reflected_frame_on_a_connection_is_refused() -> None:
    pair = make_pair()
    pair.hub.ping(b"a")
    (frame,) = pair.hub.data_to_send()
    with pytest.raises(ReflectedFrame):
        pair.hub.receive_data(frame)
    pair.agent.ping(b"b")
    (frame,) = pair.agent.data_to_send()
    with pytest.raises(ReflectedFrame):
        pair.agent.receive_data(frame)


def test_frame_from_another_session_of_the_same_service_is_refused() -> None:
    first, second = make_pair(seed=1), make_pair(seed=2)
    first.hub.ping(b"a")
    (frame,) = first.hub.data_to_send()
    with pytest.raises(DecryptionFailed):
        second.agent.receive_data(frame)


def test_payload_over_the_bound_is_refused_before_decryption() -> None:
    pair = make_pair()
    # Sealed with the hub's real key, 100 bytes over the bound: only the
    # size check can refuse it, since it would authenticate.
    assert pair.hub._sealer is not None
    frame = pair.hub._sealer.seal(Kind.INFO, b"{}" + b" " * (64 * 1024 + 98))
    with pytest.raises(FrameTooLarge, match="more than 65536"):
        pair.agent.receive_data(frame)


# --------------------------------------------------------------------------
# Nonces never repeat


def _sealer_key(conn: Connection) -> bytes:
    assert conn._sealer is not None
    key: bytes = conn._sealer._key
    return key


SESSIONS = 100


def test_key_and_nonce_pairs_never_repeat_across_sessions() -> None:
    seen: set[tuple[bytes, bytes]] = set()
    keys: set[bytes] = set()
    for seed in range(SESSIONS):
        pair = make_pair(seed=seed)
        agent_key, hub_key = _sealer_key(pair.agent), _sealer_key(pair.hub)
        assert agent_key != hub_key
        assert agent_key not in keys
        assert hub_key not in keys
        keys |= {agent_key, hub_key}

        stream = pair.hub.open_stream("t", RequestHead("GET", "http", "a", "/"))
        for n in range(5):
            pair.hub.ping(b"%d" % n)
            pair.agent.ping(b"%d" % n)
        pair.hub.end_stream(stream)
        pair.pump()

        last = {"to_hub": -1, "to_agent": -1}
        for direction, frame in pair.wire:
            envelope = one(frame)
            if envelope.kind in (Kind.HELLO, Kind.WELCOME, Kind.REJECT):
                continue
            # Within a direction counters go up by exactly one.
            assert envelope.counter == last[direction] + 1
            last[direction] = envelope.counter
            key = agent_key if direction == "to_hub" else hub_key
            assert bool(envelope.flags & FLAG_FROM_HUB) == (direction == "to_agent")
            nonce = envelope.counter.to_bytes(8, "big") + bytes(16)
            crypto_secretbox_open_easy(envelope.body, nonce, key)
            assert (key, nonce) not in seen
            seen.add((key, nonce))
    assert len(keys) == 2 * SESSIONS
    assert len(seen) == SESSIONS * 23


@given(plain=st.binary(max_size=300), counter=st.integers(0, (1 << 64) - 1))
def test_direct_and_public_secretbox_calls_agree(plain: bytes, counter: int) -> None:
    # The fast path calls PyNaCl's C module; its public bindings are the
    # fallback if a release moves that module. Both must be the same box.
    nonce = counter.to_bytes(8, "big") + bytes(16)
    box = _session._seal_box(plain, nonce, KEY)
    assert box == _session._seal_box_public(plain, nonce, KEY)
    assert _session._open_box(box, nonce, KEY) == plain
    assert _session._open_box_public(box, nonce, KEY) == plain
    tampered = bytes([box[0] ^ 1]) + box[1:]
    assert _session._open_box(tampered, nonce, KEY) is None
    assert _session._open_box_public(tampered, nonce, KEY) is None
    assert _session._open_box_public(box[:15], nonce, KEY) is None
