"""Tests for otad.scep: a real macOS PKCSReq, CSR parsing, and CertReps checked by asn1crypto and openssl."""

from __future__ import annotations

import functools
import os
import subprocess
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asn1crypto import cms as asn1_cms  # type: ignore[import-untyped]
from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import AttributeOID, NameOID
from twisted.trial.unittest import TestCase

from otad import cms, scep

DATA = Path(__file__).parent / "data" / "micromdm-scep"
CAPTURE = DATA / "PKCSReq-macos.der"
CAPTURE_CN = "com.apple.security.scep.063D7953-1338-4BF0-8F99-913382996224"
CAPTURE_TRANSACTION = "A13090761A30F66664F85D37433D2065E1112BA1"
OPENSSL = "/usr/bin/openssl"

MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
PKI_STATUS = "2.16.840.1.113733.1.9.3"
FAIL_INFO = "2.16.840.1.113733.1.9.4"
SENDER_NONCE = "2.16.840.1.113733.1.9.5"
RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
TRANSACTION_ID = "2.16.840.1.113733.1.9.7"


@functools.cache
def _key(index: int) -> rsa.RSAPrivateKey:
    """Test keys, generated on first use only, because RSA key generation is slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cert(
    common_name: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
) -> x509.Certificate:
    """A certificate for key, self-signed unless issuer (cert, key) is given."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        .sign(issuer_key, hashes.SHA256())
    )


@functools.cache
def _ca() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    return _cert("otad SCEP test CA", _key(0)), _key(0)


@functools.cache
def _requester() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A device's self-signed SCEP signer, as Apple devices make one."""
    return _cert("requester", _key(1)), _key(1)


def _capture_ca() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    with warnings.catch_warnings():
        # The micromdm test CA's countryName is "USA"; cryptography warns about it.
        warnings.simplefilter("ignore", UserWarning)
        cert = x509.load_pem_x509_certificate((DATA / "testca" / "ca.pem").read_bytes())
    key = load_pem_private_key((DATA / "testca" / "ca-key-nopass.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cert, key


def _printable(text: str) -> bytes:
    return bytes(core.PrintableString(text).dump())


def _request(attributes: list[tuple[str, bytes]], content: bytes = b"unused envelope") -> bytes:
    cert, key = _requester()
    return cms.sign(content, cert, key, attributes=attributes)


def _scep_attributes(message_type: str = "19", nonce: bytes = b"n" * 16) -> list[tuple[str, bytes]]:
    return [
        (MESSAGE_TYPE, _printable(message_type)),
        (TRANSACTION_ID, _printable("0123abcd")),
        (SENDER_NONCE, bytes(core.OctetString(nonce).dump())),
    ]


def _csr(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    challenge: bytes | None = None,
    tag: _ASN1Type = _ASN1Type.PrintableString,
) -> bytes:
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("device.example")]), False)
    )
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge, _tag=tag)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def _sequence(*parts: bytes) -> bytes:
    return bytes(core.Sequence(contents=b"".join(parts)).dump())


def _signed_attributes(der: bytes) -> dict[str, list[Any]]:
    """The CertRep's signed attributes, decoded by asn1crypto independently of otad."""
    signer_info = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]
    return {
        attribute["type"].dotted: [core.load(value.dump()) for value in attribute["values"]] for attribute in signer_info["signed_attrs"]
    }


