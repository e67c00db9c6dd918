"""``twistd otad``: command-line options and the service tree (crypto pool, store thread, site endpoints)."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    PredicateResult,
    globalLogPublisher,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import provider

from otad import __version__, systemd
from otad import config as configuration
from otad.ca import Authority, Publication, bootstrap
from otad.ca_sharing import synchronise
from otad.device_trust import DeviceTrust, load_anchors
from otad.directory import DirectoryDown, check_start
from otad.files import check_writer, make_directory
from otad.health import Readiness, ReadinessGauge
from otad.jsonlog import JSONLinesObserver
from otad.listeners import Listener
from otad.metrics import MULTIPROCESS_VARIABLE, Metrics, MetricsError, ReactorLag, process_ended
from otad.pool import WorkerPool
from otad.renewal import CertificateKeeper, OperatorTLS, Refresh, TLSFiles, not_after, open_operator_tls, warn_apple_rules
from otad.revocation import CRLPublisher
from otad.site import build_operator_site, build_site
from otad.store import Store, StoreThread, is_postgresql, open_database
from otad.templates import DEFAULT_DIRECTORY, SUFFIXES, Template, load_templates
from otad.tls import ServerTLS, TLSPolicy
from otad.users import FirstPassword, first_user
from otad.web import OtadSite
from otad.workers import STATUS_FD, Supervisor, WorkerSpec, inherited_sockets

log = Logger()


class Options(usage.Options):
    """The stable command line: ``twistd -n otad [--config FILE] [--listen STRPORT]... [--data-dir DIR] ...``."""

    synopsis = "[--config FILE] [--listen STRPORT]... [--data-dir DIR] [--hostname NAME] [--htpasswd FILE] [--device-ca FILE]"
    longdesc = f"otad {__version__}: over-the-air enrollment and profile service for Apple devices."
    optParameters = [
        ["config", "c", None, "ini configuration file; etc/otad.conf documents every key"],
        ["data-dir", "d", None, "directory holding certs/ and the SQLite store (default: the current directory)"],
        ["hostname", None, None, "name (or IP address) for the TLS certificate and payload URLs (default: this host's name)"],
        ["htpasswd", None, None, "users file, Apache htpasswd format with bcrypt entries (default: DATA_DIR/htpasswd)"],
        ["device-ca", None, None, "PEM file of anchors for device identities, replacing Apple's (tests, private labs)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """A strports endpoint to serve on; repeatable (default ssl:8443; tcp:PORT serves plain HTTP)."""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_version(self) -> NoReturn:
        """Print otad's version and exit."""
        print(f"otad {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        overrides = {
            "listen": tuple(self["listen"]),
            "data_dir": self["data-dir"],
            "hostname": self["hostname"],
            "htpasswd": self["htpasswd"],
            "device_ca": self["device-ca"],
        }
        # Worker processes ([server] workers) load the same file with the same overrides.
        self["overrides"] = overrides
        try:
            self["settings"] = configuration.load(self["config"], overrides)
        except configuration.ConfigError as error:
            # A configuration error is not a usage error: one line, no usage text, exit status 1.
            print(f"otad cannot start: {error}", file=sys.stderr)
            raise SystemExit(1) from None


@provider(ILogFilterPredicate)
def _without_first_password(event: LogEvent) -> PredicateResult:
    return PredicateResult.no if "first_password" in event else PredicateResult.maybe


