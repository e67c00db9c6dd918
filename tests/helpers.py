"""Test fakes that implement otad's real interfaces, and cached slow fixtures (RSA keys, a bootstrapped CA)."""

from __future__ import annotations

import contextlib
import datetime
import functools
import socket
import ssl
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from otad.ca import Authority, bootstrap
from otad.metrics import Metrics
from otad.pool import WorkerPool
from otad.store import StoreThread, open_database

T = TypeVar("T")
NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC)


class InlinePool(WorkerPool):
    """A WorkerPool that runs each call at once on the calling thread, so in-memory tests need no threads."""

    def run(self, call: Callable[..., T], *args: Any) -> Deferred[T]:
        return maybeDeferred(call, *args)


class InlineStoreThread(StoreThread):
    """A StoreThread whose calls run inline, over a real store: a SQLite file, or a PostgreSQL database."""

    run = InlinePool.run  # type: ignore[assignment]

    def __init__(self, location: Path | str, metrics: Metrics | None = None) -> None:
        super().__init__(None, lambda: open_database(location, connections=2), metrics=metrics)  # type: ignore[arg-type]
        self.open()

    def close(self) -> None:
        """Close the database (every connection, for PostgreSQL)."""
        if self._database is not None:
            self._database.close()
            self._database = None


# Tables that grow with every enrollment; a small table (crls, ca_files, schema_version) may be scanned.
_GROWING_TABLES = ("certificates", "devices", "deliveries", "events", "challenges", "scep_requests", "login_failures")


def _sqlite_connection(store: InlineStoreThread) -> Any:
    """The sqlite3 connection under an InlineStoreThread over a SQLite file."""
    return store._database.store._db._db  # type: ignore[union-attr]


