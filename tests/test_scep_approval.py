"""Manual approval ([scep] approval = manual): PKCSReq answers PENDING, an admin decides, the client's poll gets the answer."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
from pathlib import Path

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from otad import admin, cms, config, tokens
from otad.issued import IssuedCertificates
from otad.metrics import Metrics
from otad.scep_responder import SCEPResponder
from otad.store import Store
from tests.fakeapple import self_signed_identity
from tests.fakedevice import PKIRequest, SCEPPending, SCEPRefused, build_pkcs_req, parse_cert_rep
from tests.helpers import InlinePool, InlineStoreThread, authority

MESSAGE_TYPE, TRANSACTION_ID, SENDER_NONCE = "2.16.840.1.113733.1.9.2", "2.16.840.1.113733.1.9.7", "2.16.840.1.113733.1.9.5"


@functools.cache
def client_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class SCEPApprovalTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).absolute()
        self.directory.mkdir()
        settings = config.load(None, {"data_dir": str(self.directory), "hostname": "otad.test"})
        self.settings = dataclasses.replace(settings, manual_approval=True)
        self.store = InlineStoreThread(self.settings.database)
        self.addCleanup(lambda: self.store.call(lambda store: store.close()))
        self.clock = Clock()
        self.clock.advance(2_000_000_000)
        self.responder = SCEPResponder(
            self.settings,
            authority(),
            self.store,
            InlinePool(None, "inline", 1),
            self.clock,  # type: ignore[arg-type]
            IssuedCertificates(authority(), self.store),
            metrics=Metrics(),
        )
        self.key = client_key()
        self.signer = self_signed_identity("approval-test", key=self.key)

    def challenge(self, uses: int = 1) -> str:
        token, digest = tokens.mint()
        self.successResultOf(
            self.store.call(lambda store: store.add_challenge(digest, "static", None, now=self.clock.seconds(), ttl=3600, uses=uses))
        )
        return token

    def send(self, der: bytes) -> bytes:
        return self.successResultOf(ensureDeferred(self.responder.pki_operation(der, "POST")))

    def pkcs_req(self, challenge: str) -> PKIRequest:
        return build_pkcs_req(
            self.key,
            self.signer[0],
            authority().ra_encrypt.cert,
            subject=[[["CN", "approval-test"]]],
            challenge=challenge,
        )

    def poll(self, request: PKIRequest) -> tuple[PKIRequest, bytes]:
        """A CertPoll (GetCertInitial) for the request's transaction, as RFC 8894 section 3.3.3 builds it."""
        body = authority().root.cert.subject.public_bytes() + request.csr.subject.public_bytes()
        issuer_and_subject = b"\x30" + _length(len(body)) + body
        envelope = cms.encrypt(issuer_and_subject, [authority().ra_encrypt.cert], "aes256")
        nonce = os.urandom(16)
        attributes = [
            (MESSAGE_TYPE, core.PrintableString("20").dump()),
            (TRANSACTION_ID, core.PrintableString(request.transaction_id).dump()),
            (SENDER_NONCE, core.OctetString(nonce).dump()),
        ]
        der = cms.sign(envelope, self.signer[0], self.key, (), "sha256", attributes=attributes)
        return dataclasses.replace(request, der=der, sender_nonce=nonce), der

    def answer(self, request: PKIRequest, reply: bytes) -> x509.Certificate:
        return parse_cert_rep(
            reply, ca_certs=[authority().root.cert, authority().ra_sign.cert, authority().ra_encrypt.cert], request=request, key=self.key
        )

    def test_pending_then_approved(self) -> None:
        """A PKCSReq is held (PENDING, challenge used); polls stay PENDING; after approval the poll gets the certificate."""
        request = self.pkcs_req(self.challenge())
        self.assertRaises(SCEPPending, self.answer, request, self.send(request.der))
        held = self.successResultOf(self.store.call(lambda store: store.held_requests("pending")))
        self.assertEqual([h.transaction_id for h in held], [request.transaction_id])
        polled, der = self.poll(request)
        self.assertRaises(SCEPPending, self.answer, polled, self.send(der))
        # Sending the very same PKCSReq again is answered like a poll, without needing a new challenge.
        self.assertRaises(SCEPPending, self.answer, request, self.send(request.der))

        approved = self.store.call(lambda store: store.decide_request(request.transaction_id, approve=True, now=1.0))
        self.assertTrue(self.successResultOf(approved))
        polled, der = self.poll(request)
        cert = self.answer(polled, self.send(der))
        self.assertEqual(cert.public_key(), self.key.public_key())
        records = self.successResultOf(self.store.call(lambda store: store.certificates()))
        self.assertEqual([r.der for r in records], [cert.public_bytes(serialization.Encoding.DER)])
        # Polling again returns the same certificate; nothing new is issued.
        polled, der = self.poll(request)
        self.assertEqual(self.answer(polled, self.send(der)), cert)
        self.assertEqual(len(self.successResultOf(self.store.call(lambda store: store.certificates()))), 1)

    def test_rejected(self) -> None:
        """A rejected request's next poll gets FAILURE badRequest and no certificate exists."""
        request = self.pkcs_req(self.challenge())
        self.assertRaises(SCEPPending, self.answer, request, self.send(request.der))
        self.successResultOf(self.store.call(lambda store: store.decide_request(request.transaction_id, approve=False, now=1.0)))
        polled, der = self.poll(request)
        refused = self.assertRaises(SCEPRefused, self.answer, polled, self.send(der))
        self.assertEqual(refused.fail_info, 2)
        self.assertEqual(self.successResultOf(self.store.call(lambda store: store.certificates())), [])

    def test_bad_challenge_is_not_held(self) -> None:
        """With manual approval, an unknown challenge is still refused outright, not held."""
        request = self.pkcs_req("not-a-challenge")
        self.assertRaises(SCEPRefused, self.answer, request, self.send(request.der))
        self.assertEqual(self.successResultOf(self.store.call(lambda store: store.held_requests())), [])

    def test_admin_commands(self) -> None:
        """`otad-admin requests list --json` shows a held request and `requests approve` decides it once."""
        request = self.pkcs_req(self.challenge())
        self.send(request.der)
        # otad-admin opens the same database file, as it would beside the running daemon.
        Store.open(self.settings.database).close()

        def run(*args: str) -> tuple[int, str]:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = admin.main(["--data-dir", str(self.directory), *args])
            return status, out.getvalue() + err.getvalue()

        status, listing = run("requests", "list", "--json")
        self.assertEqual(status, 0)
        self.assertEqual([row["transaction_id"] for row in json.loads(listing)], [request.transaction_id])
        self.assertEqual(run("requests", "approve", request.transaction_id)[0], 0)
        status, message = run("requests", "approve", request.transaction_id)
        self.assertEqual(status, 1)
        self.assertIn("no pending request", message)


def _length(length: int) -> bytes:
    if length < 128:
        return bytes([length])
    size = (length.bit_length() + 7) // 8
    return bytes([0x80 | size]) + length.to_bytes(size, "big")
