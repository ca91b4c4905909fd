"""The handshake: lookup, key agreement, mutual proof, versions.

Covers trustelem_relay._handshake directly and through the connection.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import (
    crypto_scalarmult,
    crypto_scalarmult_base,
    crypto_secretbox_open_easy,
)
from support.pair import (
    OTHER_SERVICE_ID,
    SERVICE_ID,
    make_pair,
    resolver,
    seeded_random,
)

from trustelem_relay._errors import (
    AuthenticationFailed,
    DecryptionFailed,
    HandshakeError,
    LocalProtocolError,
    MalformedFrame,
    RemoteProtocolError,
    VersionMismatch,
)
from trustelem_relay._events import HandshakeComplete, RequestHead
from trustelem_relay._frames import (
    Envelope,
    FrameReader,
    Kind,
    encode_frame,
    encode_header,
)
from trustelem_relay._handshake import (
    HANDSHAKE_VERSION,
    AgentHandshake,
    HubHandshake,
    RejectReason,
)
from trustelem_relay._keys import lookup_id, service_psk
from trustelem_relay._mux import Connection, ConnectionState, Role, Settings
from trustelem_relay._session import Sealer

HELLO_HEADER = encode_header(HANDSHAKE_VERSION, Kind.HELLO, 0, 0, 0)


def envelope_of(frame: bytes) -> Envelope:
    (envelope,) = FrameReader().feed(frame)
    return envelope


def clear(kind: Kind, body: bytes) -> bytes:
    return encode_frame(encode_header(HANDSHAKE_VERSION, kind, 0, 0, 0), body)


def hub_connection(
    *known: str, versions: tuple[int, int] = (1, 1), seed: int = 1
) -> Connection:
    return Connection(
        Role.HUB,
        resolve=resolver(*(known or (SERVICE_ID,))),
        settings=Settings(versions=versions),
        random_bytes=seeded_random(seed),
    )


def agent_connection(
    service_id: str = SERVICE_ID, versions: tuple[int, int] = (1, 1)
) -> Connection:
    return Connection(
        Role.AGENT,
        service_id=service_id,
        settings=Settings(versions=versions),
        random_bytes=seeded_random(0),
    )


# --------------------------------------------------------------------------
# The happy path


def test_handshake_completes_on_both_sides_with_the_same_lookup_id() -> None:
    pair = make_pair(handshake=False)
    agent_events, hub_events = pair.pump()
    expected = HandshakeComplete(lookup_id(SERVICE_ID).hex(), 1)
    assert agent_events == [expected]
    assert hub_events == [expected]
    assert pair.agent.lookup_id == pair.hub.lookup_id == lookup_id(SERVICE_ID).hex()
    assert pair.agent.version == pair.hub.version == 1
    # Three messages: HELLO, WELCOME, CONFIRM.
    assert [frame[5] for _, frame in pair.wire] == [
        Kind.HELLO,
        Kind.WELCOME,
        Kind.CONFIRM,
    ]


def test_hello_layout_matches_the_specification() -> None:
    random_bytes = seeded_random(5)
    handshake = AgentHandshake(
        SERVICE_ID, versions=(1, 3), random_bytes=seeded_random(5)
    )
    secret = random_bytes(32)
    body = bytes((1, 3)) + lookup_id(SERVICE_ID) + crypto_scalarmult_base(secret)
    assert handshake.hello == encode_frame(HELLO_HEADER, body)
    assert len(handshake.hello) == 20 + 50


def test_each_connection_draws_fresh_ephemerals() -> None:
    first = make_pair(seed=1, handshake=False)
    second = make_pair(seed=2, handshake=False)
    first.pump()
    second.pump()
    assert first.wire[0][1][-32:] != second.wire[0][1][-32:]
    assert first.wire[1][1][-64:-32] != second.wire[1][1][-64:-32]


def test_agent_may_send_before_the_hub_has_its_confirm() -> None:
    pair = make_pair(handshake=False)
    pair.to_hub()
    pair.to_agent()
    assert pair.agent.state is ConnectionState.OPEN
    pair.agent.send_info({"host": "a"})
    # CONFIRM and INFO arrive together; the hub opens, then reads INFO.
    events = pair.to_hub()
    assert [type(e).__name__ for e in events] == ["HandshakeComplete", "InfoReceived"]


def test_hub_sends_nothing_sealed_before_the_confirm() -> None:
    pair = make_pair(handshake=False)
    pair.to_hub()
    with pytest.raises(LocalProtocolError, match="handshake"):
        pair.hub.ping(b"")


# --------------------------------------------------------------------------
# Authentication


def test_wrong_service_id_is_refused_by_the_hub_and_told_to_the_agent() -> None:
    pair = make_pair(service_id=OTHER_SERVICE_ID, known=(SERVICE_ID,), handshake=False)
    with pytest.raises(AuthenticationFailed, match="no service has lookup id"):
        pair.to_hub()
    assert pair.hub.state is ConnectionState.CLOSED
    # The hub's last words are a REJECT, which the agent turns into an error.
    (reject,) = pair.hub.data_to_send()
    assert reject[5] == Kind.REJECT
    assert reject[20] == RejectReason.UNKNOWN_SERVICE
    with pytest.raises(AuthenticationFailed, match="does not know this service_id"):
        pair.agent.receive_data(reject)
    assert pair.agent.state is ConnectionState.CLOSED


def test_hub_with_the_wrong_psk_is_refused_by_the_agent() -> None:
    def impostor(lookup: bytes) -> bytes | None:
        return service_psk(OTHER_SERVICE_ID) if lookup else None

    pair = make_pair(resolve=impostor, handshake=False)
    pair.to_hub()
    with pytest.raises(AuthenticationFailed, match="did not prove"):
        pair.to_agent()
    # The agent answers nothing: no CONFIRM leaves.
    assert pair.agent.data_to_send() == []


def test_forged_confirm_is_refused_by_the_hub() -> None:
    # Someone who replays a valid lookup id but does not hold the psk cannot
    # seal the CONFIRM; a box of random bytes is what they can send.
    hub = hub_connection()
    agent = AgentHandshake(SERVICE_ID, versions=(1, 1), random_bytes=seeded_random(9))
    hub.receive_data(agent.hello)
    hub.data_to_send()
    header = encode_header(1, Kind.CONFIRM, 0, 0, 0)
    forged = encode_frame(header, bytes(range(16 + 20 + 32)))
    with pytest.raises(AuthenticationFailed, match="did not prove") as caught:
        hub.receive_data(forged)
    assert isinstance(caught.value.__cause__, DecryptionFailed)
    assert hub.state is ConnectionState.CLOSED


def test_confirm_with_a_wrong_tag_is_refused_by_the_hub() -> None:
    # Sealed under the right key (so it opens) but carrying another tag.
    hub_side = HubHandshake(
        resolve=resolver(SERVICE_ID), versions=(1, 1), random_bytes=seeded_random(3)
    )
    agent = AgentHandshake(SERVICE_ID, versions=(1, 1), random_bytes=seeded_random(4))
    welcome = hub_side.receive_hello(envelope_of(agent.hello))
    established, _ = agent.receive(envelope_of(welcome))
    key = established.sealer._key
    wrong = Sealer(key, from_hub=False, version=1).seal(Kind.CONFIRM, bytes(32))
    with pytest.raises(AuthenticationFailed, match="did not prove"):
        hub_side.receive_confirm(envelope_of(wrong))


def test_confirm_before_any_hello_is_refused() -> None:
    hub_side = HubHandshake(
        resolve=resolver(SERVICE_ID), versions=(1, 1), random_bytes=seeded_random(3)
    )
    with pytest.raises(MalformedFrame, match="expected CONFIRM"):
        hub_side.receive_confirm(envelope_of(clear(Kind.CONFIRM, bytes(48))))


def test_hub_refuses_a_second_hello_instead_of_a_confirm() -> None:
    hub = hub_connection()
    agent = AgentHandshake(SERVICE_ID, versions=(1, 1), random_bytes=seeded_random(9))
    hub.receive_data(agent.hello)
    with pytest.raises(MalformedFrame):
        hub.receive_data(agent.hello)


def test_agent_refuses_anything_but_welcome_or_reject() -> None:
    agent = agent_connection()
    with pytest.raises(MalformedFrame, match="expected WELCOME, got HELLO"):
        agent.receive_data(clear(Kind.HELLO, bytes(50)))


def test_agent_refuses_a_welcome_of_the_wrong_size() -> None:
    agent = agent_connection()
    with pytest.raises(MalformedFrame, match="expected WELCOME"):
        agent.receive_data(clear(Kind.WELCOME, bytes(64)))


def test_sealed_frame_instead_of_welcome_is_refused() -> None:
    agent = agent_connection()
    frame = Sealer(bytes(32), from_hub=True, version=1).seal(Kind.PING, b"")
    with pytest.raises(MalformedFrame, match="expected WELCOME, got PING"):
        agent.receive_data(frame)


def test_handshake_frames_must_use_envelope_version_1() -> None:
    agent = agent_connection()
    frame = encode_frame(encode_header(2, Kind.WELCOME, 0, 0, 0), bytes(65))
    with pytest.raises(MalformedFrame, match="envelope version 1"):
        agent.receive_data(frame)


def test_handshake_frame_after_the_handshake_is_refused() -> None:
    pair = make_pair()
    with pytest.raises(MalformedFrame, match="after the handshake"):
        pair.agent.receive_data(clear(Kind.REJECT, b"\x01\x01\x01"))
    pair = make_pair()
    with pytest.raises(MalformedFrame, match="after the handshake"):
        pair.hub.receive_data(pair.wire[0][1])


def test_malformed_hello_gets_a_reject_the_agent_reports() -> None:
    hub = hub_connection()
    with pytest.raises(MalformedFrame, match="expected HELLO"):
        hub.receive_data(clear(Kind.HELLO, bytes(10)))
    (reject,) = hub.data_to_send()
    assert reject[20] == RejectReason.MALFORMED
    with pytest.raises(HandshakeError, match="as malformed") as caught:
        agent_connection().receive_data(reject)
    assert type(caught.value) is HandshakeError


def test_reject_too_short_to_carry_a_reason_is_still_a_refusal() -> None:
    with pytest.raises(HandshakeError, match="refused the handshake"):
        agent_connection().receive_data(clear(Kind.REJECT, b"\x01"))


# --------------------------------------------------------------------------
# Degenerate keys


def test_all_zero_agent_ephemeral_is_refused_by_the_hub() -> None:
    hub = hub_connection()
    hello = clear(Kind.HELLO, bytes((1, 1)) + lookup_id(SERVICE_ID) + bytes(32))
    with pytest.raises(HandshakeError, match="degenerate") as caught:
        hub.receive_data(hello)
    assert type(caught.value) is HandshakeError
    assert hub.state is ConnectionState.CLOSED


def test_all_zero_hub_ephemeral_is_refused_by_the_agent() -> None:
    pair = make_pair(handshake=False)
    pair.to_hub()
    (welcome,) = pair.hub.data_to_send()
    # WELCOME body: version at offset 20, the hub's ephemeral at 21-52.
    zeroed = welcome[:21] + bytes(32) + welcome[53:]
    with pytest.raises(HandshakeError, match="degenerate"):
        pair.agent.receive_data(zeroed)


def test_short_randomness_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError, match="wrong length"):
        AgentHandshake(SERVICE_ID, versions=(1, 1), random_bytes=lambda n: b"x")


def test_connections_need_their_secret_or_their_lookup() -> None:
    with pytest.raises(LocalProtocolError, match="service_id"):
        Connection(Role.AGENT)
    with pytest.raises(LocalProtocolError, match="resolve"):
        Connection(Role.HUB)


# --------------------------------------------------------------------------
# Versions


@pytest.mark.parametrize(
    ("agent_versions", "hub_versions", "chosen"),
    [
        ((1, 1), (1, 1), 1),
        ((1, 3), (2, 5), 3),
        ((2, 5), (1, 3), 3),
        ((1, 4), (4, 9), 4),
    ],
)
def test_highest_common_version_is_chosen_and_used_by_sealed_frames(
    agent_versions: tuple[int, int], hub_versions: tuple[int, int], chosen: int
) -> None:
    pair = make_pair(
        agent_settings=Settings(versions=agent_versions),
        hub_settings=Settings(versions=hub_versions),
    )
    assert pair.agent.version == pair.hub.version == chosen
    pair.hub.ping(b"v")
    pair.pump()
    # Handshake frames stay at version 1; CONFIRM onward carry the choice.
    versions = [frame[4] for _, frame in pair.wire]
    assert versions == [1, 1] + [chosen] * (len(versions) - 2)


def test_frame_of_another_version_is_refused_in_a_session() -> None:
    pair = make_pair(
        agent_settings=Settings(versions=(1, 2)), hub_settings=Settings(versions=(1, 2))
    )
    frame = Sealer(bytes(32), from_hub=True, version=1).seal(Kind.PING, b"")
    with pytest.raises(MalformedFrame, match="version 1 in a version 2 session"):
        pair.agent.receive_data(frame)


@pytest.mark.parametrize(
    ("agent_versions", "hub_versions"),
    [((1, 1), (2, 3)), ((4, 6), (1, 3)), ((3, 2), (1, 5))],
)
def test_version_mismatch_is_reported_on_both_sides_naming_both_ranges(
    agent_versions: tuple[int, int], hub_versions: tuple[int, int]
) -> None:
    pair = make_pair(
        agent_settings=Settings(versions=agent_versions),
        hub_settings=Settings(versions=hub_versions),
        handshake=False,
    )
    agent_range = "{}-{}".format(*agent_versions)
    hub_range = "{}-{}".format(*hub_versions)
    with pytest.raises(VersionMismatch) as on_hub:
        pair.to_hub()
    assert f"agent speaks protocol versions {agent_range}" in str(on_hub.value)
    assert f"this hub speaks {hub_range}" in str(on_hub.value)
    assert on_hub.value.close_code == 4426

    (reject,) = pair.hub.data_to_send()
    assert reject[20] == RejectReason.VERSION
    with pytest.raises(VersionMismatch) as on_agent:
        pair.agent.receive_data(reject)
    assert f"hub speaks protocol versions {hub_range}" in str(on_agent.value)
    assert f"this agent speaks {agent_range}" in str(on_agent.value)


def test_welcome_choosing_a_version_the_agent_lacks_is_refused() -> None:
    hub = hub_connection(versions=(1, 5))
    agent = agent_connection(versions=(1, 5))
    hub.receive_data(agent.data_to_send()[0])
    (welcome,) = hub.data_to_send()
    narrow = agent_connection(versions=(1, 2))
    narrow.data_to_send()
    with pytest.raises(VersionMismatch, match="chose protocol version 5"):
        narrow.receive_data(welcome)


# --------------------------------------------------------------------------
# Secrecy


def _secret_forms(service_id: str) -> list[bytes]:
    raw = base64.b32decode(service_id.upper())
    return [
        service_id.encode(),
        service_id.upper().encode(),
        raw,
        raw.hex().encode(),
        service_psk(service_id),
    ]


def test_service_id_never_appears_on_the_wire_nor_in_reprs() -> None:
    pair = make_pair(handshake=False)
    texts = [repr(pair.agent), repr(pair.hub), repr(pair.agent._agent_handshake)]
    pair.pump()
    stream = pair.hub.open_stream("t", RequestHead("GET", "https", "a", "/"))
    pair.hub.end_stream(stream)
    pair.agent.send_info({"host": "h"})
    pair.pump()
    texts += [repr(pair.agent), repr(pair.hub)]
    texts += [repr(pair.agent._sealer), repr(pair.agent._opener)]
    wire = b"".join(frame for _, frame in pair.wire)
    for form in _secret_forms(SERVICE_ID):
        assert form not in wire
        for text in texts:
            assert form.decode("latin-1") not in text
    # The handshake objects are gone once the session is open.
    assert pair.agent._agent_handshake is None
    assert pair.hub._hub_handshake is None


def test_failed_handshakes_do_not_reveal_the_service_id() -> None:
    pair = make_pair(service_id=OTHER_SERVICE_ID, known=(SERVICE_ID,), handshake=False)
    with pytest.raises(AuthenticationFailed) as caught:
        pair.to_hub()
    (reject,) = pair.hub.data_to_send()
    for form in _secret_forms(OTHER_SERVICE_ID) + _secret_forms(SERVICE_ID):
        assert form not in reject
        assert form.decode("latin-1") not in str(caught.value)


# --------------------------------------------------------------------------
# Robustness


def _feed_until_error(conn: Connection, pieces: list[bytes]) -> None:
    for piece in pieces:
        for event in conn.receive_data(piece):
            assert event is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=6))
def test_random_bytes_to_a_fresh_hub_give_events_or_a_remote_error(
    pieces: list[bytes],
) -> None:
    hub = hub_connection()
    try:
        _feed_until_error(hub, pieces)
    except RemoteProtocolError:
        assert hub.state is ConnectionState.CLOSED


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=2, max_size=2),
    st.binary(min_size=32, max_size=32),
    st.lists(st.binary(max_size=120), max_size=4),
)
def test_random_handshake_bodies_give_events_or_a_remote_error(
    versions: bytes, public: bytes, rest: list[bytes]
) -> None:
    # A HELLO with a known lookup id but random versions and key, then noise:
    # the resolver is exercised and libsodium sees arbitrary points.
    hub = hub_connection()
    hello = clear(Kind.HELLO, versions + lookup_id(SERVICE_ID) + public)
    try:
        _feed_until_error(hub, [hello, *rest])
    except RemoteProtocolError:
        assert hub.state is ConnectionState.CLOSED


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=65, max_size=65), st.binary(max_size=10))
def test_random_welcome_gives_an_error_on_the_agent(body: bytes, extra: bytes) -> None:
    agent = agent_connection()
    with pytest.raises(RemoteProtocolError):
        agent.receive_data(clear(Kind.WELCOME, body) + extra)


def test_hub_asks_its_resolver_with_the_lookup_id_only() -> None:
    seen: list[bytes] = []

    def resolve(lookup: bytes) -> bytes | None:
        seen.append(lookup)
        return None

    hub = Connection(Role.HUB, resolve=resolve, random_bytes=seeded_random(1))
    with pytest.raises(AuthenticationFailed):
        hub.receive_data(agent_connection().data_to_send()[0])
    assert seen == [lookup_id(SERVICE_ID)]


def test_handshake_objects_print_no_secret() -> None:
    agent = AgentHandshake(SERVICE_ID, versions=(1, 1), random_bytes=seeded_random(0))
    hub = HubHandshake(
        resolve=resolver(SERVICE_ID), versions=(1, 1), random_bytes=seeded_random(1)
    )
    assert repr(agent) == "<AgentHandshake>"
    assert repr(hub) == "<HubHandshake>"


# --------------------------------------------------------------------------
# The key schedule, recomputed from docs/protocol.md with hashlib


def b2b(data: bytes, size: int, person: bytes, key: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=size, key=key, person=person).digest()


def test_key_schedule_matches_the_specification() -> None:
    pair = make_pair(seed=3)
    pair.hub.ping(b"p")
    pair.pump()
    hello, welcome, confirm, ping = (frame for _, frame in pair.wire[:4])
    # make_pair draws the agent's randomness from seed 2*3, the hub's from 7.
    agent_secret = seeded_random(6)(32)
    hub_secret = seeded_random(7)(32)

    lookup = b2b(SERVICE_ID.encode("ascii"), 16, b"trly-lookup-v1")
    psk = b2b(SERVICE_ID.encode("ascii"), 32, b"trly-psk-v1")
    assert hello[20:22] == b"\x01\x01"
    assert hello[22:38] == lookup
    agent_public, hub_public = hello[38:70], welcome[21:53]
    shared = crypto_scalarmult(agent_secret, hub_public)
    assert shared == crypto_scalarmult(hub_secret, agent_public)

    transcript = b2b(hello[4:] + welcome[4:53], 32, b"trly-th-v1")
    prk = b2b(shared + transcript, 64, b"trly-prk-v1", key=psk)
    agent_to_hub = b2b(b"agent-to-hub", 32, b"trly-key-v1", key=prk)
    hub_to_agent = b2b(b"hub-to-agent", 32, b"trly-key-v1", key=prk)
    hub_confirm = b2b(b"hub-confirm", 32, b"trly-cfm-v1", key=prk)
    agent_confirm = b2b(b"agent-confirm", 32, b"trly-cfm-v1", key=prk)

    assert welcome[20] == 1
    assert welcome[53:] == hub_confirm
    # CONFIRM: counter 0 in the agent-to-hub direction, sealing its header.
    zero_nonce = bytes(24)
    plain = crypto_secretbox_open_easy(confirm[20:], zero_nonce, agent_to_hub)
    assert plain == confirm[4:20] + agent_confirm
    # The hub's first sealed frame: counter 0 in its own direction.
    plain = crypto_secretbox_open_easy(ping[20:], zero_nonce, hub_to_agent)
    assert plain == ping[4:20] + b"p"