@contextlib.contextmanager
def traced_statements(store: InlineStoreThread) -> Iterator[list[str]]:
    """Every SELECT, INSERT, UPDATE and DELETE run on a SQLite store inside the block, with its parameters written in."""
    connection = _sqlite_connection(store)
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        connection.set_trace_callback(None)
        statements[:] = [sql for sql in statements if sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT"))]


def growing_table_scans(store: InlineStoreThread, statements: list[str]) -> dict[str, str]:
    """The statements whose SQLite query plan walks a growing table, or a whole index of one, each with that plan step.

    A plan step is ``SEARCH t USING INDEX i (c=?)`` for a lookup by key and ``SCAN t`` (``SCAN TABLE t`` before SQLite
    3.36), possibly ``USING [COVERING] INDEX i``, for a walk; any walk counts, since walking a whole index grows as the
    table does."""
    scans = {}
    for sql in statements:
        for detail in query_plan(store, sql):
            words = [word for word in detail.split() if word != "TABLE"]
            if words[:1] == ["SCAN"] and words[1] in _GROWING_TABLES:
                scans[sql] = detail
    return scans


def query_plan(store: InlineStoreThread, sql: str) -> list[str]:
    """SQLite's plan for ``sql``, one line per step."""
    return [detail for *_, detail in _sqlite_connection(store).execute("EXPLAIN QUERY PLAN " + sql)]


AuthorityLoader = Callable[[datetime.datetime, Callable[[str], None], Callable[[str], None]], Authority]


def authority_loader(certs_dir: Path, *, create: bool = False) -> AuthorityLoader:
    """What the daemon's renewal check calls to load (or, with ``create``, make) the CA in ``certs_dir``, with the
    test CA's names."""

    def load(now: datetime.datetime, report: Callable[[str], None], warn: Callable[[str], None]) -> Authority:
        return bootstrap(
            certs_dir,
            hostname="localhost",
            organization="Test Org",
            common_name="Test Org otad Root CA",
            ca_key_size=3072,
            now=now,
            report=report,
            warn=warn,
            create=create,
        )

    return load


def served_certificate(port: int, ca_pem: bytes) -> x509.Certificate:
    """The certificate 127.0.0.1:port presents to a client that trusts only ``ca_pem`` and checks the name localhost
    (through any intermediate the server sends). It blocks: run it in a thread."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls_socket:
            der = tls_socket.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@functools.cache
def authority() -> Authority:
    """One bootstrapped CA for the whole test run (RSA key generation is slow)."""
    directory = Path(tempfile.mkdtemp(prefix="otad-test-ca-"))
    return bootstrap(
        directory / "certs",
        hostname="localhost",
        organization="Test Org",
        common_name="Test Org otad Root CA",
        ca_key_size=3072,
        now=datetime.datetime.now(datetime.UTC),
        report=lambda line: None,
    )


def _through(site: Any) -> Any:
    """A StubTreq whose requests reach ``site`` itself (its channel, request class and request log), not
    only its resource tree, as they would over a socket."""
    from treq.testing import StubTreq

    stub = StubTreq(site.resource)
    stub._agent._serverFactory = site
    return stub


class MemorySite:
    """The production site (``otad.site.build_site``) over a temporary data directory, driven in memory by
    StubTreq, with inline pools and a fake clock."""

    def __init__(
        self,
        directory: Path,
        *,
        policy: str = "strict",
        anchors: tuple[Any, ...] = (),
        run_auth: Callable[..., Deferred[Any]] | None = None,
        network: Any = None,
        store: Path | str | None = None,
        **settings: Any,
    ) -> None:
        """``run_auth`` replaces the inline pool for password checks (to count or hold them); ``network`` is the
        reactor that reaches an LDAP directory (the real one: the clock here is fake); ``store`` is another store
        location than the directory's SQLite file (a PostgreSQL database, another instance's file)."""
        import dataclasses

        from twisted.internet.task import Clock

        from otad import config, users
        from otad.device_trust import DeviceTrust
        from otad.health import Readiness
        from otad.metrics import Metrics
        from otad.revocation import CRLPublisher
        from otad.site import build_operator_site, build_site
        from otad.tap import load_profile_templates

        directory.mkdir(parents=True, exist_ok=True)
        self.settings = dataclasses.replace(config.load(None, {"data_dir": str(directory), "hostname": "otad.test"}), **settings)
        users.set_password(self.settings.htpasswd, b"alice", b"correct horse", rounds=4)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.metrics = Metrics()
        self.store = InlineStoreThread(store if store is not None else self.settings.store_location, metrics=self.metrics)
        pool = InlinePool(None, "inline", 1)  # type: ignore[arg-type]
        self.authority = authority()
        self.crls = CRLPublisher(self.authority, self.store, pool, self.clock, metrics=self.metrics)
        self.site = build_site(
            self.settings,
            self.authority,
            self.store,
            pool,
            run_auth or pool.run,
            self.clock,
            DeviceTrust(policy, anchors),
            load_profile_templates(self.settings.templates),
            self.crls,
            network,
            metrics=self.metrics,
        )
        self.treq = _through(self.site)
        # The operator's listener (/metrics, /healthz, /readyz), over the same store and metrics.
        self.readiness = Readiness(self.store, self.clock)
        self.operator = build_operator_site(self.metrics, self.readiness, pool.run, self.clock)
        self.operator_treq = _through(self.operator)

    def close(self) -> None:
        self.store.close()

    async def fetch(self, method: str, url: str, **kwargs: Any) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        """One request; header names come back lower-cased."""
        response = await self.treq.request(method, "https://otad.test" + url, **kwargs)
        body = await response.content()
        return response.code, {name.lower(): values for name, values in response.headers.getAllRawHeaders()}, body

    def exchange(self, request: bytes, peer: str = "192.0.2.1") -> tuple[int, dict[bytes, bytes], bytes]:
        """One raw HTTP/1.1 request through the production OtadSite and OtadChannel (which StubTreq bypasses),
        on a plain connection from ``peer``; the status, the headers (lower-cased names) and the body."""
        from twisted.internet.address import IPv4Address, IPv6Address
        from twisted.internet.testing import StringTransport

        address = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 40000)
        channel = self.site.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        assert channel is not None
        channel.makeConnection(transport)
        channel.dataReceived(request)
        channel.connectionLost(Failure(ConnectionDone()))
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status, *lines = head.split(b"\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
        return int(status.split()[1]), headers, body

    async def fetch_operator(self, path: str, **kwargs: Any) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        """One GET on the operator's listener."""
        response = await self.operator_treq.request("GET", "http://127.0.0.1:9464" + path, **kwargs)
        body = await response.content()
        return response.code, {name.lower(): values for name, values in response.headers.getAllRawHeaders()}, body

    def events(self) -> list[Any]:
        result: list[Any] = []
        self.store.call(lambda store: store.events()).addCallback(result.extend)
        return result


def webclip(*, url: str, label: str, identifier: str, organization: str = "Example Inc.") -> dict[str, Any]:
    """A valid com.apple.webClip.managed payload, as a template author would write it."""
    return {
        "PayloadType": "com.apple.webClip.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid4()).upper(),
        "PayloadDisplayName": label,
        "PayloadOrganization": organization,
        "URL": url,
        "Label": label,
        "IsRemovable": True,
    }


# otad's device binding: a subjectAltName otherName, RFC 4043's permanentIdentifier (a SEQUENCE whose
# UTF8String identifierValue is the UDID); otad 0.1 wrote a urn:x-otad:udid: URI instead.
PERMANENT_IDENTIFIER = "1.3.6.1.5.5.7.8.3"


def device_binding(cert: Any) -> str | None:
    """The UDID an otad device certificate is bound to, read independently of otad's code."""
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for name in san:
        if isinstance(name, x509.OtherName) and name.type_id.dotted_string == PERMANENT_IDENTIFIER:
            from asn1crypto import core

            identifier = core.load(name.value)
            assert isinstance(identifier, core.Sequence)
            return str(core.load(identifier.contents).native)
        if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("urn:x-otad:udid:"):
            return str(name.value[len("urn:x-otad:udid:") :])
    return None
