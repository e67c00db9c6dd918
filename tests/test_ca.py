"""Tests for otad.ca: first-start bootstrap, reuse, refusal to regenerate, and the certificates' shape."""

from __future__ import annotations

import datetime
import functools
import stat
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial import unittest

from otad import ca


def _bootstrap(directory: Path, hostname: str = "otad.test", now: datetime.datetime | None = None) -> tuple[ca.Authority, list[str]]:
    lines: list[str] = []
    authority = ca.bootstrap(
        directory,
        hostname=hostname,
        organization="Test Org",
        common_name="Test Root",
        ca_key_size=3072,
        now=now or datetime.datetime.now(datetime.UTC),
        report=lines.append,
    )
    return authority, lines


@functools.cache
def _first_start() -> tuple[Path, ca.Authority, list[str]]:
    """One bootstrap shared by the tests below, which work on copies of its directory."""
    template = Path(tempfile.mkdtemp(prefix="otad-test-")) / "certs"
    authority, lines = _bootstrap(template)
    return template, authority, lines


class BootstrapTests(unittest.TestCase):
    def setUp(self) -> None:
        self.template, self.authority, self.lines = _first_start()

    def copy(self) -> Path:
        target = Path(self.mktemp()) / "certs"
        target.mkdir(parents=True)
        for source in self.template.iterdir():
            (target / source.name).write_bytes(source.read_bytes())
            (target / source.name).chmod(source.stat().st_mode & 0o777)
        return target

    def test_first_start_creates_everything(self) -> None:
        """An empty certs/ gets a CA, a TLS, a profile-signing and an RA identity, each reported."""
        names = sorted(p.name for p in self.template.iterdir())
        self.assertEqual(names, sorted(f"{n}.{e}" for n in ("ca", "tls", "signing", "ra") for e in ("key", "pem")))
        self.assertEqual(len(self.lines), 8)

    def test_private_keys_are_0600(self) -> None:
        """Every private key file is readable by its owner only; no temporary files are left behind."""
        for path in self.template.glob("*.key"):
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, path.name)
        self.assertEqual(list(self.template.glob(".*")), [])

    def test_second_start_reuses(self) -> None:
        """A second start loads the same keys and certificates and creates nothing."""
        directory = self.copy()
        authority, lines = _bootstrap(directory)
        self.assertEqual(lines, [])
        self.assertEqual(authority.root.cert, self.authority.root.cert)
        self.assertEqual(authority.tls.cert, self.authority.tls.cert)

    def test_root_ca_shape(self) -> None:
        """The root is a self-signed SHA-256 CA of the configured size, with keyCertSign and cRLSign, for ten years."""
        cert = self.authority.root.cert
        self.assertEqual(cert.issuer, cert.subject)
        self.assertEqual(cert.signature_hash_algorithm.name, "sha256")
        self.assertEqual(cert.public_key().key_size, 3072)
        self.assertTrue(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_cert_sign and usage.crl_sign)
        self.assertGreaterEqual((cert.not_valid_after_utc - cert.not_valid_before_utc).days, 3650)

    def test_tls_certificate_shape(self) -> None:
        """The TLS certificate: RSA 2048, SAN hostname + localhost + 127.0.0.1, serverAuth, at most 825 days."""
        cert = self.authority.tls.cert
        self.assertEqual(cert.public_key().key_size, 2048)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["otad.test", "localhost"])
        self.assertEqual([str(a) for a in san.get_values_for_type(x509.IPAddress)], ["127.0.0.1"])
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertLessEqual((cert.not_valid_after_utc - cert.not_valid_before_utc).days, 825)
        self.assertEqual(cert.issuer, self.authority.root.cert.subject)

    def test_ra_certificate_shape(self) -> None:
        """The SCEP RA has digitalSignature and keyEncipherment and is not a CA, as Apple devices require."""
        cert = self.authority.ra.cert
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.digital_signature and usage.key_encipherment)
        self.assertFalse(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)

    def test_missing_key_is_not_regenerated(self) -> None:
        """A certificate whose key has vanished stops the start instead of silently getting a new key."""
        directory = self.copy()
        (directory / "signing.key").unlink()
        error = self.assertRaises(ca.BootstrapError, _bootstrap, directory)
        self.assertIn("signing.key", str(error))

    def test_missing_ca_key_with_leaves(self) -> None:
        """Leaf files without the CA stop the start; otad will not mint a new CA over them."""
        directory = self.copy()
        (directory / "ca.key").unlink()
        (directory / "ca.pem").unlink()
        error = self.assertRaises(ca.BootstrapError, _bootstrap, directory)
        self.assertIn("no CA key", str(error))

    def test_key_without_certificate_gets_one(self) -> None:
        """A key left without its certificate (a crash between the writes) gets a new certificate for the same key."""
        directory = self.copy()
        (directory / "ra.pem").unlink()
        authority, lines = _bootstrap(directory)
        self.assertEqual(authority.ra.cert.public_key(), self.authority.ra.key.public_key())
        self.assertEqual(len(lines), 1)

    def test_mismatched_key(self) -> None:
        """A certificate that does not match its key stops the start with both file names."""
        directory = self.copy()
        (directory / "tls.key").write_bytes((directory / "ra.key").read_bytes())
        error = self.assertRaises(ca.BootstrapError, _bootstrap, directory)
        self.assertIn("tls.pem does not match", str(error))

    def test_tls_renewed_before_expiry(self) -> None:
        """Near its expiry the TLS certificate is renewed (same key), and the renewal is reported."""
        directory = self.copy()
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=820)
        authority, lines = _bootstrap(directory, now=later)
        self.assertGreater(authority.tls.cert.not_valid_after_utc, later + datetime.timedelta(days=800))
        self.assertEqual(authority.tls.key.public_key(), self.authority.tls.key.public_key())
        self.assertTrue(any("renewed" in line for line in lines))

    def test_hostname_change_is_reported(self) -> None:
        """Starting with a host name the TLS certificate lacks produces a warning line, not a new key."""
        directory = self.copy()
        _, lines = _bootstrap(directory, hostname="other.test")
        self.assertTrue(any("warning" in line and "other.test" in line for line in lines))


