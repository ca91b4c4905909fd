"""Session crypto: the key schedule and the sealing of frames.

Theory of operation
-------------------
The handshake (:mod:`._handshake`) ends with two 32-byte keys, one for each
direction. From then on every frame is sealed with NaCl's secretbox
(XSalsa20-Poly1305) under the key of its direction.

Nonces are never sent: each side counts the frames it seals, starting at 0,
and the nonce is that counter as 8 big-endian bytes followed by 16 zero
bytes. The counter also travels in the clear header so that the receiver can
tell a replayed, reordered or dropped frame (the counter is not the next one)
from a tampered one (the counter fits but the box does not open). Both end
the session. Because each direction has its own key, a frame reflected back
to its sender never opens either; the FROM_HUB flag lets the receiver name
that case before trying.

Secretbox has no associated data, so the sealed plaintext starts with a copy
of the clear header; after opening, the copy must equal the header that was
parsed. Changing any byte of a frame therefore fails: header bytes fail the
comparison (or the counter check), body bytes fail the authenticator.

Nothing here keeps a reference to the service secret; the keys live only in
the two objects below and are never part of a repr.
"""

from __future__ import annotations

import hmac
import struct

from nacl.bindings import crypto_secretbox_easy, crypto_secretbox_open_easy
from nacl.encoding import RawEncoder
from nacl.exceptions import CryptoError
from nacl.hash import blake2b

from ._errors import DecryptionFailed, NonceOutOfOrder, ReflectedFrame
from ._frames import (
    FLAG_FROM_HUB,
    MAC_SIZE,
    Envelope,
    Kind,
    encode_frame,
    encode_header,
)

#: The nonce: the counter as 8 big-endian bytes, then 16 zero bytes.
_NONCE = struct.Struct(">Q16x")
_COUNTER_LIMIT = 1 << 64
_KEY_SIZE = 32


def kdf(data: bytes, *, key: bytes, person: bytes, size: int = 32) -> bytes:
    """Keyed BLAKE2b, the only key-derivation primitive of the protocol."""
    digest: bytes = blake2b(
        data, digest_size=size, key=key, person=person, encoder=RawEncoder
    )
    return digest


def transcript_hash(*parts: bytes) -> bytes:
    """Hash of the handshake bytes both sides saw, in order."""
    digest: bytes = blake2b(
        b"".join(parts), digest_size=32, person=b"trly-th-v1", encoder=RawEncoder
    )
    return digest


class SessionKeys:
    """The four values the handshake derives. Never printed."""

    __slots__ = ("agent_confirm", "agent_to_hub", "hub_confirm", "hub_to_agent")

    def __init__(self, psk: bytes, shared: bytes, transcript: bytes) -> None:
        # The pseudo-random key binds the ephemeral Diffie-Hellman result to
        # the service secret and to everything both sides said so far.
        prk = kdf(shared + transcript, key=psk, person=b"trly-prk-v1", size=64)
        self.agent_to_hub = kdf(b"agent-to-hub", key=prk, person=b"trly-key-v1")
        self.hub_to_agent = kdf(b"hub-to-agent", key=prk, person=b"trly-key-v1")
        self.hub_confirm = kdf(b"hub-confirm", key=prk, person=b"trly-cfm-v1")
        self.agent_confirm = kdf(b"agent-confirm", key=prk, person=b"trly-cfm-v1")

    def __repr__(self) -> str:
        return "<SessionKeys (hidden)>"


def same(a: bytes, b: bytes) -> bool:
    """Constant-time comparison of two byte strings."""
    return hmac.compare_digest(a, b)


# Secretbox is called in libsodium directly, through the C module that
# PyNaCl's own bindings wrap (nacl.bindings.crypto_secretbox_easy and
# _open_easy). Those wrappers check the key and nonce sizes and allocate
# through cffi on every call, which on a frame of a few hundred bytes cost
# a third as much as the cipher itself; here the sizes are fixed (the key
# is checked once, in the constructors, and the nonce is _NONCE), so only
# the call and one buffer remain. The C module is PyNaCl's private one:
# should a release move it, the public bindings take over, slower only.


def _seal_box_public(plain: bytes, nonce: bytes, key: bytes) -> bytes:
    box: bytes = crypto_secretbox_easy(plain, nonce, key)
    return box


