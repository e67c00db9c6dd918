"""The enrollment flow: what each phase does with the config, the store, the CA and the CMS code.

Resources call these methods and turn their results, or the ``Refused`` errors they raise, into
HTTP; this module knows no HTTP, and does its RSA work on the crypto pool.
"""

from __future__ import annotations

import datetime
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from otad import cms, device_attributes, payloads, templates, tokens
from otad.ca import Authority, generate_key, issue_client_certificate, serial_hex
from otad.config import Config
from otad.device_trust import DeviceTrust, UntrustedDevice
from otad.errors import Kind, Refused
from otad.issued import IssuedCertificates, Provenance
from otad.metrics import Metrics
from otad.pool import WorkerPool
from otad.store import ChallengeRefused, DuplicateSerial, Store, StoreThread

log = Logger()


class RepeatRedirect(Exception):
    """``on_repeat = redirect``: a device that already has its configuration is sent back to ``/enroll``."""


def _subject_value(value: str) -> str:
    """Escape a device-supplied value so that it can't add name components to the subject."""
    return re.sub(r"([\\/+=])", r"\\\1", value)


_NAME_OIDS = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
}


def _name_attribute(name: str, value: str) -> x509.NameAttribute:
    """One subject attribute from Apple's [name, value] pair (a short name or a dotted OID)."""
    oid = _NAME_OIDS.get(name) or x509.ObjectIdentifier(name)
    return x509.NameAttribute(oid, value)


