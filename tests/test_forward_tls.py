"""HTTPS towards targets: verification, server name, pin; and the DER walk.

The origins present the session's trustme certificate (tests/support/tls.py),
valid for scim.corp.test, hub.corp.test, localhost and 127.0.0.1. A client
trusts that CA through a target's ``ca_file``, or does not; no test turns
verification off to make a handshake pass.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st
from support.forwarding import HOSTNAME, RecordingSink, request, target_at
from support.origin import Origin, serve_origin, wait_for_close
from support.tls import TlsMaterial

from trustelem_relay import TimeoutBeforeSending, TLSFailure
from trustelem_relay._forward import ForwardLimits, forward
from trustelem_relay._forward_tls import (
    client_context,
    pin_matches,
    subject_public_key_info,
)
from trustelem_relay._policy import Target, TLSSettings

pytestmark = pytest.mark.usefixtures("no_resource_warnings")


async def forward_https(
    tls: TlsMaterial, settings: TLSSettings, *, authority: str = HOSTNAME
) -> tuple[Origin, RecordingSink]:
    """Forward a GET over https to an origin presenting *tls*'s certificate."""
    sink = RecordingSink()
    async with serve_origin(ssl_context=tls.server_context()) as origin:
        head = request(scheme="https", authority=authority)
        await forward(target_at(origin.port, tls=settings), head, b"", sink)
    return origin, sink


async def forward_https_fails(
    tls: TlsMaterial, settings: TLSSettings, *, authority: str = HOSTNAME
) -> tuple[Origin, TLSFailure]:
    """Like forward_https, expecting a TLSFailure; nothing may be sent."""
    async with serve_origin(ssl_context=tls.server_context()) as origin:
        head = request(scheme="https", authority=authority)
        with pytest.raises(TLSFailure) as caught:
            await forward(
                target_at(origin.port, tls=settings), head, b"", RecordingSink()
            )
    assert caught.value.may_have_reached_target is False
    assert origin.exchanges == []
    return origin, caught.value


# --------------------------------------------------------------------------
# Verification


async def test_https_verifies_the_certificate_for_the_url_host(
    tls: TlsMaterial, ca_file: Path
) -> None:
    origin, sink = await forward_https(tls, TLSSettings(ca_file=ca_file))

    assert origin.server_names == [HOSTNAME]
    [exchange] = origin.exchanges
    assert exchange.header(b"host") == [HOSTNAME.encode()]
    assert sink.body == b"ok"


async def test_https_url_with_a_port_verifies_the_host_part(
    tls: TlsMaterial, ca_file: Path
) -> None:
    settings = TLSSettings(ca_file=ca_file)
    origin, _ = await forward_https(tls, settings, authority=f"{HOSTNAME}:8443")

    assert origin.server_names == [HOSTNAME]
    assert origin.exchanges[0].header(b"host") == [f"{HOSTNAME}:8443".encode()]


async def test_https_url_with_an_ip_address_verifies_the_ip(
    tls: TlsMaterial, ca_file: Path
) -> None:
    settings = TLSSettings(ca_file=ca_file)
    origin, sink = await forward_https(tls, settings, authority="127.0.0.1")

    # No SNI for an IP address; the certificate's IP entry is what matched.
    assert origin.server_names == [None]
    assert sink.body == b"ok"


async def test_https_with_an_untrusted_ca_is_a_tls_failure(
    tls: TlsMaterial, other_tls: TlsMaterial, tmp_path: Path
) -> None:
    other_ca = other_tls.write_ca_bundle(tmp_path / "other-ca.pem")
    _, error = await forward_https_fails(tls, TLSSettings(ca_file=other_ca))

    assert "certificate verify failed" in str(error)
    assert isinstance(error.__cause__, trio.BrokenResourceError)


async def test_https_with_the_system_cas_refuses_a_private_ca(
    tls: TlsMaterial,
) -> None:
    await forward_https_fails(tls, TLSSettings())


