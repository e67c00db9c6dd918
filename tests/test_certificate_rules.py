"""Tests for otad.certificate_rules: each of Apple's TLS server certificate rules is named when broken."""

from __future__ import annotations

import datetime
import functools
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial import unittest

from otad.certificate_rules import tls_server_problems
from tests.helpers import NOW

DATA = Path(__file__).parent / "data"


@functools.cache
def _key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _cert(
    *,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    days: float = 397,
    names: Sequence[x509.GeneralName] | None = (x509.DNSName("otad.example.com"),),
    eku: Sequence[x509.ObjectIdentifier] | None = (ExtendedKeyUsageOID.SERVER_AUTH,),
    usage: x509.KeyUsage | None = None,
    start: datetime.datetime = NOW - datetime.timedelta(minutes=5),
) -> x509.Certificate:
    key = key or _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otad.example.com")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if usage is not None:
        builder = builder.add_extension(usage, critical=True)
    return builder.sign(key, hashes.SHA256())


def _usage(digital_signature: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature, False, True, False, False, False, False, False, False)


class AppleTLSRulesTests(unittest.TestCase):
    def problems(self, cert: x509.Certificate, hostname: str = "otad.example.com") -> list[str]:
        return tls_server_problems(cert, hostname, NOW)

    def test_good_certificate(self) -> None:
        """A 397-day SHA-256 RSA-2048 certificate with the name in subjectAltName and serverAuth breaks no rule."""
        self.assertEqual(self.problems(_cert()), [])

    def test_825_days_counted_from_not_before(self) -> None:
        """Exactly 825 days from notBefore to notAfter passes; 825 days and 5 minutes (backdating counts) does not."""
        self.assertEqual(self.problems(_cert(days=825)), [])
        [problem] = self.problems(_cert(days=825 + 5 / 1440))
        self.assertIn("825.00 days from notBefore to notAfter (Apple allows 825)", problem)

    def test_names(self) -> None:
        """Without subjectAltName, or with one that lacks the host name, the name rule is broken; wildcards and
        IP addresses are matched the way clients match them."""
        self.assertEqual(self.problems(_cert(names=None)), ["no subjectAltName extension (Apple ignores the common name)"])
        self.assertEqual(self.problems(_cert(), "other.example.com"), ["subjectAltName does not name other.example.com"])
        self.assertEqual(self.problems(_cert(names=[x509.DNSName("*.example.com")])), [])
        address = _cert(names=[x509.IPAddress(ipaddress.ip_address("192.0.2.1"))])
        self.assertEqual(self.problems(address, "192.0.2.1"), [])
        self.assertEqual(self.problems(address, "192.0.2.2"), ["subjectAltName does not name 192.0.2.2"])

    def test_extended_key_usage(self) -> None:
        """A certificate without EKU, or with clientAuth only, lacks serverAuth."""
        for eku in (None, [ExtendedKeyUsageOID.CLIENT_AUTH]):
            self.assertEqual(self.problems(_cert(eku=eku)), ["no extendedKeyUsage with serverAuth"])

    def test_key_usage_needs_digital_signature(self) -> None:
        """A keyUsage without digitalSignature is named (forward-secret key exchange signs with the key)."""
        self.assertEqual(self.problems(_cert(usage=_usage(True))), [])
        [problem] = self.problems(_cert(usage=_usage(False)))
        self.assertIn("keyUsage lacks digitalSignature", problem)

    def test_key_size(self) -> None:
        """RSA under 2048 bits and ECDSA under P-256 are named; P-256 passes."""
        self.assertEqual(self.problems(_cert(key=_key(1024))), ["RSA key of 1024 bits (Apple needs 2048 or more)"])
        self.assertEqual(self.problems(_cert(key=ec.generate_private_key(ec.SECP256R1()))), [])
        [problem] = self.problems(_cert(key=ec.generate_private_key(ec.SECP192R1())))
        self.assertIn("secp192r1 (Apple needs P-256 or larger)", problem)

    def test_sha1_signature(self) -> None:
        """A SHA-1 signature is named (cryptography no longer signs with SHA-1, so this is Apple's own old CA)."""
        apple = x509.load_pem_x509_certificate((DATA / "apple" / "apple_iphone_device_ca.pem").read_bytes())
        self.assertIn("signed with sha1 (Apple needs a SHA-2 signature)", self.problems(apple))

    def test_dates(self) -> None:
        """An expired or not yet valid certificate is named."""
        [expired] = self.problems(_cert(start=NOW - datetime.timedelta(days=400)))
        self.assertTrue(expired.startswith("expired on "), expired)
        [early] = self.problems(_cert(start=NOW + datetime.timedelta(days=1)))
        self.assertTrue(early.startswith("not valid before "), early)