def _open_box_public(box: bytes, nonce: bytes, key: bytes) -> bytes | None:
    """The plaintext, or None when the box does not authenticate."""
    try:
        plain: bytes = crypto_secretbox_open_easy(box, nonce, key)
    except CryptoError:
        return None
    return plain


try:
    from nacl._sodium import ffi, lib
except ImportError:  # pragma: no cover - a PyNaCl without the module
    _seal_box = _seal_box_public
    _open_box = _open_box_public
else:

    def _seal_box(plain: bytes, nonce: bytes, key: bytes) -> bytes:
        box = bytearray(len(plain) + MAC_SIZE)
        lib.crypto_secretbox_easy(ffi.from_buffer(box), plain, len(plain), nonce, key)
        return bytes(box)

    def _open_box(box: bytes, nonce: bytes, key: bytes) -> bytes | None:
        """The plaintext, or None when the box does not authenticate."""
        if len(box) < MAC_SIZE:
            return None
        plain = bytearray(len(box) - MAC_SIZE)
        if lib.crypto_secretbox_open_easy(
            ffi.from_buffer(plain), box, len(box), nonce, key
        ):
            return None
        return bytes(plain)


def _check_key(key: bytes) -> bytes:
    if len(key) != _KEY_SIZE:
        raise ValueError(f"a session key has {_KEY_SIZE} bytes, not {len(key)}")
    return key


class Sealer:
    """Seals outgoing frames for one direction, counting from 0."""

    __slots__ = ("_flags", "_key", "_version", "counter")

    def __init__(self, key: bytes, *, from_hub: bool, version: int) -> None:
        self._key = _check_key(key)
        self._flags = FLAG_FROM_HUB if from_hub else 0
        self._version = version
        # The counter of the next frame sealed; doubles as its nonce.
        self.counter = 0

    def __repr__(self) -> str:
        return f"<Sealer counter={self.counter}>"

    def seal(
        self,
        kind: Kind,
        payload: bytes,
        *,
        stream_id: int = 0,
        flags: int = 0,
        target: str = "",
    ) -> bytes:
        """Return one whole frame carrying ``payload``, sealed."""
        counter = self.counter
        if counter >= _COUNTER_LIMIT:  # pragma: no cover - 2**64 frames
            raise OverflowError("frame counter exhausted; reconnect")
        self.counter = counter + 1
        header = encode_header(
            self._version, kind, flags | self._flags, stream_id, counter, target
        )
        box = _seal_box(header + payload, _NONCE.pack(counter), self._key)
        return encode_frame(header, box)


class Opener:
    """Opens incoming sealed frames for one direction, strictly in order."""

    __slots__ = ("_key", "_peer_is_hub", "counter")

    def __init__(self, key: bytes, *, peer_is_hub: bool) -> None:
        self._key = _check_key(key)
        self._peer_is_hub = peer_is_hub
        # The counter the next frame must carry.
        self.counter = 0

    def __repr__(self) -> str:
        return f"<Opener counter={self.counter}>"

    def open(self, envelope: Envelope) -> bytes:
        """Check and decrypt one frame; return its payload.

        Raises :class:`ReflectedFrame`, :class:`NonceOutOfOrder` or
        :class:`DecryptionFailed`; each ends the session.
        """
        if bool(envelope.flags & FLAG_FROM_HUB) != self._peer_is_hub:
            raise ReflectedFrame(
                f"{envelope.kind.name} frame {envelope.counter} claims to come "
                "from this side: reflected"
            )
        if envelope.counter != self.counter:
            what = "replayed" if envelope.counter < self.counter else "dropped"
            raise NonceOutOfOrder(
                f"frame counter {envelope.counter} where {self.counter} was "
                f"expected: a frame was {what} or reordered"
            )
        plain = _open_box(envelope.body, _NONCE.pack(envelope.counter), self._key)
        if plain is None:
            raise DecryptionFailed(
                f"{envelope.kind.name} frame {envelope.counter} failed to "
                "authenticate: tampered, or sealed for another session"
            )

        header = envelope.header
        if not same(plain[: len(header)], header):
            raise DecryptionFailed(
                f"{envelope.kind.name} frame {envelope.counter}: the sealed header "
                "differs from the clear one"
            )
        self.counter += 1
        return plain[len(header) :]