async def test_https_for_a_host_the_certificate_does_not_name_fails(
    tls: TlsMaterial, ca_file: Path
) -> None:
    settings = TLSSettings(ca_file=ca_file)
    _, error = await forward_https_fails(tls, settings, authority="other.corp.test")

    assert "other.corp.test" in str(error)


async def test_https_server_name_overrides_the_url_host(
    tls: TlsMaterial, ca_file: Path
) -> None:
    settings = TLSSettings(ca_file=ca_file, server_name=HOSTNAME)
    origin, sink = await forward_https(tls, settings, authority="10.0.0.12:443")

    assert origin.server_names == [HOSTNAME]
    assert origin.exchanges[0].header(b"host") == [b"10.0.0.12:443"]
    assert sink.body == b"ok"


async def test_https_server_name_is_what_gets_verified(
    tls: TlsMaterial, ca_file: Path
) -> None:
    # The URL's host is in the certificate, the configured name is not.
    settings = TLSSettings(ca_file=ca_file, server_name="other.corp.test")
    await forward_https_fails(tls, settings)


async def test_missing_ca_file_is_a_tls_failure_before_dialling(
    tmp_path: Path,
) -> None:
    settings = TLSSettings(ca_file=tmp_path / "missing.pem")
    async with serve_origin() as origin:
        with pytest.raises(TLSFailure, match="ca_file") as caught:
            await forward(
                target_at(origin.port, tls=settings),
                request(scheme="https"),
                b"",
                RecordingSink(),
            )

    assert caught.value.may_have_reached_target is False
    assert origin.connections == 0


async def test_tls_server_that_never_answers_times_out_before_sending(
    autojump_clock: trio.abc.Clock,
) -> None:
    # Accepts the connection and reads the ClientHello, but never replies.
    async with serve_origin(raw_handler=wait_for_close) as origin:
        start = trio.current_time()
        with pytest.raises(TimeoutBeforeSending, match="TLS handshake") as caught:
            await forward(
                target_at(origin.port),
                request(scheme="https"),
                b"",
                RecordingSink(),
            )
        assert trio.current_time() == start + ForwardLimits().tls_timeout

    assert caught.value.may_have_reached_target is False
    assert origin.connections == 1


async def test_tls_handshake_is_cut_by_the_request_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with serve_origin(raw_handler=wait_for_close) as origin:
        start = trio.current_time()
        with pytest.raises(TimeoutBeforeSending, match="deadline"):
            await forward(
                target_at(origin.port),
                request(scheme="https", timeout=4.0),
                b"",
                RecordingSink(),
            )
        assert trio.current_time() == start + 4.0


# --------------------------------------------------------------------------
# Pin, disabled verification, custom contexts


async def test_https_with_a_matching_pin_succeeds(
    tls: TlsMaterial, ca_file: Path
) -> None:
    settings = TLSSettings(ca_file=ca_file, pin_sha256=tls.spki_sha256())
    _, sink = await forward_https(tls, settings)

    assert sink.body == b"ok"


async def test_https_with_a_wrong_pin_is_a_tls_failure(
    tls: TlsMaterial, ca_file: Path
) -> None:
    settings = TLSSettings(ca_file=ca_file, pin_sha256=hashlib.sha256().digest())
    _, error = await forward_https_fails(tls, settings)

    assert "pin_sha256" in str(error)


async def test_disabled_verification_warns_naming_the_target(
    tls: TlsMaterial, caplog: pytest.LogCaptureFixture
) -> None:
    # Verification off (the CA is trusted nowhere), but the pin still
    # authenticates the server.
    settings = TLSSettings(verify=False, pin_sha256=tls.spki_sha256())
    with caplog.at_level(logging.WARNING, logger="trustelem_relay.forward"):
        _, first = await forward_https(tls, settings)
        _, second = await forward_https(tls, settings)

    assert first.body == second.body == b"ok"
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert record.levelno == logging.WARNING
        assert "'scim-server'" in record.getMessage()
        assert "verification is disabled" in record.getMessage()


