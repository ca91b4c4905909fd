"""Service ids and the values derived from them.

Theory of operation
-------------------

A *service* (one customer network) is named by a secret ``service_id``: 160
random bits written as 32 lower-case base32 characters (``a``-``z``,
``2``-``7``, no padding). 160 bits is exactly 32 base32 digits, so every
string of 32 such characters is a valid id and no padding bits exist to
disagree about.

The id itself never crosses the wire and the hub does not keep it. Two
values are derived from it with BLAKE2b, each under its own personalization
string so that neither can be computed from the other:

* :func:`lookup_id` (16 bytes) — what an agent sends so that the hub can
  find the service. Knowing it does not reveal the id.
* :func:`service_psk` (32 bytes) — the pre-shared key the handshake mixes
  into its X25519 exchange, which proves that both ends hold the id.

Both are plain unkeyed hashes: the id already carries 160 bits of entropy,
so no salt or stretching is needed (stretching protects guessable
passwords, and an id is not guessable).

This module is pure: no I/O, no clock, and randomness only through the
function passed to :func:`new_service_id`. The derivation functions accept
any string and never raise on content; check operator input with
:func:`validate_service_id` at the edge where it arrives.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

import nacl.encoding
import nacl.hash

from ._errors import ConfigError

__all__ = [
    "LOOKUP_ID_SIZE",
    "PSK_SIZE",
    "SERVICE_ID_ALPHABET",
    "SERVICE_ID_BYTES",
    "SERVICE_ID_LENGTH",
    "lookup_id",
    "new_service_id",
    "service_psk",
    "validate_service_id",
]

#: The characters a service id is written with (RFC 4648 base32, lower-case).
SERVICE_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"

#: Random bytes in a service id (160 bits).
SERVICE_ID_BYTES = 20

#: Characters in a written service id: 20 bytes x 8 bits / 5 bits per digit.
SERVICE_ID_LENGTH = 32

#: Size in bytes of :func:`lookup_id`'s result.
LOOKUP_ID_SIZE = 16

#: Size in bytes of :func:`service_psk`'s result.
PSK_SIZE = 32

# The personalization strings are part of the wire contract: changing one
# changes every lookup id or key, and agents in the field stop matching.
# libsodium pads them with zeros to 16 bytes; both fit.
_LOOKUP_PERSON = b"trly-lookup-v1"
_PSK_PERSON = b"trly-psk-v1"

_ALPHABET_SET = frozenset(SERVICE_ID_ALPHABET)


def new_service_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """Return a fresh service id.

    ``random_bytes(n)`` must return ``n`` bytes from a cryptographically
    secure source; tests inject a deterministic one. A source that returns
    the wrong number of bytes is a bug, reported with :exc:`ValueError`.
    """
    raw = random_bytes(SERVICE_ID_BYTES)
    if len(raw) != SERVICE_ID_BYTES:
        raise ValueError(f"random_bytes({SERVICE_ID_BYTES}) returned {len(raw)} bytes")
    # 20 bytes encode to exactly 32 digits, so b32encode adds no padding.
    return base64.b32encode(raw).decode("ascii").lower()


def validate_service_id(text: object) -> str:
    """Return ``text`` unchanged if it is a well-formed service id.

    Otherwise raise :class:`ConfigError`. The message says what is wrong
    (length, upper-case, a character outside the alphabet) but never
    repeats the value or any part of it: a near-miss id is still mostly
    secret, and error messages end up in logs and tickets.
    """
    if not isinstance(text, str):
        raise ConfigError("the service_id must be a string")
    if len(text) != SERVICE_ID_LENGTH:
        raise ConfigError(
            f"the service_id must be {SERVICE_ID_LENGTH} characters long, "
            f"not {len(text)}; copy it again from `hub create-service`"
        )
    if _ALPHABET_SET.issuperset(text):
        return text
    if _ALPHABET_SET.issuperset(text.lower()):
        raise ConfigError(
            "the service_id contains upper-case letters; service ids are "
            "written in lower case"
        )
    raise ConfigError(
        "the service_id contains characters other than a-z and 2-7; "
        "copy it again from `hub create-service`"
    )


def lookup_id(service_id: str) -> bytes:
    """Return the 16-byte id an agent sends so the hub can find its service.

    Deterministic; one-way (the service id cannot be recovered from it).
    """
    return nacl.hash.blake2b(
        service_id.encode(),
        digest_size=LOOKUP_ID_SIZE,
        person=_LOOKUP_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )


def service_psk(service_id: str) -> bytes:
    """Return the service's 32-byte pre-shared key for the handshake.

    Deterministic, one-way, and independent of :func:`lookup_id` (a
    different personalization), so the lookup id sent on the wire tells
    nothing about the key. The result is a secret: never log or print it.
    """
    return nacl.hash.blake2b(
        service_id.encode(),
        digest_size=PSK_SIZE,
        person=_PSK_PERSON,
        encoder=nacl.encoding.RawEncoder,
    )
