"""The enrollment flow: what each phase does with the config, the store, the CA and the CMS code.

Resources call these methods and turn their results or ``Refusal``s into HTTP; this module
knows no HTTP beyond the refusal codes, and does its RSA work on the crypto pool.
"""

from __future__ import annotations

import plistlib
import re
import string
from typing import Any, Mapping

from cryptography import x509
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from otad import cms, payloads, tokens
from otad.ca import Authority
from otad.config import Config
from otad.device_trust import DeviceTrust
from otad.pool import WorkerPool
from otad.store import ChallengeRefused, Store, StoreThread
from otad.web import Refusal

log = Logger()

# Real UDIDs: 40 hex digits (older iOS), 8-16 hex with a dash (newer iOS), UUIDs (Macs).
_UDID = re.compile(r"^[A-Za-z0-9-]{8,64}$")


def _subject_value(value: str) -> str:
    """Escape a device-supplied value so that it can't add name components to the subject."""
    return re.sub(r"([\\/+=])", r"\\\1", value)


def parse_device_attributes(content: bytes) -> dict[str, Any]:
    """The signed device-attributes plist; plistlib refuses XML entity declarations outright."""
    try:
        attributes = plistlib.loads(content)
    except Exception:
        # plistlib raises many types (ExpatError, ValueError, InvalidFileException, ...).
        raise Refusal(400, "the signed content is not a property list") from None
    if not isinstance(attributes, dict):
        raise Refusal(400, "the signed property list is not a dictionary")
    udid = attributes.get("UDID")
    if not isinstance(udid, str) or not _UDID.match(udid):
        raise Refusal(400, "the device attributes lack a valid UDID")
    return attributes