async def test_disabled_verification_still_checks_the_pin(
    tls: TlsMaterial,
) -> None:
    settings = TLSSettings(verify=False, pin_sha256=hashlib.sha256().digest())
    await forward_https_fails(tls, settings)


async def test_ssl_context_factory_replaces_the_built_in_contexts(
    tls: TlsMaterial,
) -> None:
    built: list[Target] = []

    def factory(target: Target) -> ssl.SSLContext:
        built.append(target)
        return tls.client_context()

    sink = RecordingSink()
    async with serve_origin(ssl_context=tls.server_context()) as origin:
        target = target_at(origin.port)
        head = request(scheme="https")
        await forward(target, head, b"", sink, ssl_context_factory=factory)

    assert built == [target]
    assert sink.body == b"ok"


def test_contexts_are_built_once_per_setting(ca_file: Path, tmp_path: Path) -> None:
    assert client_context(True, ca_file) is client_context(True, ca_file)
    assert client_context(True, ca_file) is not client_context(True, None)
    # Without verification the CA file plays no part.
    assert client_context(False, ca_file) is client_context(False, None)
    assert client_context(False, None).verify_mode == ssl.CERT_NONE
    assert client_context(True, ca_file).check_hostname


# --------------------------------------------------------------------------
# The DER walk


def der_certificate(key_type: trustme.KeyType) -> tuple[bytes, bytes]:
    """A real certificate (DER) and its SubjectPublicKeyInfo per cryptography."""
    pem = trustme.CA().issue_cert(HOSTNAME, key_type=key_type).cert_chain_pems[0]
    cert = x509.load_pem_x509_certificate(pem.bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return cert.public_bytes(serialization.Encoding.DER), spki


CERTIFICATE, CERTIFICATE_SPKI = der_certificate(trustme.KeyType.ECDSA)


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_spki_is_found_in_real_certificates(key_type: trustme.KeyType) -> None:
    der, spki = der_certificate(key_type)

    assert subject_public_key_info(der) == spki
    assert pin_matches(der, hashlib.sha256(spki).digest())
    assert not pin_matches(der, hashlib.sha256(spki + b"x").digest())


def test_spki_of_a_truncated_or_padded_certificate_is_refused() -> None:
    for length in range(len(CERTIFICATE)):
        with pytest.raises(ValueError, match=r"DER|certificate|TBS"):
            subject_public_key_info(CERTIFICATE[:length])
    with pytest.raises(ValueError, match="one DER SEQUENCE"):
        subject_public_key_info(CERTIFICATE + b"\x00")


@pytest.mark.parametrize(
    ("der", "reason"),
    [
        (b"\x30\x80\x00\x00", "bad DER length"),  # BER indefinite length
        (b"\x30\x81\x05" + b"\x00" * 5, "shortest form"),
        (b"\x30\x82\x00\x05" + b"\x00" * 5, "shortest form"),
        (b"\x30\x85" + b"\x00" * 8, "bad DER length"),
        (b"\x1f\x01\x00", "multi-byte"),
        (b"\x02\x01\x00", "one DER SEQUENCE"),
    ],
)
def test_spki_refuses_what_is_not_strict_der(der: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        subject_public_key_info(der)


@given(st.binary(max_size=600))
def test_spki_of_random_bytes_is_a_value_error_or_a_slice(data: bytes) -> None:
    try:
        spki = subject_public_key_info(data)
    except ValueError:
        return
    assert spki in data
    assert spki[0] == 0x30


@given(st.integers(0, len(CERTIFICATE) - 1), st.integers(0, 255))
def test_spki_of_a_corrupted_certificate_is_a_value_error_or_a_slice(
    position: int, value: int
) -> None:
    corrupted = CERTIFICATE[:position] + bytes([value]) + CERTIFICATE[position + 1 :]
    try:
        spki = subject_public_key_info(corrupted)
    except ValueError:
        return
    assert spki in corrupted
