"""Tests for otad.ca: first-start bootstrap, reuse, refusal to regenerate, and the certificates' shape."""

from __future__ import annotations

import datetime
import functools
import stat
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from twisted.trial import unittest

from otad import ca, files
from tests.helpers import NOW, device_binding

DAY = datetime.timedelta(days=1)


def _bootstrap(
    directory: Path, hostname: str = "otad.test", now: datetime.datetime = NOW, warnings: list[str] | None = None, create: bool = True
) -> tuple[ca.Authority, list[str]]:
    lines: list[str] = []
    authority = ca.bootstrap(
        directory,
        hostname=hostname,
        organization="Test Org",
        common_name="Test Root",
        ca_key_size=3072,
        now=now,
        report=lines.append,
        warn=(warnings if warnings is not None else lines).append,
        create=create,
    )
    return authority, lines


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


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
        """An empty certs/ gets a CA, a TLS, a profile-signing, three RA (single, encryption, signing) and an OCSP
        responder identity, each key and certificate reported."""
        names = sorted(p.name for p in self.template.iterdir())
        leaves = ("ca", "tls", "signing", "ra", "ra-encrypt", "ra-sign", "ocsp")
        self.assertEqual(names, sorted(f"{n}.{e}" for n in leaves for e in ("key", "pem")))
        self.assertEqual(len(self.lines), 14)

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
        """The root is a self-signed SHA-256 CA of the configured size for ten years: critical basicConstraints CA
        (no intermediates below it), critical keyUsage keyCertSign and cRLSign only, and subject and authority key
        identifiers (the same)."""
        cert = self.authority.root.cert
        self.assertEqual(cert.issuer, cert.subject)
        cert.verify_directly_issued_by(cert)
        self.assertEqual(cert.signature_hash_algorithm.name, "sha256")
        self.assertEqual(cert.public_key().key_size, 3072)
        constraints = _extension(cert, x509.BasicConstraints)
        self.assertEqual((constraints.critical, constraints.value.ca, constraints.value.path_length), (True, True, 0))
        usage = _extension(cert, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertEqual(
            (usage.value.key_cert_sign, usage.value.crl_sign, usage.value.digital_signature, usage.value.key_encipherment),
            (True, True, False, False),
        )
        self.assertEqual(_extension(cert, x509.SubjectKeyIdentifier).value, x509.SubjectKeyIdentifier.from_public_key(cert.public_key()))
        self.assertEqual(
            _extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier, _extension(cert, x509.SubjectKeyIdentifier).value.digest
        )
        self.assertEqual(cert.not_valid_after_utc - cert.not_valid_before_utc, ca.CA_VALIDITY)

    def test_tls_certificate_meets_apple_rules(self) -> None:
        """The TLS certificate meets Apple's rules: at most 825 days from notBefore to notAfter (backdating included),
        the host name in subjectAltName (with 127.0.0.1 and ::1), EKU serverAuth only, RSA 2048, SHA-256; and RFC 5280's:
        not a CA (critical), critical keyUsage digitalSignature (ECDHE only signs), SKI, and AKI naming the root's key."""
        cert = self.authority.tls.cert
        validity = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertLessEqual(validity, datetime.timedelta(days=825))
        self.assertEqual(validity, ca.TLS_VALIDITY)
        self.assertEqual(cert.not_valid_before_utc, NOW - ca.CLOCK_SKEW)
        self.assertEqual(cert.public_key().key_size, 2048)
        self.assertEqual(cert.signature_hash_algorithm.name, "sha256")
        san = _extension(cert, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["otad.test"])
        self.assertEqual([str(a) for a in san.get_values_for_type(x509.IPAddress)], ["127.0.0.1", "::1"])
        self.assertEqual(list(_extension(cert, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.SERVER_AUTH])
        self.assertLeafBasics(cert)
        usage = _extension(cert, x509.KeyUsage).value
        self.assertEqual((usage.digital_signature, usage.key_encipherment, usage.key_cert_sign), (True, False, False))

    def assertLeafBasics(self, cert: x509.Certificate) -> None:
        """What RFC 5280 asks of every end-entity certificate otad issues."""
        constraints = _extension(cert, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertFalse(constraints.value.ca)
        self.assertTrue(_extension(cert, x509.KeyUsage).critical)
        root_key_id = _extension(self.authority.root.cert, x509.SubjectKeyIdentifier).value.digest
        self.assertEqual(_extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier, root_key_id)
        self.assertEqual(_extension(cert, x509.SubjectKeyIdentifier).value, x509.SubjectKeyIdentifier.from_public_key(cert.public_key()))
        self.assertEqual(cert.issuer, self.authority.root.cert.subject)
        cert.verify_directly_issued_by(self.authority.root.cert)
        self.assertGreater(cert.serial_number, 2**63)
        self.assertLess(cert.serial_number.bit_length(), 160)
        self.assertEqual(cert.version, x509.Version.v3)
        self.assertEqual(cert.signature_hash_algorithm.name, "sha256")
        self.assertLessEqual(cert.not_valid_after_utc, self.authority.root.cert.not_valid_after_utc)

    def test_signing_certificate_shape(self) -> None:
        """The profile signer: a leaf with critical keyUsage digitalSignature only, EKU emailProtection, three years."""
        cert = self.authority.signer.cert
        self.assertLeafBasics(cert)
        usage = _extension(cert, x509.KeyUsage).value
        self.assertEqual((usage.digital_signature, usage.key_encipherment, usage.key_cert_sign), (True, False, False))
        self.assertEqual(list(_extension(cert, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.EMAIL_PROTECTION])
        self.assertEqual(cert.not_valid_after_utc - cert.not_valid_before_utc, ca.SIGNER_VALIDITY)

    def test_ra_certificate_shape(self) -> None:
        """The SCEP RA is a leaf with digitalSignature and keyEncipherment, as Apple devices require, for three years."""
        cert = self.authority.ra.cert
        self.assertLeafBasics(cert)
        usage = _extension(cert, x509.KeyUsage).value
        self.assertTrue(usage.digital_signature and usage.key_encipherment)
        self.assertEqual(cert.not_valid_after_utc - cert.not_valid_before_utc, ca.RA_VALIDITY)

    def test_ndes_ra_certificates(self) -> None:
        """The NDES layout's RAs: an encryption RA with keyEncipherment only and a signing RA with digitalSignature
        only, both leaves of the root for three years."""
        for identity, expected in ((self.authority.ra_encrypt, (False, True)), (self.authority.ra_sign, (True, False))):
            self.assertLeafBasics(identity.cert)
            usage = _extension(identity.cert, x509.KeyUsage).value
            self.assertEqual((usage.digital_signature, usage.key_encipherment), expected)
            self.assertEqual(identity.cert.not_valid_after_utc - identity.cert.not_valid_before_utc, ca.RA_VALIDITY)

    def test_ocsp_responder_certificate(self) -> None:
        """The delegated OCSP responder: a leaf with critical keyUsage digitalSignature only, EKU OCSPSigning only,
        id-pkix-ocsp-nocheck, and no CRL distribution point or AIA of its own."""
        cert = self.authority.ocsp.cert
        self.assertLeafBasics(cert)
        usage = _extension(cert, x509.KeyUsage).value
        self.assertEqual((usage.digital_signature, usage.key_encipherment), (True, False))
        self.assertEqual(list(_extension(cert, x509.ExtendedKeyUsage).value), [ExtendedKeyUsageOID.OCSP_SIGNING])
        _extension(cert, x509.OCSPNoCheck)
        for kind in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
            self.assertRaises(x509.ExtensionNotFound, cert.extensions.get_extension_for_class, kind)

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
        """Within 60 days of its end the TLS certificate is renewed with the same key, and the renewal is reported."""
        directory = self.copy()
        later = NOW + ca.TLS_VALIDITY - 59 * DAY
        authority, lines = _bootstrap(directory, now=later)
        self.assertEqual(authority.tls.cert.not_valid_after_utc, later - ca.CLOCK_SKEW + ca.TLS_VALIDITY)
        self.assertEqual(authority.tls.key.public_key(), self.authority.tls.key.public_key())
        self.assertEqual(x509.load_pem_x509_certificate((directory / "tls.pem").read_bytes()), authority.tls.cert)
        self.assertTrue(any("renewed" in line and "tls.pem" in line for line in lines), lines)
        self.assertEqual(authority.signer.cert, self.authority.signer.cert)

    def test_not_renewed_early(self) -> None:
        """With more than 60 days left the TLS certificate is not renewed, and nothing is reported of it."""
        directory = self.copy()
        authority, lines = _bootstrap(directory, now=NOW + ca.TLS_VALIDITY - 61 * DAY)
        self.assertEqual(authority.tls.cert, self.authority.tls.cert)
        self.assertEqual([line for line in lines if "tls.pem" in line], [])

    def test_signing_and_ra_renewed_with_same_keys(self) -> None:
        """Near the end of three years the signing and RA certificates are renewed for their keys; the TLS and OCSP ones too."""
        directory = self.copy()
        later = NOW + ca.SIGNER_VALIDITY - 10 * DAY
        authority, lines = _bootstrap(directory, now=later)
        for renewed, old in ((authority.signer, self.authority.signer), (authority.ra, self.authority.ra)):
            self.assertNotEqual(renewed.cert, old.cert)
            self.assertEqual(renewed.cert.public_key(), old.key.public_key())
            self.assertEqual(renewed.cert.not_valid_before_utc, later - ca.CLOCK_SKEW)
            self.assertEqual(renewed.cert.subject, old.cert.subject)
        self.assertEqual(len([line for line in lines if line.startswith("renewed")]), 6)

    def test_warnings_near_the_root_end(self) -> None:
        """Near the root's end leaves cannot outlast it: each own certificate within 30 days of the root's end is
        warned about (renewal would change nothing, so none happens), and the root itself from a year before."""
        directory = self.copy()
        root_end = self.authority.root.cert.not_valid_after_utc
        warnings: list[str] = []
        _, lines = _bootstrap(directory, now=root_end - 200 * DAY, warnings=warnings)
        self.assertEqual(len(warnings), 1)
        self.assertIn("root CA expires on", warnings[0])
        warnings.clear()
        authority, _ = _bootstrap(directory, now=root_end - 20 * DAY, warnings=warnings)
        self.assertEqual(len(warnings), 7, warnings)
        self.assertTrue(all("cannot be renewed past the root CA's end" in line for line in warnings[1:]), warnings)
        for identity in (authority.tls, authority.signer, authority.ra, authority.ra_encrypt, authority.ra_sign, authority.ocsp):
            self.assertEqual(identity.cert.not_valid_after_utc, root_end)
        warnings.clear()
        _, lines = _bootstrap(directory, now=root_end - 19 * DAY, warnings=warnings)
        self.assertEqual([line for line in lines if line.startswith("renewed")], [])

    def test_hostname_change_reissues_tls(self) -> None:
        """Starting with a host name the TLS certificate lacks reissues it for the same key, naming the new host."""
        directory = self.copy()
        authority, lines = _bootstrap(directory, hostname="other.test")
        san = _extension(authority.tls.cert, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["other.test"])
        self.assertEqual(authority.tls.key.public_key(), self.authority.tls.key.public_key())
        self.assertTrue(any("does not name other.test" in line for line in lines), lines)

    def test_ip_address_hostname(self) -> None:
        """A host name that is an IP address goes into subjectAltName as an iPAddress entry."""
        directory = self.copy()
        authority, _ = _bootstrap(directory, hostname="192.0.2.7")
        san = _extension(authority.tls.cert, x509.SubjectAlternativeName).value
        self.assertEqual([str(a) for a in san.get_values_for_type(x509.IPAddress)], ["192.0.2.7", "127.0.0.1", "::1"])
        self.assertEqual(san.get_values_for_type(x509.DNSName), [])

    def test_old_tls_certificate_is_reissued(self) -> None:
        """A TLS certificate made by an older otad (825 days from now, plus 5 minutes' backdating) breaks Apple's rule
        and is reissued at the next start for the same key."""
        directory = self.copy()
        old = ca.issue(
            self.authority.root,
            self.authority.tls.key.public_key(),
            self.authority.tls.cert.subject,
            now=NOW,
            lifetime=datetime.timedelta(days=825, minutes=5),
            extensions=[
                (ext.value, ext.critical)
                for ext in self.authority.tls.cert.extensions
                if not isinstance(ext.value, (x509.BasicConstraints, x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier))
            ],
        )
        (directory / "tls.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
        authority, lines = _bootstrap(directory, now=NOW + DAY)
        self.assertLessEqual(authority.tls.cert.not_valid_after_utc - authority.tls.cert.not_valid_before_utc, datetime.timedelta(days=825))
        self.assertTrue(any("breaks Apple's TLS rules" in line and "825" in line for line in lines), lines)

    def test_check_without_create_refuses_missing_files(self) -> None:
        """A check while otad runs (create=False) never creates a key: a missing file is an error naming it."""
        directory = self.copy()
        (directory / "ra.key").unlink()
        (directory / "ra.pem").unlink()
        error = self.assertRaises(ca.BootstrapError, _bootstrap, directory, create=False)
        self.assertIn("ra.key, ra.pem", str(error))
        self.assertFalse((directory / "ra.key").exists())


class WriteAtomicallyTests(unittest.TestCase):
    def test_replaces_whole_file_with_mode(self) -> None:
        """write_atomically replaces the file in one step with the given mode."""
        path = Path(self.mktemp())
        path.write_bytes(b"old")
        files.write_atomically(path, b"new contents", 0o600, keep_mode=False)
        self.assertEqual(path.read_bytes(), b"new contents")
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)

    def test_keeps_mode_of_replaced_file(self) -> None:
        """A replaced file keeps its mode; a new file gets the mode asked for."""
        path = Path(self.mktemp())
        path.write_bytes(b"old")
        path.chmod(0o640)
        files.write_atomically(path, b"new", 0o600)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o640)
        fresh = Path(self.mktemp())
        files.write_atomically(fresh, b"new", 0o600)
        self.assertEqual(stat.S_IMODE(fresh.stat().st_mode), 0o600)


class ClientCertificateTests(unittest.TestCase):
    def setUp(self) -> None:
        _, self.authority, _ = _first_start()
        self.key = self.authority.ra.key  # any RSA key will do for the subject's key
        self.now = NOW

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
        """The device identity: EKU clientAuth, the given serial, SHA-256, the UDID binding, a critical non-CA
        basicConstraints, critical keyUsage, SKI and AKI, valid for the lifetime counted from its backdated notBefore."""
        cert = self.issue([])
        constraints = _extension(cert, x509.BasicConstraints)
        self.assertEqual((constraints.critical, constraints.value.ca), (True, False))
        self.assertTrue(_extension(cert, x509.KeyUsage).critical)
        root_key_id = _extension(self.authority.root.cert, x509.SubjectKeyIdentifier).value.digest
        self.assertEqual(_extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier, root_key_id)
        self.assertEqual(_extension(cert, x509.SubjectKeyIdentifier).value, x509.SubjectKeyIdentifier.from_public_key(cert.public_key()))
        self.assertEqual(cert.not_valid_after_utc - cert.not_valid_before_utc, datetime.timedelta(days=365))
        self.assertEqual(cert.serial_number, 2**70 + 5)
        self.assertEqual(cert.signature_hash_algorithm.name, "sha256")
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), [ExtendedKeyUsageOID.CLIENT_AUTH])
        self.assertEqual(device_binding(cert), "UDID-1")

    def test_requested_names_dropped_or_copied(self) -> None:
        """Requested SANs are dropped by default; with copy_names they are kept, but a forged UDID binding (otherName or
        the old URI form) never is."""
        requested = x509.SubjectAlternativeName(
            [x509.DNSName("host.example"), x509.UniformResourceIdentifier(ca.LEGACY_UDID_URI_PREFIX + "FORGED"), ca.udid_name("FORGED")]
        )
        dropped = self.issue([requested]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(dropped.get_values_for_type(x509.DNSName), [])
        copied_cert = self.issue([requested], copy_names=True)
        copied = copied_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(copied.get_values_for_type(x509.DNSName), ["host.example"])
        self.assertEqual(device_binding(copied_cert), "UDID-1")
        self.assertNotIn(ca.LEGACY_UDID_URI_PREFIX + "FORGED", copied.get_values_for_type(x509.UniformResourceIdentifier))
        self.assertEqual(len([name for name in copied if isinstance(name, x509.OtherName)]), 1)


class PublicationTests(unittest.TestCase):
    def test_device_certificate_says_where_to_check_revocation(self) -> None:
        """With a known publication URL, a device certificate carries a CRL distribution point (BASE/crl) and an AIA
        with the OCSP responder (BASE/ocsp) and the CA certificate (BASE/CA); without one, neither."""
        _, authority, _ = _first_start()
        key = authority.ra.key
        publication = ca.Publication("https://otad.example.com:8443")
        cert = ca.issue_client_certificate(
            authority.root,
            key.public_key(),
            x509.Name([]),
            x509.Extensions([]),
            udid="UDID-1",
            serial=2**70,
            now=NOW,
            lifetime=datetime.timedelta(days=30),
            publication=publication,
        )
        points = _extension(cert, x509.CRLDistributionPoints).value
        self.assertEqual([name.value for point in points for name in point.full_name], ["https://otad.example.com:8443/crl"])
        access = {(item.access_method, item.access_location.value) for item in _extension(cert, x509.AuthorityInformationAccess).value}
        self.assertEqual(
            access,
            {
                (x509.oid.AuthorityInformationAccessOID.OCSP, "https://otad.example.com:8443/ocsp"),
                (x509.oid.AuthorityInformationAccessOID.CA_ISSUERS, "https://otad.example.com:8443/CA"),
            },
        )
        bare = ca.issue_client_certificate(
            authority.root,
            key.public_key(),
            x509.Name([]),
            x509.Extensions([]),
            udid=None,
            serial=2**70 + 1,
            now=NOW,
            lifetime=datetime.timedelta(days=30),
        )
        self.assertRaises(x509.ExtensionNotFound, bare.extensions.get_extension_for_class, x509.CRLDistributionPoints)
