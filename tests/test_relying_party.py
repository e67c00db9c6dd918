"""End-to-end: what a relying party sees of otad's revocations, checked with openssl against the running daemon.

A fake iPhone enrolls; its certificate passes ``openssl verify -crl_check`` with the CRL from /crl,
``openssl ocsp`` says good, and an ``openssl s_server`` that requires client certificates and
checks that CRL accepts it. After ``otad-admin certs revoke``, OCSP says revoked at once, the next
CRL lists it, ``openssl verify`` refuses it, and the same s_server refuses the device.
"""

from __future__ import annotations

import re
import socket
import ssl
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.daemon import Daemon
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice

_PATH = "/usr/bin:/bin"


class RelyingPartyTests(unittest.TestCase):
    timeout = 180

    async def openssl(self, *args: str, cwd: Path | None = None) -> tuple[int, str]:
        out, err, code = await getProcessOutputAndValue("openssl", args, env={"PATH": _PATH}, reactor=reactor, path=str(cwd or "/"))
        return code, (out + err).decode(errors="replace")

    async def crl(self, daemon: Daemon, folder: Path, number: int) -> Path:
        """Fetch /crl until it is CRL ``number`` or later (the daemon looks for revocations every second); save it as PEM."""
        for _ in range(100):
            response = await daemon.client().get(daemon.url("/crl"))
            body = await response.content()
            if response.code == 200:
                current = x509.load_der_x509_crl(body)
                if current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number >= number:
                    path = folder / f"crl-{number}.pem"
                    path.write_bytes(current.public_bytes(serialization.Encoding.PEM))
                    return path
            await deferLater(reactor, 0.2)
        self.fail(f"no CRL {number} was published")

    async def s_server_accepts(self, daemon: Daemon, crl: Path, cert: Path, key: Path) -> tuple[bool, str]:
        """Does an openssl s_server that requires a client certificate, checked against ``crl``, serve the device?"""
        certs = daemon.data_dir / "certs"
        server = await threads.deferToThread(_start_s_server, certs, crl)
        try:
            answer = await threads.deferToThread(_fetch_with_client_certificate, server.port, certs / "ca.pem", cert, key)
        finally:
            log = await threads.deferToThread(server.finish)
        return answer.startswith(b"HTTP/1.0 200"), log + answer.decode(errors="replace")

    def test_revocation_reaches_relying_parties(self) -> None:
        """Before revocation: verify -crl_check OK, OCSP good, s_server accepts. After otad-admin certs revoke
        --reason keyCompromise: OCSP revoked (keyCompromise), a new CRL lists it, verify -crl_check fails with
        'certificate revoked', s_server refuses the device. A malformed OCSP request gets malformedRequest."""

        async def run() -> None:
            folder = Path(self.mktemp()).absolute()
            folder.mkdir()
            apple = FakeAppleHierarchy.create()
            (folder / "anchors.pem").write_bytes(apple.anchors_pem())
            (folder / "otad.conf").write_text("[ca]\ncrl_check = 1s\n")
            data_dir = folder / "data"
            data_dir.mkdir()
            daemon = Daemon(
                data_dir, ("--device-ca", str(folder / "anchors.pem"), "--config", str(folder / "otad.conf"),
                           "--listen", "tcp:0:interface=127.0.0.1"),
            )  # fmt: skip
            self.addCleanup(daemon.stop)
            await daemon.start()
            for _ in range(50):
                found = re.search(rb"otad listening on http://[^:]+:(\d+)/", daemon.output)
                if found:
                    break
                await deferLater(reactor, 0.1)
            assert found is not None, daemon.output
            plain = int(found.group(1))
            ca_pem = data_dir / "certs" / "ca.pem"
            device = FakeDevice(reactor, daemon.url("/"), ca_pem.read_bytes(), apple, "00008030-00AA00BB00CC00DD")
            self.addCleanup(lambda: ensureDeferred(device.close()))
            service = await device.enroll("apple", daemon.first_password)
            profile = await device.phase2(service["PayloadContent"]["Challenge"])
            cert = await device.scep_enroll(profile["PayloadContent"][0])
            assert device.scep_identity is not None
            cert_pem, key_pem = folder / "device.pem", folder / "device.key"
            cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_pem.write_bytes(
                device.scep_identity[1].private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            self.assertEqual(points[0].full_name[0].value, daemon.url("/crl").replace("localhost", "localhost"))

            first = await self.crl(daemon, folder, 1)
            code, said = await self.openssl("verify", "-crl_check", "-CRLfile", str(first), "-CAfile", str(ca_pem), str(cert_pem))
            self.assertEqual(code, 0, said)
            self.assertIn(": OK", said)
            ocsp = (
                "ocsp",
                "-issuer",
                str(ca_pem),
                "-cert",
                str(cert_pem),
                "-url",
                f"http://127.0.0.1:{plain}/ocsp",
                "-CAfile",
                str(ca_pem),
            )
            code, said = await self.openssl(*ocsp)
            self.assertEqual(code, 0, said)
            self.assertIn(f"{cert_pem}: good", said)
            self.assertIn("Response verify OK", said)
            accepted, said = await self.s_server_accepts(daemon, first, cert_pem, key_pem)
            self.assertTrue(accepted, said)

            serial = format(cert.serial_number, "x")
            admin = [
                sys.executable,
                "-m",
                "otad.admin",
                "certs",
                "revoke",
                serial,
                "--reason",
                "keyCompromise",
                "--data-dir",
                str(data_dir),
            ]
            out, err, code = await getProcessOutputAndValue(
                admin[0], admin[1:], env={"PATH": _PATH, "PYTHONPATH": str(Path(__file__).parent.parent)}, reactor=reactor
            )
            self.assertEqual(code, 0, err)
            code, said = await self.openssl(*ocsp)
            self.assertIn(f"{cert_pem}: revoked", said)
            self.assertIn("Reason: keyCompromise", said)

            second = await self.crl(daemon, folder, 2)
            code, said = await self.openssl("verify", "-crl_check", "-CRLfile", str(second), "-CAfile", str(ca_pem), str(cert_pem))
            self.assertNotEqual(code, 0, said)
            self.assertIn("certificate revoked", said)
            accepted, said = await self.s_server_accepts(daemon, second, cert_pem, key_pem)
            self.assertFalse(accepted, said)
            self.assertIn("certificate revoked", said)

            def malformed() -> bytes:
                with socket.create_connection(("127.0.0.1", plain), timeout=10) as raw:
                    raw.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\nContent-Length: 5\r\n"
                                b"Connection: close\r\n\r\nhello")  # fmt: skip
                    return b"".join(iter(lambda: raw.recv(65536), b""))

            answer = await threads.deferToThread(malformed)
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:80])
            self.assertTrue(answer.endswith(b"\x30\x03\x0a\x01\x01"), answer[-20:])  # OCSPResponse { malformedRequest }

        return ensureDeferred(run())


