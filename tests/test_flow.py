"""The whole over-the-air flow against the real daemon over TLS: /, /CA, /enroll, phase 2, SCEP or PKCS#12, phase 3."""

from __future__ import annotations

import functools
import plistlib
import signal
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from otad.store import Store
from tests.daemon import Daemon
from tests.fakeapple import FakeAppleHierarchy, self_signed_identity
from tests.fakedevice import FakeDevice, UnexpectedResponse
from tests.helpers import device_binding
from tests.stores import PostgreSQLStore, SQLiteStore, raw


@functools.cache
def apple() -> FakeAppleHierarchy:
    return FakeAppleHierarchy.create()


class FlowTests(SQLiteStore, unittest.TestCase):
    """On the SQLite store; PostgreSQLFlowTests runs every test again on PostgreSQL."""

    timeout = 120

    async def started(self, *, config: str = "", data_dir: Path | None = None) -> Daemon:
        """A daemon on a new data directory (or ``data_dir``), with ``config`` and the store's section in its config file."""
        if data_dir is None:
            data_dir = Path(self.mktemp()).absolute()
            data_dir.mkdir(parents=True)
            (data_dir / "anchors.pem").write_bytes(apple().anchors_pem())
            (data_dir / "otad.conf").write_text(config + self.store_config(data_dir))
        daemon = Daemon(data_dir, ("--device-ca", str(data_dir / "anchors.pem"), "--config", str(data_dir / "otad.conf")))
        self.addCleanup(daemon.stop)
        await daemon.start()
        return daemon

    def device(self, daemon: Daemon, udid: str) -> FakeDevice:
        ca_pem = (daemon.data_dir / "certs" / "ca.pem").read_bytes()
        device = FakeDevice(reactor, daemon.url("/"), ca_pem, apple(), udid)
        self.addCleanup(lambda: ensureDeferred(device.close()))
        return device

    async def through_phase2(self, daemon: Daemon, device: FakeDevice, password: str) -> dict:
        welcome = await device.request(b"GET", "/")
        self.assertEqual(welcome.code, 200)
        await device.fetch_ca()
        service = await device.enroll("apple", password)
        return await device.phase2(service["PayloadContent"]["Challenge"])

    def check_configuration(self, daemon: Daemon, device: FakeDevice, outer: dict, payloads: list[dict]) -> None:
        self.assertEqual(outer["PayloadType"], "Configuration")
        self.assertIsInstance(outer["EncryptedPayloadContent"], bytes)
        self.assertNotIn("PayloadContent", outer)
        types = [payload["PayloadType"] for payload in payloads]
        self.assertEqual(types, ["com.apple.webClip.managed", "com.apple.security.scep"])
        self.assertEqual(payloads[1]["PayloadContent"]["URL"], daemon.url("/scep"))
        self.assertEqual(payloads[1]["PayloadContent"]["Subject"][1][0][1], device.udid)
        self.assertGreaterEqual(len(payloads[1]["PayloadContent"]["Challenge"]), 22)

    async def openssl_decrypts(self, device: FakeDevice, envelope: bytes) -> bytes:
        """`openssl cms -decrypt` with the device's own key: the independent oracle for the envelope."""
        assert device.scep_identity is not None
        cert, key = device.scep_identity
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "env.der").write_bytes(envelope)
        (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "key.pem").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        out, err, code = await getProcessOutputAndValue(
            "openssl",
            [
                "cms",
                "-decrypt",
                "-inform",
                "DER",
                "-in",
                str(folder / "env.der"),
                "-recip",
                str(folder / "cert.pem"),
                "-inkey",
                str(folder / "key.pem"),
            ],
            env={"PATH": "/usr/bin:/bin"},
        )
        self.assertEqual(code, 0, err)
        return out

    def test_scep_flow(self) -> None:
        """SCEP mode end to end; the encrypted configuration decrypts with the device key, and openssl agrees."""

        async def run() -> None:
            daemon = await self.started()
            device = self.device(daemon, "00008101-000A1B2C3D4E5F60")
            enrollment = await self.through_phase2(daemon, device, daemon.first_password)
            await device.scep_enroll(enrollment["PayloadContent"][0])
            outer, payloads = await device.phase3()
            self.check_configuration(daemon, device, outer, payloads)
            plain = await self.openssl_decrypts(device, outer["EncryptedPayloadContent"])
            self.assertEqual([p["PayloadType"] for p in plistlib.loads(plain)], [p["PayloadType"] for p in payloads])
            # Asking again is how updates reach a device: the same identifier, fresh UUIDs.
            again, again_payloads = await device.phase3()
            self.assertEqual(again["PayloadIdentifier"], outer["PayloadIdentifier"])
            self.assertNotEqual(again["PayloadUUID"], outer["PayloadUUID"])
            store = Store.open_existing(self.store_location(daemon.data_dir))
            self.addCleanup(store.close)
            assert device.scep_identity is not None
            self.assertEqual(store.delivery_count(format(device.scep_identity[0].serial_number, "x")), 2)

        return ensureDeferred(run())

    def test_pkcs12_flow(self) -> None:
        """PKCS#12 mode: phase 2 carries a <data> PKCS#12 with a password; the device imports it and runs phase 3."""

        async def run() -> None:
            daemon = await self.started(config="[enrollment]\nidentity = pkcs12\n")
            device = self.device(daemon, "00008101-000A1B2C3D4E5F61")
            enrollment = await self.through_phase2(daemon, device, daemon.first_password)
            payload = enrollment["PayloadContent"][0]
            self.assertEqual(payload["PayloadType"], "com.apple.security.pkcs12")
            self.assertIsInstance(payload["PayloadContent"], bytes)
            self.assertTrue(payload["Password"])
            device.install_pkcs12(payload)
            assert device.scep_identity is not None
            self.assertEqual(device_binding(device.scep_identity[0]), device.udid)
            outer, payloads = await device.phase3()
            self.check_configuration(daemon, device, outer, payloads)

        return ensureDeferred(run())

    def test_restart_between_scep_and_phase3(self) -> None:
        """A daemon killed after SCEP and restarted still serves phase 3: the state persisted."""

        async def run() -> None:
            daemon = await self.started()
            device = self.device(daemon, "00008101-000A1B2C3D4E5F62")
            enrollment = await self.through_phase2(daemon, device, daemon.first_password)
            await device.scep_enroll(enrollment["PayloadContent"][0])
            await daemon.stop(signal.SIGKILL)
            restarted = await self.started(data_dir=daemon.data_dir)
            moved = self.device(restarted, device.udid)
            moved.scep_identity = device.scep_identity
            outer, payloads = await moved.phase3()
            self.check_configuration(restarted, moved, outer, payloads)

        return ensureDeferred(run())

    def test_phase3_refusals(self) -> None:
        """Phase 3 refuses another device's UDID, a look-alike CA's certificate, an expired and a revoked identity."""

        async def run() -> None:
            daemon = await self.started()
            device = self.device(daemon, "00008101-000A1B2C3D4E5F63")
            enrollment = await self.through_phase2(daemon, device, daemon.first_password)
            cert = await device.scep_enroll(enrollment["PayloadContent"][0])
            assert device.scep_identity is not None

            impostor = self.device(daemon, "00008101-00FFFFFFFFFFFFFF")
            impostor.scep_identity = device.scep_identity
            with self.assertRaises(UnexpectedResponse) as wrong_udid:
                await impostor.phase3()
            self.assertEqual(wrong_udid.exception.response.code, 403)
            self.assertIn(b"bound to another device", wrong_udid.exception.response.body)

            # A certificate with otad's CA's exact issuer name, serial and subject, signed by another key.
            root = x509.load_pem_x509_certificate((daemon.data_dir / "certs" / "ca.pem").read_bytes())
            _, fake_ca_key = self_signed_identity("look-alike")
            forged = (
                x509.CertificateBuilder()
                .subject_name(cert.subject)
                .issuer_name(root.subject)
                .public_key(device.scep_identity[1].public_key())
                .serial_number(cert.serial_number)
                .not_valid_before(cert.not_valid_before_utc)
                .not_valid_after(cert.not_valid_after_utc)
                .add_extension(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value, critical=False)
                .sign(fake_ca_key, hashes.SHA256())
            )
            forger = self.device(daemon, device.udid)
            forger.scep_identity = (forged, device.scep_identity[1])
            with self.assertRaises(UnexpectedResponse) as look_alike:
                await forger.phase3()
            # Not signed by otad's CA, so it is judged as a device identity, and it chains to no anchor.
            self.assertEqual(look_alike.exception.response.code, 403)
            self.assertIn(b"not a trusted device identity", look_alike.exception.response.body)

            serial = format(cert.serial_number, "x")
            location = self.store_location(daemon.data_dir)
            raw(location, "UPDATE certificates SET not_after = 1 WHERE serial = ?", (serial,))
            with self.assertRaises(UnexpectedResponse) as expired:
                await device.phase3()
            self.assertEqual(expired.exception.response.code, 403)
            self.assertIn(b"expired", expired.exception.response.body)
            raw(location, "UPDATE certificates SET not_after = ? WHERE serial = ?", (cert.not_valid_after_utc.timestamp(), serial))

            store = Store.open_existing(location)
            self.addCleanup(store.close)
            self.assertTrue(store.revoke(serial, reason="lost", now=time.time()))
            with self.assertRaises(UnexpectedResponse) as revoked:
                await device.phase3()
            self.assertEqual(revoked.exception.response.code, 403)
            self.assertIn(b"revoked", revoked.exception.response.body)

        return ensureDeferred(run())


class PostgreSQLFlowTests(PostgreSQLStore, FlowTests):
    """Every FlowTests test again, the daemon on a PostgreSQL store."""
