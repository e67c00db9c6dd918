"""End-to-end tests of what an operator meets first: loud failed starts, the first password, reloads, systemd, ownership.

Each test runs the real ``twistd otad`` in a child process on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest

from otad import ca
from tests.daemon import Daemon, DaemonExited
from tests.helpers import served_certificate

NOBODY = 65534


class FirstContactTests(unittest.TestCase):
    timeout = 120

    def data_dir(self) -> Path:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        return directory

    def daemon(self, data_dir: Path, *extra: str, **options: object) -> Daemon:
        daemon = Daemon(data_dir, extra, **options)  # type: ignore[arg-type]
        self.addCleanup(daemon.stop)
        return daemon

    async def failed_start(self, daemon: Daemon) -> str:
        """Start a daemon that must fail: returns its stderr, after checking the exit status is 1 and stderr is one line."""
        with self.assertRaises(DaemonExited):
            await daemon.start()
        self.assertEqual(await daemon.exited(), 1, daemon.output)
        errors = daemon.errors.decode()
        self.assertEqual(errors.count("\n"), 1, errors)
        self.assertTrue(errors.startswith("otad cannot start: "), errors)
        self.assertNotIn("Traceback", daemon.output.decode())
        return errors

    def test_taken_port_then_first_password(self) -> None:
        """A start on a taken port exits 1 with one stderr line naming the port and leaves no users file; the next
        start creates it and shows the password, which is also kept (0600) until the first login with it, after
        which a restart shows nothing."""

        async def run() -> None:
            blocker = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
            self.addCleanup(blocker.stopListening)
            taken = blocker.getHost().port
            data_dir = self.data_dir()
            errors = await self.failed_start(self.daemon(data_dir, listen=f"ssl:{taken}:interface=127.0.0.1"))
            self.assertIn(f"cannot listen on ssl:{taken}:interface=127.0.0.1: Address already in use", errors)
            self.assertFalse((data_dir / "htpasswd").exists())
            self.assertFalse((data_dir / "first-password").exists())

            good = self.daemon(data_dir)
            await good.start()
            password = good.first_password
            self.assertIsNotNone(password)
            kept = data_dir / "first-password"
            self.assertEqual(kept.read_text().strip(), password)
            self.assertEqual(kept.stat().st_mode & 0o777, 0o600)
            await good.stop()

            again = self.daemon(data_dir)
            await again.start()
            self.assertEqual(again.first_password, password)
            self.assertIn(b"the users file", again.output)
            response = await again.client().get(again.url("/enroll"), auth=("apple", password))
            self.assertEqual(response.code, 200)
            await response.content()
            self.assertFalse(kept.exists())
            await again.stop()

            last = self.daemon(data_dir)
            await last.start()
            self.assertIsNone(last.first_password)
            self.assertNotIn(b"user 'apple'", last.output)

        return ensureDeferred(run())

    def test_bad_listen_fails_before_any_key(self) -> None:
        """A bad --listen exits 1 with one stderr line naming the option and value, before certs/ is created."""

        async def run() -> None:
            for value, words in (("tcp:notaport", "port must be a number"), ("foo:123", "unknown endpoint type 'foo'")):
                data_dir = self.data_dir()
                errors = await self.failed_start(self.daemon(data_dir, listen=value))
                self.assertIn(f"bad value for --listen: '{value}': {words}", errors)
                self.assertFalse((data_dir / "certs").exists())

        return ensureDeferred(run())

    def test_bad_config_key_is_one_line(self) -> None:
        """An unknown config key exits 1 with one stderr line naming it, and no usage text."""

        async def run() -> None:
            data_dir = self.data_dir()
            config = data_dir / "otad.conf"
            config.write_text("[server]\nlisten_on = ssl:1\n")
            errors = await self.failed_start(self.daemon(data_dir, "--config", str(config)))
            self.assertEqual(errors, "otad cannot start: unknown config key [server] listen_on\n")

        return ensureDeferred(run())

    def test_unwritable_data_dir(self) -> None:
        """A data directory otad's user cannot write exits 1 with one line naming it."""
        if os.geteuid() != 0:
            self.fail("this test runs the daemon as another user with setpriv: run the suite as root (CI does)")

        async def run() -> None:
            data_dir = Path(tempfile.mkdtemp(prefix="otad-readonly-"))
            self.addCleanup(shutil.rmtree, data_dir)
            os.chown(data_dir, NOBODY, NOBODY)
            data_dir.chmod(0o500)
            prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
            errors = await self.failed_start(self.daemon(data_dir, prefix=prefix))
            self.assertIn(f"cannot write the data directory {data_dir}: permission denied", errors)

        return ensureDeferred(run())

    def test_reload_serves_renewed_certificate(self) -> None:
        """SIGHUP re-reads certs/: a TLS certificate found 10 days from its end is renewed (same key) and the very next
        TLS connection is shown the renewed one, without a restart."""

        async def run() -> None:
            data_dir = self.data_dir()
            daemon = self.daemon(data_dir)
            await daemon.start()
            certs = data_dir / "certs"
            ca_pem = (certs / "ca.pem").read_bytes()
            first = await threads.deferToThread(served_certificate, daemon.port, ca_pem)
            root = ca.Identity(
                x509.load_pem_x509_certificate(ca_pem), serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
            )  # type: ignore[arg-type]
            key = serialization.load_pem_private_key((certs / "tls.key").read_bytes(), None)
            ending = ca.issue(
                root,
                key.public_key(),
                first.subject,
                now=datetime.datetime.now(datetime.UTC),  # type: ignore[arg-type]
                lifetime=datetime.timedelta(days=10),
                extensions=[
                    (e.value, e.critical)
                    for e in first.extensions
                    if isinstance(e.value, (x509.SubjectAlternativeName, x509.ExtendedKeyUsage, x509.KeyUsage))
                ],
            )
            (certs / "tls.pem").write_bytes(ending.public_bytes(serialization.Encoding.PEM))
            daemon.signal("HUP")
            renewal = b"certificates: renewed " + str(certs / "tls.pem").encode()
            for _ in range(100):
                if renewal in daemon.output:
                    break
                await deferLater(reactor, 0.1)
            self.assertIn(renewal, daemon.output)
            served = await threads.deferToThread(served_certificate, daemon.port, ca_pem)
            self.assertNotIn(served, (first, ending))
            self.assertEqual(served.public_key(), first.public_key())
            self.assertEqual(served.not_valid_after_utc - served.not_valid_before_utc, ca.TLS_VALIDITY)
            self.assertIsNone(daemon.exit_code)

        return ensureDeferred(run())

    def test_operator_certificate_is_checked(self) -> None:
        """An operator's TLS certificate (certKey=) that breaks Apple's rules is served, with one warning per broken rule."""

        async def run() -> None:
            data_dir = self.data_dir()
            own = self.daemon(data_dir)
            await own.start()
            await own.stop()
            certs = data_dir / "certs"
            root = ca.Identity(
                x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes()),
                serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None),
            )  # type: ignore[arg-type]
            key = serialization.load_pem_private_key((certs / "signing.key").read_bytes(), None)
            long_lived = ca.issue(
                root,
                key.public_key(),
                x509.Name([]),
                now=datetime.datetime.now(datetime.UTC),  # type: ignore[arg-type]
                lifetime=datetime.timedelta(days=900),
                extensions=[(x509.SubjectAlternativeName([x509.DNSName("elsewhere.example")]), False)],
            )
            chain = long_lived.public_bytes(serialization.Encoding.PEM) + (certs / "ca.pem").read_bytes()
            (data_dir / "operator.pem").write_bytes(chain)
            listen = f"ssl:0:interface=127.0.0.1:certKey={data_dir / 'operator.pem'}:privateKey={certs / 'signing.key'}"
            daemon = self.daemon(data_dir, listen=listen)
            await daemon.start()
            output = daemon.output.decode()
            self.assertIn("will be refused by Apple devices: valid for 900.00 days from notBefore to notAfter", output)
            self.assertIn("will be refused by Apple devices: subjectAltName does not name localhost", output)
            self.assertIn("will be refused by Apple devices: no extendedKeyUsage with serverAuth", output)

        return ensureDeferred(run())

    def test_systemd_ready_notification(self) -> None:
        """Under Type=notify, otad sends READY=1 (with its URL as STATUS) to $NOTIFY_SOCKET once it listens."""

        async def run() -> None:
            data_dir = self.data_dir()
            # Socket paths are limited to 108 bytes; the trial directory is deeper than that.
            folder = tempfile.mkdtemp(prefix="otad-notify-")
            self.addCleanup(shutil.rmtree, folder)
            address = os.path.join(folder, "notify.sock")
            receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            receiver.bind(address)
            receiver.settimeout(60)
            self.addCleanup(receiver.close)
            daemon = self.daemon(data_dir, environment={"NOTIFY_SOCKET": address})
            await daemon.start()
            message = await threads.deferToThread(receiver.recv, 4096)
            self.assertEqual(message.decode(), f"READY=1\nSTATUS=listening on https://localhost:{daemon.port}")

        return ensureDeferred(run())

    def test_admin_as_root_keeps_the_daemons_files(self) -> None:
        """With the daemon running as an unprivileged user and otad-admin run as root, every file in the data
        directory stays the daemon user's, and the user root added can enroll (the daemon reads the users file)."""
        if os.geteuid() != 0:
            self.fail("this test runs the daemon as another user with setpriv: run the suite as root (CI does)")

        async def run() -> None:
            data_dir = Path(tempfile.mkdtemp(prefix="otad-owned-"))
            self.addCleanup(shutil.rmtree, data_dir)
            os.chown(data_dir, NOBODY, NOBODY)
            prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
            daemon = self.daemon(data_dir, prefix=prefix)
            await daemon.start()
            script = Path(sys.executable).parent / "otad-admin"

            def admin(*argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
                return subprocess.run(
                    [str(script), *argv, "--data-dir", str(data_dir)], input=stdin, capture_output=True, check=False, timeout=60
                )

            for argv, stdin in (
                (("user", "add", "alice"), b"correct horse\n"),
                (("challenge", "create"), b""),
                (("user", "add", "apple"), b"changed\n"),
            ):
                result = await threads.deferToThread(admin, *argv, stdin=stdin)
                self.assertEqual(result.returncode, 0, result.stderr)
            owners = {str(path.relative_to(data_dir)): (path.stat().st_uid, path.stat().st_gid) for path in data_dir.rglob("*")}
            self.assertIn("otad.sqlite-wal", owners)
            self.assertEqual({owner for owner in owners.values()}, {(NOBODY, NOBODY)}, owners)
            self.assertFalse((data_dir / "first-password").exists(), "changing apple's password forgets the first one")
            response = await daemon.client().get(daemon.url("/enroll"), auth=("alice", "correct horse"))
            self.assertEqual(response.code, 200)
            await response.content()

        return ensureDeferred(run())