def _challenge_text(value: object) -> str | None:
    """CHALLENGE as the device echoes it: <string>, or <data> if the server sent data."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) and value else None


class Enrollment:
    """Phase 1 (and, as they are built, phases 2 and 3) of Apple's over-the-air enrollment."""

    def __init__(
        self,
        config: Config,
        authority: Authority,
        store: StoreThread,
        crypto: WorkerPool,
        clock: IReactorTime,
        device_trust: DeviceTrust,
    ) -> None:
        self._config = config
        self._authority = authority
        self._device_trust = device_trust
        self._store = store
        self._crypto = crypto
        self._clock = clock

    async def sign(self, profile: bytes) -> bytes:
        """CMS-sign a serialized profile with the profile-signing identity, on the crypto pool."""
        signer = self._authority.signer
        return await self._crypto.run(cms.sign, profile, signer.cert, signer.key, signer.chain, "sha256")

    async def profile_service(self, user: str, base_url: str) -> bytes:
        """Phase 1: mint a one-time challenge for ``user`` and return the signed Profile Service payload."""
        config = self._config
        token, digest = tokens.mint()
        now = self._clock.seconds()

        def remember(store: Store) -> None:
            with store.transaction():
                store.add_challenge(digest, "enroll", user, now=now, ttl=config.challenge_ttl)
                store.record_event(now=now, kind="enroll", outcome="challenge issued", user=user)

        await self._store.call(remember)
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

    async def _refused(self, code: int, reason: str, *, phase: int, udid: str | None = None) -> Refusal:
        """Record a refusal in the event log (its own transaction: nothing else changed) and return it."""
        now = self._clock.seconds()
        await self._store.call(
            lambda store: store.record_event(now=now, kind=f"phase {phase}", outcome="refused", udid=udid, reason=reason)
        )
        log.info("refused phase {phase}: {reason}", phase=phase, udid=udid, outcome="refused", reason=reason)
        return Refusal(code, reason)

    def _issued_by_otad(self, cert: x509.Certificate) -> bool:
        """Whether otad's CA signed ``cert`` (checked by signature, not by comparing names)."""
        try:
            cert.verify_directly_issued_by(self._authority.root.cert)
        except Exception:
            return False
        return True

    async def profile(self, body: bytes, base_url: str) -> bytes:
        """``POST /profile``: a device's signed attributes in, a signed profile out.

        Signed by an Apple device identity it is phase 2, answered with a SCEP enrollment
        payload; signed by an identity otad issued, it is phase 3.
        """
        try:
            signed = await self._crypto.run(cms.verify, body)
        except cms.SignatureInvalid as error:
            raise await self._refused(403, f"the request's signature is invalid: {error}", phase=2)
        except cms.CMSError as error:
            raise await self._refused(400, f"not a CMS signed request: {error}", phase=2)
        if self._issued_by_otad(signed.signer):
            raise await self._refused(501, "phase 3 (a request signed by an otad identity) is not implemented yet", phase=3)
        return await self._phase2(signed, base_url)

    async def _phase2(self, signed: cms.Verified, base_url: str) -> bytes:
        config = self._config
        try:
            warning = self._device_trust.check(signed)
        except cms.CMSError as error:
            raise await self._refused(403, f"the signer is not a trusted device identity: {error}", phase=2)
        try:
            attributes = parse_device_attributes(signed.content)
        except Refusal as refusal:
            raise await self._refused(refusal.code, refusal.reason, phase=2)
        udid: str = attributes["UDID"]
        challenge = _challenge_text(attributes.pop("CHALLENGE", None))
        if challenge is None:
            raise await self._refused(403, "the device attributes carry no challenge", phase=2, udid=udid)
        now = self._clock.seconds()
        if warning is not None:
            await self._store.call(
                lambda store: store.record_event(
                    now=now, kind="phase 2", outcome="warning", udid=udid, reason=f"untrusted device identity accepted: {warning}"
                )
            )
            log.warn("accepted an untrusted device identity for {udid}: {reason}", udid=udid, reason=warning, phase=2)
        token, digest = tokens.mint()

        def commit(store: Store) -> str | None:
            with store.transaction():
                phase1 = store.consume_challenge(tokens.digest(challenge), ("enroll",), now=now)
                store.record_device(udid, phase1.bound_to, attributes, now=now)
                store.add_challenge(digest, "scep", udid, now=now, ttl=config.scep_challenge_ttl)
                store.record_event(now=now, kind="phase 2", outcome="scep payload sent", user=phase1.bound_to, udid=udid)
                return phase1.bound_to

        try:
            user = await self._store.call(commit)
        except ChallengeRefused as error:
            raise await self._refused(403, f"phase-1 challenge refused: {error}", phase=2, udid=udid)
        profile = payloads.configuration_profile(
            identifier=f"{config.identifier}.enrollment",
            organization=config.organization,
            display_name=f"{config.organization} device identity",
            description="Enrolls this device's identity certificate for encrypted profiles",
            content=[
                payloads.scep_payload(
                    url=f"{base_url}/scep",
                    subject=self._scep_subject(attributes, user),
                    challenge=token,
                    keysize=config.keysize,
                    identifier=f"{config.identifier}.enrollment.scep",
                    display_name="Device identity",
                    organization=config.organization,
                    description="Provides the device identity that encrypted profiles are addressed to",
                )
            ],
        )
        log.info("phase 2 done for {udid}", udid=udid, user=user, phase=2, outcome="scep payload sent")
        return await self.sign(payloads.serialize(profile))

    def _scep_subject(self, attributes: Mapping[str, Any], user: str | None) -> list[list[list[str]]]:
        values = {name: _subject_value(str(attributes.get(name) or "")) for name in ("UDID", "SERIAL", "PRODUCT")}
        values["ORGANIZATION"] = _subject_value(self._config.organization)
        values["USERNAME"] = _subject_value(user or "")
        try:
            return payloads.parse_subject(string.Template(self._config.scep_subject).substitute(values))
        except ValueError as error:
            raise Refusal(400, f"cannot build the SCEP subject from the device attributes: {error}") from None
