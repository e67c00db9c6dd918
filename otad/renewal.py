"""Keeps otad's certificates valid and current while it runs: a daily check (and one on SIGHUP) that renews
and warns, and a watch on operators' TLS files that serves a replaced certificate within seconds.

The check re-reads ``certs/`` without creating anything, renews the TLS, profile-signing and
RA certificates that need it (``ca.maintain``), re-reads operators' TLS files, and hands the
results to the listeners, so a renewed certificate is served to new connections at once. The
watch stats the operators' files every few seconds (on the crypto pool, off the reactor) and
reads them again when they change, as certbot's renewal does by pointing the symlinks in
``live/`` at new files in ``archive/``; a pair that does not fit together (a key for another
certificate, a file half written) is refused with a warning and the old pair stays in service.

With several instances on one PostgreSQL store the check goes through ``otad.ca_sharing`` (the
``refresh`` it is given), and the keeper also polls the stored generation every minute, so a
renewal made by another instance is served here too.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from otad.metrics import ROLES, Metrics
from otad.pool import WorkerPool

log = Logger()

CHECK_INTERVAL = 86400
# How often operators' TLS files are looked at (a few stat calls each time).
WATCH_INTERVAL = 5.0
# How often a shared store's generation of otad's certificates is looked at.
GENERATION_POLL = 60

Report = Callable[[str], None]
Refresh = Callable[[datetime.datetime, Report, Report], Deferred[ca.Authority]]


@dataclass(frozen=True)
class TLSFiles:
    """An operator's certificate files: ``[tls] certificate``/``key``/``chain``, or a listener's ``certKey=`` and friends."""

    certificate: Path
    key: Path | None = None
    chain: Path | None = None

    @classmethod
    def of_listener(cls, listener: Listener) -> TLSFiles:
        files = listener.files
        return cls(files["certKey"], files.get("privateKey"), files.get("extraCertChain"))

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(path for path in (self.certificate, self.key, self.chain) if path is not None)


FilesState = tuple[tuple[object, ...], ...]


def files_state(files: TLSFiles) -> FilesState:
    """What the files are now (where their symlinks lead, inode, size, times): a change means a reload (blocking)."""
    state: list[tuple[object, ...]] = []
    for path in files.paths:
        try:
            found = os.stat(path)
        except OSError as error:
            state.append((str(path), "unreadable", error.errno))
            continue
        state.append((os.path.realpath(path), found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns))
    return tuple(state)


def load_operator_tls(files: TLSFiles) -> tuple[tls.ServerKey, list[x509.Certificate]]:
    """The key and chain of an operator's files (blocking file reads); TLSFilesError names a file that won't do."""
    return tls.load_files(files.certificate, files.key, files.chain)


@dataclass(eq=False)
class OperatorTLS:
    """HTTPS listeners that serve the operator's certificate files rather than otad's own, and what the files were when read."""

    files: TLSFiles
    server: tls.ServerTLS
    state: FilesState = field(default=())


def open_operator_tls(files: TLSFiles, policy: tls.TLSPolicy) -> OperatorTLS:
    """Read an operator's files for the first time (blocking); TLSFilesError stops the start."""
    state = files_state(files)
    return OperatorTLS(files, tls.ServerTLS(*load_operator_tls(files), policy), state)


def warn_apple_rules(chain: Sequence[x509.Certificate], hostname: str, now: datetime.datetime, path: Path) -> None:
    """A warning for each of Apple's rules that the operator's certificate breaks: devices refuse it without saying why."""
    for problem in tls_server_problems(chain[0], hostname, now):
        log.warn("the TLS certificate {path} will be refused by Apple devices: {problem}", path=str(path), problem=problem)


def not_after(authority: ca.Authority) -> dict[str, float]:
    """When each of otad's own certificates expires (Unix time), by role: the root and every leaf."""
    certificates = {role: (authority.root if role == "root" else authority.leaf(role)).cert for role in ROLES}
    return {role: cert.not_valid_after_utc.timestamp() for role, cert in certificates.items()}


class CertificateKeeper(Service):
    """Runs ``check`` every ``CHECK_INTERVAL`` seconds and ``watch`` every ``watch_interval``; a failed round is
    logged and tried again next time.

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
        watch_interval: float = WATCH_INTERVAL,
        after: Callable[[], None] | None = None,
        *,
        refresh: Refresh | None = None,
        generation: Callable[[], Deferred[int]] | None = None,
        metrics: Metrics,
    ) -> None:
        """``after`` runs after every check that succeeded (a supervisor tells its workers to re-read certs/)."""
        self._metrics = metrics
        self._authority = authority
        self._after = after
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
        self._watch_interval = watch_interval
        self._watch = LoopingCall(self._watched)
        self._watch.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(CHECK_INTERVAL, now=False)
        if self._operator_tls:
            self._watch.start(self._watch_interval, now=False)
        if self._generation is not None:
            self._poll.start(GENERATION_POLL, now=True)

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._loop, self._watch, self._poll):
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

    def _watched(self) -> Deferred[None]:
        return ensureDeferred(self.watch()).addErrback(
            lambda failure: log.error("watching the TLS certificate files failed: {reason}", reason=str(failure.value))
        )

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.UTC)

    async def check(self) -> None:
        """Renew what needs it, log every renewal and warning, and serve the results."""
        now = self._now()
        renewals: list[str] = []
        warnings: list[str] = []
        fresh = await self._refresh(now, renewals.append, warnings.append)
        self._authority.adopt(fresh)
        self._metrics.own_certificates(not_after(fresh))
        if self._own_tls is not None:
            self._own_tls.use(fresh.tls.key, [fresh.tls.cert, *fresh.tls.chain])
        for line in renewals:
            log.info("certificates: {line}", line=line)
        for line in warnings:
            log.warn("certificates: {line}", line=line)
        for operator in self._operator_tls:
            await self._reread(operator, now, daily=True)
        if self._after is not None:
            self._after()

    async def watch(self) -> None:
        """Read again each operator's files that changed on disk since they were last read; when one was new, ``after``
        runs (a supervisor's workers then read it too)."""
        renewed = False
        for operator in self._operator_tls:
            state = await self._crypto.run(files_state, operator.files)
            if state != operator.state:
                renewed = await self._reread(operator, self._now(), daily=False) or renewed
        if renewed and self._after is not None:
            self._after()

    async def _reread(self, operator: OperatorTLS, now: datetime.datetime, *, daily: bool) -> bool:
        """Read the operator's files again and serve them if they changed and fit together; whether they were new."""
        path = operator.files.certificate
        # The state before the read: files that change while being read are simply read again next time.
        state = await self._crypto.run(files_state, operator.files)
        try:
            key, chain = await self._crypto.run(load_operator_tls, operator.files)
        except tls.TLSFilesError as error:
            if state != operator.state or daily:
                log.warn(
                    "not using the changed TLS files ({reason}); still serving the certificate read before, until they fit",
                    reason=str(error),
                    path=str(path),
                )
            operator.state = state
            return False
        operator.state = state
        changed = chain != list(operator.server.chain)
        if changed:
            log.info(
                "serving the new TLS certificate in {path} (expires {expires})",
                path=str(path),
                expires=chain[0].not_valid_after_utc.strftime("%Y-%m-%d"),
            )
            operator.server.use(key, chain)
        if changed or daily:
            warn_apple_rules(chain, self._hostname, now, path)
        return changed
