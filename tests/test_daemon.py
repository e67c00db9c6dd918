"""End-to-end tests of phase 1 against the real daemon on a TLS socket on 127.0.0.1, checked with openssl."""

from __future__ import annotations

import json
import plistlib
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.daemon import Daemon, DaemonExited
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice, SCEPRefused, UnexpectedResponse
from tests.helpers import device_binding


class DaemonTests(unittest.TestCase):
    timeout = 120

    def new_daemon(self, data_dir: Path | None = None, extra: tuple[str, ...] = ()) -> Daemon:
        if data_dir is None:
            data_dir = Path(self.mktemp()).absolute()
            data_dir.mkdir(parents=True)
        daemon = Daemon(data_dir, extra)
        self.addCleanup(daemon.stop)
        return daemon

    async def daemon_trusting_fake_apple(self) -> tuple[Daemon, FakeAppleHierarchy, bytes]:
        """A started daemon whose device anchors are a fake Apple hierarchy, that hierarchy, and otad's root CA PEM."""
        apple = FakeAppleHierarchy.create()
        anchors = Path(self.mktemp()).absolute()
        anchors.write_bytes(apple.anchors_pem())
        daemon = self.new_daemon(extra=("--device-ca", str(anchors)))
        await daemon.start()
        return daemon, apple, (daemon.data_dir / "certs" / "ca.pem").read_bytes()

    async def openssl(self, *args: str) -> tuple[bytes, bytes, int]:
        return await getProcessOutputAndValue("openssl", args, env={"PATH": "/usr/bin:/bin"}, reactor=reactor)

    def test_phase1(self) -> None:
        """/, /CA and /enroll over real TLS: 401 without or with wrong credentials, then a profile openssl verifies."""

        async def run() -> None:
            daemon = self.new_daemon()
            await daemon.start()
            password = daemon.first_password
            self.assertIsNotNone(password, "the first start must print the password once")
            client = daemon.client()
            welcome = await client.get(daemon.url("/"))
            self.assertEqual(welcome.code, 200)
            self.assertIn(b'href="/enroll"', await welcome.content())

            ca_response = await client.get(daemon.url("/CA"))
            self.assertEqual(ca_response.headers.getRawHeaders("content-type"), ["application/x-x509-ca-cert"])
            root = x509.load_der_x509_certificate(await ca_response.content())
            ca_file = Path(self.mktemp())
            ca_file.write_bytes(root.public_bytes(serialization.Encoding.PEM))

            anonymous = await client.get(daemon.url("/enroll"))
            self.assertEqual(anonymous.code, 401)
            self.assertEqual(anonymous.headers.getRawHeaders("www-authenticate"), ['Basic realm="otad"'])
            await anonymous.content()
            wrong = await client.get(daemon.url("/enroll"), auth=("apple", "not-the-password"))
            self.assertEqual(wrong.code, 401)
            await wrong.content()

            enrolled = await client.get(daemon.url("/enroll"), auth=("apple", password))
            self.assertEqual(enrolled.code, 200)
            self.assertEqual(enrolled.headers.getRawHeaders("content-type"), ["application/x-apple-aspen-config"])
            signed = Path(self.mktemp())
            signed.write_bytes(await enrolled.content())
            out, err, code = await self.openssl("cms", "-verify", "-inform", "DER", "-in", str(signed), "-CAfile", str(ca_file))
            self.assertEqual(code, 0, err)
            self.assertIn(b"Verification successful", err)
            profile = plistlib.loads(out)
            self.assertEqual(profile["PayloadType"], "Profile Service")
            self.assertEqual(profile["PayloadVersion"], 1)
            self.assertEqual(profile["PayloadContent"]["URL"], f"https://localhost:{daemon.port}/profile")
            self.assertGreaterEqual(len(profile["PayloadContent"]["Challenge"]), 22)
            # The digest is SHA-256 and the signer's chain is carried.
            printed, _, _ = await self.openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(signed))
            self.assertIn(b"sha256", printed)
            self.assertIn(b"Root CA", printed)
            self.assertNotIn(password.encode(), daemon.output.split(b"password", 1)[1].split(b"\n", 1)[1])

        return ensureDeferred(run())

    def test_phase2_with_fake_device(self) -> None:
        """Over real TLS the fake iPhone enrolls, gets a SCEP payload in phase 2, and its replay and a 10 MB body are refused."""

        async def run() -> None:
            daemon, apple, ca_pem = await self.daemon_trusting_fake_apple()
            device = FakeDevice(reactor, daemon.url("/"), ca_pem, apple, "00008030-001A2B3C4D5E6F70")
            self.addCleanup(lambda: ensureDeferred(device.close()))
            service = await device.enroll("apple", daemon.first_password)
            challenge = service["PayloadContent"]["Challenge"]
            profile = await device.phase2(challenge)
            scep = profile["PayloadContent"][0]["PayloadContent"]
            self.assertEqual(scep["URL"], daemon.url("/scep"))
            self.assertEqual(scep["Keysize"], 2048)
            with self.assertRaises(UnexpectedResponse) as replay:
                await device.phase2(challenge)
            self.assertEqual(replay.exception.response.code, 403)
            huge = await device.request(b"POST", "/profile", body=b"A" * (10 * 1024 * 1024))
            self.assertEqual(huge.code, 413)
            self.assertIn(b"request body larger than", huge.body)

        return ensureDeferred(run())

    def test_scep_enrollment_with_fake_device(self) -> None:
        """The fake iPhone gets its identity over SCEP (POST, then GET for a second device) bound to its UDID."""

        async def run() -> None:
            daemon, apple, ca_pem = await self.daemon_trusting_fake_apple()
            root = x509.load_pem_x509_certificate(ca_pem)
            for udid, use_get in (("00008030-00AA00BB00CC00DD", False), ("00008030-00EE00FF00112233", True)):
                device = FakeDevice(reactor, daemon.url("/"), ca_pem, apple, udid)
                self.addCleanup(lambda device=device: ensureDeferred(device.close()))
                service = await device.enroll("apple", daemon.first_password)
                profile = await device.phase2(service["PayloadContent"]["Challenge"])
                cert = await device.scep_enroll(profile["PayloadContent"][0], use_get=use_get)
                cert.verify_directly_issued_by(root)
                self.assertEqual(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value, udid)
                self.assertEqual(device_binding(cert), udid)
                # The SCEP challenge is one-time: the same payload can't enroll twice.
                with self.assertRaises(SCEPRefused):
                    await device.scep_enroll(profile["PayloadContent"][0])

        return ensureDeferred(run())

    def test_restart_reuses_certificates(self) -> None:
        """A second start on the same data directory serves the same CA and shows the same, still unused, first password."""

        async def run() -> None:
            first = self.new_daemon()
            await first.start()
            ca_before = (first.data_dir / "certs" / "ca.pem").read_bytes()
            await first.stop()
            second = self.new_daemon(first.data_dir)
            await second.start()
            self.assertEqual(second.first_password, first.first_password)
            response = await second.client().get(second.url("/CA"))
            der = await response.content()
            self.assertEqual(x509.load_der_x509_certificate(der), x509.load_pem_x509_certificate(ca_before))

        return ensureDeferred(run())

    def test_huge_header_gets_431(self) -> None:
        """Over real TLS, a 20 KB header line gets a prompt 431 and the connection closes."""

        async def run() -> None:
            daemon = self.new_daemon()
            await daemon.start()
            context = ssl.create_default_context(cafile=str(daemon.data_dir / "certs" / "ca.pem"))
            request = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"

            def exchange() -> bytes:
                import socket

                with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(request)
                        answer = b""
                        while chunk := tls.recv(4096):
                            answer += chunk
                        return answer

            from twisted.internet.threads import deferToThread

            answer = await deferToThread(exchange)
            self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer[:100])

        return ensureDeferred(run())

    def test_json_log(self) -> None:
        """With json_log set, each request is a JSON line with path, status, outcome and ms, and the password is not kept."""

        async def run() -> None:
            folder = Path(self.mktemp()).absolute()
            folder.mkdir()
            config = folder / "otad.conf"
            config.write_text(f"[server]\njson_log = {folder / 'events.jsonl'}\n")
            daemon = self.new_daemon(folder, ("--config", str(config)))
            await daemon.start()
            response = await daemon.client().get(daemon.url("/nope"))
            await response.content()
            await daemon.stop()
            events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
            requests = [event for event in events if event.get("path") == "/nope"]
            self.assertEqual(len(requests), 1)
            self.assertEqual((requests[0]["status"], requests[0]["method"]), (404, "GET"))
            self.assertIn("ms", requests[0])
            self.assertIn("refused", requests[0]["outcome"])
            self.assertNotIn(daemon.first_password, (folder / "events.jsonl").read_text())

        return ensureDeferred(run())

    def test_bad_config_stops_start(self) -> None:
        """An unknown key in the config file stops the start with a one-line error naming it."""

        async def run() -> None:
            config = Path(self.mktemp()).absolute()
            config.write_text("[server]\nlisten_on = ssl:1\n")
            daemon = self.new_daemon(extra=("--config", str(config)))
            with self.assertRaises(DaemonExited) as raised:
                await daemon.start()
            self.assertIn("unknown config key [server] listen_on", str(raised.exception))
            self.assertNotEqual(daemon.exit_code, 0)

        return ensureDeferred(run())

    def test_invalid_template_stops_start(self) -> None:
        """A phase-3 template with the seed developer's mistake (no PayloadIdentifier) stops the start, naming the file."""

        async def run() -> None:
            folder = Path(self.mktemp()).absolute()
            (folder / "profiles").mkdir(parents=True)
            (folder / "profiles" / "bad.plist").write_bytes(
                plistlib.dumps([{"PayloadType": "com.apple.webClip.managed", "PayloadVersion": 1, "Label": "x", "URL": "https://x"}])
            )
            config = folder / "otad.conf"
            config.write_text(f"[profile]\ntemplates = {folder / 'profiles'}\n")
            daemon = self.new_daemon(folder, ("--config", str(config)))
            with self.assertRaises(DaemonExited) as raised:
                await daemon.start()
            self.assertIn("otad cannot start", str(raised.exception))
            self.assertIn("bad.plist", str(raised.exception))
            self.assertIn("PayloadIdentifier", str(raised.exception))

        return ensureDeferred(run())

    def test_unreadable_users_file_path(self) -> None:
        """A users file in a missing directory stops the start with a clear error, not a traceback loop."""

        async def run() -> None:
            daemon = self.new_daemon(extra=("--htpasswd", "/nonexistent-dir/htpasswd"))
            with self.assertRaises(DaemonExited) as raised:
                await daemon.start()
            self.assertIn("otad cannot start", str(raised.exception))
            self.assertIn("/nonexistent-dir", str(raised.exception))

        return ensureDeferred(run())
