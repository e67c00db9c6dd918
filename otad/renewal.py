"""Keeps otad's own certificates valid while it runs: a daily check (and one on SIGHUP) that renews and warns.

The check re-reads ``certs/`` without creating anything, renews the TLS, profile-signing and
RA certificates that need it (``ca.maintain``), re-reads operators' TLS files, and hands the
results to the listeners, so a renewed certificate is served to new connections at once.

With several instances on one PostgreSQL store the check goes through ``otad.ca_sharing`` (the
``refresh`` it is given), and the keeper also polls the stored generation every minute, so a
renewal made by another instance is served here too.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from otad import ca, tls
from otad.certificate_rules import tls_server_problems
from otad.listeners import Listener
from otad.pool import WorkerPool

log = Logger()

CHECK_INTERVAL = 86400
GENERATION_POLL = 60

Report = Callable[[str], None]
Refresh = Callable[[datetime.datetime, Report, Report], Deferred[ca.Authority]]


@dataclass(frozen=True)
class OperatorTLS:
    """An HTTPS listener that serves the operator's certificate files rather than otad's own."""

    listener: Listener
    server: tls.ServerTLS


def load_operator_tls(listener: Listener) -> tuple[tls.ServerKey, list[x509.Certificate]]:
    """The key and chain an ``ssl:...:certKey=...`` listener names (blocking file reads)."""
    files = listener.files
    return tls.load_files(files["certKey"], files.get("privateKey"), files.get("extraCertChain"))


class CertificateKeeper(Service):
    """Runs ``check`` every ``CHECK_INTERVAL`` seconds; a failed check is logged and tried again next time.

    ``refresh`` replaces running ``load`` on the crypto pool (a shared store's synchronisation);
    with ``generation`` the keeper also checks whenever that value changes (polled every
    ``GENERATION_POLL`` seconds).
    """

    def __init__(
        self,
        authority: ca.Authority,
        load: Callable[[datetime.datetime, Callable[[str], None], Callable[[str], None]], ca.Authority],
        own_tls: tls.ServerTLS | None,
        operator_tls: Sequence[OperatorTLS],
        hostname: str,
        crypto: WorkerPool,
        clock: IReactorTime,
        *,
        refresh: Refresh | None = None,
        generation: Callable[[], Deferred[int]] | None = None,
    ) -> None:
        self._authority = authority
        self._refresh: Refresh = refresh or (lambda now, report, warn: crypto.run(load, now, report, warn))
        self._generation = generation
        self._seen: int | None = None
        self._poll = LoopingCall(self._poll_generation)
        self._poll.clock = clock
        self._own_tls = own_tls
        self._operator_tls = tuple(operator_tls)
        self._hostname = hostname
        self._crypto = crypto
        self._clock = clock
        self._loop = LoopingCall(self._scheduled)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(CHECK_INTERVAL, now=False)
        if self._generation is not None:
            self._poll.start(GENERATION_POLL, now=True)

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._loop, self._poll):
            if loop.running:
                loop.stop()

    def _poll_generation(self) -> Deferred[Any]:
        assert self._generation is not None

        def compare(generation: int) -> Deferred[None] | None:
            seen, self._seen = self._seen, generation
            if seen is not None and generation != seen:
                log.info("otad's certificates changed in the store (generation {generation}); taking them", generation=generation)
                return self._scheduled()
            return None

        # A store that cannot answer now is asked again at the next poll; nothing may reach LoopingCall.
        return (
            self._generation()
            .addCallback(compare)
            .addErrback(lambda failure: log.warn("could not look for renewed certificates: {reason}", reason=str(failure.value)))
        )

    def _scheduled(self) -> Deferred[None]:
        # LoopingCall stops for good on a failure, so none may reach it.
        return ensureDeferred(self.check()).addErrback(
            lambda failure: log.error("checking otad's certificates failed: {reason}", reason=str(failure.value))
        )

    async def check(self) -> None:
        """Renew what needs it, log every renewal and warning, and serve the results."""
        now = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)
        renewals: list[str] = []
        warnings: list[str] = []
        fresh = await self._refresh(now, renewals.append, warnings.append)
        self._authority.adopt(fresh)
        if self._own_tls is not None:
            self._own_tls.use(fresh.tls.key, [fresh.tls.cert, *fresh.tls.chain])
        for line in renewals:
            log.info("certificates: {line}", line=line)
        for line in warnings:
            log.warn("certificates: {line}", line=line)
        for operator in self._operator_tls:
            key, chain = await self._crypto.run(load_operator_tls, operator.listener)
            if chain != list(operator.server.chain):
                log.info("serving the new TLS certificate in {path}", path=str(operator.listener.files["certKey"]))
            operator.server.use(key, chain)
            for problem in tls_server_problems(chain[0], self._hostname, now):
                log.warn(
                    "the TLS certificate {path} will be refused by Apple devices: {problem}",
                    path=str(operator.listener.files["certKey"]),
                    problem=problem,
                )
