"""Tests for otad.renewal and otad.tls: own certificates renewed while otad runs, and served to new connections at once."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial import unittest

from otad import ca, listeners, renewal, tls
from otad.metrics import Metrics
from tests.helpers import NOW, InlinePool, authority, authority_loader, served_certificate

DAY = datetime.timedelta(days=1)


def _copy_certs(target: Path) -> Path:
    shutil.copytree(authority().certs_dir, target)
    return target


def _events(test: unittest.TestCase) -> list[LogEvent]:
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    test.addCleanup(globalLogPublisher.removeObserver, seen.append)
    return seen


class CertificateKeeperTests(unittest.TestCase):
    def setUp(self) -> None:
        self.certs_dir = _copy_certs(Path(self.mktemp()) / "certs")
        self.authority = authority_loader(self.certs_dir)(datetime.datetime.now(datetime.UTC), lambda line: None, lambda line: None)
        self.served = tls.ServerTLS(self.authority.tls.key, [self.authority.tls.cert, *self.authority.tls.chain])
        self.clock = Clock()
        self.clock.advance(datetime.datetime.now(datetime.UTC).timestamp())
        self.keeper = renewal.CertificateKeeper(
            self.authority,
            authority_loader(self.certs_dir),
            self.served,
            [],
            "localhost",
            InlinePool(None, "inline", 1),
            self.clock,  # type: ignore[arg-type]
            metrics=Metrics(),
        )

    def test_daily_check_renews_and_serves(self) -> None:
        """Once a day the keeper checks; when the TLS certificate is within 60 days of its end, the check renews it
        (same key), the Authority and the listener's TLS both get it, and the renewal is logged."""
        events = _events(self)
        old = self.authority.tls.cert
        self.keeper.startService()
        self.addCleanup(self.keeper.stopService)
        self.clock.advance(renewal.CHECK_INTERVAL)
        self.assertEqual(self.served.certificate, old)
        left = old.not_valid_after_utc.timestamp() - self.clock.seconds()
        self.clock.advance(left - 59 * 86400 - renewal.CHECK_INTERVAL)
        self.clock.advance(renewal.CHECK_INTERVAL)
        renewed = self.served.certificate
        self.assertNotEqual(renewed, old)
        self.assertEqual(renewed.public_key(), old.public_key())
        self.assertEqual(self.authority.tls.cert, renewed)
        self.assertEqual(x509.load_pem_x509_certificate((self.certs_dir / "tls.pem").read_bytes()), renewed)
        self.assertTrue(any("renewed" in str(event.get("line", "")) for event in events))

    def test_failed_check_is_logged_and_retried(self) -> None:
        """A check that fails (certs/ lost its RA key) logs an error, keeps serving, and the next day's check runs again."""
        events = _events(self)
        (self.certs_dir / "ra.key").rename(self.certs_dir / "ra.key.away")
        self.keeper.startService()
        self.addCleanup(self.keeper.stopService)
        self.clock.advance(renewal.CHECK_INTERVAL)
        errors = [event for event in events if event.get("log_level") is not None and event["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("ra.key", errors[0]["reason"])
        (self.certs_dir / "ra.key.away").rename(self.certs_dir / "ra.key")
        self.clock.advance(renewal.CHECK_INTERVAL)
        errors = [event for event in events if event.get("log_level") is not None and event["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)

    def test_operator_files_reread(self) -> None:
        """An operator's certificate files are read again by each check, so certbot's renewal is served without a restart."""
        directory = Path(self.mktemp())
        directory.mkdir()
        root = self.authority.root

        def write(cert: x509.Certificate) -> None:
            pem = serialization.Encoding.PEM
            (directory / "fullchain.pem").write_bytes(cert.public_bytes(pem) + root.cert.public_bytes(pem))

        key = self.authority.signer.key
        write(ca.issue(root, key.public_key(), x509.Name([]), now=NOW, lifetime=90 * DAY))
        (directory / "privkey.pem").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        listener = listeners.parse(f"ssl:0:certKey={directory / 'fullchain.pem'}:privateKey={directory / 'privkey.pem'}")
        operator = renewal.open_operator_tls(renewal.TLSFiles.of_listener(listener), tls.TLSPolicy())
        served = operator.server
        self.assertEqual(len(served.chain), 2)
        keeper = renewal.CertificateKeeper(
            self.authority,
            authority_loader(self.certs_dir),
            None,
            [operator],
            "otad.example.com",
            InlinePool(None, "inline", 1),
            self.clock,  # type: ignore[arg-type]
            metrics=Metrics(),
        )
        fresh = ca.issue(root, key.public_key(), x509.Name([]), now=NOW + 60 * DAY, lifetime=90 * DAY)
        write(fresh)
        self.successResultOf(ensureDeferred(keeper.check()))
        self.assertEqual(served.certificate, fresh)


class ServerTLSTests(unittest.TestCase):
    def test_new_connections_get_the_new_certificate(self) -> None:
        """Over a real TLS socket: after ``use``, the next handshake presents the new certificate."""
        own = authority()
        served = tls.ServerTLS(own.tls.key, [own.tls.cert, own.root.cert])
        port = reactor.listenTCP(0, served.wrap(Factory.forProtocol(Protocol)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        # Issued now, not at the fixed NOW: the client checks the dates.
        renewed = ca.issue(
            own.root,
            own.tls.key.public_key(),
            own.tls.cert.subject,
            now=datetime.datetime.now(datetime.UTC),
            lifetime=30 * DAY,
            extensions=[
                (ext.value, ext.critical)
                for ext in own.tls.cert.extensions
                if isinstance(ext.value, (x509.SubjectAlternativeName, x509.ExtendedKeyUsage))
            ],
        )

        async def run() -> None:
            first = await threads.deferToThread(served_certificate, number, own.root.cert.public_bytes(serialization.Encoding.PEM))
            self.assertEqual(first, own.tls.cert)
            served.use(own.tls.key, [renewed, own.root.cert])
            second = await threads.deferToThread(served_certificate, number, own.root.cert.public_bytes(serialization.Encoding.PEM))
            self.assertEqual(second, renewed)

        return ensureDeferred(run())


class OperatorFilesWatchTests(unittest.TestCase):
    """The watch on an operator's files (certbot's layout: live/ symlinks into archive/), on a fake clock."""

    def setUp(self) -> None:
        from tests.publicca import PublicCA

        self.public = PublicCA.create()
        self.directory = Path(self.mktemp())
        cert, key = self.public.issue(("otad.example.com",))
        self.files = self.public.write_certbot_files(self.directory, cert, key, serial=1)
        self.first = cert
        self.operator = renewal.open_operator_tls(renewal.TLSFiles(self.files["fullchain"], self.files["privkey"]), tls.TLSPolicy())
        self.clock = Clock()
        self.clock.advance(datetime.datetime.now(datetime.UTC).timestamp())
        own = authority()
        self.keeper = renewal.CertificateKeeper(
            own,
            authority_loader(_copy_certs(Path(self.mktemp()) / "certs")),
            None,
            [self.operator],
            "otad.example.com",
            InlinePool(None, "inline", 1),
            self.clock,  # type: ignore[arg-type]
            metrics=Metrics(),
        )
        self.keeper.startService()
        self.addCleanup(self.keeper.stopService)
        self.events = _events(self)

    def warnings(self) -> list[LogEvent]:
        return [event for event in self.events if "not using the changed TLS files" in event.get("log_format", "")]

    def test_first_certificate_and_chain_served(self) -> None:
        """fullchain.pem is served whole: the certificate, then the intermediate."""
        self.assertEqual(list(self.operator.server.chain), [self.first, self.public.intermediate])

    def test_renewal_by_symlink_swap_is_served_within_one_interval(self) -> None:
        """When certbot points live/ at new files in archive/, the next look (WATCH_INTERVAL later) serves the new pair;
        nothing changes before it, and unchanged files are not read again."""
        cert, key = self.public.issue(("otad.example.com",))
        self.public.write_certbot_files(self.directory, cert, key, serial=2)
        self.assertEqual(self.operator.server.certificate, self.first)
        self.clock.advance(renewal.WATCH_INTERVAL)
        self.assertEqual(list(self.operator.server.chain), [cert, self.public.intermediate])
        served = [event for event in self.events if "serving the new TLS certificate" in event.get("log_format", "")]
        self.assertEqual(len(served), 1)
        self.clock.advance(renewal.WATCH_INTERVAL * 3)
        self.assertEqual(len([event for event in self.events if "serving the new TLS certificate" in event.get("log_format", "")]), 1)

    def test_mismatched_pair_keeps_the_old_one(self) -> None:
        """A certificate whose key is not in place yet (or a half-written file) is refused with one warning, the old pair is
        kept, and once the key arrives the new pair is served."""
        cert, key = self.public.issue(("otad.example.com",))
        pem = serialization.Encoding.PEM
        archive = self.directory / "archive" / "otad"
        (archive / "fullchain2.pem").write_bytes(cert.public_bytes(pem) + self.public.intermediate.public_bytes(pem))
        link = self.files["fullchain"]
        link.unlink()
        link.symlink_to(Path("..", "..", "archive", "otad", "fullchain2.pem"))
        for _ in range(3):
            self.clock.advance(renewal.WATCH_INTERVAL)
        self.assertEqual(self.operator.server.certificate, self.first)
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("does not match", self.warnings()[0]["reason"])
        # Half written: the key file is cut short.
        data = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        (archive / "privkey2.pem").write_bytes(data[: len(data) // 2])
        key_link = self.files["privkey"]
        key_link.unlink()
        key_link.symlink_to(Path("..", "..", "archive", "otad", "privkey2.pem"))
        self.clock.advance(renewal.WATCH_INTERVAL)
        self.assertEqual(self.operator.server.certificate, self.first)
        self.assertEqual(len(self.warnings()), 2)
        (archive / "privkey2.pem").write_bytes(data)
        self.clock.advance(renewal.WATCH_INTERVAL)
        self.assertEqual(self.operator.server.certificate, cert)
