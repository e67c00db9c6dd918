"""One CA for every otad instance on a PostgreSQL store (otad.ca_sharing): created once by whichever starts first,
copied into every instance's certs/, renewed once and served by all."""

from __future__ import annotations

import datetime
import shutil
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import threads
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial import unittest

from otad import ca, renewal, tls
from otad.ca_sharing import synchronise
from otad.metrics import Metrics
from otad.store import Store
from tests import postgres
from tests.daemon import Daemon
from tests.helpers import InlinePool, InlineStoreThread, authority, authority_loader, served_certificate
from tests.stores import raw


def share(location: str, certs_dir: Path, now: datetime.datetime, *, create: bool = True) -> tuple[ca.Authority, int, list[str]]:
    """What one instance does at its start: synchronise on a connection of its own."""
    store = Store.open(location)
    try:
        return synchronise(
            store, certs_dir, lambda: authority_loader(certs_dir, create=create)(now, lambda line: None, lambda line: None), now=0.0
        )
    finally:
        store.close()


class CASharingTests(unittest.TestCase):
    timeout = 240

    def setUp(self) -> None:
        self.location = postgres.new_database()
        Store.open(self.location).close()
        self.now = datetime.datetime.now(datetime.UTC)

    def certs_dir(self) -> Path:
        return Path(self.mktemp()) / "certs"

    def test_instances_starting_at_once_create_one_ca(self) -> None:
        """Three instances synchronise at the same moment on an empty database: one creates the CA (under the
        lock, RSA keys and all), the other two take it; every certs/ holds the same files, keys mode 0600, and the
        database holds each file once, in generation 1."""
        dirs = [self.certs_dir() for _ in range(3)]
        start = threading.Barrier(3)
        results: list[Any] = [None] * 3

        def instance(index: int) -> None:
            start.wait(10)
            try:
                results[index] = share(self.location, dirs[index], self.now)
            except Exception as error:  # reported below
                results[index] = error

        running = [threading.Thread(target=instance, args=(index,)) for index in range(3)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join(180)
        for result in results:
            self.assertIsInstance(result, tuple, result)
        roots = {result[0].root.cert for result in results}
        self.assertEqual(len(roots), 1)
        self.assertEqual([result[1] for result in results], [1, 1, 1])
        stored = dict(raw(self.location, "SELECT name, content FROM ca_files"))
        self.assertEqual(set(stored), set(ca.OWN_FILES))
        for directory in dirs:
            for name in ca.OWN_FILES:
                self.assertEqual((directory / name).read_bytes(), bytes(stored[name]), name)
                if name.endswith(".key"):
                    self.assertEqual(stat.S_IMODE((directory / name).stat().st_mode), 0o600, name)
        # Exactly one instance stored files; the others only took them.
        stored_lines = [line for result in results for line in result[2] if line.startswith("stored")]
        self.assertEqual(len(stored_lines), 1)

    def test_an_instance_with_another_ca_is_refused(self) -> None:
        """An instance whose certs/ holds a CA other than the database's stops with a one-line reason, and neither
        its certs/ nor the database changes."""
        shared = self.certs_dir()
        shutil.copytree(authority().certs_dir, shared)
        share(self.location, shared, self.now, create=False)
        other = self.certs_dir()
        other.mkdir(parents=True)
        (other / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot this one\n-----END CERTIFICATE-----\n")
        error = self.assertRaises(ca.BootstrapError, share, self.location, other, self.now)
        self.assertIn("another root CA than the database", str(error))
        self.assertEqual(sorted(path.name for path in other.iterdir()), ["ca.pem"])
        self.assertEqual(raw(self.location, "SELECT MAX(generation) FROM ca_files"), [(1,)])

    def test_certificates_without_their_ca_are_refused(self) -> None:
        """A database that holds issued certificates but no CA (a store copied without its certs/) is never given a
        new CA: the start stops and says where the CA must come from."""
        store = Store.open_existing(self.location)
        store.add_certificate(
            serial="1", udid=None, subject="CN=x", not_before=0, not_after=1, der=b"0", csr=None, challenge_id=None,
            transaction_id=None, now=0,
        )  # fmt: skip
        store.close()
        empty = self.certs_dir()
        error = self.assertRaises(ca.BootstrapError, share, self.location, empty, self.now)
        self.assertIn("holds certificates but no CA", str(error))
        self.assertFalse((empty / "ca.key").exists())

    def keeper(self, certs_dir: Path, clock: Clock, authority_: ca.Authority) -> tuple[renewal.CertificateKeeper, tls.ServerTLS]:
        """One instance's certificate keeper on the shared store, its refresh and generation through that store."""
        store = InlineStoreThread(self.location)
        self.addCleanup(store.close)
        served = tls.ServerTLS(authority_.tls.key, [authority_.tls.cert, *authority_.tls.chain])
        load = authority_loader(certs_dir)

        def refresh(now: datetime.datetime, report: Callable[[str], None], warn: Callable[[str], None]) -> Deferred[ca.Authority]:
            return store.call(lambda s: synchronise(s, certs_dir, lambda: load(now, report, warn), now=now.timestamp())[0])

        keeper = renewal.CertificateKeeper(
            authority_, load, served, [], "localhost", InlinePool(None, "inline", 1), clock,  # type: ignore[arg-type]
            refresh=refresh, generation=lambda: store.call(lambda s: s.ca_generation()), metrics=Metrics(),
        )  # fmt: skip
        keeper.startService()
        self.addCleanup(keeper.stopService)
        return keeper, served

    def test_renewal_happens_once_and_reaches_every_instance(self) -> None:
        """The TLS certificate both instances serve is renewed 60 days before its end, half an hour from now. An hour
        on, the first instance's check renews it and stores it (generation 2); the other, whose own daily check is
        hours away, notices the new generation at its next poll, takes the renewed file and serves the very same
        certificate, renewing nothing itself."""
        first_dir, second_dir = self.certs_dir(), self.certs_dir()
        shutil.copytree(authority().certs_dir, first_dir)
        tls_now = authority().tls
        short = ca.issue(
            authority().root,
            tls_now.key.public_key(),
            tls_now.cert.subject,
            now=self.now,
            lifetime=datetime.timedelta(days=60, minutes=35),
            extensions=[
                (extension.value, extension.critical)
                for extension in tls_now.cert.extensions
                if isinstance(extension.value, (x509.SubjectAlternativeName, x509.KeyUsage, x509.ExtendedKeyUsage))
            ],
        )
        (first_dir / "tls.pem").write_bytes(short.public_bytes(serialization.Encoding.PEM))
        first_authority = share(self.location, first_dir, self.now, create=False)[0]
        second_authority = share(self.location, second_dir, self.now)[0]
        self.assertEqual(second_authority.tls.cert, short)
        first_clock, second_clock = Clock(), Clock()
        first_clock.advance(self.now.timestamp())
        second_clock.advance(self.now.timestamp())
        first, first_served = self.keeper(first_dir, first_clock, first_authority)
        _, second_served = self.keeper(second_dir, second_clock, second_authority)
        first_clock.advance(3600)
        self.successResultOf(ensureDeferred(first.check()))
        renewed = first_served.certificate
        self.assertNotEqual(renewed, short)
        self.assertEqual(raw(self.location, "SELECT MAX(generation) FROM ca_files"), [(2,)])
        self.assertEqual(second_served.certificate, short)
        second_clock.advance(3600)
        self.assertEqual(second_served.certificate, renewed)
        self.assertEqual(second_authority.tls.cert, renewed)
        self.assertEqual((second_dir / "tls.pem").read_bytes(), (first_dir / "tls.pem").read_bytes())
        self.assertEqual(raw(self.location, "SELECT MAX(generation) FROM ca_files"), [(2,)])

    def test_three_daemons_started_at_once_serve_one_ca(self) -> None:
        """Three real daemons started at the same moment on an empty database (each its own data directory) all
        listen, serve the same root CA at /CA and present the same TLS certificate, issued by it."""

        async def run() -> None:
            location = postgres.new_database()
            daemons = []
            for _ in range(3):
                data_dir = Path(self.mktemp()).absolute()
                data_dir.mkdir(parents=True)
                (data_dir / "otad.conf").write_text(f"[store]\nurl = {location}\n")
                daemon = Daemon(data_dir, ("--config", str(data_dir / "otad.conf")))
                self.addCleanup(daemon.stop)
                daemons.append(daemon)
            await gatherResults([daemon.start() for daemon in daemons])
            roots = set()
            for daemon in daemons:
                response = await daemon.client().get(daemon.url("/CA"))
                self.assertEqual(response.code, 200)
                roots.add(await response.content())
            self.assertEqual(len(roots), 1)
            root = x509.load_der_x509_certificate(roots.pop())
            served = [
                await threads.deferToThread(served_certificate, daemon.port, root.public_bytes(serialization.Encoding.PEM))
                for daemon in daemons
            ]
            self.assertEqual(len(set(served)), 1)
            self.assertTrue(ca.issued_by(served[0], root))
            [(stored,)] = raw(location, "SELECT content FROM ca_files WHERE name = 'ca.pem'")
            self.assertEqual(x509.load_pem_x509_certificate(bytes(stored)).fingerprint(hashes.SHA256()), root.fingerprint(hashes.SHA256()))
            self.assertEqual(raw(location, "SELECT MAX(generation) FROM ca_files"), [(1,)])

        return ensureDeferred(run())
