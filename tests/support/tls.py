"""Real certificates for the tests, made by trustme.

One private CA per test session issues one server certificate valid for
``127.0.0.1``, ``localhost`` and the test host names in
:data:`TEST_HOSTNAMES` (``hub.corp.test``, ``scim.corp.test``). No test
turns verification off: a client either trusts this CA (the context from
:meth:`TlsMaterial.client_context`, or the PEM bundle from the ``ca_file``
fixture that the agent's configuration takes) or the handshake fails.

``other_tls`` is a second, unrelated CA with a certificate for the same
names: a client that trusts only one of the two refuses the other's server,
which is how tests provoke a verification failure.
"""

from __future__ import annotations

import hashlib
import pathlib
import ssl
from dataclasses import dataclass

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

#: Names that resolve nowhere: tests reach them through an address mapping
#: (a target's declared address, or the test proxy's host table).
TEST_HOSTNAMES = ("hub.corp.test", "scim.corp.test")

#: What the server certificate is valid for.
SERVER_IDENTITIES = ("127.0.0.1", "localhost", *TEST_HOSTNAMES)


@dataclass(frozen=True)
class TlsMaterial:
    """A CA and the server certificate it issued."""

    ca: trustme.CA
    cert: trustme.LeafCert

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting the certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this CA and nothing else."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ca.configure_trust(context)
        return context

    def write_ca_bundle(self, path: pathlib.Path) -> pathlib.Path:
        """Write the CA certificate as PEM to ``path`` and return ``path``."""
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def spki_sha256(self) -> bytes:
        """SHA-256 of the server certificate's DER SubjectPublicKeyInfo.

        Computed with ``cryptography`` (trustme's own dependency), so it
        checks the package's hand-written DER reader independently.
        """
        pem = self.cert.cert_chain_pems[0].bytes()
        public_key = x509.load_pem_x509_certificate(pem).public_key()
        der = public_key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        return hashlib.sha256(der).digest()


def make_tls_material() -> TlsMaterial:
    """Create a new CA and a server certificate for :data:`SERVER_IDENTITIES`."""
    ca = trustme.CA()
    return TlsMaterial(ca=ca, cert=ca.issue_cert(*SERVER_IDENTITIES))


@pytest.fixture(scope="session")
def tls() -> TlsMaterial:
    """The session's CA and server certificate."""
    return make_tls_material()


@pytest.fixture(scope="session")
def other_tls() -> TlsMaterial:
    """An unrelated CA and certificate for the same names, trusted by no one."""
    return make_tls_material()


@pytest.fixture
def ca_file(tls: TlsMaterial, tmp_path: pathlib.Path) -> pathlib.Path:
    """The session CA written as a PEM bundle in the test's tmp directory."""
    return tls.write_ca_bundle(tmp_path / "ca.pem")
