"""Tests of published revocation, in memory: the CRL publisher, /crl, the OCSP responder and /ocsp, SCEP GetCRL,
CAFingerprint in phase 2, and otad-admin's crl and revoke --reason."""

from __future__ import annotations

import base64
import datetime
import hashlib
import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp
from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from otad import admin, ca
from otad.issued import IssuedCertificates
from otad.metrics import Metrics
from otad.ocsp import OCSPResponder
from otad.revocation import CRL_VALIDITY, CRLPublisher
from otad.scep_responder import SCEPResponder
from tests.fakedevice import FakeDevice, decrypt_enveloped, read_cert_rep
from tests.helpers import InlinePool, MemorySite
from tests.stores import PostgreSQLStore, SQLiteStore
from tests.test_profile import _basic, _content, apple
from tests.test_scep_responder import SCEPHarness, _key, _pki_message


def _issue(memory: MemorySite, number: int) -> x509.Certificate:
    """A certificate of the site's CA, recorded in its store as if issued by SCEP."""
    cert = ca.issue_client_certificate(
        memory.authority.root, _key(number).public_key(), x509.Name([]), x509.Extensions([]), udid=f"UDID-REVOKE-{number:04}",
        serial=x509.random_serial_number(), now=datetime.datetime.fromtimestamp(memory.clock.seconds(), datetime.UTC),
        lifetime=datetime.timedelta(days=30),
    )  # fmt: skip

    def record(store: Any) -> None:
        store.add_certificate(
            serial=ca.serial_hex(cert.serial_number), udid=None, subject="", der=cert.public_bytes(serialization.Encoding.DER),
            not_before=cert.not_valid_before_utc.timestamp(), not_after=cert.not_valid_after_utc.timestamp(), csr=None,
            challenge_id=None, transaction_id=None, now=memory.clock.seconds(),
        )  # fmt: skip

    memory.store.call(record)
    return cert


def _request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None, algorithm: Any = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