class SCEPTests(TestCase):
    """SCEP PKIMessages in and CertReps out."""

    def assertSCEPError(
        self,
        reason: str,
        fail_info: scep.FailInfo,
        function: Callable[..., object],
        *args: object,
    ) -> None:
        error = self.assertRaises(scep.SCEPError, function, *args)
        self.assertEqual((str(error), error.fail_info), (reason, fail_info))

    def test_capture(self) -> None:
        """The real macOS PKCSReq parses: type 19, its transactionID, its 8-byte nonce."""
        message = scep.parse_pki_message(CAPTURE.read_bytes())
        self.assertEqual(message.message_type, scep.MessageType.PKCSReq)
        self.assertEqual(message.transaction_id, CAPTURE_TRANSACTION)
        # RFC 8894 says 16 bytes; this Mac sent 8, so parsing must not insist on 16.
        self.assertEqual(message.sender_nonce, bytes.fromhex("ae7fe8816cc6bedd"))
        self.assertEqual(message.digest, "sha1")
        self.assertEqual(
            message.signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
            "MDM SCEP SIGNER",
        )

    def test_capture_envelope_and_csr(self) -> None:
        """The capture's envelope opens with the test CA (3DES) and holds a v2 CSR."""
        cert, key = _capture_ca()
        message = scep.parse_pki_message(CAPTURE.read_bytes())
        opened = scep.open_envelope(message, cert, key)
        self.assertEqual(opened.cipher, "des3")
        csr = scep.parse_csr(opened.content)
        self.assertEqual(csr.version, 2)
        self.assertEqual(csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, CAPTURE_CN)
        self.assertIsNone(csr.challenge)
        self.assertEqual(csr.der, opened.content)
        assert isinstance(csr.public_key, rsa.RSAPublicKey)
        self.assertEqual(csr.public_key.key_size, 1024)
        usage = csr.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature)

    def test_csr_bad_signature(self) -> None:
        """A CSR with one flipped signature byte is refused as badMessageCheck."""
        cert, key = _capture_ca()
        message = scep.parse_pki_message(CAPTURE.read_bytes())
        csr = bytearray(scep.open_envelope(message, cert, key).content)
        csr[-1] ^= 1
        self.assertSCEPError(
            "CSR signature does not verify",
            scep.FailInfo.badMessageCheck,
            scep.parse_csr,
            bytes(csr),
        )
        own = bytearray(_csr(_key(1), b"secret"))
        own[-1] ^= 1
        self.assertSCEPError(
            "CSR signature does not verify",
            scep.FailInfo.badMessageCheck,
            scep.parse_csr,
            bytes(own),
        )

    def test_csr_bad_version(self) -> None:
        """A CSR version other than 0, 1 or 2 is refused."""
        csr = bytearray(_csr(_key(1)))
        version = csr.index(b"\x02\x01\x00")
        csr[version + 2] = 3
        self.assertSCEPError(
            "unsupported CSR version",
            scep.FailInfo.badRequest,
            scep.parse_csr,
            bytes(csr),
        )

    def test_challenge_string_types(self) -> None:
        """challengePassword is read as PrintableString, UTF8String, IA5String or BMPString."""
        cases = [
            (b"secret-1", _ASN1Type.PrintableString, "secret-1"),
            ("sécret-2".encode(), _ASN1Type.UTF8String, "sécret-2"),
            (b"secret-3", _ASN1Type.IA5String, "secret-3"),
            ("sécret-4".encode("utf-16-be"), _ASN1Type.BMPString, "sécret-4"),
        ]
        for value, tag, expected in cases:
            csr = scep.parse_csr(_csr(_key(1), value, tag))
            self.assertEqual(csr.challenge, expected, tag)
            self.assertEqual(csr.version, 0)

    def test_csr_details(self) -> None:
        """The requested extensions, subject and public key come back."""
        csr = scep.parse_csr(_csr(_key(1)))
        self.assertIsNone(csr.challenge)
        self.assertEqual(csr.public_key, _key(1).public_key())
        self.assertEqual(csr.subject, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(names.value.get_values_for_type(x509.DNSName), ["device.example"])

    def test_csr_ecdsa(self) -> None:
        """An ECDSA-signed CSR verifies too."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = scep.parse_csr(_csr(key, b"pw"))
        self.assertIsInstance(csr.public_key, ec.EllipticCurvePublicKey)
        self.assertEqual(csr.challenge, "pw")

    def test_csr_garbage(self) -> None:
        """Junk, truncation and oversized input are refused as badRequest."""
        der = _csr(_key(1))
        for junk in (b"", b"\x30\x03abc", der[:-5], os.urandom(300)):
            self.assertSCEPError("malformed CSR", scep.FailInfo.badRequest, scep.parse_csr, junk)
        self.assertSCEPError("CSR too large", scep.FailInfo.badRequest, scep.parse_csr, b"\x30" * 70_000)

    def test_tampered_message(self) -> None:
        """A PKIMessage that does not verify is badMessageCheck, with the CMS reason."""
        der = bytearray(CAPTURE.read_bytes())
        der[-1] ^= 1
        self.assertSCEPError(
            "signature does not verify",
            scep.FailInfo.badMessageCheck,
            scep.parse_pki_message,
            bytes(der),
        )
        self.assertSCEPError(
            "truncated DER",
            scep.FailInfo.badMessageCheck,
            scep.parse_pki_message,
            bytes(der[:100]),
        )

    def test_corruption_never_escapes(self) -> None:
        """No single-byte corruption of the capture raises anything but SCEPError."""
        der = CAPTURE.read_bytes()
        for position in range(len(der)):
            corrupted = bytearray(der)
            corrupted[position] ^= 0x41
            try:
                scep.parse_pki_message(bytes(corrupted))
            except scep.SCEPError:
                pass
            except Exception as exc:  # noqa: BLE001 - the test is that none escape
                self.fail(f"byte {position}: {exc!r} escaped")

    def test_attributes_required(self) -> None:
        """Missing or ill-formed SCEP attributes are refused as badRequest."""
        bad = scep.FailInfo.badRequest
        attributes = _scep_attributes()
        self.assertSCEPError("missing messageType", bad, scep.parse_pki_message, _request([]))
        self.assertSCEPError("missing senderNonce", bad, scep.parse_pki_message, _request(attributes[:2]))
        self.assertSCEPError(
            "missing transactionID",
            bad,
            scep.parse_pki_message,
            _request([attributes[0], attributes[2]]),
        )
        self.assertSCEPError(
            "messageType is not a decimal number",
            bad,
            scep.parse_pki_message,
            _request(_scep_attributes(message_type="PKCSReq")),
        )
        self.assertSCEPError(
            "senderNonce has a bad length",
            bad,
            scep.parse_pki_message,
            _request(_scep_attributes(nonce=b"x")),
        )
        accented = (TRANSACTION_ID, bytes(core.UTF8String("tränsaction").dump()))
        self.assertSCEPError(
            "transactionID is not printable ASCII",
            bad,
            scep.parse_pki_message,
            _request([attributes[0], accented, attributes[2]]),
        )
        wrong_type = [(MESSAGE_TYPE, bytes(core.Integer(19).dump())), *attributes[1:]]
        self.assertSCEPError(
            "messageType is not a string",
            bad,
            scep.parse_pki_message,
            _request(wrong_type),
        )

    def test_unknown_message_type(self) -> None:
        """An unknown messageType number is returned as an int for the caller to refuse."""
        message = scep.parse_pki_message(_request(_scep_attributes(message_type="99")))
        self.assertEqual(message.message_type, 99)
        self.assertIs(type(message.message_type), int)

    def test_issuer_and_serial(self) -> None:
        """A GetCert IssuerAndSerialNumber reads back as the certificate's issuer and serial."""
        ca_cert, _ = _ca()
        issued = _cert("issued", _key(1), _ca())
        payload = _sequence(issued.issuer.public_bytes(), core.Integer(issued.serial_number).dump())
        self.assertEqual(
            scep.parse_issuer_and_serial(payload),
            (ca_cert.subject, issued.serial_number),
        )
        self.assertSCEPError(
            "malformed IssuerAndSerialNumber",
            scep.FailInfo.badRequest,
            scep.parse_issuer_and_serial,
            payload[:-1],
        )

    def test_issuer_and_subject(self) -> None:
        """A CertPoll IssuerAndSubject reads back as two names."""
        ca_cert, _ = _ca()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
                x509.NameAttribute(NameOID.COMMON_NAME, "device"),
            ]
        )
        payload = _sequence(ca_cert.subject.public_bytes(), subject.public_bytes())
        self.assertEqual(scep.parse_issuer_and_subject(payload), (ca_cert.subject, subject))
        self.assertSCEPError(
            "malformed IssuerAndSubject",
            scep.FailInfo.badRequest,
            scep.parse_issuer_and_subject,
            b"\x30\x00",
        )

    def request(self) -> scep.PKIMessage:
        """A PKCSReq from the test requester, enveloped to the test CA."""
        ca_cert, _ = _ca()
        envelope = cms.encrypt(_csr(_key(1), b"pw"), [ca_cert])
        return scep.parse_pki_message(_request(_scep_attributes(), envelope))

    def openssl_verify(self, der: bytes) -> bytes:
        path = Path(self.mktemp())
        path.write_bytes(der)
        result = subprocess.run(
            [
                OPENSSL,
                "cms",
                "-verify",
                "-noverify",
                "-inform",
                "DER",
                "-in",
                str(path),
                "-binary",
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_cert_rep_success(self) -> None:
        """A SUCCESS CertRep: signed attributes, rsaEncryption, and the issued cert enveloped."""
        ca_cert, ca_key = _ca()
        request = self.request()
        issued = _cert("requester", _key(1), _ca())
        der = scep.build_cert_rep(
            request=request,
            status=scep.PKIStatus.SUCCESS,
            signer_cert=ca_cert,
            signer_key=ca_key,
            issued=[issued],
        )
        signer_info = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]
        self.assertEqual(
            signer_info["signature_algorithm"]["algorithm"].dotted,
            "1.2.840.113549.1.1.1",
        )
        self.assertEqual(signer_info["digest_algorithm"]["algorithm"].native, "sha256")
        attributes = _signed_attributes(der)
        self.assertEqual(attributes[MESSAGE_TYPE], [core.PrintableString("3")])
        self.assertEqual(attributes[PKI_STATUS], [core.PrintableString("0")])
        self.assertEqual(attributes[TRANSACTION_ID], [core.PrintableString("0123abcd")])
        self.assertEqual(attributes[RECIPIENT_NONCE], [core.OctetString(b"n" * 16)])
        (sender_nonce,) = attributes[SENDER_NONCE]
        assert isinstance(sender_nonce, core.OctetString)
        self.assertEqual(len(sender_nonce.native), 16)
        self.assertNotEqual(sender_nonce.native, b"n" * 16)
        self.assertNotIn(FAIL_INFO, attributes)

        envelope = self.openssl_verify(der)
        requester_cert, requester_key = _requester()
        opened = cms.decrypt(envelope, requester_cert, requester_key)
        self.assertEqual(opened.cipher, "aes256")
        self.assertEqual(cms.read_certs_only(opened.content), [issued])

        # otad reads its own CertRep back too.
        reply = scep.parse_pki_message(der)
        self.assertEqual(reply.message_type, scep.MessageType.CertRep)
        self.assertEqual(reply.signer, ca_cert)

    def test_cert_rep_failure(self) -> None:
        """A FAILURE CertRep carries pkiStatus 2, the failInfo, and an empty eContent."""
        ca_cert, ca_key = _ca()
        request = self.request()
        der = scep.build_cert_rep(
            request=request,
            status=scep.PKIStatus.FAILURE,
            fail_info=scep.FailInfo.badCertId,
            signer_cert=ca_cert,
            signer_key=ca_key,
        )
        attributes = _signed_attributes(der)
        self.assertEqual(attributes[PKI_STATUS], [core.PrintableString("2")])
        self.assertEqual(attributes[FAIL_INFO], [core.PrintableString("4")])
        self.assertEqual(attributes[RECIPIENT_NONCE], [core.OctetString(b"n" * 16)])
        encapsulated = asn1_cms.ContentInfo.load(der)["content"]["encap_content_info"]
        self.assertIsInstance(encapsulated["content"], core.OctetString)
        self.assertEqual(encapsulated["content"].native, b"")
        self.assertEqual(self.openssl_verify(der), b"")

    def test_cert_rep_pending_to_capture(self) -> None:
        """A PENDING CertRep to the real Mac request echoes its 8-byte nonce, signed with SHA-1 chain."""
        ca_cert, ca_key = _ca()
        request = scep.parse_pki_message(CAPTURE.read_bytes())
        der = scep.build_cert_rep(
            request=request,
            status=scep.PKIStatus.PENDING,
            signer_cert=ca_cert,
            signer_key=ca_key,
            digest="sha1",
        )
        attributes = _signed_attributes(der)
        self.assertEqual(attributes[PKI_STATUS], [core.PrintableString("3")])
        self.assertEqual(attributes[TRANSACTION_ID], [core.PrintableString(CAPTURE_TRANSACTION)])
        self.assertEqual(
            attributes[RECIPIENT_NONCE],
            [core.OctetString(bytes.fromhex("ae7fe8816cc6bedd"))],
        )
        self.assertNotIn(FAIL_INFO, attributes)
        self.assertEqual(self.openssl_verify(der), b"")

    def test_cert_rep_des3_to_capture(self) -> None:
        """A SUCCESS CertRep can be 3DES-enveloped to the real Mac's signer, and openssl reads it."""
        ca_cert, ca_key = _ca()
        request = scep.parse_pki_message(CAPTURE.read_bytes())
        der = scep.build_cert_rep(
            request=request,
            status=scep.PKIStatus.SUCCESS,
            signer_cert=ca_cert,
            signer_key=ca_key,
            issued=[_cert("device", _key(1), _ca())],
            cipher="des3",
        )
        envelope = asn1_cms.ContentInfo.load(self.openssl_verify(der))["content"]
        algorithm = envelope["encrypted_content_info"]["content_encryption_algorithm"]
        self.assertEqual(algorithm["algorithm"].dotted, "1.2.840.113549.3.7")
        recipient = envelope["recipient_infos"][0].chosen["rid"].chosen
        self.assertEqual(recipient["serial_number"].native, request.signer.serial_number)

    def test_cert_rep_refusals(self) -> None:
        """build_cert_rep refuses single DES and inconsistent status arguments."""
        ca_cert, ca_key = _ca()
        request = self.request()
        self.assertSCEPError(
            "single DES is not allowed for a CertRep",
            scep.FailInfo.badAlg,
            lambda: scep.build_cert_rep(
                request=request,
                status=scep.PKIStatus.SUCCESS,
                signer_cert=ca_cert,
                signer_key=ca_key,
                issued=[ca_cert],
                cipher="des",
            ),
        )
        for status, fail_info in [
            (scep.PKIStatus.FAILURE, None),
            (scep.PKIStatus.PENDING, scep.FailInfo.badAlg),
            (scep.PKIStatus.SUCCESS, None),
        ]:
            self.assertRaises(
                ValueError,
                scep.build_cert_rep,
                request=request,
                status=status,
                signer_cert=ca_cert,
                signer_key=ca_key,
                fail_info=fail_info,
            )
