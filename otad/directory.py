"""Directory users (``[auth] backend = ldap``): a twisted.cred checker that binds to an LDAP server with ldaptor.

Each login is one short connection: connect (``ldaps://``, or ``ldap://`` and StartTLS, the
server's certificate checked against ``ca_file`` and its host name), then either bind as the
DN template with the user's name put in (escaped per RFC 4514), or bind as the service account,
search for exactly one entry (the name escaped per RFC 4515 in the filter) and bind as that
entry. The optional group is a group entry whose ``member`` (or ``uniqueMember``) lists the
user's DN. A wrong password, an unknown user and a user outside the group are all
UnauthorizedLogin, so LoginGuard counts and records them as it does for the users file; a
directory that cannot answer is Unavailable (503), and since nothing is kept between logins,
the next login after the directory returns simply works.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from ldaptor import ldapfilter
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import distinguishedname, ldaperrors
from ldaptor.protocols.ldap.ldapclient import LDAPClient, LDAPClientConnectionLostException
from ldaptor.protocols.ldap.ldapsyntax import LDAPEntry
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import error as network
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, TimeoutError, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust, trustRootFromCertificates
from twisted.logger import Logger
from zope.interface import implementer

from otad.config import Config
from otad.errors import Unavailable, printable
from otad.logins import NotPermitted
from otad.pool import PoolFull
from otad.users import credential_bytes

log = Logger()
T = TypeVar("T")

# Longer names are refused before anything reaches the directory.
MAX_NAME = 255


class DirectoryDown(Unavailable):
    """The directory cannot check passwords now (down, too slow, or its TLS certificate is not trusted)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the user directory is unavailable ({why}); try again later", retry_after=5)
        self.why = why


@dataclass(frozen=True)
class _Files:
    """What the checker reads from files: the TLS options (from ``ca_file``) and the service account's password."""

    stamp: tuple[tuple[int, int, int] | None, ...]
    tls: Any
    service_password: bytes | None


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    status = os.stat(path)
    return (status.st_ino, status.st_mtime_ns, status.st_size)