class RevocationTests(unittest.TestCase):
    def setUp(self) -> None:
        self.memory = MemorySite(Path(self.mktemp()))
        self.addCleanup(self.memory.close)
        # Real time: the shared test CA was bootstrapped now, and issued certificates must fall in its validity.
        self.memory.clock.advance(datetime.datetime.now(datetime.UTC).timestamp() - self.memory.clock.seconds())
        self.root = self.memory.authority.root.cert

    def publish(self) -> x509.CertificateRevocationList:
        self.successResultOf(ensureDeferred(self.memory.crls.check()))
        code, headers, body = self.successResultOf(ensureDeferred(self.memory.fetch("GET", "/crl")))
        self.assertEqual((code, headers[b"content-type"]), (200, [b"application/pkix-crl"]))
        return x509.load_der_x509_crl(body)

    def revoke(self, cert: x509.Certificate, reason: str) -> None:
        serial = ca.serial_hex(cert.serial_number)
        self.memory.store.call(lambda store: store.revoke(serial, reason=reason, now=self.memory.clock.seconds()))

    def test_crl_is_published_and_reissued(self) -> None:
        """The first check publishes CRL 1 (no entries, signed by the CA, 7 days, with AKI); a revocation makes
        the next check publish CRL 2 listing it with its reason; an unchanged list publishes nothing new until half
        the validity has passed; 'unspecified' is listed without a reason code."""
        first = self.publish()
        self.assertTrue(first.is_signature_valid(self.memory.authority.root.cert.public_key()))
        self.assertEqual(first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 1)
        self.assertEqual(first.next_update_utc - first.last_update_utc, CRL_VALIDITY)
        first.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        self.assertEqual(len(first), 0)
        lost, replaced = _issue(self.memory, 1), _issue(self.memory, 2)
        self.revoke(lost, "keyCompromise")
        self.revoke(replaced, "unspecified")
        second = self.publish()
        self.assertEqual(second.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 2)
        entry = second.get_revoked_certificate_by_serial_number(lost.serial_number)
        assert entry is not None
        self.assertEqual(entry.extensions.get_extension_for_class(x509.CRLReason).value.reason, x509.ReasonFlags.key_compromise)
        quiet = second.get_revoked_certificate_by_serial_number(replaced.serial_number)
        assert quiet is not None
        self.assertEqual(len(quiet.extensions), 0)
        self.assertEqual(self.publish().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 2)
        self.memory.clock.advance(CRL_VALIDITY.total_seconds() / 2 + 1)
        self.assertEqual(self.publish().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 3)

    def test_two_publishers_on_one_store(self) -> None:
        """A second otad on the same store that signs the same CRL number loses the insert and serves the first one's."""
        self.publish()
        other = CRLPublisher(self.memory.authority, self.memory.store, InlinePool(None, "inline", 1), self.memory.clock, metrics=Metrics())  # type: ignore[arg-type]
        self.revoke(_issue(self.memory, 3), "superseded")
        self.successResultOf(ensureDeferred(other.check()))
        self.successResultOf(ensureDeferred(self.memory.crls.check()))
        self.assertEqual(other.current, self.memory.crls.current)
        assert other.record is not None
        self.assertEqual(other.record.number, 2)

    def ask(self, der: bytes, method: str = "POST") -> ocsp.OCSPResponse:
        if method == "POST":
            code, headers, body = self.successResultOf(
                ensureDeferred(self.memory.fetch("POST", "/ocsp", data=der, headers={b"content-type": [b"application/ocsp-request"]}))
            )
        else:
            code, headers, body = self.successResultOf(ensureDeferred(self.memory.fetch("GET", "/ocsp/" + base64.b64encode(der).decode())))
        self.assertEqual((code, headers[b"content-type"]), (200, [b"application/ocsp-response"]))
        return ocsp.load_der_ocsp_response(body)

    def test_ocsp_good_revoked_unknown(self) -> None:
        """/ocsp answers good, then revoked (with the time and reason) after a revocation, and unknown for a serial
        otad never issued; by POST and by GET; each answer signed by the delegated responder, named by key hash."""
        cert = _issue(self.memory, 4)
        good = self.ask(_request(cert, self.root))
        self.assertEqual(good.certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertEqual(good.certificates, [self.memory.authority.ocsp.cert])
        self.assertEqual(
            good.responder_key_hash, x509.SubjectKeyIdentifier.from_public_key(self.memory.authority.ocsp.cert.public_key()).digest
        )
        responder_key = self.memory.authority.ocsp.cert.public_key()
        assert isinstance(responder_key, rsa.RSAPublicKey) and good.signature_hash_algorithm is not None
        responder_key.verify(good.signature, good.tbs_response_bytes, padding.PKCS1v15(), good.signature_hash_algorithm)
        self.revoke(cert, "keyCompromise")
        for method in ("POST", "GET"):
            revoked = self.ask(_request(cert, self.root), method)
            self.assertEqual(revoked.certificate_status, ocsp.OCSPCertStatus.REVOKED)
            self.assertEqual(revoked.revocation_reason, x509.ReasonFlags.key_compromise)
            self.assertIsNotNone(revoked.revocation_time_utc)
        stranger = ca.issue_client_certificate(
            self.memory.authority.root, _key(5).public_key(), x509.Name([]), x509.Extensions([]), udid=None, serial=12345,
            now=datetime.datetime.now(datetime.UTC), lifetime=datetime.timedelta(days=1),
        )  # fmt: skip
        self.assertEqual(self.ask(_request(stranger, self.root)).certificate_status, ocsp.OCSPCertStatus.UNKNOWN)

    def test_ocsp_cache_and_nonce(self) -> None:
        """Two requests without a nonce get the very same signed answer (no signature per request); a request with
        a nonce gets a fresh answer echoing it."""
        cert = _issue(self.memory, 6)
        responder = OCSPResponder(self.memory.authority, self.memory.store, InlinePool(None, "inline", 1), self.memory.clock)  # type: ignore[arg-type]
        first = self.successResultOf(ensureDeferred(responder.respond(_request(cert, self.root))))
        second = self.successResultOf(ensureDeferred(responder.respond(_request(cert, self.root))))
        self.assertEqual(first, second)
        with_nonce = ocsp.load_der_ocsp_response(
            self.successResultOf(ensureDeferred(responder.respond(_request(cert, self.root, nonce=b"n" * 16))))
        )
        self.assertEqual(with_nonce.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce, b"n" * 16)

    def test_ocsp_errors(self) -> None:
        """Garbage, a truncated request, a GET that is not base64 and an empty body get malformedRequest; a request
        for another CA's certificate gets unauthorized; none is an HTTP error."""
        cert = _issue(self.memory, 7)
        good = _request(cert, self.root)
        for der in (b"\x00garbage", good[: len(good) // 2], b""):
            self.assertEqual(self.ask(der).response_status, ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        code, _, body = self.successResultOf(ensureDeferred(self.memory.fetch("GET", "/ocsp/%%%not-base64")))
        self.assertEqual((code, ocsp.load_der_ocsp_response(body).response_status), (200, ocsp.OCSPResponseStatus.MALFORMED_REQUEST))
        # Named as if issued by another CA (the fake Apple root): not otad's to answer.
        self.assertEqual(self.ask(_request(cert, apple().root)).response_status, ocsp.OCSPResponseStatus.UNAUTHORIZED)

    def test_ca_fingerprint_in_phase2(self) -> None:
        """Phase 2's SCEP payload carries CAFingerprint: the SHA-1 of the CA certificate GetCACert serves."""
        memory = MemorySite(Path(self.mktemp()), anchors=(apple().root,))
        self.addCleanup(memory.close)
        device = FakeDevice(None, "https://otad.test", None, apple(), "0000FAKE-0011223344556677")
        _, _, body = self.successResultOf(ensureDeferred(memory.fetch("GET", "/enroll", headers=_basic())))
        challenge = str(_content(body)["PayloadContent"]["Challenge"])
        _, _, body = self.successResultOf(ensureDeferred(memory.fetch("POST", "/profile", data=device.phase2_body(challenge))))
        [scep] = _content(body)["PayloadContent"]
        der = memory.authority.root.cert.public_bytes(serialization.Encoding.DER)
        self.assertEqual(scep["PayloadContent"]["CAFingerprint"], hashlib.sha1(der).digest())


class AdminRevocationTests(unittest.TestCase):
    def test_revoke_with_reason_and_crl_listing(self) -> None:
        """`certs revoke --reason keyCompromise` records the RFC 5280 reason, a reason outside RFC 5280's list is a usage
        error, and `crl --json` shows the published CRL's number, next update and entries."""
        memory = MemorySite(Path(self.mktemp()))
        self.addCleanup(memory.close)
        memory.clock.advance(datetime.datetime.now(datetime.UTC).timestamp() - memory.clock.seconds())
        cert = _issue(memory, 8)
        serial = ca.serial_hex(cert.serial_number)

        def run(*argv: str) -> tuple[int, str, str]:
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                status = admin.main([*argv, "--data-dir", str(memory.settings.data_dir)])
            return status, out.getvalue(), err.getvalue()

        self.assertEqual(run("certs", "revoke", serial, "--reason", "lost")[0], 2)
        self.assertEqual(run("crl")[0], 1)
        status, out, _ = run("certs", "revoke", serial, "--reason", "keyCompromise")
        self.assertEqual(status, 0, out)
        self.successResultOf(ensureDeferred(memory.crls.check()))
        status, out, _ = run("crl", "--json")
        listing = json.loads(out)
        self.assertEqual((status, listing["number"], len(listing["entries"])), (0, 1, 1))
        self.assertEqual((listing["entries"][0]["serial"], listing["entries"][0]["reason"]), (serial, "keyCompromise"))


class GetCRLTests(SCEPHarness, unittest.TestCase):
    def test_get_crl(self) -> None:
        """SCEP GetCRL (messageType 22) with the CA's IssuerAndSerialNumber gets SUCCESS and the published CRL,
        enveloped to the requester; before any CRL is published it gets FAILURE."""
        from asn1crypto import cms as asn1_cms

        from tests.test_scep_responder import _signer

        issuer_and_serial = asn1_cms.IssuerAndSerialNumber(
            {"issuer": asn1_cms.Name.load(self.authority.root.cert.subject.public_bytes()), "serial_number": 1}
        ).dump()
        signer = _signer(0)
        request = _pki_message("22", issuer_and_serial, signer, self.recipient, transaction_id="GETCRL-1")
        self.assertEqual(read_cert_rep(self.answer(request.der), self.ca_certs).pki_status, "2")
        publisher = CRLPublisher(self.authority, self.store, self.pool, self.clock, metrics=Metrics())
        self.successResultOf(ensureDeferred(publisher.check()))
        responder = SCEPResponder(
            self.settings,
            self.authority,
            self.store,
            self.pool,
            self.clock,
            IssuedCertificates(self.authority, self.store),
            publisher,
            metrics=Metrics(),
        )
        second = _pki_message("22", issuer_and_serial, signer, self.recipient, transaction_id="GETCRL-2")
        rep = read_cert_rep(self.answer(second.der, responder), self.ca_certs)
        self.assertEqual(rep.pki_status, "0")
        bag = asn1_cms.ContentInfo.load(decrypt_enveloped(rep.content, *signer))
        [crl] = bag["content"]["crls"]
        self.assertEqual(crl.chosen.dump(), publisher.current)


class SCEPURLTests(unittest.TestCase):
    def test_scep_url_setting(self) -> None:
        """With [enrollment] scep_url set (a plain-HTTP listener), phase 2's SCEP payload points there."""
        memory = MemorySite(Path(self.mktemp()), anchors=(apple().root,), scep_url="http://otad.example.com:8080/scep")
        self.addCleanup(memory.close)
        device = FakeDevice(None, "https://otad.test", None, apple(), "0000FAKE-0011223344556677")
        _, _, body = self.successResultOf(ensureDeferred(memory.fetch("GET", "/enroll", headers=_basic())))
        challenge = str(_content(body)["PayloadContent"]["Challenge"])
        _, _, body = self.successResultOf(ensureDeferred(memory.fetch("POST", "/profile", data=device.phase2_body(challenge))))
        [scep] = _content(body)["PayloadContent"]
        self.assertEqual(scep["PayloadContent"]["URL"], "http://otad.example.com:8080/scep")


class SharedStoreRevocation:
    """Two otad instances (two sites, each with its own data directory) on one store: what one of them keeps in
    memory never hides a revocation the other recorded. Mixed with an engine from tests.stores."""

    store_location: Any
    mktemp: Any
    addCleanup: Any
    assertEqual: Any
    successResultOf: Any

    def setUp(self) -> None:
        data_dir = Path(self.mktemp())
        location = self.store_location(data_dir)
        self.first = MemorySite(data_dir, store=location)
        self.second = MemorySite(Path(self.mktemp()), store=location)
        for memory in (self.first, self.second):
            self.addCleanup(memory.close)
            memory.clock.advance(datetime.datetime.now(datetime.UTC).timestamp() - memory.clock.seconds())

    def ocsp_status(self, memory: MemorySite, cert: x509.Certificate) -> ocsp.OCSPCertStatus:
        code, _, body = self.successResultOf(
            ensureDeferred(
                memory.fetch(
                    "POST",
                    "/ocsp",
                    data=_request(cert, memory.authority.root.cert),
                    headers={b"content-type": [b"application/ocsp-request"]},
                )
            )
        )
        self.assertEqual(code, 200)
        return ocsp.load_der_ocsp_response(body).certificate_status

    def test_cached_good_answer_not_served_after_a_revocation_elsewhere(self) -> None:
        """The second instance has a signed "good" answer cached; the first revokes the certificate; the second's
        very next answer says revoked, because every answer starts from the store's record."""
        cert = _issue(self.first, 8)
        self.assertEqual(self.ocsp_status(self.second, cert), ocsp.OCSPCertStatus.GOOD)
        self.assertEqual(self.ocsp_status(self.second, cert), ocsp.OCSPCertStatus.GOOD)
        serial = ca.serial_hex(cert.serial_number)
        self.first.store.call(lambda store: store.revoke(serial, reason="keyCompromise", now=self.first.clock.seconds()))
        self.assertEqual(self.ocsp_status(self.second, cert), ocsp.OCSPCertStatus.REVOKED)

    def test_crl_published_by_one_is_served_by_the_other_at_its_next_check(self) -> None:
        """After a revocation the first instance publishes a new CRL; the second serves it from its next check on
        (every crl_check, 1 minute by default): the same number and the same bytes, not a second signature."""
        for memory in (self.first, self.second):
            self.successResultOf(ensureDeferred(memory.crls.check()))
        cert = _issue(self.first, 9)
        serial = ca.serial_hex(cert.serial_number)
        self.first.store.call(lambda store: store.revoke(serial, reason="superseded", now=self.first.clock.seconds()))
        self.successResultOf(ensureDeferred(self.first.crls.check()))
        self.successResultOf(ensureDeferred(self.second.crls.check()))
        assert self.first.crls.record is not None and self.second.crls.record is not None
        self.assertEqual((self.second.crls.record.number, self.second.crls.current), (2, self.first.crls.current))
        listed = x509.load_der_x509_crl(self.second.crls.current or b"")
        self.assertEqual([entry.serial_number for entry in listed], [cert.serial_number])


class SQLiteSharedStoreRevocationTests(SQLiteStore, SharedStoreRevocation, unittest.TestCase):
    pass


class PostgreSQLSharedStoreRevocationTests(PostgreSQLStore, SharedStoreRevocation, unittest.TestCase):
    pass
