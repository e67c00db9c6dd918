"""Manual approval ([scep] approval = manual): PKCSReq answers PENDING, an admin decides, the client's poll gets the answer."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.defer import Deferred, ensureDeferred
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
from tests.stores import PostgreSQLStore, SQLiteStore

T = TypeVar("T")

MESSAGE_TYPE, TRANSACTION_ID, SENDER_NONCE = "2.16.840.1.113733.1.9.2", "2.16.840.1.113733.1.9.7", "2.16.840.1.113733.1.9.5"


@functools.cache
def client_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class GatedStoreThread(InlineStoreThread):
    """An inline store that, once ``hold_after(n)`` is called, runs n more calls and holds the next one until
    ``release()``: another instance's request can then run in between."""

    def __init__(self, location: Path | str) -> None:
        super().__init__(location)
        self._allowed: int | None = None
        self.held: list[tuple[Callable[..., Any], Deferred[Any]]] = []

    def hold_after(self, calls: int) -> None:
        self._allowed = calls

    def call(self, operation: Callable[..., T]) -> Deferred[T]:
        if self._allowed is None or self._allowed > 0:
            if self._allowed is not None:
                self._allowed -= 1
            return super().call(operation)
        self._allowed = None
        waiting: Deferred[T] = Deferred()
        self.held.append((operation, waiting))
        return waiting

    def release(self) -> None:
        operation, waiting = self.held.pop()
        super().call(operation).chainDeferred(waiting)


class SCEPApproval:
    """Mixed with an engine from tests.stores and a TestCase."""

    store_location: Any
    mktemp: Any
    addCleanup: Any
    assertEqual: Any
    assertRaises: Any
    assertTrue: Any
    assertIn: Any
    assertNoResult: Any
    successResultOf: Any

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).absolute()
        self.directory.mkdir()
        self.location = self.store_location(self.directory)
        settings = config.load(None, {"data_dir": str(self.directory), "hostname": "otad.test"})
        self.settings = dataclasses.replace(settings, manual_approval=True)
        self.store = GatedStoreThread(self.location)
        self.addCleanup(self.store.close)
        self.clock = Clock()
        self.clock.advance(2_000_000_000)
        self.responder = self.instance(self.store)
        self.key = client_key()
        self.signer = self_signed_identity("approval-test", key=self.key)

    def instance(self, store: InlineStoreThread) -> SCEPResponder:
        """The SCEP responder of one otad instance on ``store``."""
        return SCEPResponder(
            self.settings,
            authority(),
            store,
            InlinePool(None, "inline", 1),  # type: ignore[arg-type]
            self.clock,  # type: ignore[arg-type]
            IssuedCertificates(authority(), store),
            metrics=Metrics(),
        )

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
        # otad-admin opens the same database, as it would beside the running daemon.
        Store.open(self.location).close()
        conf = self.directory / "otad.conf"
        conf.write_text(self.store_config(self.directory))

        def run(*args: str) -> tuple[int, str]:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = admin.main(["--data-dir", str(self.directory), "--config", str(conf), *args])
            return status, out.getvalue() + err.getvalue()

        status, listing = run("requests", "list", "--json")
        self.assertEqual(status, 0)
        self.assertEqual([row["transaction_id"] for row in json.loads(listing)], [request.transaction_id])
        self.assertEqual(run("requests", "approve", request.transaction_id)[0], 0)
        status, message = run("requests", "approve", request.transaction_id)
        self.assertEqual(status, 1)
        self.assertIn("no pending request", message)

    def test_approved_request_issued_once_by_two_instances(self) -> None:
        """Two instances answer polls for one approved request at once: the first has signed a certificate and is
        about to record it when the second issues one; the first's record then fails (the request is no longer
        approved), its certificate is never stored or sent, and both clients get the second's certificate."""
        request = self.pkcs_req(self.challenge())
        self.assertRaises(SCEPPending, self.answer, request, self.send(request.der))
        self.successResultOf(self.store.call(lambda store: store.decide_request(request.transaction_id, approve=True, now=1.0)))
        other_store = InlineStoreThread(self.location)
        self.addCleanup(other_store.close)
        other = self.instance(other_store)
        # The first instance's poll reads the certificate (none yet) and the held request, signs, and is held
        # at its third store call: the one that records the certificate.
        self.store.hold_after(2)
        first_poll, first_der = self.poll(request)
        first = ensureDeferred(self.responder.pki_operation(first_der, "POST"))
        self.assertNoResult(first)
        self.assertEqual(len(self.store.held), 1)
        second_poll, second_der = self.poll(request)
        issued = self.answer(second_poll, self.successResultOf(ensureDeferred(other.pki_operation(second_der, "POST"))))
        self.store.release()
        self.assertEqual(self.answer(first_poll, self.successResultOf(first)), issued)
        records = self.successResultOf(self.store.call(lambda store: store.certificates()))
        self.assertEqual([record.der for record in records], [issued.public_bytes(serialization.Encoding.DER)])
        held = self.successResultOf(self.store.call(lambda store: store.held_request(request.transaction_id)))
        assert held is not None
        self.assertEqual((held.status, held.serial), ("issued", records[0].serial))

    def test_same_request_held_once_by_two_instances(self) -> None:
        """The same PKCSReq reaches two instances at once, on a two-use challenge: the second to record it finds it
        held, rolls back (its challenge use too) and answers PENDING; one request is held, one use spent."""
        token = self.challenge(uses=2)
        request = self.pkcs_req(token)
        other_store = InlineStoreThread(self.location)
        self.addCleanup(other_store.close)
        other = self.instance(other_store)
        # Held at its second store call, the hold itself (after one look-up of the transaction and the challenge).
        self.store.hold_after(1)
        first = ensureDeferred(self.responder.pki_operation(request.der, "POST"))
        self.assertNoResult(first)
        self.assertEqual(len(self.store.held), 1)
        self.assertRaises(SCEPPending, self.answer, request, self.successResultOf(ensureDeferred(other.pki_operation(request.der, "POST"))))
        self.store.release()
        self.assertRaises(SCEPPending, self.answer, request, self.successResultOf(first))
        held = self.successResultOf(self.store.call(lambda store: store.held_requests()))
        self.assertEqual([h.transaction_id for h in held], [request.transaction_id])
        [challenge] = self.successResultOf(self.store.call(lambda store: store.challenges()))
        self.assertEqual(challenge.uses_left, 1)


class SQLiteSCEPApprovalTests(SQLiteStore, SCEPApproval, unittest.TestCase):
    pass


class PostgreSQLSCEPApprovalTests(PostgreSQLStore, SCEPApproval, unittest.TestCase):
    pass


def _length(length: int) -> bytes:
    if length < 128:
        return bytes([length])
    size = (length.bit_length() + 7) // 8
    return bytes([0x80 | size]) + length.to_bytes(size, "big")
