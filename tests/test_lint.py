"""Every certificate, CRL and OCSP response otad can make, checked by pkilint (RFC 5280 / RFC 6960): no errors.

pkilint is DigiCert's independent linter; the validator sets here are those of its
``lint_pkix_cert``, ``lint_crl -t CRL -p PKIX`` and ``lint_ocsp_response`` commands. Warnings and
notices are allowed (and listed in the issue's note); errors and fatal findings are not.
"""

from __future__ import annotations

import datetime
import functools
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import ocsp
from pkilint import loader, pkix
from pkilint.pkix import certificate, crl, extension, name
from pkilint.pkix import ocsp as pkilint_ocsp
from pkilint.validation import ValidationFindingSeverity
from twisted.internet.defer import ensureDeferred
from twisted.trial import unittest

from otad import ca
from otad.metrics import Metrics
from otad.ocsp import OCSPResponder
from otad.revocation import CRLPublisher
from otad.store import Store
from tests.fakedevice import FakeDevice
from tests.helpers import InlinePool, MemorySite
from tests.test_profile import _basic, _content, apple
from tests.test_scep_responder import SCEPHarness, _key

PUBLICATION = ca.Publication("https://otad.example.com:8443")


def _errors(results: Any) -> list[str]:
    return [
        f"{description.finding.code} at {result.node.path}: {description.message}"
        for result in results
        for description in result.finding_descriptions
        if description.finding.severity <= ValidationFindingSeverity.ERROR
    ]


_CERTIFICATES = certificate.create_pkix_certificate_validator_container(
    certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
    [
        certificate.create_issuer_validator_container([]),
        certificate.create_validity_validator_container(),
        certificate.create_subject_validator_container([]),
        certificate.create_extensions_validator_container([]),
        certificate.create_spki_validator_container([]),
    ],
)
_CRLS = crl.create_pkix_crl_validator_container(
    [pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS), pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS)],
    [crl.create_issuer_validator_container([]), crl.create_validity_validator_container([]), crl.create_extensions_validator_container([])],
)
_OCSP = pkilint_ocsp.create_pkix_ocsp_response_validator_container(
    [
        pkilint_ocsp.create_response_decoder(),
        pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
        pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
    ],
    [],
)


def certificate_errors(cert: x509.Certificate) -> list[str]:
    return _errors(_CERTIFICATES.validate(loader.load_der_certificate(cert.public_bytes(serialization.Encoding.DER), "cert").root))


def crl_errors(der: bytes) -> list[str]:
    return _errors(_CRLS.validate(loader.load_der_crl(der, "crl").root))


def ocsp_errors(der: bytes) -> list[str]:
    return _errors(_OCSP.validate(loader.RFC6960OCSPResponseDocumentLoader().load_der_document(der, "ocsp").root))


@functools.cache
def production_authority() -> ca.Authority:
    """otad's own certificates as a real deployment gets them: a DNS host name and a publication URL."""
    return ca.bootstrap(
        Path(tempfile.mkdtemp(prefix="otad-lint-")) / "certs",
        hostname="otad.example.com",
        organization="Example Inc.",
        common_name="Example Inc. otad Root CA",
        ca_key_size=3072,
        now=datetime.datetime.now(datetime.UTC),
        report=lambda line: None,
        publication=PUBLICATION,
    )


class OwnCertificateLintTests(unittest.TestCase):
    def test_own_certificates(self) -> None:
        """The root CA, TLS, profile-signing, the three RA and the OCSP responder certificates have no pkilint errors."""
        authority = production_authority()
        for label in ("root", "tls", "signer", "ra", "ra_encrypt", "ra_sign", "ocsp"):
            identity = getattr(authority, label)
            self.assertEqual(certificate_errors(identity.cert), [], label)


