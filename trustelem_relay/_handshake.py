"""The handshake: version negotiation, key agreement and mutual proof.

Theory of operation
-------------------
The shared secret is the service_id. The agent never sends it; it sends a
16-byte *lookup id* derived from it one way (:func:`._keys.lookup_id`), which
lets the hub find the service. Both sides derive the same 32-byte *psk* from
the service_id (:func:`._keys.service_psk`); the hub stores only the lookup
id and the psk.

Three messages, then the session is open::

    agent -> hub   HELLO    min_version u8, max_version u8, lookup_id[16],
                            agent_ephemeral[32]                     (clear)
    hub -> agent   WELCOME  version u8, hub_ephemeral[32],
                            hub_confirm[32]                         (clear)
                or REJECT   reason u8, hub_min u8, hub_max u8, message
    agent -> hub   CONFIRM  agent_confirm[32]      (sealed, agent->hub key,
                                                    counter 0)

The X25519 result of the two fresh ephemerals, the psk and the transcript
hash (HELLO and WELCOME without its tag) go through keyed BLAKE2b into the
two direction keys and two confirmation tags (:class:`._session.SessionKeys`).
The hub's tag proves to the agent that the hub holds the psk and saw the same
transcript; the agent's sealed CONFIRM proves the same to the hub. A wrong
service_id gives a lookup id the hub does not know (REJECT) or, if someone
replays a valid lookup id, a CONFIRM that does not open.

Ephemerals are drawn from the injected randomness and dropped after the
keys are derived, so recorded traffic cannot be decrypted later even with the
service_id (forward secrecy); what an observer learns is in docs/protocol.md.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import attrs
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base

from ._errors import (
    AuthenticationFailed,
    HandshakeError,
    LocalProtocolError,
    MalformedFrame,
    RemoteProtocolError,
    VersionMismatch,
)
from ._frames import Envelope, Kind, encode_frame, encode_header
from ._keys import lookup_id, service_psk
from ._session import Opener, Sealer, SessionKeys, same, transcript_hash

#: Handshake frames carry envelope version 1 whatever is negotiated, so
#: that an older peer can still parse them.
HANDSHAKE_VERSION = 1

_HELLO_SIZE = 2 + 16 + 32
_WELCOME_SIZE = 1 + 32 + 32


class RejectReason(enum.IntEnum):
    """Why the hub refused a HELLO (the REJECT frame's first byte)."""

    UNKNOWN_SERVICE = 1
    VERSION = 2
    MALFORMED = 3


@attrs.frozen
class Established:
    """What a finished handshake yields to the connection."""

    version: int
    lookup_id: bytes
    sealer: Sealer
    opener: Opener


def _clear_frame(kind: Kind, body: bytes) -> bytes:
    return encode_frame(encode_header(HANDSHAKE_VERSION, kind, 0, 0, 0), body)


def _dh(secret: bytes, public: bytes) -> bytes:
    try:
        shared: bytes = crypto_scalarmult(secret, public)
    except RuntimeError as exc:
        # libsodium refuses low-order points, which would fix the result.
        raise HandshakeError("the peer's ephemeral key is degenerate") from exc
    return shared


def _ephemeral(random_bytes: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    secret = random_bytes(32)
    if len(secret) != 32:
        raise LocalProtocolError("random_bytes(32) returned the wrong length")
    public: bytes = crypto_scalarmult_base(secret)
    return secret, public


def _frame_bytes(envelope: Envelope) -> bytes:
    return envelope.header + envelope.body


class AgentHandshake:
    """The agent's side. Construct it, send :attr:`hello`, then feed the
    hub's answer to :meth:`receive`."""

    def __init__(
        self,
        service_id: str,
        *,
        versions: tuple[int, int],
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._versions = versions
        self._psk = service_psk(service_id)
        self._lookup = lookup_id(service_id)
        self._secret, public = _ephemeral(random_bytes)
        body = bytes(versions) + self._lookup + public
        #: The HELLO frame to send first.
        self.hello = _clear_frame(Kind.HELLO, body)

    def __repr__(self) -> str:
        return "<AgentHandshake>"

    def receive(self, envelope: Envelope) -> tuple[Established, bytes]:
        """Take WELCOME or REJECT; return the session and the CONFIRM frame."""
        if envelope.kind is Kind.REJECT:
            raise _reject_error(envelope.body, self._versions)
        if envelope.kind is not Kind.WELCOME or len(envelope.body) != _WELCOME_SIZE:
            raise MalformedFrame(f"expected WELCOME, got {envelope.kind.name}")

        body = envelope.body
        version, hub_public, hub_tag = body[0], body[1:33], body[33:]
        low, high = self._versions
        if not low <= version <= high:
            raise VersionMismatch(
                f"the hub chose protocol version {version}, this agent speaks "
                f"{low}-{high}"
            )

        # Derive the keys and check the hub's proof before answering.
        transcript = transcript_hash(self.hello[4:], envelope.header + body[:33])
        keys = SessionKeys(self._psk, _dh(self._secret, hub_public), transcript)
        self._secret = b""
        if not same(hub_tag, keys.hub_confirm):
            raise AuthenticationFailed(
                "the hub did not prove it holds this service's secret: the "
                "service_id was rotated, or this is not the right hub"
            )

        sealer = Sealer(keys.agent_to_hub, from_hub=False, version=version)
        confirm = sealer.seal(Kind.CONFIRM, keys.agent_confirm)
        opener = Opener(keys.hub_to_agent, peer_is_hub=True)
        return Established(version, self._lookup, sealer, opener), confirm


class HubHandshake:
    """The hub's side: feed HELLO, send the answer, feed CONFIRM."""

    def __init__(
        self,
        *,
        resolve: Callable[[bytes], bytes | None],
        versions: tuple[int, int],
        random_bytes: Callable[[int], bytes],
    ) -> None:
        self._resolve = resolve
        self._versions = versions
        self._random_bytes = random_bytes
        self._pending: Established | None = None
        self._agent_confirm = b""

    def __repr__(self) -> str:
        return "<HubHandshake>"

    def receive_hello(self, envelope: Envelope) -> bytes:
        """Answer HELLO. Return WELCOME, or raise with a REJECT attached.

        On failure the raised error's ``reply`` holds the REJECT frame to
        send before closing.
        """
        body = envelope.body
        if envelope.kind is not Kind.HELLO or len(body) != _HELLO_SIZE:
            raise _rejected(
                MalformedFrame(f"expected HELLO, got {envelope.kind.name}"),
                RejectReason.MALFORMED,
                self._versions,
            )

        # Pick the highest version both sides speak.
        low, high = body[0], body[1]
        my_low, my_high = self._versions
        version = min(high, my_high)
        if version < max(low, my_low):
            raise _rejected(
                VersionMismatch(
                    f"the agent speaks protocol versions {low}-{high}, this hub "
                    f"speaks {my_low}-{my_high}; upgrade the older side"
                ),
                RejectReason.VERSION,
                self._versions,
            )

        lookup, agent_public = body[2:18], body[18:]
        psk = self._resolve(lookup)
        if psk is None:
            raise _rejected(
                AuthenticationFailed(
                    f"no service has lookup id {lookup.hex()}: the agent's "
                    "service_id is wrong or was rotated"
                ),
                RejectReason.UNKNOWN_SERVICE,
                self._versions,
            )

        # Answer with our ephemeral and a proof that we hold the psk.
        secret, public = _ephemeral(self._random_bytes)
        header = encode_header(HANDSHAKE_VERSION, Kind.WELCOME, 0, 0, 0)
        unsigned = header + bytes((version,)) + public
        transcript = transcript_hash(_frame_bytes(envelope), unsigned)
        keys = SessionKeys(psk, _dh(secret, agent_public), transcript)
        self._agent_confirm = keys.agent_confirm
        self._pending = Established(
            version,
            lookup,
            Sealer(keys.hub_to_agent, from_hub=True, version=version),
            Opener(keys.agent_to_hub, peer_is_hub=False),
        )
        return encode_frame(header, bytes((version,)) + public + keys.hub_confirm)

    def receive_confirm(self, envelope: Envelope) -> Established:
        """Check the agent's CONFIRM; return the open session."""
        established = self._pending
        if established is None or envelope.kind is not Kind.CONFIRM:
            raise MalformedFrame(f"expected CONFIRM, got {envelope.kind.name}")
        try:
            tag = established.opener.open(envelope)
        except RemoteProtocolError as exc:
            raise AuthenticationFailed(
                "the agent did not prove it holds the service's secret"
            ) from exc
        if not same(tag, self._agent_confirm):
            raise AuthenticationFailed(
                "the agent did not prove it holds the service's secret"
            )
        return established


def _rejected(
    error: RemoteProtocolError, reason: RejectReason, versions: tuple[int, int]
) -> RemoteProtocolError:
    message = str(error).encode("utf-8")[:512]
    error.reply = _clear_frame(Kind.REJECT, bytes((reason, *versions)) + message)
    return error


def _reject_error(body: bytes, versions: tuple[int, int]) -> HandshakeError:
    if len(body) < 3:
        return HandshakeError("the hub refused the handshake")
    reason, hub_low, hub_high = body[0], body[1], body[2]
    if reason == RejectReason.VERSION:
        low, high = versions
        return VersionMismatch(
            f"the hub speaks protocol versions {hub_low}-{hub_high}, this agent "
            f"speaks {low}-{high}; upgrade the older side"
        )
    if reason == RejectReason.UNKNOWN_SERVICE:
        return AuthenticationFailed(
            "the hub does not know this service_id: it is wrong, was rotated "
            "or the service was deleted; get the current id from the hub"
        )
    return HandshakeError("the hub refused the handshake as malformed")
