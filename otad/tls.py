"""The TLS that otad's HTTPS listeners serve: a certificate that can be swapped while connections go on.

Twisted's ``ssl:`` endpoint reads its certificate once; otad renews its own TLS certificate
while it runs and re-reads an operator's files on reload, so each listener gets a
``ServerTLS`` whose context is replaced for new connections when the certificate changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer


class TLSFilesError(ValueError):
    """An operator's TLS files cannot be used; str() names the file."""


ServerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# Mozilla's "intermediate" configuration for TLS 1.2, less its finite-field DHE suites: forward
# secrecy (ECDHE) and AEAD ciphers only, so no static-RSA key exchange and no CBC. TLS 1.3's own
# suites are all AEAD and forward-secret, and OpenSSL's defaults for them stay.
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_VERSIONS = {"TLSv1.2": TLSVersion.TLSv1_2, "TLSv1.3": TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class TLSPolicy:
    """What otad's TLS offers: ``[tls] ciphers`` (OpenSSL's syntax, TLS 1.2) and ``[tls] min_version``."""

    ciphers: str = INTERMEDIATE_CIPHERS
    min_version: str = "TLSv1.2"


def _context(key: ServerKey, chain: list[x509.Certificate], policy: TLSPolicy) -> SSL.Context:
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(key),
        certificate=crypto.X509.from_cryptography(chain[0]),
        extraCertChain=[crypto.X509.from_cryptography(cert) for cert in chain[1:]],
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(policy.ciphers),
        raiseMinimumTo=_VERSIONS[policy.min_version],
        # Resumption (session tickets for TLS 1.3 and 1.2, and a session cache) spares a returning
        # device the full handshake and its private-key operation.
        enableSessions=True,
        enableSessionTickets=True,
    )
    return options.getContext()


def check_ciphers(text: str) -> str:
    """The cipher string if OpenSSL knows at least one suite in it; ValueError otherwise (for the configuration)."""
    try:
        SSL.Context(SSL.TLS_SERVER_METHOD).set_cipher_list(text.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise ValueError(f"OpenSSL knows no cipher in {text!r}") from None
    return text


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """The certificate chain one HTTPS listener serves; ``use`` replaces it for new connections."""

    def __init__(self, key: ServerKey, chain: list[x509.Certificate], policy: TLSPolicy = TLSPolicy()) -> None:
        self._policy = policy
        self.use(key, chain)

    def use(self, key: ServerKey, chain: list[x509.Certificate]) -> None:
        """Serve ``chain`` (leaf first) with ``key`` from the next handshake on; open connections keep theirs."""
        self._context = _context(key, chain, self._policy)
        self.chain = tuple(chain)

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return SSL.Connection(self._context, None)

    def wrap(self, factory: IProtocolFactory) -> TLSMemoryBIOFactory:
        """``factory`` (the site) behind this TLS."""
        return TLSMemoryBIOFactory(self, False, factory)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TLSFilesError(f"cannot read the TLS {what} {path}: {error.strerror}") from None


def load_files(certificate: Path, key: Path | None = None, chain: Path | None = None) -> tuple[ServerKey, list[x509.Certificate]]:
    """An operator's key and chain: ``certificate`` may hold the whole chain (certbot's fullchain.pem)
    and the key too; ``chain`` adds intermediates (certbot's chain.pem)."""
    cert_data = _read(certificate, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise TLSFilesError(f"{certificate} holds no PEM certificate") from None
    if chain is not None:
        try:
            extra = x509.load_pem_x509_certificates(_read(chain, "chain"))
        except ValueError:
            raise TLSFilesError(f"{chain} holds no PEM certificate") from None
        certs.extend(cert for cert in extra if cert not in certs)
    key_path = key or certificate
    try:
        private_key = serialization.load_pem_private_key(_read(key_path, "key"), password=None)
    except (ValueError, TypeError):
        raise TLSFilesError(f"{key_path} holds no unencrypted PEM private key") from None
    if not isinstance(private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TLSFilesError(f"{key_path}: only RSA and ECDSA keys are supported")
    if private_key.public_key() != certs[0].public_key():
        raise TLSFilesError(f"the key in {key_path} does not match the first certificate in {certificate}")
    return private_key, certs
