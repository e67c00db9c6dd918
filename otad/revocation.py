"""Publishing revocations: otad's CRL, re-signed when a certificate is revoked and before its nextUpdate.

The CRL lives in the store, so every otad on one database serves the same one and a new CRL
gets the next number exactly once (a second instance that signs the same number loses the
insert and takes the stored one). ``/crl`` and SCEP GetCRL serve the cached DER; no request
costs a signature.

That cached CRL may be one check (``[ca] crl_check``, a minute by default) behind a CRL another
instance published, as it is behind a revocation made with otad-admin: a CRL is a dated snapshot
that relying parties keep until its nextUpdate anyway, and OCSP, which reads the store on every
request, is where a revocation shows at once.
"""

from __future__ import annotations

import datetime

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from otad import crl
from otad.ca import Authority
from otad.metrics import REVOCATION_REASONS, Metrics
from otad.pool import WorkerPool
from otad.store import CRLRecord, Revocation, StoreThread

log = Logger()

CRL_VALIDITY = datetime.timedelta(days=7)


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class CRLPublisher(Service):
    """Keeps the store's newest CRL current; ``check`` runs every ``interval`` seconds and after each revocation.

    Each check also counts the revocations that are new since the last one (whoever made them:
    this otad, another one on the database, or ``otad-admin``); the first check only notes them.
    """

    def __init__(
        self,
        authority: Authority,
        store: StoreThread,
        crypto: WorkerPool,
        clock: IReactorTime,
        interval: float = 60,
        *,
        metrics: Metrics,
    ) -> None:
        self._authority = authority
        self._metrics = metrics
        self._seen: set[str] | None = None
        self._store = store
        self._crypto = crypto
        self._clock = clock
        self._current: CRLRecord | None = None
        self._loop = LoopingCall(self._scheduled)
        self._loop.clock = clock
        self._interval = interval

    @property
    def current(self) -> bytes | None:
        """The newest CRL's DER, or None before the first check."""
        return self._current.der if self._current is not None else None

    @property
    def record(self) -> CRLRecord | None:
        return self._current

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _scheduled(self) -> Deferred[None]:
        return ensureDeferred(self.check()).addErrback(
            lambda failure: log.error("publishing the CRL failed: {reason}", reason=str(failure.value))
        )

    async def check(self) -> None:
        """Sign a new CRL when the revocations changed, when there is none, or past half its validity."""
        now = self._clock.seconds()
        latest, revocations = await self._store.call(lambda store: (store.latest_crl(), store.revocations(now=now)))
        self._count(revocations)
        newest = max((revocation.revoked for revocation in revocations), default=None)
        fresh = (
            latest is not None
            and latest.revocations == len(revocations)
            and latest.newest_revocation == newest
            and now < latest.this_update + (latest.next_update - latest.this_update) / 2
        )
        if fresh:
            self._serve(latest)
            return
        number = (latest.number if latest is not None else 0) + 1
        this_update = _utc(now)
        der = await self._crypto.run(
            lambda: crl.build(
                self._authority.root,
                number=number,
                revoked=[(int(r.serial, 16), _utc(r.revoked), r.reason) for r in revocations],
                this_update=this_update,
                next_update=this_update + CRL_VALIDITY,
            )
        )
        record = CRLRecord(number, now, now + CRL_VALIDITY.total_seconds(), len(revocations), newest, der)
        added: bool = await self._store.call(lambda store: store.add_crl(record))
        if added:
            log.info("published CRL {number} with {count} revocations", number=number, count=len(revocations))
            self._serve(record)
        else:
            # Another otad on this database published that number first: serve its CRL.
            self._serve(await self._store.call(lambda store: store.latest_crl()))

    def _serve(self, record: CRLRecord | None) -> None:
        self._current = record
        if record is not None:
            self._metrics.crl_next_update.set(record.next_update)
            self._metrics.crl_entries.set(record.revocations)

    def _count(self, revocations: list[Revocation]) -> None:
        serials = {revocation.serial for revocation in revocations}
        if self._seen is not None:
            for revocation in revocations:
                if revocation.serial not in self._seen:
                    reason = revocation.reason if revocation.reason in REVOCATION_REASONS else "unspecified"
                    self._metrics.certificates_revoked.labels(reason=reason).inc()
        self._seen = serials

    def republish(self) -> Deferred[None]:
        """After a revocation: publish at once rather than at the next check (failures are logged)."""
        return self._scheduled()