class IssuedCertificateLintTests(SCEPHarness, unittest.TestCase):
    publication = PUBLICATION

    def test_scep_identity_and_its_renewal(self) -> None:
        """A SCEP device identity (with its CRL distribution point, AIA and UDID binding) and the identity a
        RenewalReq gets have no pkilint errors."""
        identity = self.enroll(index=0)
        self.assertEqual(certificate_errors(identity[0]), [])
        _, certs = self.reply(self.renewal(identity, _key(1), "LINT-RENEW"), identity)
        [renewed] = [cert for cert in certs if cert.public_key() == _key(1).public_key()]
        self.assertEqual(certificate_errors(renewed), [])

    def test_pkcs12_identity(self) -> None:
        """The identity phase 2 sends as a PKCS#12 (identity = pkcs12) has no pkilint errors."""
        memory = MemorySite(Path(self.mktemp()), anchors=(apple().root,), identity="pkcs12")
        self.addCleanup(memory.close)
        memory.authority.publication = PUBLICATION
        self.addCleanup(setattr, memory.authority, "publication", ca.Publication())
        device = FakeDevice(None, "https://otad.test", None, apple(), "0000FAKE-0011223344556677")
        code, _, body = self.successResultOf(ensureDeferred(memory.fetch("GET", "/enroll", headers=_basic())))
        challenge = str(_content(body)["PayloadContent"]["Challenge"])
        code, _, body = self.successResultOf(ensureDeferred(memory.fetch("POST", "/profile", data=device.phase2_body(challenge))))
        self.assertEqual(code, 200)
        [payload] = _content(body)["PayloadContent"]
        _, cert, _ = pkcs12.load_key_and_certificates(payload["PayloadContent"], payload["Password"].encode())
        assert cert is not None
        self.assertEqual(certificate_errors(cert), [])


class RevocationLintTests(unittest.TestCase):
    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from tests.helpers import InlineStoreThread

        self.authority = production_authority()
        self.store = InlineStoreThread(Path(self.mktemp()))
        self.addCleanup(lambda: self.store.call(lambda store: store.close()))
        self.clock = Clock()
        self.clock.advance(datetime.datetime.now(datetime.UTC).timestamp())
        self.pool = InlinePool(None, "inline", 1)  # type: ignore[arg-type]
        self.cert = ca.issue_client_certificate(
            self.authority.root, _key(0).public_key(), x509.Name([]), x509.Extensions([]), udid="UDID-LINT-0001",
            serial=x509.random_serial_number(), now=datetime.datetime.now(datetime.UTC), lifetime=datetime.timedelta(days=30),
            publication=PUBLICATION,
        )  # fmt: skip

        def record(store: Store) -> None:
            store.add_certificate(
                serial=ca.serial_hex(self.cert.serial_number), udid="UDID-LINT-0001", subject="",
                der=self.cert.public_bytes(serialization.Encoding.DER),
                not_before=self.cert.not_valid_before_utc.timestamp(), not_after=self.cert.not_valid_after_utc.timestamp(),
                csr=None, challenge_id=None, transaction_id=None, now=self.clock.seconds(),
            )  # fmt: skip

        self.successResultOf(self.store.call(record))

    def revoke(self) -> None:
        serial = ca.serial_hex(self.cert.serial_number)
        self.successResultOf(self.store.call(lambda store: store.revoke(serial, reason="keyCompromise", now=self.clock.seconds())))

    def test_crls(self) -> None:
        """The CRL with no entries and the CRL listing a keyCompromise revocation have no pkilint errors."""
        publisher = CRLPublisher(self.authority, self.store, self.pool, self.clock, metrics=Metrics())
        self.successResultOf(ensureDeferred(publisher.check()))
        assert publisher.current is not None
        self.assertEqual(crl_errors(publisher.current), [])
        self.revoke()
        self.successResultOf(ensureDeferred(publisher.check()))
        assert publisher.current is not None
        self.assertEqual(len(x509.load_der_x509_crl(publisher.current)), 1)
        self.assertEqual(crl_errors(publisher.current), [])

    def test_ocsp_responses(self) -> None:
        """OCSP answers good, revoked and unknown, with and without a nonce, have no pkilint errors."""
        responder = OCSPResponder(self.authority, self.store, self.pool, self.clock)

        def ask(serial_cert: x509.Certificate, nonce: bytes | None) -> bytes:
            builder = ocsp.OCSPRequestBuilder().add_certificate(serial_cert, self.authority.root.cert, hashes.SHA1())
            if nonce is not None:
                builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
            der = builder.build().public_bytes(serialization.Encoding.DER)
            return self.successResultOf(ensureDeferred(responder.respond(der)))

        stranger = ca.issue_client_certificate(
            self.authority.root, _key(1).public_key(), x509.Name([]), x509.Extensions([]), udid=None,
            serial=x509.random_serial_number(), now=datetime.datetime.now(datetime.UTC), lifetime=datetime.timedelta(days=30),
        )  # fmt: skip
        answers = [ask(self.cert, None), ask(self.cert, b"0123456789abcdef"), ask(stranger, None)]
        self.revoke()
        answers.append(ask(self.cert, b"fedcba9876543210"))
        statuses = [ocsp.load_der_ocsp_response(answer).certificate_status for answer in answers]
        self.assertEqual(
            statuses, [ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.UNKNOWN, ocsp.OCSPCertStatus.REVOKED]
        )
        for answer in answers:
            self.assertEqual(ocsp_errors(answer), [])
