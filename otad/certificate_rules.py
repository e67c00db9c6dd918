"""Apple's published requirements for TLS server certificates, as checks that name each broken rule.

iOS 13 and macOS 10.15 refuse a TLS server certificate that breaks any of these, whichever CA
issued it, including one the user installed (Apple's "Requirements for trusted certificates in
iOS 13 and macOS 10.15"). otad applies them to the certificate it generates and warns about an
operator's certificate that breaks them, because devices would refuse it without saying why.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

# Counted from notBefore to notAfter, so a backdated notBefore counts too.
APPLE_TLS_MAX_VALIDITY = datetime.timedelta(days=825)
APPLE_MIN_RSA_BITS = 2048
APPLE_MIN_EC_BITS = 256
_SHA2 = (hashes.SHA256, hashes.SHA384, hashes.SHA512)


def validity(cert: x509.Certificate) -> datetime.timedelta:
    """notAfter minus notBefore: the period Apple's 825-day rule limits."""
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _names(cert: x509.Certificate, hostname: str) -> str | None:
    if not isinstance(_extension(cert, x509.SubjectAlternativeName), x509.SubjectAlternativeName):
        return "no subjectAltName extension (Apple ignores the common name)"
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        address = None
    try:
        if address is None:
            verify_certificate_hostname(cert, hostname)
        else:
            verify_certificate_ip_address(cert, str(address))
    except VerificationError:
        return f"subjectAltName does not name {hostname}"
    return None


def _key(cert: x509.Certificate) -> str | None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "unsupported public key (Apple needs RSA of 2048 bits or more, or ECDSA P-256 or larger)"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < APPLE_MIN_RSA_BITS:
            return f"RSA key of {key.key_size} bits (Apple needs {APPLE_MIN_RSA_BITS} or more)"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < APPLE_MIN_EC_BITS:
            return f"ECDSA key on {key.curve.name} (Apple needs P-256 or larger)"
        return None
    return f"{type(key).__name__} key (Apple needs RSA of 2048 bits or more, or ECDSA P-256 or larger)"


def _signature(cert: x509.Certificate) -> str | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        algorithm = None
    if not isinstance(algorithm, _SHA2):
        name = algorithm.name if algorithm is not None else cert.signature_algorithm_oid.dotted_string
        return f"signed with {name} (Apple needs a SHA-2 signature)"
    return None


def _usage(cert: x509.Certificate) -> list[str]:
    problems = []
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if not isinstance(eku, x509.ExtendedKeyUsage) or ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        problems.append("no extendedKeyUsage with serverAuth")
    usage = _extension(cert, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        problems.append("keyUsage lacks digitalSignature (forward-secret TLS key exchange needs it)")
    return problems


def tls_server_problems(cert: x509.Certificate, hostname: str, now: datetime.datetime) -> list[str]:
    """Each of Apple's TLS server certificate rules that ``cert`` breaks for ``hostname``, one line each."""
    problems = []
    if validity(cert) > APPLE_TLS_MAX_VALIDITY:
        problems.append(
            f"valid for {validity(cert).total_seconds() / 86400:.2f} days from notBefore to notAfter "
            f"(Apple allows {APPLE_TLS_MAX_VALIDITY.days})"
        )
    if now < cert.not_valid_before_utc:
        problems.append(f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        problems.append(f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    for problem in (_names(cert, hostname), _key(cert), _signature(cert), *_usage(cert)):
        if problem:
            problems.append(problem)
    return problems
