"""otad's SCEP responder (RFC 8894): what each PKIOperation does, with the store, the CA and the crypto pool.

The resource at ``/scep`` only decodes HTTP; everything a request may change happens here, and
issuing a certificate and recording it commit together before any CertRep goes out.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import partial
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from otad import cms, scep, tokens
from otad.ca import Authority, Identity, issue_client_certificate, serial_hex
from otad.config import Config
from otad.errors import Kind, Refused
from otad.issued import IssuedCertificates
from otad.metrics import SCEP_MESSAGE_TYPES, Metrics, Step
from otad.pool import WorkerPool
from otad.revocation import CRLPublisher
from otad.store import CertificateRecord, Challenge, ChallengeRefused, DuplicateSerial, HeldRequest, Store, StoreThread

log = Logger()

CA_RA_CERT = b"application/x-x509-ca-ra-cert"
CA_CERT = b"application/x-x509-ca-cert"
# Challenges a SCEP request may present: minted in phase 2 (bound to a UDID) or by an admin.
_CHALLENGE_KINDS = ("scep", "static")
_SERIAL_ATTEMPTS = 4


class _Decided(Exception):
    """Inside a store transaction: another request (on this otad or another one on the same database)
    already held this transaction, or issued its approved certificate; roll back and answer as a poll."""


class _Failure(Exception):
    """A request answered with a FAILURE CertRep; ``reason`` goes to the event log only."""

    def __init__(self, fail_info: scep.FailInfo, reason: str) -> None:
        super().__init__(reason)
        self.fail_info = fail_info
        self.reason = reason


@dataclass(frozen=True)
class _Decision:
    status: scep.PKIStatus
    issued: tuple[x509.Certificate, ...] = ()
    fail_info: scep.FailInfo | None = None
    crl: bytes | None = None
    # The CertRep, when it was signed together with the certificate.
    reply: bytes | None = None


@dataclass(frozen=True)
class _Read:
    """A PKIMessage as read on the crypto pool: opened by one of otad's keys (or by none), with its CSR if it carries one."""

    message: scep.PKIMessage
    opened: cms.Decrypted | None
    responder: Identity
    recipient: str
    csr: scep.CSRInfo | None = None
    csr_error: scep.SCEPError | None = None


@dataclass(frozen=True)
class _Reply:
    """How the CertRep to one request is built: signed by ``responder``, enveloped with ``cipher``."""

    request: scep.PKIMessage
    responder: Identity
    cipher: str

    def build(self, decision: _Decision) -> bytes:
        return scep.build_cert_rep(
            request=self.request,
            status=decision.status,
            signer_cert=self.responder.cert,
            signer_key=self.responder.key,
            fail_info=decision.fail_info,
            issued=decision.issued,
            crl=decision.crl,
            cipher=self.cipher,
            digest=_reply_digest(self.request.digest),
            chain=self.responder.chain,
        )


_OPERATIONS = (
    scep.MessageType.PKCSReq,
    scep.MessageType.RenewalReq,
    scep.MessageType.CertPoll,
    scep.MessageType.GetCert,
    scep.MessageType.GetCRL,
)


@dataclass(frozen=True)
class _Recipient:
    """A certificate a client may encrypt its request to, and who signs the reply to such a request."""

    decrypts: Identity
    signs: Identity
    name: str


def _reply_digest(request_digest: str) -> str:
    # Replies are at least SHA-256; a client that signed with SHA-384/512 gets the same back.
    return request_digest if request_digest in ("sha256", "sha384", "sha512") else "sha256"


def _reply_cipher(request_cipher: str) -> str:
    # Never answer with single DES: a client that sent DES gets DES3.
    return "des3" if request_cipher == "des" else request_cipher