class _SServer:
    """An ``openssl s_server`` for one connection, requiring a client certificate checked against a CRL."""

    def __init__(self, process: object, port: int) -> None:
        self.process = process
        self.port = port

    def finish(self) -> str:
        import subprocess

        process: subprocess.Popen[bytes] = self.process  # type: ignore[assignment]
        try:
            out, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        return out.decode(errors="replace")


def _fetch_with_client_certificate(port: int, ca: Path, cert: Path, key: Path) -> bytes:
    """GET / from 127.0.0.1:port over TLS with the device's certificate; b"" when the server refuses the handshake."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return b"".join(iter(lambda: tls.recv(65536), b""))
    except (ssl.SSLError, ConnectionError):
        return b""


def _start_s_server(certs: Path, crl: Path) -> _SServer:
    import subprocess

    process = subprocess.Popen(
        ["openssl", "s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-cert", str(certs / "tls.pem"), "-key", str(certs / "tls.key"),
         "-CAfile", str(certs / "ca.pem"), "-Verify", "1", "-verify_return_error", "-crl_check", "-CRL", str(crl), "-tls1_2", "-www"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={"PATH": _PATH},
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    while line and not line.startswith("ACCEPT"):
        line = process.stdout.readline().decode()
    return _SServer(process, int(line.rsplit(":", 1)[1]))
