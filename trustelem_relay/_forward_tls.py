"""TLS towards targets: client contexts, and the SPKI pin.

Building an :class:`ssl.SSLContext` reads the whole CA store, which takes
milliseconds, so :func:`client_context` builds one per distinct setting
(verification on or off, CA file) and keeps it for the life of the process.
A CA file edited on disk is therefore read again only after a restart.
Host name checking is per connection (the name passed to the handshake), so
one context serves every server name.

A target may pin its server's public key: ``pin_sha256`` is the SHA-256 of
the certificate's DER ``SubjectPublicKeyInfo``, the value that ``openssl x509
-pubkey -noout | openssl pkey -pubin -outform der | sha256sum`` prints. A pin
survives certificate renewals that keep the key. Finding the key in the
certificate needs only a walk over the outer DER structure, so this module
does it itself rather than depending on a full X.509 library; the walk
refuses anything that is not strict DER.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from pathlib import Path

__all__ = ["client_context", "pin_matches", "subject_public_key_info"]

_contexts: dict[tuple[bool, Path | None], ssl.SSLContext] = {}


def client_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    """The shared client context for one TLS setting, built on first use.

    With *verify*, the chain must lead to *ca_file*'s CAs (or the system's
    when it is None) and the host name is checked. Without it, nothing about
    the server is checked; only a pin can then authenticate it. Raises
    OSError or :class:`ssl.SSLError` when the CA file cannot be loaded.
    """
    key = (verify, ca_file if verify else None)
    context = _contexts.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=key[1])
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        # Say so explicitly: a server that also speaks h2 must not pick it.
        context.set_alpn_protocols(["http/1.1"])
        _contexts[key] = context
    return context


def pin_matches(certificate: bytes, pin: bytes) -> bool:
    """Whether the SHA-256 of *certificate*'s SPKI equals *pin*.

    Raises ValueError when the DER certificate cannot be read.
    """
    digest = hashlib.sha256(subject_public_key_info(certificate)).digest()
    return hmac.compare_digest(digest, pin)


# --------------------------------------------------------------------------
# Just enough DER to find a certificate's public key

_SEQUENCE = 0x30
_VERSION_TAG = 0xA0  # [0] EXPLICIT, constructed


def subject_public_key_info(certificate: bytes) -> bytes:
    """The DER ``SubjectPublicKeyInfo`` of a DER X.509 certificate.

    RFC 5280 section 4.1: ``Certificate`` is a SEQUENCE whose first element,
    ``TBSCertificate``, is a SEQUENCE of an optional ``[0]`` version, then
    serialNumber, signature, issuer, validity, subject and
    subjectPublicKeyInfo. The five fields before the key are skipped without
    being interpreted. Raises ValueError for anything that does not fit.
    """
    tag, start, end = _der_element(certificate, 0)
    if tag != _SEQUENCE or end != len(certificate):
        raise ValueError("a certificate is one DER SEQUENCE")
    tag, offset, tbs_end = _der_element(certificate, start)
    if tag != _SEQUENCE:
        raise ValueError("the certificate has no TBSCertificate")

    def next_field(offset: int) -> tuple[int, int]:
        tag, _, end = _der_element(certificate, offset)
        if end > tbs_end:
            raise ValueError("a field runs past the end of the TBSCertificate")
        return tag, end

    tag, end = next_field(offset)
    if tag == _VERSION_TAG:
        offset = end
    for _ in range(5):
        _, offset = next_field(offset)
    tag, end = next_field(offset)
    if tag != _SEQUENCE:
        raise ValueError("the certificate's public key is not a DER SEQUENCE")
    return certificate[offset:end]


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """Parse the DER tag and length at *offset*.

    Returns ``(tag, start of contents, end of contents)``. Raises ValueError
    unless the element is well formed and lies inside *data*.
    """
    if offset + 2 > len(data):
        raise ValueError("truncated DER element")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags do not occur in a certificate")
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        # 0x80 is BER's indefinite length, which DER forbids; four length
        # bytes already describe 4 GiB, far beyond any certificate.
        if count == 0 or count > 4 or start + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[start : start + count], "big")
        if length < 0x80 or data[start] == 0:
            raise ValueError("DER length is not in its shortest form")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("DER element runs past the end of its container")
    return tag, start, end
