"""``twistd otad``: command-line options and the service tree (crypto pool, store thread, site endpoints)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import serialization
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    Logger,
    PredicateResult,
    globalLogPublisher,
    jsonFileLogObserver,
)
from twisted.python import usage
from zope.interface import provider

from otad import config as configuration
from otad.ca import Authority, bootstrap
from otad.device_trust import DeviceTrust, load_anchors
from otad.enrollment import Enrollment
from otad.pool import WorkerPool
from otad.resources.ca import RootCertificate
from otad.resources.enroll import enroll_resource
from otad.resources.profile import ProfileRequest
from otad.resources.root import Root
from otad.resources.scep import SCEPResource
from otad.resources.welcome import WelcomePage
from otad.scep_responder import SCEPResponder
from otad.store import Store, StoreThread
from otad.templates import DEFAULT_DIRECTORY, SUFFIXES, Template, load_templates
from otad.users import HtpasswdChecker, create_first_user
from otad.web import OtadSite

log = Logger()


class Options(usage.Options):
    """The stable command line: ``twistd -n otad [--config FILE] [--listen STRPORT]... [--data-dir DIR] ...``."""

    synopsis = (
        "[--config FILE] [--listen STRPORT]... [--data-dir DIR] [--hostname NAME] [--htpasswd FILE] [--device-ca FILE]"
    )
    optParameters = [
        ["config", "c", None, "ini configuration file; etc/otad.conf documents every key"],
        ["data-dir", "d", None, "directory holding certs/ and the SQLite store (default: the current directory)"],
        ["hostname", None, None, "name for the TLS certificate and payload URLs (default: this host's name)"],
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

    def postOptions(self) -> None:
        overrides = {
            "listen": self["listen"],
            "data_dir": self["data-dir"],
            "hostname": self["hostname"],
            "htpasswd": self["htpasswd"],
            "device_ca": self["device-ca"],
        }
        try:
            self["settings"] = configuration.load(self["config"], overrides)
        except configuration.ConfigError as error:
            raise usage.UsageError(str(error)) from None


def complete_endpoint(description: str, authority: Authority) -> str:
    """Give ``ssl:PORT`` (with no key options) otad's generated TLS certificate and chain."""
    kind = description.split(":", 1)[0].lower()
    if kind not in ("ssl", "tls") or "privateKey=" in description or "certKey=" in description:
        return description
    quote = endpoints.quoteStringArgument
    return (
        f"{description}:privateKey={quote(str(authority.tls_key_path))}"
        f":certKey={quote(str(authority.tls_cert_path))}"
        f":extraCertChain={quote(str(authority.root_cert_path))}"
    )


@provider(ILogFilterPredicate)
def _without_first_password(event: LogEvent) -> PredicateResult:
    return PredicateResult.no if "first_password" in event else PredicateResult.maybe


