"""Keeps otad's own certificates valid while it runs: a daily check (and one on SIGHUP) that renews and warns.

The check re-reads ``certs/`` without creating anything, renews the TLS, profile-signing and
RA certificates that need it (``ca.maintain``), re-reads operators' TLS files, and hands the
results to the listeners, so a renewed certificate is served to new connections at once.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from otad import ca, tls
from otad.certificate_rules import tls_server_problems
from otad.listeners import Listener
from otad.metrics import ROLES, Metrics
from otad.pool import WorkerPool

log = Logger()

CHECK_INTERVAL = 86400


@dataclass(frozen=True)
class OperatorTLS:
    """An HTTPS listener that serves the operator's certificate files rather than otad's own."""

    listener: Listener
    server: tls.ServerTLS


def load_operator_tls(listener: Listener) -> tuple[tls.ServerKey, list[x509.Certificate]]:
    """The key and chain an ``ssl:...:certKey=...`` listener names (blocking file reads)."""
    files = listener.files
    return tls.load_files(files["certKey"], files.get("privateKey"), files.get("extraCertChain"))


def not_after(authority: ca.Authority) -> dict[str, float]:
    """When each of otad's own certificates expires (Unix time), by role: the root and every leaf."""
    certificates = {role: (authority.root if role == "root" else authority.leaf(role)).cert for role in ROLES}
    return {role: cert.not_valid_after_utc.timestamp() for role, cert in certificates.items()}


class CertificateKeeper(Service):
    """Runs ``check`` every ``CHECK_INTERVAL`` seconds; a failed check is logged and tried again next time."""

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
        metrics: Metrics,
    ) -> None:
        self._metrics = metrics
        self._authority = authority
        self._load = load
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

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

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
        fresh = await self._crypto.run(self._load, now, renewals.append, warnings.append)
        self._authority.adopt(fresh)
        self._metrics.own_certificates(not_after(fresh))
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
