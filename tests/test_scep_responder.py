"""In-memory tests of otad's SCEP responder: requests built and replies read by the independent fake device, state checked in the store."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import functools
import hashlib
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from otad import config, tokens
from otad.ca import Authority, Identity, Publication, serial_hex
from otad.channel import Limits
from otad.cms import read_certs_only
from otad.errors import Kind, Refused
from otad.issued import IssuedCertificates
from otad.metrics import Metrics
from otad.resources.root import Root
from otad.resources.scep import SCEPResource, decode_message, query_parameter
from otad.scep_responder import SCEPResponder
from otad.store import ChallengeRefused, Store
from otad.web import OtadSite, Refusal
from tests.fakeapple import self_signed_identity
from tests.fakedevice import (
    CertRep,
    PKIRequest,
    SCEPRefused,
    build_csr,
    build_pkcs_req,
    decrypt_enveloped,
    envelope,
    parse_cert_rep,
    read_cert_rep,
    sign_cms,
    verify_signed,
)
from tests.helpers import (
    InlinePool,
    InlineStoreThread,
    MemorySite,
    authority,
    device_binding,
    growing_table_scans,
    query_plan,
    traced_statements,
)
from tests.stores import PostgreSQLStore, SQLiteStore

DATA = Path(__file__).parent / "data" / "micromdm-scep"
CAPTURE = DATA / "PKCSReq-macos.der"

MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
SENDER_NONCE = "2.16.840.1.113733.1.9.5"
TRANSACTION_ID = "2.16.840.1.113733.1.9.7"

BAD_ALG, BAD_MESSAGE_CHECK, BAD_REQUEST, BAD_TIME, BAD_CERT_ID = range(5)
UDID = "00008030-001A2B3C4D5E6F70"
SUBJECT = [[["O", "Test Org"]], [["CN", "device"]]]
YEAR = datetime.timedelta(days=365)


def _key(index: int, bits: int = 2048) -> rsa.RSAPrivateKey:
    """Client keys, generated once per test run because RSA key generation is slow."""
    return _generated(index, bits)


@functools.cache
def _generated(index: int, bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.cache
def _signer(index: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """The transient self-signed SCEP signer iOS makes for the key in its CSR."""
    return self_signed_identity("SCEP SIGNER", key=_key(index))


@functools.cache
def _capture_ca() -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    with warnings.catch_warnings():
        # The micromdm test CA's countryName is "USA"; cryptography warns about it.
        warnings.simplefilter("ignore", UserWarning)
        cert = x509.load_pem_x509_certificate((DATA / "testca" / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((DATA / "testca" / "ca-key-nopass.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cert, key


def _printable(text: str) -> bytes:
    return bytes(asn1_core.PrintableString(text).dump())


def _octets(data: bytes) -> bytes:
    return bytes(asn1_core.OctetString(data).dump())


class _IssuerAndSubject(asn1_core.Sequence):
    _fields: ClassVar[list[tuple[str, type]]] = [("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]


def _issuer_and_subject(issuer: x509.Name, subject: x509.Name) -> bytes:
    return bytes(
        _IssuerAndSubject(
            {"issuer": asn1_x509.Name.load(issuer.public_bytes()), "subject": asn1_x509.Name.load(subject.public_bytes())}
        ).dump()
    )


def _pki_message(
    message_type: str,
    payload: bytes,
    signer: tuple[x509.Certificate, rsa.RSAPrivateKey],
    recipient: x509.Certificate,
    *,
    transaction_id: str,
    csr: x509.CertificateSigningRequest | None = None,
    enveloped: bytes | None = None,
) -> PKIRequest:
    """A PKIMessage of any messageType, enveloped and signed with the fake device's own CMS code."""
    nonce = hashlib.sha256(transaction_id.encode()).digest()[:16]
    der = sign_cms(
        envelope(payload, recipient) if enveloped is None else enveloped,
        signer[0],
        signer[1],
        signed_attributes=[
            (MESSAGE_TYPE, _printable(message_type)),
            (TRANSACTION_ID, _printable(transaction_id)),
            (SENDER_NONCE, _octets(nonce)),
        ],
        certificates=[signer[0]],
    )
    return PKIRequest(
        der=der,
        csr=csr,  # type: ignore[arg-type]
        transaction_id=transaction_id,
        sender_nonce=nonce,
        signer_cert=signer[0],
        recipient=recipient,
        aes=True,
        digest="sha256",
    )