class JSONLogService(Service):
    """Writes every log event as one JSON object per line to ``[server] json_log``, while running."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[str] | None = None
        self._observer: ILogObserver | None = None

    def startService(self) -> None:
        super().startService()
        self._file = open(self._path, "a", encoding="utf-8")
        # The first-start password is shown once on the console, never kept in a log file.
        self._observer = FilteringLogObserver(
            jsonFileLogObserver(self._file, recordSeparator=""),
            [_without_first_password],
        )
        globalLogPublisher.addObserver(self._observer)

    def stopService(self) -> None:
        super().stopService()
        if self._observer is not None:
            globalLogPublisher.removeObserver(self._observer)
        if self._file is not None:
            self._file.close()


# Challenges are kept a day past expiry (so refusals can still say "expired"), then purged.
PURGE_INTERVAL = 3600


def load_profile_templates(directory: Path | None) -> list[Template]:
    """The configured phase-3 templates, or the shipped default when there are none; an invalid one stops the start."""
    if directory is None or (directory.is_dir() and not any(path.suffix in SUFFIXES for path in directory.iterdir())):
        return load_templates(DEFAULT_DIRECTORY)
    return load_templates(directory)


class OtadService(MultiService):
    """Bootstraps certificates and the store on worker threads, then starts listening.

    Key generation happens here rather than in makeService so that it never runs on the
    reactor thread; until it is done nothing listens.
    """

    def __init__(self, settings: configuration.Config, reactor: Any) -> None:
        super().__init__()
        self.settings = settings
        self._reactor = reactor
        self.crypto = WorkerPool(reactor, "otad-crypto", settings.crypto_threads)
        self.crypto.setServiceParent(self)
        self.auth = WorkerPool(reactor, "otad-auth", settings.auth_threads)
        self.auth.setServiceParent(self)
        self.store = StoreThread(reactor, lambda: Store(settings.database))
        self.store.setServiceParent(self)
        if settings.json_log is not None:
            JSONLogService(settings.json_log).setServiceParent(self)
        self.ports: list[IListeningPort] = []
        self.ready: Deferred[None] | None = None

    def startService(self) -> None:
        super().startService()
        self.ready = ensureDeferred(self._start())
        self.ready.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        text = str(failure.value)
        log.critical("otad cannot start: {reason}", reason=text.splitlines()[0] if text else failure.type.__name__)
        if self._reactor.running:
            self._reactor.stop()
        return None

    async def _start(self) -> None:
        settings = self.settings
        lines: list[str] = []
        authority = await self.crypto.run(
            lambda: bootstrap(
                settings.certs_dir,
                hostname=settings.hostname,
                organization=settings.organization,
                common_name=settings.ca_common_name,
                ca_key_size=settings.ca_key_size,
                now=datetime.datetime.now(datetime.UTC),
                report=lines.append,
            )
        )
        for line in lines:
            log.info("certificates: {line}", line=line)
        anchors = await self.crypto.run(load_anchors, settings.device_anchors)
        profile_templates = await self.crypto.run(load_profile_templates, settings.templates)
        await self.store.open()
        TimerService(PURGE_INTERVAL, self._purge).setServiceParent(self)
        first_password = await self.crypto.run(create_first_user, settings.htpasswd)
        site = self.build_site(authority, DeviceTrust(settings.device_policy, anchors), profile_templates)
        urls = []
        for description in settings.listen:
            endpoint = endpoints.serverFromString(self._reactor, complete_endpoint(description, authority))
            port = await endpoint.listen(site)
            self.ports.append(port)
            scheme = "https" if description.split(":", 1)[0].lower() in ("ssl", "tls") else "http"
            urls.append(f"{scheme}://{settings.hostname}:{port.getHost().port}")
        if first_password is not None:
            # Shown once, on the first start only, so that a newcomer can log in at all.
            log.warn(
                "created the users file {path} with user 'apple' and password {first_password}; "
                "enroll at {url}",
                path=str(settings.htpasswd),
                first_password=first_password,
                url=f"{settings.public_url or urls[0]}/enroll",
            )
        for url in urls:
            log.info("otad listening on {url}/", url=url)

    def _purge(self) -> Deferred[object]:
        now = self._reactor.seconds()
        purging = self.store.call(lambda store: store.purge_challenges(now=now))
        purging.addCallback(lambda count: log.info("purged {count} expired challenges", count=count) if count else None)
        # Never let a failure reach TimerService, which would stop purging for good.
        return purging.addErrback(lambda failure: log.failure("purging expired challenges failed", failure=failure))

    def build_site(self, authority: Authority, device_trust: DeviceTrust, profile_templates: list[Template]) -> OtadSite:
        settings = self.settings
        enrollment = Enrollment(settings, authority, self.store, self.crypto, self._reactor, device_trust, profile_templates)
        checker = HtpasswdChecker(settings.htpasswd, self.auth.run)
        root = Root(
            {
                b"": WelcomePage(settings.organization, settings.display_name),
                b"CA": RootCertificate(authority.root.cert.public_bytes(serialization.Encoding.DER)),
                b"enroll": enroll_resource(enrollment, checker, settings.realm, settings.public_url),
                b"profile": ProfileRequest(enrollment, settings.public_url),
                b"scep": SCEPResource(SCEPResponder(settings, authority, self.store, self.crypto, self._reactor)),
            }
        )
        return OtadSite(root, max_body=settings.max_body, reactor=self._reactor)

    async def _stop_listening(self) -> None:
        ports, self.ports = self.ports, []
        for port in ports:
            stopping = port.stopListening()
            if stopping is not None:
                await stopping

    def stopService(self) -> Deferred[None]:
        stopping = ensureDeferred(self._stop_listening())
        stopping.addCallback(lambda _: MultiService.stopService(self))
        return stopping


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    os.umask(0o077)
    return OtadService(options["settings"], reactor)