class JSONLogService(Service):
    """Writes every log event as one JSON object per line to ``[server] json_log`` (see otad.jsonlog), while running."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[str] | None = None
        self._observer: ILogObserver | None = None

    def startService(self) -> None:
        super().startService()
        self._file = open(self._path, "a", encoding="utf-8")
        # The first-start password is shown once on the console, never kept in a log file (and
        # the allow-list of fields would keep it out of the line's fields anyway).
        self._observer = FilteringLogObserver(JSONLinesObserver(self._file), [_without_first_password])
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
        if self._file is not None:
            self._file.close()


# Challenges are kept a day past expiry (so refusals can still say "expired"), then purged.
PURGE_INTERVAL = 3600


def purge(store: StoreThread, metrics: Metrics, *, since: float, now: float, window: float) -> Deferred[None]:
    """The hourly clean-up: count the challenges that expired unused since the last one, then forget old
    challenges and login failures."""

    def clean(db: Store) -> tuple[dict[str, int], int]:
        # Counted here, when they expire: a challenge is purged only a day after that.
        expired = db.expired_unused(since=since, until=now)
        db.purge_login_failures(now=now, window=window)
        return expired, db.purge_challenges(now=now)

    def cleaned(result: tuple[dict[str, int], int]) -> None:
        expired, count = result
        for kind, unused in expired.items():
            metrics.challenges_expired.labels(kind=kind).inc(unused)
        if count:
            log.info("purged {count} expired challenges", count=count)

    return store.call(clean).addCallback(cleaned)


def load_profile_templates(directory: Path | None) -> list[Template]:
    """The configured phase-3 templates, or the shipped default when there are none; an invalid one stops the start."""
    if directory is None or (directory.is_dir() and not any(path.suffix in SUFFIXES for path in directory.iterdir())):
        return load_templates(DEFAULT_DIRECTORY)
    return load_templates(directory)


class StartError(RuntimeError):
    """The daemon cannot start; str() is the one line that says why."""


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory, or refuse one this process could not keep writable for its owner."""
    try:
        make_directory(data_dir)
    except OSError as error:
        raise StartError(f"cannot create the data directory {data_dir}: {error.strerror or error}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise StartError(f"cannot write the data directory {data_dir}: permission denied")
    check_writer(data_dir)


def _exit_failed() -> None:
    """End the process with status 1 once the reactor has stopped: twistd itself would exit 0."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


AuthorityLoader = Callable[[datetime.datetime, Callable[[str], None], Callable[[str], None]], Authority]


class OtadService(MultiService):
    """Bootstraps certificates and the store on worker threads, then starts listening.

    Key generation happens here rather than in makeService so that it never runs on the
    reactor thread; until it is done nothing listens. A start that fails stops the reactor
    and ends the process with exit status 1, after one line naming the cause.
    """

    def __init__(
        self,
        settings: configuration.Config,
        reactor: Any,
        *,
        source: tuple[str | None, dict[str, Any]] = (None, {}),
        worker: WorkerSpec | None = None,
    ) -> None:
        """``source`` is the configuration file and overrides, for worker processes; ``worker`` makes this service one."""
        super().__init__()
        self.settings = settings
        self._reactor = reactor
        self._source = source
        self._worker = worker
        self.supervisor: Supervisor | None = None
        self.site: OtadSite | None = None
        self.metrics = metrics = Metrics()
        self.crypto = WorkerPool(reactor, "otad-crypto", settings.crypto_threads, metrics=metrics)
        self.crypto.setServiceParent(self)
        self.auth = WorkerPool(reactor, "otad-auth", settings.auth_threads, queue=settings.auth_queue, metrics=metrics)
        self.auth.setServiceParent(self)
        location, connections = settings.store_location, settings.store_connections
        # Several instances on one PostgreSQL database share its CA too (otad.ca_sharing).
        self.shared = is_postgresql(location)
        threads = connections if self.shared else 1
        self.store = StoreThread(reactor, lambda: open_database(location, connections=connections), threads, metrics=metrics)
        self.store.setServiceParent(self)
        self.readiness = Readiness(self.store, reactor)
        self.ready_gauge = ReadinessGauge(self.readiness, metrics, reactor)
        self.ready_gauge.setServiceParent(self)
        # Scrapes render off the reactor thread, and never wait behind enrollment work.
        self.render = WorkerPool(reactor, "otad-metrics", 1)
        self.render.setServiceParent(self)
        ReactorLag(metrics, reactor).setServiceParent(self)
        if settings.json_log is not None:
            JSONLogService(settings.json_log).setServiceParent(self)
        self.ports: list[IListeningPort] = []
        self.operator_ports: list[IListeningPort] = []
        self._last_purge = 0.0
        self.authority: Authority | None = None
        self.keeper: CertificateKeeper | None = None
        self.ready: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.ready = ensureDeferred(self._start())
        self.ready.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        text = str(failure.value).strip()
        line = f"otad cannot start: {text.splitlines()[0] if text else failure.type.__name__}"
        log.critical("{line}", line=line)
        print(line, file=sys.__stderr__, flush=True)
        systemd.notify(f"STATUS={line}")
        self._reactor.addSystemEventTrigger("after", "shutdown", _exit_failed)
        if self._reactor.running:
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._reactor.stop)

    @property
    def _supervising(self) -> bool:
        return self._worker is None and self.settings.workers > 1

    def _authority_loader(self, create: bool, renew: bool = True) -> AuthorityLoader:
        settings = self.settings

        def load(now: datetime.datetime, report: Callable[[str], None], warn: Callable[[str], None]) -> Authority:
            # Certificates made now name where relying parties check them, once that is known.
            publication = (
                self.authority.publication
                if self.authority is not None
                else Publication(settings.publish_url or settings.public_url or None)
            )
            return bootstrap(
                settings.certs_dir,
                hostname=settings.hostname,
                organization=settings.organization,
                common_name=settings.ca_common_name,
                ca_key_size=settings.ca_key_size,
                now=now,
                report=report,
                warn=warn,
                create=create,
                publication=publication,
                tls_key_type=settings.tls_key_type,
                renew=renew,
            )

        return load

    @property
    def _keeps_shared_ca(self) -> bool:
        """On a PostgreSQL store, this process (not a worker: its supervisor does) keeps certs/ in step with the database's copy."""
        return self.shared and self._worker is None

    def _refresher(self, create: bool, renew: bool = True) -> Refresh:
        """How certs/ is loaded (and created or renewed): on the crypto pool, or, on a shared PostgreSQL store,
        through the database's copy under its CA lock (otad.ca_sharing), on a store thread."""
        load = self._authority_loader(create, renew)
        if not self._keeps_shared_ca:
            return lambda now, report, warn: self.crypto.run(load, now, report, warn)
        certs_dir = self.settings.certs_dir

        def refresh(now: datetime.datetime, report: Callable[[str], None], warn: Callable[[str], None]) -> Deferred[Authority]:
            def shared(store: Store) -> Authority:
                authority, _, lines = synchronise(store, certs_dir, lambda: load(now, report, warn), now=now.timestamp())
                for line in lines:
                    report(line)
                return authority

            return self.store.call(shared)

        return refresh

    async def _start(self) -> None:
        settings = self.settings
        worker = self._worker
        if worker is None:
            log.info("otad {version} starting in {data_dir}", version=__version__, data_dir=str(settings.data_dir))
        # First, so that /healthz answers and /readyz says "starting" while the keys are made.
        await self._listen_operator()
        if worker is None:
            await self.crypto.run(prepare_data_dir, settings.data_dir)
        if settings.auth_backend == "ldap":
            try:
                await self.crypto.run(check_start, settings)
            except DirectoryDown as down:
                raise StartError(f"[ldap]: {down.why}") from None
        now = datetime.datetime.fromtimestamp(self._reactor.seconds(), datetime.UTC)
        created: list[str] = []
        warnings: list[str] = []
        if self._keeps_shared_ca:
            # The CA comes from the database: open it first.
            await self.store.open()
        # Workers only read certs/: their supervisor creates and renews.
        authority = await self._refresher(create=worker is None, renew=worker is None)(now, created.append, warnings.append)
        for line in created:
            log.info("certificates: {line}", line=line)
        for line in warnings:
            log.warn("certificates: {line}", line=line)
        if not self._keeps_shared_ca:
            await self.store.open()
        self.authority = authority
        self.metrics.own_certificates(not_after(authority))
        crls = CRLPublisher(authority, self.store, self.crypto, self._reactor, interval=settings.crl_check, metrics=self.metrics)
        await crls.check()
        if self._supervising:
            urls, own_tls, operators = await self._supervise()
        else:
            crls.setServiceParent(self)
            anchors = await self.crypto.run(load_anchors, settings.device_anchors)
            profile_templates = await self.crypto.run(load_profile_templates, settings.templates)
            self.site = build_site(
                settings,
                authority,
                self.store,
                self.crypto,
                self.auth.run,
                self._reactor,
                DeviceTrust(settings.device_policy, anchors),
                profile_templates,
                crls,
                metrics=self.metrics,
            )
            urls, own_tls, operators = await self._listen(self.site, authority, now)
        if authority.publication.base is None:
            authority.publication = Publication(urls[0])
        keeper = CertificateKeeper(
            authority,
            self._authority_loader(create=False, renew=worker is None),
            own_tls,
            operators,
            settings.hostname,
            self.crypto,
            self._reactor,
            after=self._pass_on_reload if self._supervising else None,
            refresh=self._refresher(create=False, renew=worker is None),
            generation=(lambda: self.store.call(lambda store: store.ca_generation())) if self._keeps_shared_ca else None,
            metrics=self.metrics,
        )
        self.keeper = keeper
        signal.signal(signal.SIGHUP, lambda number, frame: self._reactor.callFromThread(self.reload))
        if worker is not None:
            # A worker re-reads certs/ on SIGHUP only; its supervisor runs the daily check.
            self.readiness.ready()
            self.ready_gauge.check()
            os.write(STATUS_FD, b"ready\n")
            return
        keeper.setServiceParent(self)
        self._last_purge = self._reactor.seconds()
        TimerService(PURGE_INTERVAL, self._purge).setServiceParent(self)
        if settings.auth_backend == "ldap":
            # Users live in the directory: no users file, no first user.
            log.info("users: logins at /enroll are checked by the directory {url}", url=settings.ldap_url)
        else:
            # Only now, with every port bound: a start that failed earlier leaves no users file behind.
            first = await self.auth.run(first_user, settings.htpasswd, settings.first_password_file, settings.bcrypt_rounds)
            self._announce_first_password(first, urls)
        for url in urls:
            log.info("otad listening on {url}/", url=url)
        self.readiness.ready()
        self.ready_gauge.check()
        systemd.notify("READY=1\nSTATUS=listening on " + " ".join(urls))

    async def _supervise(self) -> tuple[list[str], None, list[OperatorTLS]]:
        """Bind every listener here, then start the workers that serve them; fires once all of them serve."""
        settings = self.settings
        urls = []
        for listener in settings.listeners:
            port = await self._bind(listener, _placeholder())
            urls.append(self._url(listener, port))
        sockets = inherited_sockets(self.ports)
        metrics_sockets = inherited_sockets(self.operator_ports)
        environment: dict[str, str] = {}
        metrics_directory: Path | None = None
        if metrics_sockets:
            # The workers keep their metrics in files here, and whichever answers a scrape reads them all.
            metrics_directory = settings.data_dir / "metrics"
            await self.crypto.run(fresh_directory, metrics_directory)
            environment[MULTIPROCESS_VARIABLE] = str(metrics_directory)
        config, overrides = self._source
        self.supervisor = Supervisor(
            self._reactor,
            settings.workers,
            lambda index: WorkerSpec(index, config, overrides, sockets, metrics_sockets),
            settings.drain_timeout,
            environment=environment,
            on_end=(lambda pid: process_ended(pid, metrics_directory)) if metrics_directory is not None else None,
        )
        await self.supervisor.start()
        log.info("{count} workers serving", count=settings.workers)
        # The workers serve the operator's files; the supervisor watches them and tells the workers when they change.
        now = datetime.datetime.fromtimestamp(self._reactor.seconds(), datetime.UTC)
        return urls, None, await self._open_operator_tls(now)

    def _pass_on_reload(self) -> None:
        if self.supervisor is not None:
            self.supervisor.signal("HUP")

    async def _bind(self, listener: Listener, factory: Any) -> IListeningPort:
        try:
            port = await listener.endpoint(self._reactor).listen(factory)
        except CannotListenError as error:
            cause = error.socketError
            raise StartError(f"cannot listen on {listener.description}: {getattr(cause, 'strerror', None) or cause}") from None
        self.ports.append(port)
        return port

    def _url(self, listener: Listener, port: IListeningPort) -> str:
        port_number = getattr(port.getHost(), "port", None)
        return f"{listener.scheme}://{self.settings.hostname}:{port_number}" if port_number is not None else listener.description

    def _operator_files(self, listener: Listener) -> TLSFiles | None:
        """The operator's certificate files an ``ssl:`` listener serves: its own certKey=, else ``[tls] certificate``."""
        settings = self.settings
        if not listener.tls:
            return None
        if listener.files:
            return TLSFiles.of_listener(listener)
        if settings.tls_certificate is not None:
            return TLSFiles(settings.tls_certificate, settings.tls_key, settings.tls_chain)
        return None

    async def _open_operator_tls(self, now: datetime.datetime) -> list[OperatorTLS]:
        """Each distinct set of operator's files, read once (a start fails on files that won't do)."""
        settings = self.settings
        policy = TLSPolicy(settings.tls_ciphers, settings.tls_min_version)
        operators: list[OperatorTLS] = []
        for listener in settings.listeners:
            files = self._operator_files(listener)
            if files is not None and all(known.files != files for known in operators):
                operator = await self.crypto.run(open_operator_tls, files, policy)
                operators.append(operator)
                if self._worker is None:
                    warn_apple_rules(operator.server.chain, settings.hostname, now, files.certificate)
        return operators

    async def _listen_operator(self) -> None:
        """Bind ``[metrics] listen``: /metrics, /healthz and /readyz for the operator, never for devices."""
        listeners = self.settings.metrics_listeners
        if not listeners:
            return
        site = build_operator_site(self.metrics, self.readiness, self.render.run, self._reactor)
        for index, listener in enumerate(listeners):
            if self._worker is not None:
                # The supervisor bound it; any worker answers, with every worker's metrics.
                inherited = self._worker.metrics_sockets[index]
                self.operator_ports.append(self._reactor.adoptStreamPort(inherited.fd, inherited.family, site))
                os.close(inherited.fd)
                continue
            try:
                port = await listener.endpoint(self._reactor).listen(site if not self._supervising else _placeholder())
            except CannotListenError as error:
                cause = error.socketError
                raise StartError(f"cannot listen on {listener.description}: {getattr(cause, 'strerror', None) or cause}") from None
            self.operator_ports.append(port)
            address = port.getHost()
            host, number = getattr(address, "host", None), getattr(address, "port", None)
            where = f"http://{'[' + host + ']' if host and ':' in host else host}:{number}" if number is not None else listener.description
            if host in ("0.0.0.0", "::"):
                log.warn(
                    "the metrics listener {description} accepts connections on every interface: add interface=127.0.0.1 "
                    "unless devices cannot reach this port",
                    description=listener.description,
                )
            log.info("otad metrics and health checks on {where} (/metrics, /healthz, /readyz)", where=where)

    async def _listen(
        self, site: OtadSite, authority: Authority, now: datetime.datetime
    ) -> tuple[list[str], ServerTLS | None, list[OperatorTLS]]:
        """Bind every configured listener; HTTPS ones serve otad's TLS certificate or the operator's files."""
        settings = self.settings
        own_tls: ServerTLS | None = None
        policy = TLSPolicy(settings.tls_ciphers, settings.tls_min_version)
        operators = await self._open_operator_tls(now)
        urls = []
        for index, listener in enumerate(settings.listeners):
            factory: Any = site
            files = self._operator_files(listener)
            if files is not None:
                operator = next(known for known in operators if known.files == files)
                factory = operator.server.wrap(site)
            elif listener.tls:
                if own_tls is None:
                    own_tls = ServerTLS(authority.tls.key, [authority.tls.cert, *authority.tls.chain], policy)
                factory = own_tls.wrap(site)
            if self._worker is None:
                port = await self._bind(listener, factory)
            else:
                # The supervisor's socket, at the same number here; the port keeps its own duplicate.
                inherited = self._worker.sockets[index]
                port = self._reactor.adoptStreamPort(inherited.fd, inherited.family, factory)
                os.close(inherited.fd)
                self.ports.append(port)
            urls.append(self._url(listener, port))
        return urls, own_tls, operators

    def reload(self) -> Deferred[None]:
        """SIGHUP (``systemctl reload otad``): re-read certs/ and operators' TLS files, renewing what needs it."""
        keeper = self.keeper
        if keeper is None:
            return succeed(None)
        log.info("reloading certificates")
        systemd.notify("RELOADING=1")
        checking = ensureDeferred(keeper.check())
        checking.addErrback(lambda failure: log.error("reloading certificates failed: {reason}", reason=str(failure.value)))
        checking.addBoth(lambda _: None)
        checking.addCallback(lambda _: systemd.notify("READY=1") and None)
        return checking

    def _announce_first_password(self, first: FirstPassword | None, urls: list[str]) -> None:
        if first is None:
            return
        settings = self.settings
        https = [url for url in urls if url.startswith("https:")]
        if settings.public_url:
            enroll = f"{settings.public_url}/enroll"
        elif https or settings.allow_plain_http_login:
            enroll = f"{(https or urls)[0]}/enroll"
        elif settings.trusted_proxies:
            enroll = "/enroll at the https:// address of the TLS proxy in front of otad (trusted_proxies)"
        else:
            enroll = "an https:// URL (no ssl: listener here, and /enroll refuses passwords over plain HTTP)"
        # Under systemd (JOURNAL_STREAM) "auto" keeps the password out of the journal: the file has it.
        shown = settings.first_password == "log" or (settings.first_password == "auto" and "JOURNAL_STREAM" not in os.environ)
        opening = "created the users file {path} with" if first.created else "the users file {path} still has"
        if shown:
            # The JSON log leaves this event out (its first_password field): it reaches the console only.
            log.warn(
                opening + " user 'apple' and password {first_password}; enroll at {url} (until it is used, the password is also in {keep})",
                path=str(settings.htpasswd),
                first_password=first.password,
                url=enroll,
                keep=str(settings.first_password_file),
            )
        else:
            log.warn(
                opening + " user 'apple'; its password is in {keep} (readable by otad's user only) "
                "until it is used or changed; enroll at {url}",
                path=str(settings.htpasswd),
                keep=str(settings.first_password_file),
                url=enroll,
            )

    def _purge(self) -> Deferred[object]:
        now = self._reactor.seconds()
        since, self._last_purge = self._last_purge, now
        purging = purge(self.store, self.metrics, since=since, now=now, window=self.settings.failure_window)
        # Never let a failure reach TimerService, which would stop purging for good.
        return purging.addErrback(lambda failure: log.failure("purging expired challenges failed", failure=failure))

    async def _stop_listening(self) -> None:
        ports, self.ports = self.ports, []
        for port in ports:
            stopping = port.stopListening()
            if stopping is not None:
                await stopping

    async def _drain(self) -> None:
        """Stop accepting, then let what is under way finish: this process's requests, or its workers."""
        await self._stop_listening()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.site is not None:
            cut = await self.site.open_channels.drain(self._reactor, self.settings.drain_timeout)
            if cut:
                log.warn("cut off {count} connections still open after {timeout} s", count=cut, timeout=self.settings.drain_timeout)

    def stopService(self) -> Deferred[None]:
        if self._worker is None:
            systemd.notify("STOPPING=1")
        self.readiness.stopping()
        self.metrics.ready.set(0)
        stopping = ensureDeferred(self._drain())
        stopping.addCallback(lambda _: ensureDeferred(self._stop_operator()))
        stopping.addCallback(lambda _: MultiService.stopService(self))
        return stopping

    async def _stop_operator(self) -> None:
        """After the device listeners: until they are closed, /readyz answers "stopping" rather than
        refusing the connection; before the pools stop, which /metrics needs."""
        ports, self.operator_ports = self.operator_ports, []
        for port in ports:
            stopping = port.stopListening()
            if stopping is not None:
                await stopping


def _placeholder() -> ServerFactory:
    """For a socket the supervisor binds and its workers serve: it accepts nothing, and is quiet in the log."""
    factory = ServerFactory()
    factory.noisy = False
    return factory


def fresh_directory(path: Path) -> None:
    """An empty directory at ``path`` (blocking): Prometheus's multiprocess files must not outlive a run."""
    if path.exists():
        shutil.rmtree(path)
    make_directory(path)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    os.umask(0o077)
    try:
        return OtadService(options["settings"], reactor, source=(options["config"], options["overrides"]))
    except MetricsError as error:
        print(f"otad cannot start: {error}", file=sys.stderr)
        raise SystemExit(1) from None
