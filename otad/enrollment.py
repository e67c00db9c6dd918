"""The enrollment flow: what each phase does with the config, the store, the CA and the CMS code.

Resources call these methods and turn their results or ``Refusal``s into HTTP; this module
knows no HTTP beyond the refusal codes, and does its RSA work on the crypto pool.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from otad import cms, payloads, tokens
from otad.ca import Authority
from otad.config import Config
from otad.pool import WorkerPool
from otad.store import Store, StoreThread

log = Logger()


class Enrollment:
    """Phase 1 (and, as they are built, phases 2 and 3) of Apple's over-the-air enrollment."""

    def __init__(
        self, config: Config, authority: Authority, store: StoreThread, crypto: WorkerPool, clock: IReactorTime
    ) -> None:
        self._config = config
        self._authority = authority
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