def _enveloped_cipher(content: bytes) -> str:
    """The content-encryption algorithm of a CertRep's EnvelopedData, read by asn1crypto."""
    enveloped = asn1_cms.ContentInfo.load(content)["content"]
    return str(enveloped["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native)


class SCEPHarness(SQLiteStore):
    """A SCEPResponder over the shared test CA, an inline store and a fake clock, with request helpers.

    ``publication`` is where issued certificates say their CRL and OCSP responder are. The store is
    SQLite unless ``PostgreSQLStore`` comes first in the test class's bases; ``db`` is a second
    connection to it, as otad-admin would have.
    """

    publication = Publication()

    def setUp(self: Any) -> None:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        self.settings = config.load(None, {"data_dir": str(directory), "hostname": "otad.test"})
        self.clock = Clock()
        # Real time: the test CA was bootstrapped now, and certificates must fall inside its validity.
        self.clock.advance(time.time())
        self.metrics = Metrics()
        location = self.store_location(directory)
        self.store = InlineStoreThread(location)
        self.addCleanup(self.store.close)
        self.db: Store = Store.open_existing(location)
        self.addCleanup(self.db.close)
        self.pool = InlinePool(None, "inline", 1)  # type: ignore[arg-type]
        self.authority = dataclasses.replace(authority(), publication=self.publication)
        # The default NDES layout: clients encrypt to the encryption RA, replies come from the signing RA.
        self.recipient = self.authority.ra_encrypt.cert
        self.ca_certs = [self.authority.root.cert, self.authority.ra_sign.cert, self.authority.ra_encrypt.cert]
        self.responder = self.make_responder(self.settings, self.authority)

    # -- helpers ---------------------------------------------------------------------------

    def make_responder(self, settings: config.Config, authority: Authority) -> SCEPResponder:
        return SCEPResponder(
            settings, authority, self.store, self.pool, self.clock, IssuedCertificates(authority, self.store), metrics=self.metrics
        )

    def challenge(self, kind: str = "scep", udid: str | None = UDID, *, ttl: float = 3600, uses: int = 1) -> tuple[str, int]:
        """A challenge created the way phase 2 (kind scep) or otad-admin (kind static) does; returns (token, id)."""
        token, digest = tokens.mint()
        now = self.clock.seconds()
        if kind == "scep":
            self.db.record_device(udid, "alice", {"UDID": udid}, now=now)  # type: ignore[arg-type]
        identifier = self.db.add_challenge(digest, kind, udid if kind == "scep" else None, now=now, ttl=ttl, uses=uses)
        return token, identifier

    def uses_left(self, token: str) -> int | str:
        try:
            return self.db.find_challenge(tokens.digest(token), ("scep", "static"), now=self.clock.seconds()).uses_left
        except ChallengeRefused as refused:
            return str(refused)

    def request(
        self,
        challenge: str | None,
        *,
        index: int = 0,
        bits: int = 2048,
        aes: bool = True,
        sha256: bool = True,
        transaction_id: str | None = None,
    ) -> PKIRequest:
        key = _key(index, bits)
        signer = _signer(index) if bits == 2048 else self_signed_identity("SCEP SIGNER", key=key)
        return build_pkcs_req(
            key,
            signer[0],
            self.recipient,
            subject=SUBJECT,
            challenge=challenge,
            key_usage=5,
            aes=aes,
            sha256=sha256,
            transaction_id=transaction_id,
        )

    def answer(self, der: bytes, responder: SCEPResponder | None = None) -> bytes:
        return self.successResultOf(ensureDeferred((responder or self.responder).pki_operation(der, "POST")))

    def refused(self, request: PKIRequest, key: rsa.RSAPrivateKey) -> int:
        """Send request; it must be answered with a FAILURE CertRep, whose failInfo is returned."""
        with self.assertRaises(SCEPRefused) as raised:
            parse_cert_rep(self.answer(request.der), ca_certs=self.ca_certs, request=request, key=key)
        return raised.exception.fail_info

    def issued(self, request: PKIRequest, key: rsa.RSAPrivateKey) -> x509.Certificate:
        return parse_cert_rep(self.answer(request.der), ca_certs=self.ca_certs, request=request, key=key)

    def reply(
        self, request: PKIRequest, decrypt_with: tuple[x509.Certificate, rsa.RSAPrivateKey]
    ) -> tuple[CertRep, list[x509.Certificate]]:
        """A CertRep addressed to request, and the certificates it carries (decrypted with decrypt_with)."""
        rep = read_cert_rep(self.answer(request.der), self.ca_certs)
        self.assertEqual(rep.message_type, "3")
        self.assertEqual(rep.transaction_id, request.transaction_id)
        self.assertEqual(rep.recipient_nonce, request.sender_nonce)
        if rep.pki_status != "0":
            return rep, []
        inner = decrypt_enveloped(rep.content, *decrypt_with)
        return rep, pkcs7.load_der_pkcs7_certificates(inner)

    def enroll(self, index: int = 0) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """An otad certificate for key ``index``, through a fresh one-time scep challenge."""
        token, _ = self.challenge()
        return self.issued(self.request(token, index=index), _key(index)), _key(index)

    def events(self, outcome: str) -> list[Any]:
        return [event for event in self.db.events(limit=1000) if event.kind == "scep" and event.outcome == outcome]

    def renewal(self, signer: tuple[x509.Certificate, rsa.RSAPrivateKey], new_key: rsa.RSAPrivateKey, transaction_id: str) -> PKIRequest:
        """A RenewalReq (messageType 17): a CSR for new_key without a challenge, signed by an existing identity."""
        csr = build_csr(new_key, SUBJECT, None)
        return _pki_message(
            "17", csr.public_bytes(serialization.Encoding.DER), signer, self.recipient, transaction_id=transaction_id, csr=csr
        )

    def cert_poll(self, transaction_id: str) -> PKIRequest:
        """A CertPoll (GetCertInitial, messageType 20) for the SUBJECT issued by otad's root, signed by client key 0."""
        subject = x509.Name.from_rfc4514_string("CN=device,O=Test Org")
        return _pki_message(
            "20", _issuer_and_subject(self.authority.root.cert.subject, subject), _signer(0), self.recipient, transaction_id=transaction_id
        )


class SCEPResponderTests(SCEPHarness, unittest.TestCase):
    # -- PKCSReq -------------------------------------------------------------------------------

    def test_scep_challenge_issues_bound_certificate(self) -> None:
        """A phase-2 challenge gets a SHA-256, clientAuth, one-year, random-serial certificate bound to the UDID, stored with its origin."""
        token, challenge_id = self.challenge()
        request = self.request(token)
        cert = self.issued(request, _key(0))

        cert.verify_directly_issued_by(self.authority.root.cert)
        self.assertEqual(device_binding(cert), UDID)
        self.assertEqual(cert.subject.rfc4514_string(), "CN=device,O=Test Org")
        self.assertIsInstance(cert.signature_hash_algorithm, hashes.SHA256)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertLessEqual(abs(lifetime - YEAR), datetime.timedelta(minutes=10))
        issued_at = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        self.assertLessEqual(cert.not_valid_before_utc, issued_at)
        self.assertGreaterEqual(cert.serial_number.bit_length(), 64)

        records = self.db.certificates()
        self.assertEqual(len(records), 1)
        record = records[0]
        self.assertEqual(record.serial, serial_hex(cert.serial_number))
        self.assertEqual(record.der, cert.public_bytes(serialization.Encoding.DER))
        self.assertEqual(record.udid, UDID)
        self.assertEqual(record.challenge_id, challenge_id)
        self.assertEqual(record.transaction_id, request.transaction_id)
        self.assertIsNone(record.revoked)
        self.assertEqual(self.uses_left(token), "challenge already used")
        self.assertEqual([event.serial for event in self.events("issued")], [record.serial])

    def test_scep_challenge_is_one_time(self) -> None:
        """Another key presenting a used phase-2 challenge gets FAILURE badRequest; the same request resent gets the same certificate."""
        token, _ = self.challenge()
        first = self.issued(self.request(token), _key(0))
        # Same key, same transactionID (iOS derives it from the key): a retry after a lost reply.
        self.assertEqual(self.issued(self.request(token), _key(0)), first)
        self.assertEqual(self.refused(self.request(token, index=1), _key(1)), BAD_REQUEST)
        self.assertEqual(len(self.db.certificates()), 1)
        self.assertEqual(len(self.events("refused")), 1)

    def test_static_challenge_uses(self) -> None:
        """A static challenge with two uses issues two unbound certificates, and the third request gets FAILURE badRequest."""
        token, challenge_id = self.challenge("static", None, uses=2)
        first = self.issued(self.request(token, index=0), _key(0))
        self.assertEqual(self.uses_left(token), 1)
        second = self.issued(self.request(token, index=1), _key(1))
        self.assertEqual(self.uses_left(token), "challenge already used")
        self.assertEqual(self.refused(self.request(token, index=2), _key(2)), BAD_REQUEST)
        self.assertNotEqual(first.serial_number, second.serial_number)
        self.assertIsNone(device_binding(first))
        records = self.db.certificates()
        self.assertEqual({record.serial for record in records}, {serial_hex(first.serial_number), serial_hex(second.serial_number)})
        self.assertEqual({(record.udid, record.challenge_id) for record in records}, {(None, challenge_id)})

    def test_expired_challenge(self) -> None:
        """A challenge past its lifetime gets FAILURE badRequest and issues nothing."""
        token, _ = self.challenge(ttl=600)
        self.clock.advance(601)
        self.assertEqual(self.refused(self.request(token), _key(0)), BAD_REQUEST)
        self.assertEqual(self.db.certificates(), [])
        self.assertIn("challenge expired", self.events("refused")[0].reason)

    def test_unknown_and_missing_challenge(self) -> None:
        """An unknown challenge, a phase-1 enroll challenge and a CSR without challengePassword each get FAILURE, failInfo badRequest."""
        never_stored, _ = tokens.mint()
        self.assertEqual(self.refused(self.request(never_stored), _key(0)), BAD_REQUEST)
        phase1, digest = tokens.mint()
        self.db.add_challenge(digest, "enroll", "alice", now=self.clock.seconds(), ttl=900)
        self.assertEqual(self.refused(self.request(phase1), _key(0)), BAD_REQUEST)
        self.assertEqual(self.refused(self.request(None), _key(0)), BAD_REQUEST)
        self.assertEqual(self.db.certificates(), [])
        reasons = [event.reason for event in self.events("refused")]
        self.assertEqual(len(reasons), 3)
        self.assertTrue(any("no challengePassword" in reason for reason in reasons), reasons)

    def test_csr_with_bad_signature(self) -> None:
        """A CSR whose own signature does not verify gets FAILURE badMessageCheck, and the challenge stays unused."""
        token, _ = self.challenge()
        key = _key(0)
        csr = bytearray(build_csr(key, SUBJECT, token).public_bytes(serialization.Encoding.DER))
        csr[-1] ^= 0x01  # the last octet belongs to the signature BIT STRING
        request = _pki_message("19", bytes(csr), _signer(0), self.recipient, transaction_id="BADCSR")
        self.assertEqual(self.refused(request, key), BAD_MESSAGE_CHECK)
        self.assertEqual(self.uses_left(token), 1)
        self.assertEqual(self.db.certificates(), [])

    def test_small_key(self) -> None:
        """A CSR for an RSA-1024 key gets FAILURE badRequest (the minimum is 2048) and the challenge stays unused."""
        token, _ = self.challenge()
        self.assertEqual(self.refused(self.request(token, index=10, bits=1024), _key(10, 1024)), BAD_REQUEST)
        self.assertEqual(self.uses_left(token), 1)
        self.assertEqual(self.db.certificates(), [])

    def test_unknown_message_type(self) -> None:
        """A well-signed PKIMessage with messageType 99 gets FAILURE badRequest."""
        token, _ = self.challenge()
        csr = build_csr(_key(0), SUBJECT, token)
        request = _pki_message(
            "99", csr.public_bytes(serialization.Encoding.DER), _signer(0), self.recipient, transaction_id="T99", csr=csr
        )
        self.assertEqual(self.refused(request, _key(0)), BAD_REQUEST)
        self.assertEqual(self.uses_left(token), 1)

    def test_envelope_to_a_stranger(self) -> None:
        """A request enveloped to a certificate otad holds no key for gets FAILURE badMessageCheck."""
        token, _ = self.challenge()
        stranger, _ = self_signed_identity("someone else", key=_key(3))
        csr = build_csr(_key(0), SUBJECT, token)
        request = _pki_message("19", csr.public_bytes(serialization.Encoding.DER), _signer(0), stranger, transaction_id="ELSEWHERE")
        self.assertEqual(self.refused(request, _key(0)), BAD_MESSAGE_CHECK)
        self.assertEqual(self.uses_left(token), 1)

    def test_envelope_to_the_ca(self) -> None:
        """A client that enveloped its request to the CA certificate rather than the RA is still served."""
        token, _ = self.challenge()
        key = _key(0)
        request = build_pkcs_req(key, _signer(0)[0], self.authority.root.cert, subject=SUBJECT, challenge=token)
        self.assertEqual(device_binding(self.issued(request, key)), UDID)

    def test_reply_cipher_mirrors_request(self) -> None:
        """The issued certificate comes back under the request's content cipher: DES3 for DES3, AES-256 for AES-256, AES-128 for AES-128."""
        key = _key(0)
        aes128_request: list[PKIRequest] = []
        for aes, expected in ((False, "tripledes_3key"), (True, "aes256_cbc"), (None, "aes128_cbc")):
            token, _ = self.challenge()
            if aes is None:
                csr = build_csr(key, SUBJECT, token)
                enveloped = pkcs7.PKCS7EnvelopeBuilder().set_data(csr.public_bytes(serialization.Encoding.DER))
                enveloped = enveloped.add_recipient(self.recipient).set_content_encryption_algorithm(algorithms.AES128)
                request = _pki_message(
                    "19",
                    b"",
                    _signer(0),
                    self.recipient,
                    transaction_id="AES128",
                    csr=csr,
                    enveloped=enveloped.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]),
                )
                aes128_request.append(request)
            else:
                # A transaction of its own each time: the same key and transaction would be a retry.
                request = self.request(token, aes=aes, sha256=aes, transaction_id=f"CIPHER-{expected}")
            rep, certs = self.reply(request, _signer(0))
            self.assertEqual(rep.pki_status, "0")
            self.assertEqual(_enveloped_cipher(rep.content), expected)
            self.assertEqual(len(certs), 1)
            self.assertEqual(certs[0].public_key(), key.public_key())
        self.assertEqual(len(self.db.certificates()), 3)

    def test_sha1_request_gets_sha256_reply(self) -> None:
        """A SHA-1 signed request (old macOS) is answered with a CertRep whose signer uses SHA-256."""
        token, _ = self.challenge()
        request = self.request(token, aes=False, sha256=False)
        der = self.answer(request.der)
        self.assertEqual(verify_signed(der, self.ca_certs).digest_algorithm, "sha256")
        self.assertEqual(device_binding(parse_cert_rep(der, ca_certs=self.ca_certs, request=request, key=_key(0))), UDID)

    # -- RenewalReq ----------------------------------------------------------------------------

    def test_renewal(self) -> None:
        """A RenewalReq signed by an otad certificate, with no challenge, gets a certificate for the new key that keeps the UDID binding."""
        old_cert, old_key = self.enroll(index=0)
        request = self.renewal((old_cert, old_key), _key(1), "RENEW-1")
        rep, certs = self.reply(request, (old_cert, old_key))
        self.assertEqual((rep.pki_status, rep.fail_info), ("0", None))
        new_cert = [cert for cert in certs if cert.public_key() == _key(1).public_key()][0]
        new_cert.verify_directly_issued_by(self.authority.root.cert)
        self.assertEqual(device_binding(new_cert), UDID)
        self.assertNotEqual(new_cert.serial_number, old_cert.serial_number)
        record = self.db.certificate(serial_hex(new_cert.serial_number))
        assert record is not None
        self.assertEqual((record.udid, record.challenge_id, record.transaction_id), (UDID, None, "RENEW-1"))
        self.assertEqual(record.der, new_cert.public_bytes(serialization.Encoding.DER))
        self.assertIn(f"renewal of {serial_hex(old_cert.serial_number)}", [event.reason for event in self.events("issued")])

    def test_renewal_by_revoked_certificate(self) -> None:
        """After its certificate is revoked, a RenewalReq signed by it gets FAILURE and issues nothing."""
        old_cert, old_key = self.enroll(index=0)
        self.assertTrue(self.db.revoke(serial_hex(old_cert.serial_number), reason="lost", now=self.clock.seconds()))
        rep, _ = self.reply(self.renewal((old_cert, old_key), _key(1), "RENEW-REVOKED"), (old_cert, old_key))
        self.assertEqual((rep.pki_status, rep.fail_info), ("2", BAD_REQUEST))
        self.assertEqual(len(self.db.certificates()), 1)

    def test_renewal_by_expired_certificate(self) -> None:
        """A RenewalReq signed by an otad certificate past its notAfter gets FAILURE."""
        old_cert, old_key = self.enroll(index=0)
        self.clock.advance(YEAR.total_seconds() + 3600)
        rep, _ = self.reply(self.renewal((old_cert, old_key), _key(1), "RENEW-EXPIRED"), (old_cert, old_key))
        self.assertEqual((rep.pki_status, rep.fail_info), ("2", BAD_REQUEST))
        self.assertEqual(len(self.db.certificates()), 1)

    def test_renewal_by_strangers(self) -> None:
        """A RenewalReq signed by a self-signed certificate, or by a certificate otad signed but never recorded, gets FAILURE."""
        stranger = _signer(2)
        rep, _ = self.reply(self.renewal(stranger, _key(1), "RENEW-SELF"), stranger)
        self.assertEqual((rep.pki_status, rep.fail_info), ("2", BAD_REQUEST))
        # Signed by otad's CA key, but not in the store (say, from a restored backup): not trusted.
        from otad.ca import issue

        unrecorded = issue(
            self.authority.root,
            _key(2).public_key(),
            x509.Name.from_rfc4514_string("CN=ghost"),
            now=datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC),
            lifetime=YEAR,
        )
        rep, _ = self.reply(self.renewal((unrecorded, _key(2)), _key(1), "RENEW-GHOST"), (unrecorded, _key(2)))
        self.assertEqual((rep.pki_status, rep.fail_info), ("2", BAD_REQUEST))
        self.assertEqual(self.db.certificates(), [])

    # -- CertPoll ------------------------------------------------------------------------------

    def test_cert_poll(self) -> None:
        """A CertPoll for an issued transaction returns that very certificate; an unknown transaction gets FAILURE badCertId."""
        token, _ = self.challenge()
        request = self.request(token)
        cert = self.issued(request, _key(0))
        rep, certs = self.reply(self.cert_poll(request.transaction_id), _signer(0))
        self.assertEqual(rep.pki_status, "0")
        self.assertEqual([c.public_bytes(serialization.Encoding.DER) for c in certs], [cert.public_bytes(serialization.Encoding.DER)])

        rep, _ = self.reply(self.cert_poll("NO-SUCH-TRANSACTION"), _signer(0))
        self.assertEqual((rep.pki_status, rep.fail_info), ("2", BAD_CERT_ID))
        self.assertEqual(len(self.db.certificates()), 1)

    def test_get_cert(self) -> None:
        """GetCert by issuer and serial returns a certificate otad issued; an unknown serial or a foreign issuer gets FAILURE badCertId."""
        cert, key = self.enroll(index=0)
        root = self.authority.root.cert

        def get_cert(issuer: x509.Name, serial: int, transaction_id: str) -> tuple[CertRep, list[x509.Certificate]]:
            payload = asn1_cms.IssuerAndSerialNumber({"issuer": asn1_x509.Name.load(issuer.public_bytes()), "serial_number": serial}).dump()
            return self.reply(_pki_message("21", payload, (cert, key), self.recipient, transaction_id=transaction_id), (cert, key))

        rep, certs = get_cert(root.subject, cert.serial_number, "GETCERT-1")
        self.assertEqual(rep.pki_status, "0")
        self.assertEqual(certs, [cert])
        rep, _ = get_cert(root.subject, cert.serial_number + 1, "GETCERT-2")
        self.assertEqual((rep.pki_status, rep.fail_info), ("2", BAD_CERT_ID))
        rep, _ = get_cert(x509.Name.from_rfc4514_string("CN=Someone Else's CA"), cert.serial_number, "GETCERT-3")
        self.assertEqual((rep.pki_status, rep.fail_info), ("2", BAD_CERT_ID))

    # -- unreadable input ----------------------------------------------------------------------

    def test_unreadable_messages_are_refused(self) -> None:
        """Garbage, a truncated PKIMessage and a PKIMessage with a tampered signature are refused as malformed
        (no CertRep) with a one-line reason, and each refusal is a logged event."""
        token, _ = self.challenge()
        good = self.request(token).der
        tampered = bytearray(good)
        tampered[-1] ^= 0x01
        for der in (b"\x00not a pki message", good[: len(good) // 2], bytes(tampered), b""):
            failure = self.failureResultOf(ensureDeferred(self.responder.pki_operation(der, "POST")), Refused)
            self.assertEqual(failure.value.kind, Kind.MALFORMED)
            self.assertNotIn("\n", failure.value.reason)
        events = self.events("refused")
        self.assertEqual(len(events), 4)
        self.assertTrue(all("unreadable PKIMessage" in event.reason for event in events))
        self.assertEqual(self.uses_left(token), 1)

    # -- the real Apple capture ----------------------------------------------------------------

    def test_real_macos_capture(self) -> None:
        """The 2016 macOS PKCSReq (DES3, RSA-1024, no challenge) gets a FAILURE badRequest CertRep addressed to it that openssl verifies."""
        ca_cert, ca_key = _capture_ca()
        identity = Identity(ca_cert, ca_key)
        capture_authority = Authority(
            root=identity,
            tls=identity,
            signer=identity,
            ra=identity,
            ra_encrypt=identity,
            ra_sign=identity,
            ocsp=identity,
            certs_dir=Path(self.mktemp()),
        )
        responder = self.make_responder(dataclasses.replace(self.settings, ca_cert_format="ca"), capture_authority)
        capture = CAPTURE.read_bytes()
        sent = verify_signed(capture, None).signed_attributes
        assert sent is not None
        nonce = asn1_core.OctetString.load(sent[SENDER_NONCE][0]).native
        transaction = asn1_core.PrintableString.load(sent[TRANSACTION_ID][0]).native
        self.assertEqual(len(nonce), 8)

        der = self.answer(capture, responder)
        rep = read_cert_rep(der, [ca_cert])
        self.assertEqual(rep.signer, ca_cert)
        self.assertEqual((rep.message_type, rep.pki_status, rep.fail_info), ("3", "2", BAD_REQUEST))
        self.assertEqual(rep.recipient_nonce, nonce)
        self.assertEqual(rep.transaction_id, transaction)
        self.assertNotEqual(rep.sender_nonce, nonce)
        self.assertEqual(self.db.certificates(), [])
        self.assertEqual(len(self.events("refused")), 1)

        reply = Path(self.mktemp())
        reply.write_bytes(der)
        result = subprocess.run(
            ["openssl", "cms", "-verify", "-noverify", "-inform", "DER", "-in", str(reply), "-out", "/dev/null"],
            capture_output=True,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(b"Verification successful", result.stderr)

    # -- HTTP ----------------------------------------------------------------------------------

    def fetch(self, method: str, query: str, body: bytes | None = None) -> tuple[int, bytes, bytes]:
        """One request to /scep through the real site in memory; returns (code, content type, body)."""
        site = OtadSite(Root({b"scep": SCEPResource(self.responder)}), Limits(max_body=self.settings.max_body), metrics=self.metrics)
        treq = StubTreq(site.resource)

        async def go() -> tuple[int, bytes, bytes]:
            response = await treq.request(method, "https://otad.test/scep" + query, data=body)  # type: ignore[attr-defined]
            content = await response.content()
            return response.code, (response.headers.getRawHeaders(b"content-type") or [b""])[0], content

        return self.successResultOf(ensureDeferred(go()))

    def test_get_ca_caps(self) -> None:
        """GetCACaps answers text/plain, one capability a line, including POSTPKIOperation, SHA-256, AES, DES3, SCEPStandard and Renewal."""
        code, content_type, body = self.fetch("GET", "?operation=GetCACaps")
        self.assertEqual((code, content_type), (200, b"text/plain"))
        capabilities = body.decode("ascii").splitlines()
        for capability in ("POSTPKIOperation", "SHA-256", "AES", "DES3", "SCEPStandard", "Renewal"):
            self.assertIn(capability, capabilities)
        self.assertNotIn("DES", capabilities)

    def test_get_ca_cert(self) -> None:
        """GetCACert answers a certs-only bag (x509-ca-ra-cert) in the NDES layout: the root CA, an encryption RA
        (keyEncipherment, no digitalSignature) and a signing RA (digitalSignature, no keyEncipherment), neither a CA."""
        code, content_type, body = self.fetch("GET", "?operation=GetCACert&message=otad")
        self.assertEqual((code, content_type), (200, b"application/x-x509-ca-ra-cert"))
        certs = read_certs_only(body)
        self.assertEqual(set(certs), {self.authority.root.cert, self.authority.ra_encrypt.cert, self.authority.ra_sign.cert})
        usages = {}
        for ra in certs:
            if ra == self.authority.root.cert:
                continue
            usage = ra.extensions.get_extension_for_class(x509.KeyUsage).value
            usages[ra] = (usage.digital_signature, usage.key_encipherment)
            self.assertFalse(ra.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
            ra.verify_directly_issued_by(self.authority.root.cert)
        self.assertEqual(usages, {self.authority.ra_encrypt.cert: (False, True), self.authority.ra_sign.cert: (True, False)})
        # The same bag as pkcs7 readers see it.
        self.assertEqual(set(pkcs7.load_der_pkcs7_certificates(body)), set(certs))

    def test_reply_signers(self) -> None:
        """Who signs the CertRep: the signing RA for a request encrypted to the encryption RA (as NDES clients expect),
        the CA for one encrypted to the CA (a client that pinned it); and in the single-RA layout, the RA for one
        encrypted to it. Each CertRep carries its signer's certificate and, for an RA, the CA."""
        single = self.make_responder(dataclasses.replace(self.settings, ra_layout="single"), self.authority)
        for responder, recipient, signer in (
            (self.responder, self.authority.ra_encrypt.cert, self.authority.ra_sign.cert),
            (self.responder, self.authority.root.cert, self.authority.root.cert),
            (single, self.authority.ra.cert, self.authority.ra.cert),
            (single, self.authority.root.cert, self.authority.root.cert),
        ):
            token, _ = self.challenge()
            request = build_pkcs_req(_key(0), _signer(0)[0], recipient, subject=SUBJECT, challenge=token)
            reply = self.successResultOf(ensureDeferred(responder.pki_operation(request.der, "POST")))
            rep = read_cert_rep(reply, [signer])
            self.assertEqual(rep.signer, signer)
            carried = asn1_cms.ContentInfo.load(reply)["content"]["certificates"]
            self.assertEqual(len(carried), 1 if signer == self.authority.root.cert else 2)
            parse_cert_rep(reply, ca_certs=[self.authority.root.cert], request=request, key=_key(0))

    def test_single_ra_layout_get_ca_cert(self) -> None:
        """With ra_layout = single, GetCACert holds the CA and one RA with both usages."""
        single = self.make_responder(dataclasses.replace(self.settings, ra_layout="single"), self.authority)
        content_type, body = single.ca_certificates()
        self.assertEqual(content_type, b"application/x-x509-ca-ra-cert")
        self.assertEqual(set(read_certs_only(body)), {self.authority.root.cert, self.authority.ra.cert})

    def test_bad_operations(self) -> None:
        """GetNextCACert, an unknown operation, a missing operation, GetCACaps by POST and an empty POST get 400 with a one-line reason."""
        for method, query, body in (
            ("GET", "?operation=GetNextCACert", None),
            ("GET", "?operation=Frobnicate", None),
            ("GET", "", None),
            ("GET", "?message=abc", None),
            ("POST", "?operation=GetCACaps", b"x"),
            ("POST", "?operation=PKIOperation", b""),
            ("GET", "?operation=PKIOperation", None),
        ):
            code, content_type, text = self.fetch(method, query, body)
            self.assertEqual(code, 400, (method, query))
            self.assertTrue(content_type.startswith(b"text/plain"))
            self.assertEqual(text.count(b"\n"), 1, text)
            self.assertTrue(text.endswith(b"\n"))

    def test_pki_operation_over_http(self) -> None:
        """PKIOperation by POST, by GET percent-escaped and by GET as raw, wrapped, unpadded base64 each get an issuing CertRep."""
        token, _ = self.challenge("static", None, uses=3)
        request = self.request(token, index=0)
        code, content_type, body = self.fetch("POST", "?operation=PKIOperation", request.der)
        self.assertEqual((code, content_type), (200, b"application/x-pki-message"))
        parse_cert_rep(body, ca_certs=self.ca_certs, request=request, key=_key(0))

        request = self.request(token, index=1)
        message = base64.b64encode(request.der).decode().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
        code, content_type, body = self.fetch("GET", "?operation=PKIOperation&message=" + message)
        self.assertEqual((code, content_type), (200, b"application/x-pki-message"))
        parse_cert_rep(body, ca_certs=self.ca_certs, request=request, key=_key(1))

        # As sloppy clients send it: + and / unescaped, wrapped at 64 columns, padding dropped.
        request = self.request(token, index=2)
        raw = base64.b64encode(request.der).rstrip(b"=")
        self.assertIn(b"+", raw)
        message = "%0A".join(raw[i : i + 64].decode() for i in range(0, len(raw), 64))
        code, content_type, body = self.fetch("GET", "?operation=PKIOperation&message=" + message)
        self.assertEqual((code, content_type), (200, b"application/x-pki-message"))
        parse_cert_rep(body, ca_certs=self.ca_certs, request=request, key=_key(2))
        self.assertEqual(len(self.db.certificates()), 3)

        code, _, text = self.fetch("POST", "?operation=PKIOperation", b"garbage")
        self.assertEqual(code, 400)
        self.assertTrue(text.startswith(b"not a SCEP PKIMessage"), text)

    def test_query_parameter_keeps_plus_and_slash(self) -> None:
        """query_parameter keeps a raw + and / as they are, decodes %2B, %2F and %3D, and returns None for a missing name."""

        def parameter(query: bytes, name: bytes) -> bytes | None:
            request = DummyRequest([b"scep"])
            request.uri = b"/scep?" + query
            return query_parameter(request, name)  # type: ignore[arg-type]

        self.assertEqual(parameter(b"operation=PKIOperation&message=ab+c/d==", b"message"), b"ab+c/d==")
        self.assertEqual(parameter(b"message=ab%2Bc%2Fd%3D%3D&operation=PKIOperation", b"message"), b"ab+c/d==")
        self.assertEqual(parameter(b"message=ab%2bc%2fd%3d%3d", b"message"), b"ab+c/d==")
        self.assertEqual(parameter(b"operation=GetCACaps", b"operation"), b"GetCACaps")
        self.assertEqual(parameter(b"op%65ration=GetCACert", b"operation"), b"GetCACert")
        self.assertIsNone(parameter(b"operation=GetCACaps", b"message"))
        self.assertIsNone(parameter(b"", b"operation"))

    def test_decode_message_tolerance(self) -> None:
        """decode_message accepts line breaks and spaces inside base64 and missing padding, and refuses other characters with 400."""
        data = bytes(range(256)) * 3 + b"\xfb\xff"  # base64 of this has +, / and padding
        text = base64.b64encode(data)
        self.assertIn(b"+", text)
        self.assertIn(b"/", text)
        self.assertTrue(text.endswith(b"="))
        self.assertEqual(decode_message(text), data)
        wrapped = b"\r\n".join(text[i : i + 64] for i in range(0, len(text), 64))
        self.assertEqual(decode_message(wrapped), data)
        self.assertEqual(decode_message(b" " + text.replace(b"A", b"A\n", 3) + b"\n"), data)
        self.assertEqual(decode_message(text.rstrip(b"=")), data)
        for bad in (b"abc!def", b"ab-c_d", b"%2B%2F"):
            with self.assertRaises(Refusal) as raised:
                decode_message(bad)
            self.assertEqual(raised.exception.code, 400)


class SCEPQueryTests(unittest.TestCase):
    """Hostile query strings at /scep, through the production site in memory (issue 10)."""

    def setUp(self) -> None:
        self.memory = MemorySite(Path(self.mktemp()))
        self.addCleanup(self.memory.close)

    def get(self, query: str) -> tuple[int, bytes]:
        code, _, body = self.successResultOf(ensureDeferred(self.memory.fetch("GET", "/scep" + query)))
        return code, body

    def test_percent_escapes_that_are_not_text(self) -> None:
        """%ff in operation= or in message= (its decoding once raised UnicodeEncodeError: a 500) is a 400 with a one-line reason."""
        self.assertEqual(self.get("?operation=%ff"), (400, "unsupported SCEP operation: \u00ff\n".encode()))
        self.assertEqual(self.get("?operation=PKIOperation&message=%ff"), (400, b"message is not base64\n"))

    def test_control_bytes_are_escaped_in_the_reason_and_the_log(self) -> None:
        """An operation of %00 and an ANSI escape (once echoed raw into the refusal) shows them as \\xNN, both in the
        reason the client gets and in the request's log line."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertEqual(self.get("?operation=%00%1b[31m"), (400, b"unsupported SCEP operation: \\x00\\x1b[31m\n"))
        [line] = [formatEvent(event) for event in events if event.get("path") == "/scep"]
        self.assertIn("400 refused (unsupported SCEP operation: \\x00\\x1b[31m)", line)
        self.assertNotRegex(line, "[\x00-\x1f]")


class PostgreSQLSCEPResponderTests(PostgreSQLStore, SCEPResponderTests):
    """Every SCEPResponderTests test again, on a PostgreSQL store."""


class SCEPQueryPlanTests(SCEPHarness, unittest.TestCase):
    """SQLite's own query plans for what a SCEP enrollment asks the store (PostgreSQL plans tiny tables differently)."""

    def test_no_statement_reads_a_growing_table_whole(self) -> None:
        """A PKCSReq, a CertPoll for it and a retried PKCSReq find their rows by index: a full scan of a table that
        grows with every certificate would make each enrollment cost more than the one before (the certificates
        lookup by transaction ID did, before schema version 7)."""
        with traced_statements(self.store) as statements:
            token, _ = self.challenge()
            request = self.request(token)
            self.issued(request, _key(0))
            self.assertEqual(self.reply(self.cert_poll(request.transaction_id), _signer(0))[0].pki_status, "0")
            self.issued(request, _key(0))
        lookups = [sql for sql in statements if "FROM certificates WHERE transaction_id" in sql]
        self.assertTrue(lookups, statements)
        # The plan's wording is what growing_table_scans reads: a lookup by key is a SEARCH.
        self.assertIn("SEARCH certificates USING INDEX certificates_transaction", " ".join(query_plan(self.store, lookups[0])))
        self.assertEqual(growing_table_scans(self.store, statements), {})
