"""End to end: the real daemon serving an operator's public certificate (a throwaway CA standing in for Let's Encrypt,
in certbot's live/ and archive/ layout), with its chain, and serving the renewed one without a restart."""

from __future__ import annotations

import re
import time
from pathlib import Path

from cryptography import x509
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from otad import renewal
from tests.daemon import Daemon
from tests.helpers import served_certificate
from tests.publicca import PEM, PublicCA


class PublicCertificateTests(unittest.TestCase):
    timeout = 120

    async def showcerts(self, port: int, root: Path) -> tuple[str, list[x509.Certificate]]:
        """``openssl s_client -showcerts`` against the port: its output and the certificates it printed."""
        out, err, code = await getProcessOutputAndValue(
            "openssl",
            [
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-servername",
                "localhost",
                "-showcerts",
                "-CAfile",
                str(root),
                "-verify_return_error",
            ],
            env={"PATH": "/usr/bin:/bin"},
            reactor=reactor,
            stdinBytes=b"",
        )
        self.assertEqual(code, 0, err)
        text = out.decode()
        blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", text, re.S)
        return text, [x509.load_pem_x509_certificate(block.encode()) for block in blocks]

    def test_certbot_files_served_with_chain_and_renewed_without_restart(self) -> None:
        """``[tls] certificate``/``key`` pointing at certbot's live/ files: every ssl: listener without certKey= serves the
        certificate and its intermediate (openssl s_client -showcerts shows both and verifies them against the public root),
        as does a listener with certKey=fullchain.pem. After certbot's renewal swaps the symlinks, new connections get the
        new certificate within seconds, with no restart and no SIGHUP; a certificate whose key is not in place yet is
        refused with a warning while the old pair is still served."""

        async def run() -> None:
            folder = Path(self.mktemp()).absolute()
            data_dir = folder / "data"
            data_dir.mkdir(parents=True)
            public = PublicCA.create()
            (folder / "root.pem").write_bytes(public.root_pem())
            letsencrypt = folder / "letsencrypt"
            first, first_key = public.issue(("localhost", "127.0.0.1"))
            files = public.write_certbot_files(letsencrypt, first, first_key, serial=1)
            (folder / "otad.conf").write_text(f"[tls]\ncertificate = {files['fullchain']}\nkey = {files['privkey']}\n")
            own_listener = f"ssl:0:interface=127.0.0.1:certKey={files['fullchain']}:privateKey={files['privkey']}"
            daemon = Daemon(data_dir, ("--config", str(folder / "otad.conf"), "--listen", own_listener))
            self.addCleanup(daemon.stop)
            await daemon.start()
            # start() fires at the first "listening" line; the second one follows at once.
            while len(ports := [int(port) for port in re.findall(rb"otad listening on https://localhost:(\d+)/", daemon.output)]) < 2:
                await deferLater(reactor, 0.1, lambda: None)

            for port in ports:
                text, shown = await self.showcerts(port, folder / "root.pem")
                self.assertEqual(shown, [first, public.intermediate])
                self.assertIn("Verify return code: 0 (ok)", text)

            # certbot renews: new key, new certificate, the live/ symlinks swapped into archive/.
            renewed, renewed_key = public.issue(("localhost", "127.0.0.1"))
            public.write_certbot_files(letsencrypt, renewed, renewed_key, serial=2)
            started = time.monotonic()
            while True:
                if await threads.deferToThread(served_certificate, ports[0], public.root_pem()) == renewed:
                    break
                self.assertLess(time.monotonic() - started, renewal.WATCH_INTERVAL * 4, "the renewed certificate was not served in time")
                await deferLater(reactor, 0.25, lambda: None)
            _, shown = await self.showcerts(ports[0], folder / "root.pem")
            self.assertEqual(shown, [renewed, public.intermediate])
            self.assertIn(b"serving the new TLS certificate in " + str(files["fullchain"]).encode(), daemon.output)

            # Half a renewal: the certificate is swapped, its key is not yet.
            third, third_key = public.issue(("localhost", "127.0.0.1"))
            archive = letsencrypt / "archive" / "otad"
            (archive / "fullchain3.pem").write_bytes(third.public_bytes(PEM) + public.intermediate.public_bytes(PEM))
            swap = files["fullchain"].with_name(".swap")
            swap.symlink_to(Path("..", "..", "archive", "otad", "fullchain3.pem"))
            swap.rename(files["fullchain"])
            while b"not using the changed TLS files" not in daemon.output:
                self.assertLess(time.monotonic() - started, 60)
                await deferLater(reactor, 0.25, lambda: None)
            self.assertEqual(await threads.deferToThread(served_certificate, ports[0], public.root_pem()), renewed)
            self.assertIsNone(daemon.exit_code)

        return ensureDeferred(run())

    def test_workers_serve_the_renewed_certificate(self) -> None:
        """With ``[server] workers = 2`` the supervisor watches the files and, when certbot's renewal swaps them, tells
        its workers; each worker then serves the new certificate, with no restart."""

        async def run() -> None:
            folder = Path(self.mktemp()).absolute()
            (folder / "data").mkdir(parents=True)
            public = PublicCA.create()
            letsencrypt = folder / "letsencrypt"
            first, first_key = public.issue(("localhost", "127.0.0.1"))
            files = public.write_certbot_files(letsencrypt, first, first_key, serial=1)
            (folder / "otad.conf").write_text(
                f"[server]\nworkers = 2\n[tls]\ncertificate = {files['fullchain']}\nkey = {files['privkey']}\n"
            )
            daemon = Daemon(folder / "data", ("--config", str(folder / "otad.conf")))
            self.addCleanup(daemon.stop)
            port = await daemon.start()
            self.assertEqual(await threads.deferToThread(served_certificate, port, public.root_pem()), first)
            renewed, renewed_key = public.issue(("localhost", "127.0.0.1"))
            public.write_certbot_files(letsencrypt, renewed, renewed_key, serial=2)
            pattern = rb"\[worker (\d) otad\.renewal#info\] serving the new TLS certificate"
            started = time.monotonic()
            while set(re.findall(pattern, daemon.output)) != {b"0", b"1"}:
                self.assertLess(time.monotonic() - started, renewal.WATCH_INTERVAL * 6, daemon.output.decode(errors="replace")[-2000:])
                await deferLater(reactor, 0.25, lambda: None)
            for _ in range(6):
                self.assertEqual(await threads.deferToThread(served_certificate, port, public.root_pem()), renewed)

        return ensureDeferred(run())