class WriteAtomicallyTests(unittest.TestCase):
    def test_replaces_whole_file_with_mode(self) -> None:
        """write_atomically replaces the file in one step with the given mode."""
        path = Path(self.mktemp())
        path.write_bytes(b"old")
        ca.write_atomically(path, b"new contents", 0o600)
        self.assertEqual(path.read_bytes(), b"new contents")
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)


class ClientCertificateTests(unittest.TestCase):
    def setUp(self) -> None:
        _, self.authority, _ = _first_start()
        self.key = self.authority.ra.key  # any RSA key will do for the subject's key
        self.now = datetime.datetime.now(datetime.UTC)

    def issue(self, requested: list[x509.ExtensionType], **options: object) -> x509.Certificate:
        extensions = x509.Extensions([x509.Extension(e.oid, False, e) for e in requested])
        return ca.issue_client_certificate(
            self.authority.root,
            self.key.public_key(),
            x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "device")]),
            extensions,
            udid="UDID-1",
            serial=2**70 + 5,
            now=self.now,
            lifetime=datetime.timedelta(days=365),
            **options,  # type: ignore[arg-type]
        )

    def usage(self, cert: x509.Certificate) -> tuple[bool, bool]:
        value = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        return value.digital_signature, value.key_encipherment

    def test_requested_key_usage_within_allowed(self) -> None:
        """A CSR asking for digitalSignature only gets only that; asking for nothing gets everything allowed."""
        signature_only = ca._key_usage(digital_signature=True)
        self.assertEqual(self.usage(self.issue([signature_only])), (True, False))
        self.assertEqual(self.usage(self.issue([])), (True, True))
        self.assertEqual(self.usage(self.issue([], allowed_usage=("keyEncipherment",))), (False, True))
        self.assertEqual(self.usage(self.issue([signature_only], allowed_usage=("keyEncipherment",))), (False, True))

    def test_client_auth_serial_and_binding(self) -> None:
        """The certificate has EKU clientAuth, the given serial, SHA-256, and the UDID binding."""
        cert = self.issue([])
        self.assertEqual(cert.serial_number, 2**70 + 5)
        self.assertEqual(cert.signature_hash_algorithm.name, "sha256")
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertEqual(ca.device_binding(cert), "UDID-1")

    def test_requested_names_dropped_or_copied(self) -> None:
        """Requested SANs are dropped by default; with copy_names they are kept, but a forged UDID URI never is."""
        requested = x509.SubjectAlternativeName(
            [x509.DNSName("host.example"), x509.UniformResourceIdentifier(ca.UDID_URI_PREFIX + "FORGED")]
        )
        dropped = self.issue([requested]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(dropped.get_values_for_type(x509.DNSName), [])
        copied_cert = self.issue([requested], copy_names=True)
        copied = copied_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(copied.get_values_for_type(x509.DNSName), ["host.example"])
        self.assertEqual(ca.device_binding(copied_cert), "UDID-1")
        self.assertNotIn(ca.UDID_URI_PREFIX + "FORGED", copied.get_values_for_type(x509.UniformResourceIdentifier))