class SCEPResponder:
    """Answers GetCACaps, GetCACert and PKIOperation (PKCSReq, RenewalReq, CertPoll, GetCert, GetCRL)."""

    def __init__(
        self,
        config: Config,
        authority: Authority,
        store: StoreThread,
        crypto: WorkerPool,
        clock: IReactorTime,
        issued: IssuedCertificates,
        crls: CRLPublisher | None = None,
        *,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._issued = issued
        self._crls = crls
        self._authority = authority
        self._store = store
        self._crypto = crypto
        self._clock = clock

    def _recipients(self) -> list[_Recipient]:
        """Who a client may have encrypted to, first choice first, and who signs the reply then.

        The reply is signed by the key the client encrypted to when that key may sign: a client
        that pinned the CA checks the CA's signature, one that used the single RA the RA's. In the
        NDES layout the encryption RA may not sign, so the signing RA does, as NDES clients expect;
        every CertRep also carries the signer's certificate and the CA, for clients that check the
        signer's chain. Read on every request: otad renews these certificates while it runs.
        """
        authority = self._authority
        root = _Recipient(authority.root, authority.root, "CA")
        if self._config.ca_cert_format == "ca":
            return [root]
        if self._config.ra_layout == "ndes":
            return [
                _Recipient(authority.ra_encrypt, authority.ra_sign, "encryption RA"),
                _Recipient(authority.ra_sign, authority.ra_sign, "signing RA"),
                root,
            ]
        return [_Recipient(authority.ra, authority.ra, "RA"), root]

    def capabilities(self) -> bytes:
        with self._metrics.step("scep_GetCACaps"):
            return "".join(f"{capability}\n" for capability in self._config.scep_capabilities).encode("ascii")

    def ca_certificates(self) -> tuple[bytes, bytes]:
        """GetCACert's content type and body: the CA alone, or the CA with the RA certificates."""
        with self._metrics.step("scep_GetCACert"):
            if self._config.ca_cert_format == "ca-ra":
                certs = {recipient.decrypts.cert: None for recipient in self._recipients()}
                return CA_RA_CERT, cms.certs_only(list(certs))
            return CA_CERT, self._authority.root.cert.public_bytes(serialization.Encoding.DER)

    async def pki_operation(self, der: bytes, transport: str) -> bytes:
        """One PKIOperation: a DER PKIMessage in, a DER CertRep out (Refused if it can't be read at all).

        The crypto pool is visited twice for an enrollment (reading the request; signing the
        certificate with its CertRep) and the store twice (what it knows of the transaction and
        challenge; the record), since each visit costs a thread hop. Timed as one step per
        messageType, whose outcome is the CertRep's: ok, pending or refused.
        """
        with self._metrics.step("scep_other") as step:
            return await self._pki_operation(der, transport, step)

    async def _pki_operation(self, der: bytes, transport: str, step: Step) -> bytes:
        try:
            read = await self._crypto.run(self._read, der)
        except scep.SCEPError as error:
            await self._event("refused", reason=f"unreadable PKIMessage: {error}")
            raise Refused(Kind.MALFORMED, f"not a SCEP PKIMessage: {error}") from None
        message = read.message
        type_name = _type_name(message.message_type)
        if type_name in SCEP_MESSAGE_TYPES:
            step.name = f"scep_{type_name}"
        log.info(
            "SCEP {kind} by {transport}, digest {digest}, envelope {cipher} to the {who}, transaction {transaction}",
            kind=type_name,
            transport=transport,
            digest=message.digest,
            cipher=read.opened.cipher if read.opened is not None else "unreadable",
            who=read.recipient,
            transaction=message.transaction_id,
        )
        reply = _Reply(message, read.responder, _reply_cipher(read.opened.cipher) if read.opened is not None else "aes256")
        try:
            if message.message_type not in _OPERATIONS:
                raise _Failure(scep.FailInfo.badRequest, f"unsupported messageType {message.message_type}")
            if read.opened is None:
                raise _Failure(scep.FailInfo.badMessageCheck, "cannot decrypt the request's envelope")
            if message.message_type == scep.MessageType.CertPoll:
                decision = await self._poll(message)
            elif message.message_type == scep.MessageType.GetCert:
                decision = await self._get_cert(read.opened.content)
            elif message.message_type == scep.MessageType.GetCRL:
                decision = self._get_crl(read.opened.content)
            else:
                decision = await self._enroll(message, read, reply)
        except _Failure as failure:
            await self._event("refused", transaction=message.transaction_id, reason=failure.reason)
            log.info("SCEP request refused: {reason}", reason=failure.reason, transaction=message.transaction_id, outcome="refused")
            decision = _Decision(scep.PKIStatus.FAILURE, fail_info=failure.fail_info)
        step.outcome = {scep.PKIStatus.FAILURE: "refused", scep.PKIStatus.PENDING: "pending"}.get(decision.status, "ok")
        if decision.reply is not None:
            return decision.reply
        return await self._crypto.run(reply.build, decision)

    def _read(self, der: bytes) -> _Read:
        """Parse the PKIMessage, open its envelope with whichever of otad's keys it was encrypted to,
        and read the CSR of an enrollment (on the crypto pool); SCEPError if it is no PKIMessage."""
        message = scep.parse_pki_message(der)
        recipients = self._recipients()
        for recipient in recipients:
            identity = recipient.decrypts
            if not isinstance(identity.key, rsa.RSAPrivateKey):
                continue
            try:
                opened = scep.open_envelope(message, identity.cert, identity.key)
            except (cms.CMSError, scep.SCEPError):
                continue
            if message.message_type not in (scep.MessageType.PKCSReq, scep.MessageType.RenewalReq):
                return _Read(message, opened, recipient.signs, recipient.name)
            try:
                return _Read(message, opened, recipient.signs, recipient.name, csr=scep.parse_csr(opened.content))
            except scep.SCEPError as error:
                return _Read(message, opened, recipient.signs, recipient.name, csr_error=error)
        return _Read(message, None, recipients[0].signs, "none of otad's certificates")

    def _now(self) -> float:
        return self._clock.seconds()

    async def _event(
        self, outcome: str, *, transaction: str | None = None, udid: str | None = None, serial: str | None = None, reason: str | None = None
    ) -> None:
        now = self._now()
        detail = f"transaction {transaction}: {reason}" if transaction else reason
        await self._store.call(
            lambda store: store.record_event(now=now, kind="scep", outcome=outcome, udid=udid, serial=serial, reason=detail)
        )

    async def _enroll(self, message: scep.PKIMessage, read: _Read, reply: _Reply) -> _Decision:
        if read.csr is None:
            error = read.csr_error
            assert error is not None
            raise _Failure(error.fail_info, f"bad CSR: {error}")
        csr = read.csr
        request_cipher = read.opened.cipher if read.opened is not None else "?"
        self._check_key(csr)
        now = self._now()
        renewing = await self._renewal_source(message)
        if message.message_type == scep.MessageType.RenewalReq and renewing is None:
            raise _Failure(scep.FailInfo.badRequest, "RenewalReq not signed by a valid, unrevoked otad certificate")
        if renewing is not None:
            return await self._issue(message, csr, reply, udid=renewing.udid, digest=None, renewing=renewing, cipher=request_cipher)
        transaction = message.transaction_id
        digest = tokens.digest(csr.challenge) if csr.challenge else None
        manual = self._config.manual_approval

        def known(store: Store) -> tuple[CertificateRecord | None, HeldRequest | None, Challenge | ChallengeRefused | None]:
            """What the store knows of this transaction and its challenge, in one visit."""
            earlier = store.certificate_for_transaction(transaction)
            held = store.held_request(transaction) if manual else None
            if digest is None:
                return earlier, held, None
            try:
                return earlier, held, store.find_challenge(digest, _CHALLENGE_KINDS, now=now)
            except ChallengeRefused as refused:
                return earlier, held, refused

        earlier, held, challenge = await self._store.call(known)
        if earlier is not None and earlier.revoked is None and now < earlier.not_after:
            issued = x509.load_der_x509_certificate(earlier.der)
            if issued.public_key() == csr.public_key:
                # A client retrying after a lost reply gets the same certificate again (RFC 8894 3.3.1);
                # it is enveloped to the request's signer, so a replay gives nobody else anything.
                return _Decision(scep.PKIStatus.SUCCESS, issued=(issued,))
        if held is not None:
            # The client sent the same request again: answer as a poll would.
            return await self._decide_held(message, held, reply)
        if digest is None:
            raise _Failure(scep.FailInfo.badRequest, "the CSR has no challengePassword")
        if isinstance(challenge, ChallengeRefused):
            raise self._challenge_refused(challenge)
        assert challenge is not None
        # Phase-2 challenges are bound to the device's UDID; admin challenges may be (--bind-udid).
        udid = challenge.bound_to
        if manual:
            return await self._hold(message, csr, digest, udid, now)
        return await self._issue(message, csr, reply, udid=udid, digest=digest, renewing=None, cipher=request_cipher)

    def _challenge_refused(self, error: ChallengeRefused) -> _Failure:
        """The one place a SCEP request's challenge refusal is counted."""
        self._metrics.challenge_refused("scep", str(error))
        return _Failure(scep.FailInfo.badRequest, f"challenge refused: {error}")

    def _check_key(self, csr: scep.CSRInfo) -> None:
        public_key = csr.public_key
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise _Failure(scep.FailInfo.badAlg, "only RSA keys are accepted")
        minimum = self._config.min_key_size
        if public_key.key_size < minimum:
            raise _Failure(scep.FailInfo.badRequest, f"RSA key of {public_key.key_size} bits is below the minimum {minimum}")

    async def _hold(self, message: scep.PKIMessage, csr: scep.CSRInfo, digest: bytes, udid: str | None, now: float) -> _Decision:
        """Use the challenge and keep the request for an admin, in one transaction; PENDING. The same
        request held meanwhile by a copy sent at the same time is answered as a poll, its challenge untouched."""

        def hold(store: Store) -> str:
            with store.transaction():
                challenge = store.consume_challenge(digest, _CHALLENGE_KINDS, now=now)
                held = store.hold_request(
                    transaction_id=message.transaction_id,
                    udid=udid,
                    subject=csr.subject.rfc4514_string(),
                    csr=csr.der,
                    challenge_id=challenge.id,
                    now=now,
                )
                if not held:
                    raise _Decided()
                store.record_event(now=now, kind="scep", outcome="held", udid=udid, reason=f"transaction {message.transaction_id}")
            return challenge.kind

        try:
            used = await self._store.call(hold)
        except ChallengeRefused as error:
            raise self._challenge_refused(error) from None
        except _Decided:
            return await self._held_elsewhere(message)
        self._metrics.challenges_used.labels(kind=used).inc()
        log.info("SCEP request {transaction} held for approval", transaction=message.transaction_id, udid=udid, outcome="pending")
        return _Decision(scep.PKIStatus.PENDING)

    async def _held_elsewhere(self, message: scep.PKIMessage, reply: _Reply | None = None) -> _Decision:
        """The answer for a transaction that another request held or issued first: PENDING, or its certificate."""
        transaction = message.transaction_id
        held = await self._store.call(lambda store: store.held_request(transaction))
        if held is None or held.status == "approved":
            # The request left "approved" for "issued" (that is what _Decided means), so this cannot
            # be; refusing here keeps it from issuing again in a loop.
            raise _Failure(scep.FailInfo.badRequest, "the held request changed while it was being answered; poll again")
        return await self._decide_held(message, held, reply)

    async def _decide_held(self, message: scep.PKIMessage, held: HeldRequest, reply: _Reply | None = None) -> _Decision:
        """Answer for a held request: PENDING, FAILURE if rejected, or the certificate once approved."""
        if held.status == "pending":
            return _Decision(scep.PKIStatus.PENDING)
        if held.status == "rejected":
            raise _Failure(scep.FailInfo.badRequest, "the request was rejected by an administrator")
        if held.status == "issued" and held.serial is not None:
            serial = held.serial
            record = await self._store.call(lambda store: store.certificate(serial))
            if record is not None:
                return _Decision(scep.PKIStatus.SUCCESS, issued=(x509.load_der_x509_certificate(record.der),))
        csr = await self._crypto.run(scep.parse_csr, held.csr)
        return await self._issue(message, csr, reply, udid=held.udid, digest=None, renewing=None, cipher="held", held=held)

    async def _issue(
        self,
        message: scep.PKIMessage,
        csr: scep.CSRInfo,
        reply: _Reply | None,
        *,
        udid: str | None,
        digest: bytes | None,
        renewing: CertificateRecord | None,
        cipher: str,
        held: HeldRequest | None = None,
    ) -> _Decision:
        """Sign a certificate (and its CertRep, when ``reply`` says how), then use the challenge and record
        it in one transaction; retry on a serial clash. Nothing signed here is sent unless recorded."""
        public_key = csr.public_key
        assert isinstance(public_key, rsa.RSAPublicKey)
        now = self._now()
        lifetime = datetime.timedelta(seconds=self._config.cert_validity)
        issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        for _ in range(_SERIAL_ATTEMPTS):
            serial = x509.random_serial_number()

            def sign(serial: int = serial) -> tuple[x509.Certificate, bytes | None]:
                cert = issue_client_certificate(
                    self._authority.root,
                    public_key,
                    csr.subject,
                    csr.extensions,
                    udid=udid,
                    serial=serial,
                    now=issued_at,
                    lifetime=lifetime,
                    allowed_usage=self._config.allowed_key_usage,
                    copy_names=self._config.copy_subject_alt_names,
                    publication=self._authority.publication,
                )
                return cert, reply.build(_Decision(scep.PKIStatus.SUCCESS, issued=(cert,))) if reply is not None else None

            cert, signed_reply = await self._crypto.run(sign)
            try:
                used = await self._store.call(
                    partial(
                        self._record,
                        cert=cert,
                        csr=csr.der,
                        digest=digest,
                        udid=udid,
                        message=message,
                        now=now,
                        renewing=renewing,
                        held=held,
                        revoke_replaced=self._config.revoke_on_renew,
                    )
                )
            except DuplicateSerial:
                continue
            except ChallengeRefused as error:
                # Someone used the challenge while this certificate was being signed; it is never sent.
                raise self._challenge_refused(error) from None
            except _Decided:
                # Another poll (on this otad or another) issued the approved request first: this
                # certificate was never recorded and is never sent; the client gets that one.
                return await self._held_elsewhere(message, reply)
            if used is not None:
                self._metrics.challenges_used.labels(kind=used).inc()
            if renewing is not None:
                self._metrics.certificates_renewed.inc()
            else:
                self._metrics.certificates_issued.labels(method="scep").inc()
            if renewing is not None and self._config.revoke_on_renew and self._crls is not None:
                self._crls.republish()
            log.info(
                "issued certificate {serial} for {udid} ({kind}, request cipher {cipher})",
                serial=serial_hex(serial),
                udid=udid,
                kind="renewal" if renewing else "enrollment",
                cipher=cipher,
                outcome="issued",
            )
            return _Decision(scep.PKIStatus.SUCCESS, issued=(cert,), reply=signed_reply)
        raise _Failure(scep.FailInfo.badRequest, "could not draw an unused serial number")

    @staticmethod
    def _record(
        store: Store,
        *,
        cert: x509.Certificate,
        csr: bytes,
        digest: bytes | None,
        udid: str | None,
        message: scep.PKIMessage,
        now: float,
        renewing: CertificateRecord | None,
        held: HeldRequest | None,
        revoke_replaced: bool,
    ) -> str | None:
        """Use the challenge and record the certificate in one transaction (runs on the store thread);
        with ``revoke_replaced`` a renewal also revokes the certificate it replaces, as superseded.
        Returns the kind of the challenge it used, if it used one."""
        used = None
        with store.transaction():
            challenge_id = held.challenge_id if held is not None else None
            if digest is not None:
                challenge = store.consume_challenge(digest, _CHALLENGE_KINDS, now=now)
                challenge_id, used = challenge.id, challenge.kind
            serial = serial_hex(cert.serial_number)
            store.add_certificate(
                serial=serial,
                udid=udid,
                subject=cert.subject.rfc4514_string(),
                not_before=cert.not_valid_before_utc.timestamp(),
                not_after=cert.not_valid_after_utc.timestamp(),
                der=cert.public_bytes(serialization.Encoding.DER),
                csr=csr,
                challenge_id=challenge_id,
                transaction_id=message.transaction_id,
                now=now,
            )
            if held is not None and not store.mark_issued(held.transaction_id, serial):
                raise _Decided()
            store.record_event(
                now=now,
                kind="scep",
                outcome="issued",
                udid=udid,
                serial=serial,
                reason=f"renewal of {renewing.serial}" if renewing else f"transaction {message.transaction_id}",
            )
            if renewing is not None and revoke_replaced:
                if not store.revoke(renewing.serial, reason="superseded", now=now):
                    # Revoked meanwhile, by an admin or by a renewal of the same certificate that
                    # committed first (on any otad): one certificate is replaced once.
                    raise _Failure(scep.FailInfo.badRequest, f"certificate {renewing.serial} was revoked while it was being renewed")
                store.record_event(now=now, kind="certificate", outcome="revoked", serial=renewing.serial, reason="superseded")
        return used

    async def _renewal_source(self, message: scep.PKIMessage) -> CertificateRecord | None:
        """The valid, unrevoked otad certificate that signed this request, if any: then no challenge is needed."""
        provenance = await self._issued.lookup(message.signer)
        return provenance.record if provenance.valid_at(self._now()) else None

    async def _poll(self, message: scep.PKIMessage) -> _Decision:
        """CertPoll/GetCertInitial: the issued certificate, or the state of a request held for approval."""
        transaction = message.transaction_id
        record = await self._store.call(lambda store: store.certificate_for_transaction(transaction))
        if record is not None:
            return _Decision(scep.PKIStatus.SUCCESS, issued=(x509.load_der_x509_certificate(record.der),))
        held = await self._store.call(lambda store: store.held_request(transaction))
        if held is None:
            raise _Failure(scep.FailInfo.badCertId, "no certificate for this transaction")
        return await self._decide_held(message, held)

    def _get_crl(self, payload: bytes) -> _Decision:
        """GetCRL: the CA's current CRL, for the issuer named in the request's IssuerAndSerialNumber."""
        try:
            issuer, _ = scep.parse_issuer_and_serial(payload)
        except scep.SCEPError as error:
            raise _Failure(scep.FailInfo.badRequest, f"bad GetCRL request: {error}") from None
        if issuer != self._authority.root.cert.subject:
            raise _Failure(scep.FailInfo.badCertId, "not an issuer otad knows")
        current = self._crls.current if self._crls is not None else None
        if current is None:
            raise _Failure(scep.FailInfo.badRequest, "no CRL has been published yet")
        return _Decision(scep.PKIStatus.SUCCESS, crl=current)

    async def _get_cert(self, payload: bytes) -> _Decision:
        try:
            issuer, serial = scep.parse_issuer_and_serial(payload)
        except scep.SCEPError as error:
            raise _Failure(scep.FailInfo.badRequest, f"bad GetCert request: {error}") from None
        if issuer != self._authority.root.cert.subject:
            raise _Failure(scep.FailInfo.badCertId, "not an issuer otad knows")
        record = await self._store.call(lambda store: store.certificate(serial_hex(serial)))
        if record is None:
            raise _Failure(scep.FailInfo.badCertId, "no certificate with that serial")
        return _Decision(scep.PKIStatus.SUCCESS, issued=(x509.load_der_x509_certificate(record.der),))


def _type_name(value: Any) -> str:
    try:
        return scep.MessageType(value).name
    except ValueError:
        return f"messageType {value}"