def _certificates(path: Path) -> list[Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        raise DirectoryDown(f"{path} holds no PEM certificate") from None
    return [Certificate.loadPEM(certificate.public_bytes(serialization.Encoding.PEM)) for certificate in certificates]


def _password(path: Path) -> bytes:
    lines = path.read_bytes().splitlines()
    if not lines or not lines[0]:
        raise DirectoryDown(f"{path} is empty")
    return lines[0]


def _tls_failure(reason: BaseException) -> str | None:
    """A short reason when the TLS handshake with the directory failed, else None."""
    if isinstance(reason, VerificationError):
        return "its TLS certificate does not name this host"
    if isinstance(reason, SSL.Error):
        details = reason.args[0] if reason.args else None
        if isinstance(details, list) and details and isinstance(details[-1], tuple) and len(details[-1]) == 3:
            return f"TLS handshake failed: {details[-1][2]}"
        return "TLS handshake failed"
    return None


@implementer(ICredentialsChecker)
class DirectoryChecker:
    """Checks HTTP Basic credentials by binding to the LDAP directory; async all the way (ldaptor), so no thread waits.

    ``run`` puts the few file reads (``ca_file``, ``service_password_file``) on a worker pool;
    ``reactor`` connects and keeps the time limits. At most ``[ldap] connections`` checks talk
    to the directory at once; ``queue`` more may wait, and past that the answer is 503 at once.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, settings: Config, run: Callable[..., Deferred[Any]], reactor: Any, queue: int) -> None:
        self._settings = settings
        self._run = run
        self._reactor = reactor
        self._queue = queue
        self._slots = DeferredSemaphore(settings.ldap_connections)
        url = urlsplit(settings.ldap_url)
        self._host = url.hostname or ""
        self._ldaps = url.scheme == "ldaps"
        self._port = url.port or (636 if self._ldaps else 389)
        self._tls = self._ldaps or settings.ldap_starttls
        self._files: _Files | None = None

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes | tuple[()]]:
        return ensureDeferred(self._check(*credential_bytes(credentials)))

    async def _check(self, name: bytes, password: bytes) -> bytes | tuple[()]:
        try:
            user = name.decode("utf-8")
        except UnicodeDecodeError:
            raise UnauthorizedLogin("unknown user or wrong password") from None
        # An empty password would be an anonymous bind (RFC 4513 5.1.2), which servers accept: never send one.
        if not password or not user or len(name) > MAX_NAME:
            raise UnauthorizedLogin("unknown user or wrong password")
        if self._slots.tokens == 0 and len(self._slots.waiting) >= self._queue:
            raise PoolFull("too many password checks are waiting; try again in a moment", retry_after=1)
        await self._slots.acquire()
        try:
            files = await self._current_files()
            return await self._login(user, password, files)
        except DirectoryDown as down:
            log.warn(
                "the directory {url} cannot check the password of {user}: {why}",
                url=self._settings.ldap_url,
                user=printable(user, 64),
                why=down.why,
            )
            raise
        finally:
            self._slots.release()

    def _read_files(self, previous: _Files | None) -> _Files:
        """Runs on the worker pool: (re-)reads ca_file and service_password_file when they changed."""
        settings = self._settings
        ca_file, secret = settings.ldap_ca_file, settings.ldap_service_password_file
        try:
            stamp = (_stamp(ca_file), _stamp(secret))
            if previous is not None and previous.stamp == stamp:
                return previous
            trust = trustRootFromCertificates(_certificates(ca_file)) if ca_file is not None else platformTrust()
            password = _password(secret) if secret is not None else None
        except OSError as error:
            raise DirectoryDown(f"cannot read {error.filename}: {error.strerror}") from None
        tls = optionsForClientTLS(self._host, trustRoot=trust) if self._tls else None
        return _Files(stamp, tls, password)

    async def _current_files(self) -> _Files:
        self._files = await self._run(self._read_files, self._files)
        return self._files

    def _timed(self, operation: Deferred[T]) -> Deferred[T]:
        return operation.addTimeout(self._settings.ldap_timeout, self._reactor)

    async def _connect(self, files: _Files) -> LDAPClient:
        endpoint: Any = HostnameEndpoint(self._reactor, self._host, self._port, timeout=self._settings.ldap_connect_timeout)
        if self._ldaps:
            endpoint = wrapClientTLS(files.tls, endpoint)
        factory = Factory.forProtocol(LDAPClient)
        factory.noisy = False  # no "Starting factory" lines for every login
        client: LDAPClient = await endpoint.connect(factory)
        if self._tls and not self._ldaps:
            await self._timed(client.startTLS(files.tls))
        return client

    async def _login(self, user: str, password: bytes, files: _Files) -> bytes:
        settings = self._settings
        client: LDAPClient | None = None
        try:
            client = await self._connect(files)
            member: bool | None = None
            if settings.ldap_bind_dn:
                dn = settings.ldap_bind_dn.format(user=distinguishedname.escape(user))
            else:
                assert files.service_password is not None
                await self._bind(client, settings.ldap_service_dn, files.service_password, service=True)
                found = await self._find(client, user)
                if found is None:
                    raise UnauthorizedLogin("unknown user or wrong password")
                dn = found
                if settings.ldap_group:
                    # Read as the service account, which may read groups where a user may not; told only after the password.
                    member = await self._is_member(client, dn)
            await self._bind(client, dn, password, service=False)
            if settings.ldap_group and member is None:
                member = await self._is_member(client, dn)
            if member is False:
                log.info(
                    "directory: {user} ({dn}) is not a member of {group}",
                    user=printable(user, 64),
                    dn=printable(dn),
                    group=settings.ldap_group,
                )
                raise NotPermitted(f"not a member of {settings.ldap_group}")
            log.info("directory: {user} logged in as {dn}", user=printable(user, 64), dn=printable(dn))
            client.unbind()
            client = None
            return user.encode("utf-8")
        except (UnauthorizedLogin, DirectoryDown, CancelledError):
            raise
        except TimeoutError:
            raise DirectoryDown(f"no answer within {settings.ldap_timeout}s") from None
        except network.ConnectionRefusedError:
            raise DirectoryDown("connection refused") from None
        except network.TimeoutError:
            raise DirectoryDown(f"no connection within {settings.ldap_connect_timeout}s") from None
        except network.DNSLookupError:
            raise DirectoryDown(f"cannot resolve {self._host}") from None
        except (network.ConnectionLost, network.ConnectionDone, LDAPClientConnectionLostException):
            raise DirectoryDown("the connection closed") from None
        except network.ConnectError as failed:
            raise DirectoryDown(f"cannot connect: {printable(str(failed), 120)}") from None
        except ldaperrors.LDAPException as failed:
            raise DirectoryDown(f"LDAP error: {printable(str(failed), 120)}") from None
        except Exception as failed:
            why = _tls_failure(failed)
            if why is None:
                # Something the client library did not expect (a referral, a malformed answer): still the
                # directory being unusable, not a 500; the traceback goes to the log for whoever debugs it.
                log.failure("unexpected trouble talking to the directory {url}", url=settings.ldap_url)
                why = f"unexpected answer ({type(failed).__name__})"
            raise DirectoryDown(why) from None
        finally:
            if client is not None and client.transport is not None:
                client.transport.abortConnection()

    async def _bind(self, client: LDAPClient, dn: str, password: bytes, *, service: bool) -> None:
        try:
            await self._timed(LDAPEntry(client, dn).bind(password))
        except (ldaperrors.LDAPInvalidCredentials, ldaperrors.LDAPInappropriateAuthentication, ldaperrors.LDAPInvalidDNSyntax):
            if service:
                raise DirectoryDown(f"the directory refused the service account {self._settings.ldap_service_dn}") from None
            raise UnauthorizedLogin("unknown user or wrong password") from None

    async def _find(self, client: LDAPClient, user: str) -> str | None:
        """The one entry under search_base that the filter finds for ``user``, or None when there is none or more than one."""
        settings = self._settings
        query = ldapfilter.parseFilter(settings.ldap_search_filter.format(user=pureldap.escape(user)))
        base = LDAPEntry(client, settings.ldap_search_base)
        # Two are enough to know the name is ambiguous; past the size limit the server sends what it has.
        entries = await self._timed(base.search(filterObject=query, attributes=["1.1"], sizeLimit=2, sizeLimitIsNonFatal=True))
        if len(entries) > 1:
            log.warn(
                "directory: the search for {user} under {base} finds more than one entry; refusing the login",
                user=printable(user, 64),
                base=settings.ldap_search_base,
            )
            return None
        return entries[0].dn.getText() if entries else None

    async def _is_member(self, client: LDAPClient, dn: str) -> bool:
        """Whether the group entry's member (or uniqueMember) attribute holds ``dn``."""
        settings = self._settings
        group = LDAPEntry(client, settings.ldap_group)
        test = pureldap.LDAPFilter_equalityMatch(
            attributeDesc=pureldap.LDAPAttributeDescription(settings.ldap_group_attribute),
            assertionValue=pureldap.LDAPAssertionValue(dn),
        )
        try:
            found = await self._timed(group.search(filterObject=test, scope=pureldap.LDAP_SCOPE_baseObject, attributes=["1.1"]))
        except ldaperrors.LDAPNoSuchObject:
            raise DirectoryDown(f"the group {settings.ldap_group} does not exist") from None
        return bool(found)


def check_start(settings: Config) -> None:
    """At start-up (on a worker thread): the files the [ldap] settings name can be read; raises DirectoryDown."""
    try:
        if settings.ldap_ca_file is not None:
            _certificates(settings.ldap_ca_file)
        if settings.ldap_service_password_file is not None:
            _password(settings.ldap_service_password_file)
    except OSError as error:
        raise DirectoryDown(f"cannot read {error.filename}: {error.strerror}") from None
