"""
A fake Apple device-identity PKI, shaped like the real one.

Real iPhones sign their phase 2 answer with a leaf issued by "Apple iPhone
Device CA", which expired in 2014 and still issues, under "Apple iPhone
Certification Authority" (expired 2022) and "Apple Root CA".  The leaves are
RSA-1024 and SHA-1 signed.  otad has to verify that chain by signature while
ignoring dates, and only for that chain; tests can only exercise that policy
if the fake hierarchy has the same awkward properties (expired CAs, weak
leaves), so this module reproduces them on purpose.

This module is part of the independent fake device: it must not import
anything from the ``otad`` package.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from asn1crypto import algos as asn1_algos
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

__all__ = ["FakeAppleHierarchy", "self_signed_identity"]

_UTC = datetime.UTC


def _utc(year: int, month: int, day: int) -> datetime.datetime:
    """A midnight UTC datetime; the fixed dates mirror Apple's real CAs."""
    return datetime.datetime(year, month, day, tzinfo=_UTC)


def _new_key(key_size: int) -> rsa.RSAPrivateKey:
    """RSA key with the conventional exponent (what every Apple key uses)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size)


def _sign(
    builder: x509.CertificateBuilder,
    issuer_key: rsa.RSAPrivateKey,
    algorithm: hashes.SHA1 | hashes.SHA256,
) -> x509.Certificate:
    """
    Sign a certificate, SHA-1 included.

    cryptography refuses to *make* SHA-1 certificates, but Apple's device
    chain is SHA-1 and the fake must be too.  So for SHA-1 the builder signs
    a SHA-256 draft, and the TBSCertificate is re-labelled sha1WithRSA and
    re-signed here with asn1crypto; anything else goes straight through.
    """
    if not isinstance(algorithm, hashes.SHA1):
        return builder.sign(issuer_key, algorithm)
    draft = builder.sign(issuer_key, hashes.SHA256())
    parsed = asn1_x509.Certificate.load(draft.public_bytes(serialization.Encoding.DER))
    sha1_rsa = asn1_algos.SignedDigestAlgorithm({"algorithm": "sha1_rsa", "parameters": asn1_core.Null()})
    tbs = parsed["tbs_certificate"]
    tbs["signature"] = sha1_rsa
    signature = issuer_key.sign(tbs.dump(), padding.PKCS1v15(), hashes.SHA1())
    cert = asn1_x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": sha1_rsa,
            "signature_value": signature,
        }
    )
    return x509.load_der_x509_certificate(cert.dump())


def _name(cn: str, ou: str | None = None) -> x509.Name:
    """Subject in the C/O/OU/CN style of Apple's certificates."""
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fake Apple Inc."),
    ]
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _ca_cert(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    algorithm: hashes.SHA1 | hashes.SHA256,
) -> x509.Certificate:
    """A CA certificate with the extensions path builders (OpenSSL) rely on."""
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    return _sign(builder, issuer_key, algorithm)


def _leaf_key_usage() -> x509.KeyUsage:
    """digitalSignature + keyEncipherment, as on Apple device identities."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class FakeAppleHierarchy:
    """
    Root -> iPhone Certification Authority -> iPhone Device CA (expired).

    ``create`` is slow (three RSA key generations); tests build one per
    module and reuse it.
    """

    root: x509.Certificate
    intermediate: x509.Certificate
    device_ca: x509.Certificate
    root_key: rsa.RSAPrivateKey
    intermediate_key: rsa.RSAPrivateKey
    device_ca_key: rsa.RSAPrivateKey

    @classmethod
    def create(cls) -> FakeAppleHierarchy:
        """
        Build the three CAs with Apple's real validity windows.

        The intermediate (to 2022) and the Device CA (to 2014-04-16) are
        expired, exactly like Apple's, so a verifier that checks dates on
        this chain fails the tests just as it would fail real devices.
        """
        root_key = _new_key(2048)
        intermediate_key = _new_key(2048)
        device_ca_key = _new_key(1024)

        root_name = _name("Fake Apple Root CA", "Fake Apple Certification Authority")
        intermediate_name = _name(
            "Fake Apple iPhone Certification Authority",
            "Fake Apple Certification Authority",
        )
        device_ca_name = _name("Fake Apple iPhone Device CA", "Fake Apple iPhone")

        root = _ca_cert(
            root_name,
            root_key,
            root_name,
            root_key,
            _utc(2006, 4, 25),
            _utc(2035, 2, 9),
            hashes.SHA256(),
        )
        intermediate = _ca_cert(
            intermediate_name,
            intermediate_key,
            root_name,
            root_key,
            _utc(2007, 4, 12),
            _utc(2022, 4, 12),
            hashes.SHA1(),
        )
        device_ca = _ca_cert(
            device_ca_name,
            device_ca_key,
            intermediate_name,
            intermediate_key,
            _utc(2007, 4, 16),
            _utc(2014, 4, 16),
            hashes.SHA1(),
        )
        return cls(
            root=root,
            intermediate=intermediate,
            device_ca=device_ca,
            root_key=root_key,
            intermediate_key=intermediate_key,
            device_ca_key=device_ca_key,
        )

    def anchors_pem(self) -> bytes:
        """PEM of the root only: what otad's ``--device-ca FILE`` is given."""
        return self.root.public_bytes(serialization.Encoding.PEM)

    def chain(self) -> list[x509.Certificate]:
        """Device CA, intermediate, root: the certificates real devices embed."""
        return [self.device_ca, self.intermediate, self.root]

    def issue_device_identity(self, udid: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """
        A device identity like the ones Apple burns into iPhones.

        RSA-1024, SHA-1 signed by the expired Device CA, CN = the UDID.  The
        leaf's own dates are "current" while its issuer's are long past,
        which is the combination real devices present.
        """
        key = _new_key(1024)
        now = datetime.datetime.now(_UTC)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, udid),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
                x509.NameAttribute(NameOID.LOCALITY_NAME, "Cupertino"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fake Apple Inc."),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "iPhone"),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.device_ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3 * 365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.device_ca_key.public_key()),
                critical=False,
            )
        )
        return _sign(builder, self.device_ca_key, hashes.SHA1()), key


def self_signed_identity(
    cn: str,
    key_size: int = 2048,
    key: rsa.RSAPrivateKey | None = None,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """
    A self-signed end-entity identity (not a CA).

    Used for two things: signers "outside the anchors" (a device identity
    nobody vouches for, which otad must refuse), and the transient SCEP
    signer certificate iOS makes for the very key it puts in its CSR (pass
    ``key`` for that, so no new key is generated).
    """
    if key is None:
        key = _new_key(key_size)
    now = datetime.datetime.now(_UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key