def _challenge_text(value: object) -> str | None:
    """CHALLENGE as the device echoes it: <string>, or <data> if the server sent data."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and value else None


class Enrollment:
    """Phases 1, 2 and 3 of Apple's over-the-air enrollment, as ``/enroll`` and ``/profile`` need them."""

    def __init__(
        self,
        config: Config,
        authority: Authority,
        store: StoreThread,
        crypto: WorkerPool,
        clock: IReactorTime,
        device_trust: DeviceTrust,
        profile_templates: Sequence[templates.Template],
        issued: IssuedCertificates,
        *,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._issued = issued
        self._templates = tuple(profile_templates)
        self._authority = authority
        self._device_trust = device_trust
        self._store = store
        self._crypto = crypto
        self._clock = clock

    async def sign(self, profile: bytes) -> bytes:
        """CMS-sign a serialized profile with the profile-signing identity, on the crypto pool."""
        signer = self._authority.signer
        return await self._crypto.run(cms.sign_profile, profile, signer.cert, signer.key, signer.chain)

    async def profile_service(self, user: str, base_url: str) -> bytes:
        """Phase 1: mint a one-time challenge for ``user`` and return the signed Profile Service payload."""
        with self._metrics.step("phase1"):
            config = self._config
            token, digest = tokens.mint()
            now = self._clock.seconds()

            def remember(store: Store) -> None:
                with store.transaction():
                    store.add_challenge(digest, "enroll", user, now=now, ttl=config.challenge_ttl)
                    store.record_event(now=now, kind="enroll", outcome="challenge issued", user=user)

            await self._store.call(remember)
            self._metrics.challenges_minted.labels(kind="enroll").inc()
            profile = payloads.profile_service_payload(
                url=f"{base_url}/profile",
                device_attributes=config.device_attributes,
                challenge=token,
                identifier=f"{config.identifier}.profile-service",
                organization=config.organization,
                display_name=config.display_name,
                description=config.description,
            )
            log.info("issued a phase-1 challenge to {user}", user=user, phase=1, outcome="challenge issued")
            return await self.sign(payloads.serialize(profile))

    async def _record_refusal(self, refused: Refused, phase: int) -> None:
        """The one place a refusal of phase 2 or 3 is written to the event log (5xx kinds as errors)."""
        now = self._clock.seconds()
        outcome = "error" if refused.kind in (Kind.BROKEN, Kind.UNAVAILABLE) else "refused"
        log.info("refused phase {phase}: {reason}", phase=phase, udid=refused.udid, outcome=outcome, reason=refused.reason)
        try:
            await self._store.call(
                lambda store: store.record_event(now=now, kind=f"phase {phase}", outcome=outcome, udid=refused.udid, reason=refused.reason)
            )
        except Refused as unrecorded:
            # The store itself is down: the refusal still goes out, and the log has it.
            log.warn("could not record a refusal in the event log: {reason}", reason=unrecorded.reason)

    async def profile(self, body: bytes, base_url: str) -> bytes:
        """``POST /profile``: a device's signed attributes in, a signed profile out.

        Signed by an Apple device identity it is phase 2, answered with a SCEP enrollment
        payload; signed by an identity otad issued, it is phase 3.
        """
        phase = 2
        with self._metrics.step("phase2") as step:
            try:
                try:
                    signed = await self._crypto.run(cms.verify, body)
                except cms.SignatureInvalid as error:
                    raise Refused(Kind.FORBIDDEN, f"the request's signature is invalid: {error}") from None
                except cms.CMSError as error:
                    raise Refused(Kind.MALFORMED, f"not a CMS signed request: {error}") from None
                provenance = await self._issued.lookup(signed.signer)
                if provenance.signed_by_otad:
                    phase = 3
                    step.name = "phase3"
                    return await self._phase3(signed, provenance, base_url)
                return await self._phase2(signed, base_url)
            except payloads.ProfileInvalid as error:
                # A template or setting produced something a device would refuse: never send it.
                log.error("refusing to serve an invalid profile: {reason}", reason=str(error), phase=phase)
                broken = Refused(Kind.BROKEN, f"otad built an invalid profile and did not send it: {error}")
                await self._record_refusal(broken, phase)
                raise broken from None
            except Refused as refused:
                await self._record_refusal(refused, phase)
                raise
            except RepeatRedirect:
                # Sending a device back to /enroll is an answer, not a failure.
                step.outcome = "redirected"
                raise

    async def _phase2(self, signed: cms.Verified, base_url: str) -> bytes:
        config = self._config
        try:
            warning = self._device_trust.check(signed)
        except UntrustedDevice as error:
            raise Refused(Kind.FORBIDDEN, f"the signer is not a trusted device identity: {error}") from None
        attributes = device_attributes.parse(signed.content)
        udid: str = attributes["UDID"]
        challenge = _challenge_text(attributes.pop("CHALLENGE", None))
        if challenge is None:
            raise Refused(Kind.FORBIDDEN, "the device attributes carry no challenge", udid=udid)
        now = self._clock.seconds()
        if warning is not None:
            await self._store.call(
                lambda store: store.record_event(
                    now=now, kind="phase 2", outcome="warning", udid=udid, reason=f"untrusted device identity accepted: {warning}"
                )
            )
            log.warn("accepted an untrusted device identity for {udid}: {reason}", udid=udid, reason=warning, phase=2)
        # Check the challenge (without using it) and build the subject before anything is
        # written, so a request refused here leaves nothing behind but its event.
        try:
            phase1 = await self._store.call(lambda store: store.find_challenge(tokens.digest(challenge), ("enroll",), now=now))
        except ChallengeRefused as error:
            self._metrics.challenge_refused("phase2", str(error))
            raise Refused(Kind.FORBIDDEN, f"phase-1 challenge refused: {error}", udid=udid) from None
        user = phase1.bound_to
        subject = self._scep_subject(attributes, user, udid)
        if config.identity == "pkcs12":
            identity_payload = await self._pkcs12_identity(attributes, challenge, udid, now, subject)
        else:
            identity_payload = await self._scep_identity(attributes, challenge, udid, now, base_url, subject)
        profile = payloads.configuration_profile(
            identifier=f"{config.identifier}.enrollment",
            organization=config.organization,
            display_name=f"{config.organization} device identity",
            description="Enrolls this device's identity certificate for encrypted profiles",
            content=[identity_payload],
        )
        log.info("phase 2 done for {udid}", udid=udid, user=user, phase=2, outcome=f"{config.identity} payload sent")
        return await self.sign(payloads.serialize(profile))

    async def _scep_identity(
        self, attributes: dict[str, Any], challenge: str, udid: str, now: float, base_url: str, subject: list[list[list[str]]]
    ) -> dict[str, Any]:
        """Use the phase-1 challenge and mint a one-time SCEP challenge bound to the UDID, in one transaction."""
        config = self._config
        token, digest = tokens.mint()

        def commit(store: Store) -> None:
            with store.transaction():
                phase1 = store.consume_challenge(tokens.digest(challenge), ("enroll",), now=now)
                store.record_device(udid, phase1.bound_to, attributes, now=now)
                store.add_challenge(digest, "scep", udid, now=now, ttl=config.scep_challenge_ttl)
                store.record_event(now=now, kind="phase 2", outcome="scep payload sent", user=phase1.bound_to, udid=udid)

        await self._commit_phase2(commit, udid)
        self._metrics.challenges_used.labels(kind="enroll").inc()
        self._metrics.challenges_minted.labels(kind="scep").inc()
        return payloads.scep_payload(
            url=config.scep_url or f"{base_url}/scep",
            ca_fingerprint=self._authority.root.cert.fingerprint(hashes.SHA1()),
            subject=subject,
            challenge=token,
            keysize=config.keysize,
            identifier=f"{config.identifier}.enrollment.scep",
            display_name="Device identity",
            organization=config.organization,
            description="Provides the device identity that encrypted profiles are addressed to",
        )

    async def _commit_phase2(self, commit: Any, udid: str) -> Any:
        try:
            return await self._store.call(commit)
        except ChallengeRefused as error:
            self._metrics.challenge_refused("phase2", str(error))
            raise Refused(Kind.FORBIDDEN, f"phase-1 challenge refused: {error}", udid=udid) from None

    async def _pkcs12_identity(
        self, attributes: dict[str, Any], challenge: str, udid: str, now: float, subject_rdns: list[list[list[str]]]
    ) -> dict[str, Any]:
        """Generate the device's key and certificate here and send them as a password-protected PKCS#12.

        The caller checked the challenge before this (slow) key generation; it is used in the
        same transaction that records the certificate, so a failed write sends nothing.
        """
        config = self._config
        key = await self._crypto.run(generate_key, config.keysize)
        subject = x509.Name([x509.RelativeDistinguishedName([_name_attribute(name, value) for name, value in rdn]) for rdn in subject_rdns])
        issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC)
        lifetime = datetime.timedelta(seconds=config.cert_validity)
        for _ in range(4):
            serial = x509.random_serial_number()
            cert = await self._crypto.run(
                lambda serial=serial: issue_client_certificate(
                    self._authority.root,
                    key.public_key(),
                    subject,
                    x509.Extensions([]),
                    udid=udid,
                    serial=serial,
                    now=issued_at,
                    lifetime=lifetime,
                    allowed_usage=config.allowed_key_usage,
                    publication=self._authority.publication,
                )
            )

            def commit(store: Store, cert: x509.Certificate = cert) -> None:
                with store.transaction():
                    phase1 = store.consume_challenge(tokens.digest(challenge), ("enroll",), now=now)
                    store.record_device(udid, phase1.bound_to, attributes, now=now)
                    store.add_certificate(
                        serial=serial_hex(cert.serial_number),
                        udid=udid,
                        subject=cert.subject.rfc4514_string(),
                        not_before=cert.not_valid_before_utc.timestamp(),
                        not_after=cert.not_valid_after_utc.timestamp(),
                        der=cert.public_bytes(serialization.Encoding.DER),
                        csr=None,
                        challenge_id=phase1.id,
                        transaction_id=None,
                        now=now,
                    )
                    store.record_event(
                        now=now,
                        kind="phase 2",
                        outcome="pkcs12 identity sent",
                        user=phase1.bound_to,
                        udid=udid,
                        serial=serial_hex(cert.serial_number),
                    )

            try:
                await self._commit_phase2(commit, udid)
            except DuplicateSerial:
                continue
            break
        else:
            raise Refused(Kind.UNAVAILABLE, "could not draw an unused serial number; try again", udid=udid, retry_after=1)
        self._metrics.challenges_used.labels(kind="enroll").inc()
        self._metrics.certificates_issued.labels(method="pkcs12").inc()
        password = secrets.token_urlsafe(18)
        # PBE-SHA1-3DES with a SHA-1 MAC: the PKCS#12 flavour every iOS and macOS version
        # imports; AES/PBKDF2 PKCS#12 files are refused by older releases.
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(2048)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())
            .build(password.encode("ascii"))
        )
        bundle = await self._crypto.run(
            pkcs12.serialize_key_and_certificates, udid.encode(), key, cert, [self._authority.root.cert], encryption
        )
        payload = payloads.pkcs12_payload(
            p12=bundle,
            password=password,
            identifier=f"{config.identifier}.enrollment.identity",
            display_name="Device identity",
            organization=config.organization,
            description="The device identity that encrypted profiles are addressed to",
        )
        return payload

    def _scep_subject(self, attributes: Mapping[str, Any], user: str | None, udid: str) -> list[list[list[str]]]:
        values = {name: _subject_value(str(attributes.get(name) or "")) for name in ("UDID", "SERIAL", "PRODUCT")}
        values["ORGANIZATION"] = _subject_value(self._config.organization)
        values["USERNAME"] = _subject_value(user or "")
        try:
            return payloads.parse_subject(string.Template(self._config.scep_subject).substitute(values))
        except ValueError as error:
            raise Refused(Kind.MALFORMED, f"cannot build the SCEP subject from the device attributes: {error}", udid=udid) from None

    async def _phase3(self, signed: cms.Verified, provenance: Provenance, base_url: str) -> bytes:
        """A device signing with the identity otad issued gets its configuration, encrypted to that identity only."""
        config = self._config
        signer = signed.signer
        serial = serial_hex(signer.serial_number)
        record = provenance.record
        if record is None:
            raise Refused(Kind.FORBIDDEN, "the signing certificate is not one otad issued")
        attributes = device_attributes.parse(signed.content)
        udid: str = attributes["UDID"]
        now = self._clock.seconds()
        if record.revoked is not None:
            raise Refused(Kind.FORBIDDEN, f"the signing certificate {serial} is revoked", udid=udid)
        if not provenance.valid_at(now):
            raise Refused(Kind.FORBIDDEN, f"the signing certificate {serial} is expired or not yet valid", udid=udid)
        if record.udid != udid:
            raise Refused(Kind.FORBIDDEN, "the signing certificate is bound to another device", udid=udid)
        device = await self._store.call(lambda store: store.device(udid))
        known: dict[str, Any] = device_attributes.keep(device.attributes) if device is not None else {}
        known.update(attributes)
        user = device.user if device is not None else None
        try:
            template = templates.select(self._templates, known)
        except templates.TemplateError as error:
            raise Refused(Kind.FORBIDDEN, f"no configuration for this device: {error}", udid=udid) from None
        token, digest = tokens.mint() if templates.needs_scep_challenge(template) else ("", b"")
        values = {
            "UDID": udid,
            "SERIAL": str(known.get("SERIAL", "")),
            "PRODUCT": str(known.get("PRODUCT", "")),
            "VERSION": str(known.get("VERSION", "")),
            "DEVICE_NAME": str(known.get("DEVICE_NAME", "")),
            "USERNAME": user or "",
            "SCEP_URL": config.scep_url or f"{base_url}/scep",
            "SCEP_CHALLENGE": token,
            "INTRANET_URL": config.intranet_url,
            "ORGANIZATION": config.organization,
            "BASE_URL": base_url,
        }
        # The validator runs here: otad refuses to serve a payload array a device would reject.
        content = payloads.serialize_payloads(templates.render(template, values))
        envelope = await self._crypto.run(cms.encrypt, content, [signer], "aes256")
        expiration = datetime.datetime.fromtimestamp(now + config.profile_expiration, datetime.UTC) if config.profile_expiration else None
        identifier = f"{config.identifier}.configuration"
        profile = payloads.configuration_profile(
            identifier=identifier,
            organization=config.organization,
            display_name=f"{config.organization} configuration",
            description=f"Settings for this device from {config.organization}",
            encrypted_content=envelope,
            expiration_date=expiration,
            removal_disallowed=config.removal_disallowed or None,
        )
        body = payloads.serialize(profile)

        def commit(store: Store) -> bool | None:
            """True for this identity's first delivery, False for a repeat, None for a repeat sent back to /enroll."""
            # The repeat decision and the delivery record share one transaction, so two requests
            # at once cannot both count as the first delivery.
            with store.transaction():
                first = not store.delivery_count(serial)
                if config.on_repeat == "redirect" and not first:
                    store.record_event(now=now, kind="phase 3", outcome="redirected", user=user, udid=udid, serial=serial)
                    return None
                if digest:
                    store.add_challenge(digest, "scep", udid, now=now, ttl=config.scep_challenge_ttl)
                store.record_device(udid, user, known, now=now)
                store.record_delivery(serial=serial, udid=udid, profile_identifier=identifier, template=template.name, now=now)
                store.record_event(
                    now=now,
                    kind="phase 3",
                    outcome="configuration sent",
                    user=user,
                    udid=udid,
                    serial=serial,
                    reason=f"template {template.name}",
                )
                return first

        first = await self._store.call(commit)
        if first is None:
            raise RepeatRedirect("/enroll")
        if digest:
            self._metrics.challenges_minted.labels(kind="scep").inc()
        if first:
            self._metrics.enrollments_completed.inc()
        log.info(
            "phase 3: sent {template} to {udid}", template=template.name, udid=udid, serial=serial, phase=3, outcome="configuration sent"
        )
        return await self.sign(body)
