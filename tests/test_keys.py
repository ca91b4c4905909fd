"""Service ids and what is derived from them (trustelem_relay._keys)."""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Callable

import pytest

from trustelem_relay._errors import ConfigError
from trustelem_relay._keys import (
    LOOKUP_ID_SIZE,
    PSK_SIZE,
    SERVICE_ID_ALPHABET,
    SERVICE_ID_LENGTH,
    lookup_id,
    new_service_id,
    service_psk,
    validate_service_id,
)

EXAMPLE_ID = "2jy34wpcohrhdytr6hutym6qfi2l7nnw"


def counting_bytes(n: int) -> bytes:
    return bytes(range(n))


def fixed(raw: bytes) -> Callable[[int], bytes]:
    """A random source that always returns ``raw``."""

    def source(n: int) -> bytes:
        return raw

    return source


def test_new_service_id_encodes_twenty_bytes_as_lower_base32() -> None:
    # A known-answer vector: bytes 0..19 in RFC 4648 base32, lower-cased.
    assert new_service_id(counting_bytes) == "aaaqeayeaudaocajbifqydiob4ibceqt"
    assert new_service_id(lambda n: b"\0" * n) == "a" * 32
    assert new_service_id(lambda n: b"\xff" * n) == "7" * 32


def reference_base32(raw: bytes) -> str:
    # Straight from RFC 4648: the bits in order, five at a time.
    bits = "".join(f"{byte:08b}" for byte in raw)
    return "".join(
        SERVICE_ID_ALPHABET[int(bits[i : i + 5], 2)] for i in range(0, len(bits), 5)
    )


def test_new_service_id_matches_a_bit_by_bit_encoding() -> None:
    for seed in range(30):
        raw = hashlib.sha256(bytes([seed])).digest()[:20]
        assert new_service_id(fixed(raw)) == reference_base32(raw)


def test_new_service_id_round_trips_to_its_random_bytes() -> None:
    raw = bytes.fromhex("00112233445566778899aabbccddeeff01234567")
    text = new_service_id(lambda n: raw)
    assert base64.b32decode(text.upper()) == raw


def test_new_service_id_is_valid_and_fresh_each_time() -> None:
    ids = {new_service_id() for _ in range(50)}
    assert len(ids) == 50
    for text in ids:
        assert validate_service_id(text) == text
        assert len(text) == SERVICE_ID_LENGTH
        assert set(text) <= set(SERVICE_ID_ALPHABET)


@pytest.mark.parametrize("size", [19, 21, 0])
def test_new_service_id_refuses_a_source_of_the_wrong_size(size: int) -> None:
    with pytest.raises(ValueError, match="returned"):
        new_service_id(lambda n: b"\1" * size)


def test_validate_service_id_accepts_the_documented_example() -> None:
    assert validate_service_id(EXAMPLE_ID) == EXAMPLE_ID


def assert_not_leaked(message: str, value: str) -> None:
    # Not the value, nor any 6-character piece of it.
    if value:
        assert value not in message
    for start in range(max(len(value) - 5, 0)):
        assert value[start : start + 6] not in message


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "32 characters long, not 0"),
        (EXAMPLE_ID[:-1], "not 31"),
        (EXAMPLE_ID + "a", "not 33"),
        (EXAMPLE_ID * 2, "not 64"),
        (EXAMPLE_ID.upper(), "upper-case"),
        (EXAMPLE_ID[:-1] + "Q", "upper-case"),
        (EXAMPLE_ID[:-1] + "0", "other than a-z and 2-7"),
        (EXAMPLE_ID[:-1] + "1", "other than a-z and 2-7"),
        (EXAMPLE_ID[:-1] + "8", "other than a-z and 2-7"),
        (EXAMPLE_ID[:-1] + "=", "other than a-z and 2-7"),
        (EXAMPLE_ID[:-1] + " ", "other than a-z and 2-7"),
        (EXAMPLE_ID[:-1] + "\n", "other than a-z and 2-7"),
        (EXAMPLE_ID[:-1] + "é", "other than a-z and 2-7"),
        (EXAMPLE_ID[:-2] + "-x", "other than a-z and 2-7"),
    ],
)
def test_validate_service_id_refuses_without_echoing(bad: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason) as info:
        validate_service_id(bad)
    message = str(info.value)
    assert "\n" not in message
    assert_not_leaked(message, bad)
    assert_not_leaked(message, EXAMPLE_ID)


@pytest.mark.parametrize("bad", [None, 42, EXAMPLE_ID.encode()])
def test_validate_service_id_refuses_non_strings(bad: object) -> None:
    with pytest.raises(ConfigError, match="must be a string") as info:
        validate_service_id(bad)
    assert EXAMPLE_ID not in str(info.value)


def test_derived_values_have_the_documented_sizes() -> None:
    assert len(lookup_id(EXAMPLE_ID)) == LOOKUP_ID_SIZE == 16
    assert len(service_psk(EXAMPLE_ID)) == PSK_SIZE == 32


def test_derivation_is_deterministic() -> None:
    assert lookup_id(EXAMPLE_ID) == lookup_id(EXAMPLE_ID)
    assert service_psk(EXAMPLE_ID) == service_psk(EXAMPLE_ID)


def test_derivation_matches_an_independent_blake2b() -> None:
    # hashlib's BLAKE2b is a separate implementation; both zero-pad the
    # personalization to 16 bytes, so the results must agree exactly.
    data = EXAMPLE_ID.encode()
    expected_lookup = hashlib.blake2b(
        data, digest_size=16, person=b"trly-lookup-v1"
    ).digest()
    expected_psk = hashlib.blake2b(data, digest_size=32, person=b"trly-psk-v1").digest()
    assert lookup_id(EXAMPLE_ID) == expected_lookup
    assert service_psk(EXAMPLE_ID) == expected_psk


def test_different_ids_give_different_values() -> None:
    ids = [new_service_id(fixed(bytes([i]) * 20)) for i in range(20)]
    lookups = {lookup_id(text) for text in ids}
    psks = {service_psk(text) for text in ids}
    assert len(lookups) == len(psks) == len(ids)


def test_one_character_changes_both_values() -> None:
    other = EXAMPLE_ID[:-1] + "a"
    assert lookup_id(other) != lookup_id(EXAMPLE_ID)
    assert service_psk(other) != service_psk(EXAMPLE_ID)


def test_lookup_id_is_not_part_of_the_psk() -> None:
    # The personalizations differ, so the public lookup id is no prefix or
    # piece of the secret key.
    assert lookup_id(EXAMPLE_ID) not in service_psk(EXAMPLE_ID)


def test_neither_value_contains_the_id() -> None:
    for value in (lookup_id(EXAMPLE_ID), service_psk(EXAMPLE_ID)):
        assert EXAMPLE_ID.encode() not in value
        assert EXAMPLE_ID not in value.hex()


def test_every_alphabet_character_is_accepted_in_every_position() -> None:
    for position, char in itertools.product((0, 15, 31), SERVICE_ID_ALPHABET):
        text = EXAMPLE_ID[:position] + char + EXAMPLE_ID[position + 1 :]
        assert validate_service_id(text) == text
