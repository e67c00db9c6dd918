"""
Tests of the fake iPhone itself: against OpenSSL, against messages built here,
and over real TLS against a tiny stub server (otad is not involved).
"""

from __future__ import annotations

import ast
import base64
import datetime
import functools
import hashlib
import ipaddress
import os
import plistlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asn1crypto import cms
from asn1crypto import core as asn1_core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import AttributeOID, NameOID
from twisted.internet import defer, reactor, ssl
from twisted.internet.interfaces import IListeningPort
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.server import Request

from tests.fakeapple import FakeAppleHierarchy, self_signed_identity
from tests.fakedevice import (
    CONTENT_TYPE_ASPEN_CONFIG,
    CONTENT_TYPE_CA_CERT,
    CONTENT_TYPE_CA_RA_CERT,
    CONTENT_TYPE_PKI_MESSAGE,
    OID_SCEP_FAIL_INFO,
    OID_SCEP_MESSAGE_TYPE,
    OID_SCEP_PKI_STATUS,
    OID_SCEP_RECIPIENT_NONCE,
    OID_SCEP_SENDER_NONCE,
    OID_SCEP_TRANSACTION_ID,
    CMSError,
    FakeDevice,
    PKIRequest,
    ProfileError,
    SCEPError,
    SCEPPending,
    SCEPRefused,
    UnexpectedResponse,
    build_pkcs_req,
    decrypt_enveloped,
    envelope,
    parse_cert_rep,
    select_scep_certs,
    sign_cms,
    subject_from_payload,
    unwrap_signed,
    validate_profile,
    verify_signed,
)

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")

UTC = datetime.UTC
PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER

SUBJECT = [[["O", "ACME Inc."]], [["CN", "Profile Service (device 1)"]]]


# ---------------------------------------------------------------- fixtures
# RSA key generation dominates the run time, so every key is made once.


@functools.cache
def apple() -> FakeAppleHierarchy:
    """The fake Apple hierarchy shared by the module."""
    return FakeAppleHierarchy.create()


@functools.cache
def device_key() -> rsa.RSAPrivateKey:
    """The key the device puts in its CSR (iOS: Keysize from the payload)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _issue(
    subject: x509.Name,
    public_key: Any,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    own_key: rsa.RSAPrivateKey | None = None,
    *,
    ca: bool = False,
    san: Sequence[x509.GeneralName] = (),
    usage: str = "sig+enc",
) -> x509.Certificate:
    """A certificate as a small CA (not otad's) would issue it."""
    now = datetime.datetime.now(UTC)
    issuer_name = subject if issuer is None else issuer[0].subject
    signing_key = own_key if issuer is None else issuer[1]
    assert signing_key is not None
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=not ca and "enc" in usage,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@functools.cache
def server_pki() -> dict[str, tuple[x509.Certificate, rsa.RSAPrivateKey]]:
    """
    A stand-in server CA with TLS, profile-signing and RA identities.

    The TLS certificate has SAN localhost + 127.0.0.1, like otad's; a second
    one names only otad.invalid, to show the device checks hostnames.
    """
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    ca_key, tls_key, ra_key = keys
    ca_cert = _issue(_name("Stub Root CA"), ca_key.public_key(), None, ca_key, ca=True)
    ca = (ca_cert, ca_key)
    loopback = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    return {
        "ca": ca,
        "tls": (
            _issue(_name("localhost"), tls_key.public_key(), ca, san=loopback),
            tls_key,
        ),
        "wrong_host": (
            _issue(
                _name("otad.invalid"),
                tls_key.public_key(),
                ca,
                san=[x509.DNSName("otad.invalid")],
            ),
            tls_key,
        ),
        # the profile signer reuses the TLS key: only the certificate matters
        "signing": (
            _issue(_name("Stub profile signing"), tls_key.public_key(), ca),
            tls_key,
        ),
        "ra": (_issue(_name("Stub RA"), ra_key.public_key(), ca), ra_key),
    }


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(PEM) for c in certs)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _openssl(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run the openssl CLI (the independent oracle); never used on a live reactor."""
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True, check=False)


def _attr(oid: str, value: asn1_core.Asn1Value) -> tuple[str, bytes]:
    return (oid, value.dump())


def _signed_attrs(der: bytes) -> dict[str, Any]:
    """Signed attributes of a SignedData as {dotted OID: parsed first value}."""
    signer_info = cms.ContentInfo.load(der)["content"]["signer_infos"][0]
    attrs = signer_info["signed_attrs"]
    if attrs.native is None:
        return {}
    return {a["type"].dotted: asn1_core.Asn1Value.load(a["values"][0].dump()) for a in attrs}


def _cert_rep(
    request: PKIRequest,
    *,
    status: str = "0",
    fail_info: str | None = None,
    transaction_id: str | None = None,
    recipient_nonce: bytes | None = None,
    signer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    issued: list[x509.Certificate] | None = None,
) -> bytes:
    """
    A CertRep as RFC 8894 describes it, built here and not by the device.

    SUCCESS content: cryptography's EnvelopedData (AES-256) to the request's
    signer certificate, of a degenerate PKCS#7 holding ``issued``.
    """
    attributes = [
        _attr(OID_SCEP_MESSAGE_TYPE, asn1_core.PrintableString("3")),
        _attr(OID_SCEP_PKI_STATUS, asn1_core.PrintableString(status)),
        _attr(
            OID_SCEP_TRANSACTION_ID,
            asn1_core.PrintableString(transaction_id or request.transaction_id),
        ),
        _attr(OID_SCEP_SENDER_NONCE, asn1_core.OctetString(os.urandom(16))),
        _attr(
            OID_SCEP_RECIPIENT_NONCE,
            asn1_core.OctetString(request.sender_nonce if recipient_nonce is None else recipient_nonce),
        ),
    ]
    if fail_info is not None:
        attributes.append(_attr(OID_SCEP_FAIL_INFO, asn1_core.PrintableString(fail_info)))
    content = b""
    if issued:
        content = (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(pkcs7.serialize_certificates(issued, DER))
            .add_recipient(request.signer_cert)
            .set_content_encryption_algorithm(algorithms.AES256)
            .encrypt(DER, [pkcs7.PKCS7Options.Binary])
        )
    cert, key = signer or server_pki()["ca"]
    return sign_cms(content, cert, key, signed_attributes=attributes)


def _pkcs_req(**kwargs: Any) -> PKIRequest:
    """A PKCSReq from the shared device key to the stub CA."""
    key = device_key()
    signer, _ = self_signed_identity("device SCEP signer", key=key)
    options: dict[str, Any] = {"subject": SUBJECT, "challenge": "scep-challenge-1"}
    options.update(kwargs)
    return build_pkcs_req(key, signer, server_pki()["ca"][0], **options)


def _issue_for(request: PKIRequest) -> x509.Certificate:
    return _issue(
        request.csr.subject,
        request.csr.public_key(),
        server_pki()["ca"],
        usage="sig+enc",
    )


# ---------------------------------------------------------------- stub server


class _StubServer(resource.Resource):
    """
    Just enough of an OTA server to drive the device's network code.

    Built from cryptography/asn1crypto and the device's own signing helper;
    it proves the plumbing (TLS, auth, URLs, content types), not otad.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.base = ""
        self.challenge = "phase1-challenge"
        self.scep_challenge = "scep-challenge-1"
        self.payload_scep_challenge = "scep-challenge-1"
        self.pkcs12_mode = False
        self.seen: list[tuple[bytes, bytes]] = []

    def _signed_profile(self, request: Request, profile: dict[str, Any]) -> bytes:
        cert, key = server_pki()["signing"]
        request.setHeader(b"content-type", CONTENT_TYPE_ASPEN_CONFIG)
        return sign_cms(
            plistlib.dumps(profile),
            cert,
            key,
            certificates=[cert, server_pki()["ca"][0]],
        )

    def render(self, request: Request) -> bytes:
        assert request.path is not None and request.method is not None
        self.seen.append((request.method, request.uri or b""))
        path = request.path.decode()
        if path == "/CA":
            request.setHeader(b"content-type", CONTENT_TYPE_CA_CERT)
            return bytes(server_pki()["ca"][0].public_bytes(DER))
        if path == "/enroll":
            return self._enroll(request)
        if path == "/profile":
            return self._profile(request)
        if path == "/scep":
            return self._scep(request)
        request.setResponseCode(404)
        return b"not found"

    def _enroll(self, request: Request) -> bytes:
        if request.getHeader(b"authorization") != b"Basic " + base64.b64encode(b"u:p"):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="stub"')
            return b"no"
        return self._signed_profile(
            request,
            {
                "PayloadType": "Profile Service",
                "PayloadVersion": 1,
                "PayloadIdentifier": "test.profile-service",
                "PayloadUUID": "2D9F6C40-0001-4000-8000-000000000001",
                "PayloadContent": {
                    "URL": self.base + "/profile",
                    "DeviceAttributes": ["UDID", "VERSION", "PRODUCT"],
                    "Challenge": self.challenge,
                },
            },
        )

    def _profile(self, request: Request) -> bytes:
        assert request.content is not None
        body = request.content.read()
        ca = server_pki()["ca"][0]
        content, signer = unwrap_signed(body, [apple().root, ca])
        attrs = plistlib.loads(content)
        common = {"PayloadVersion": 1, "PayloadType": "Configuration"}
        if signer.issuer == ca.subject:
            inner = [
                {
                    "PayloadType": "com.apple.webClip.managed",
                    "PayloadVersion": 1,
                    "PayloadIdentifier": "test.webclip",
                    "PayloadUUID": "2D9F6C40-0003-4000-8000-000000000001",
                    "URL": "https://intranet.example",
                    "Label": attrs["UDID"],
                }
            ]
            encrypted = (
                pkcs7.PKCS7EnvelopeBuilder()
                .set_data(plistlib.dumps(inner))
                .add_recipient(signer)
                .set_content_encryption_algorithm(algorithms.AES256)
                .encrypt(DER, [pkcs7.PKCS7Options.Binary])
            )
            return self._signed_profile(
                request,
                {
                    **common,
                    "PayloadIdentifier": "test.final",
                    "PayloadUUID": "2D9F6C40-0004-4000-8000-000000000001",
                    "EncryptedPayloadContent": encrypted,
                },
            )
        if attrs.get("CHALLENGE") != self.challenge:
            request.setResponseCode(403)
            return b"bad challenge"
        payload: dict[str, Any] = {
            "PayloadVersion": 1,
            "PayloadIdentifier": "test.identity",
            "PayloadUUID": "2D9F6C40-0002-4000-8000-000000000001",
        }
        if self.pkcs12_mode:
            key = device_key()
            cert = _issue(_name(attrs["UDID"]), key.public_key(), server_pki()["ca"])
            payload["PayloadType"] = "com.apple.security.pkcs12"
            payload["Password"] = "secret"
            payload["PayloadContent"] = pkcs12.serialize_key_and_certificates(
                b"device",
                key,
                cert,
                None,
                serialization.BestAvailableEncryption(b"secret"),
            )
        else:
            payload["PayloadType"] = "com.apple.security.scep"
            payload["PayloadContent"] = {
                "URL": self.base + "/scep",
                "Subject": SUBJECT,
                "Challenge": self.payload_scep_challenge,
                "Keysize": 2048,
                "Key Type": "RSA",
                "Key Usage": 5,
            }
        return self._signed_profile(
            request,
            {
                **common,
                "PayloadIdentifier": "test.enroll",
                "PayloadUUID": "2D9F6C40-0005-4000-8000-000000000001",
                "PayloadContent": [payload],
            },
        )

    def _scep(self, request: Request) -> bytes:
        args = request.args or {}
        operation = args.get(b"operation", [b""])[0]
        if operation == b"GetCACaps":
            request.setHeader(b"content-type", b"text/plain")
            return b"AES\nSHA-256\nPOSTPKIOperation\n"
        if operation == b"GetCACert":
            request.setHeader(b"content-type", CONTENT_TYPE_CA_RA_CERT)
            return bytes(pkcs7.serialize_certificates([server_pki()["ra"][0], server_pki()["ca"][0]], DER))
        assert operation == b"PKIOperation"
        if request.method == b"POST":
            assert request.content is not None
            der = request.content.read()
        else:
            der = base64.b64decode(args[b"message"][0])
        verified = verify_signed(der, None)
        attrs = verified.signed_attributes or {}
        ra_cert, ra_key = server_pki()["ra"]
        csr_der = pkcs7.pkcs7_decrypt_der(verified.content, ra_cert, ra_key, [])
        csr = x509.load_der_x509_csr(csr_der)
        request_view = PKIRequest(
            der=der,
            csr=csr,
            transaction_id=asn1_core.PrintableString.load(attrs[OID_SCEP_TRANSACTION_ID][0]).native,
            sender_nonce=asn1_core.OctetString.load(attrs[OID_SCEP_SENDER_NONCE][0]).native,
            signer_cert=verified.signer,
            recipient=ra_cert,
            aes=True,
            digest=verified.digest_algorithm,
        )
        password = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
        request.setHeader(b"content-type", CONTENT_TYPE_PKI_MESSAGE)
        if password != self.scep_challenge.encode():
            return _cert_rep(request_view, status="2", fail_info="2", signer=server_pki()["ra"])
        return _cert_rep(request_view, issued=[_issue_for(request_view)], signer=server_pki()["ra"])


class _TrackingSite(server.Site):
    """A Site that can close every connection it accepted (no dirty reactor)."""

    def __init__(self, root: resource.Resource) -> None:
        super().__init__(root)
        self.timeOut = None  # no idle-timeout DelayedCall left pending
        self.lost: list[defer.Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        done: defer.Deferred[None] = defer.Deferred()
        self.lost.append(done)
        original = protocol.connectionLost

        def connection_lost(reason: Any) -> None:
            original(reason)
            done.callback(None)

        protocol.connectionLost = connection_lost
        return protocol


# ---------------------------------------------------------------- tests


class FakeDeviceTests(unittest.TestCase):
    """The fake device, checked by OpenSSL and by messages made here."""

    def setUp(self) -> None:
        self.tmp = Path(self.mktemp())
        self.tmp.mkdir(parents=True)
        self.root_pem = self.tmp / "apple-root.pem"
        self.root_pem.write_bytes(apple().anchors_pem())

    def _device(self, base: str = "https://127.0.0.1:1", **kwargs: Any) -> FakeDevice:
        options: dict[str, Any] = {"scep_key": device_key()}
        options.update(kwargs)
        ca_pem = options.pop("ca_pem", _pem(server_pki()["ca"][0]))
        device = FakeDevice(reactor, base, ca_pem, apple(), "0000-FAKE-UDID", **options)
        self.addCleanup(lambda: defer.ensureDeferred(device.close()))
        return device

    # -- independence

    def test_fakes_do_not_import_otad(self) -> None:
        """fakedevice.py and fakeapple.py import nothing from otad, so otad's
        CMS/SCEP bugs cannot be mirrored by the client."""
        for name in ("fakedevice.py", "fakeapple.py"):
            tree = ast.parse((Path(__file__).parent / name).read_text())
            modules = [
                alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names
            ] + [
                node.module or "" for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
            ]  # fmt: skip
            self.assertTrue(modules)
            self.assertFalse([m for m in modules if m.split(".")[0] == "otad"], name)

    # -- the fake Apple hierarchy

    def test_apple_hierarchy_is_shaped_like_apples(self) -> None:
        """Root is a self-signed RSA-2048 CA; the Device CA is expired; leaves are
        RSA-1024, SHA-1, CN = UDID; chain() is Device CA, intermediate, root."""
        hierarchy = apple()
        cert, key = hierarchy.issue_device_identity("UDID-42")
        self.assertEqual(hierarchy.root.issuer, hierarchy.root.subject)
        self.assertEqual(hierarchy.root.public_key().key_size, 2048)
        self.assertLess(hierarchy.device_ca.not_valid_after_utc, datetime.datetime.now(UTC))
        self.assertEqual(key.key_size, 1024)
        self.assertEqual(cert.signature_hash_algorithm.name, "sha1")  # type: ignore[union-attr]
        self.assertEqual(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "UDID-42")
        self.assertEqual(
            hierarchy.chain(),
            [hierarchy.device_ca, hierarchy.intermediate, hierarchy.root],
        )
        self.assertEqual(hierarchy.anchors_pem().count(b"BEGIN CERTIFICATE"), 1)

    def test_openssl_accepts_apple_chain_only_without_time_checks(self) -> None:
        """OpenSSL verifies a device leaf with -no_check_time and fails without it
        ("expired"), exactly as with the real Apple chain."""
        cert, _ = apple().issue_device_identity("UDID-43")
        leaf = self.tmp / "leaf.pem"
        chain = self.tmp / "chain.pem"
        leaf.write_bytes(_pem(cert))
        chain.write_bytes(_pem(apple().device_ca, apple().intermediate))
        args = ["verify", "-CAfile", str(self.root_pem), "-untrusted", str(chain)]
        self.assertEqual(_openssl(*args, "-no_check_time", str(leaf)).returncode, 0)
        failed = _openssl(*args, str(leaf))
        self.assertNotEqual(failed.returncode, 0)
        self.assertIn(b"expired", failed.stdout + failed.stderr)

    # -- phase 2 body

    def test_phase2_body_verifies_with_openssl(self) -> None:
        """The phase-2 body verifies with `openssl cms -verify` against the fake
        Apple root (-no_check_time) and carries the plist as its content."""
        device = self._device()
        body = device.phase2_body("challenge-1")
        path = self.tmp / "phase2.der"
        path.write_bytes(body)
        result = _openssl(
            "cms", "-verify", "-inform", "DER", "-in", str(path),
            "-CAfile", str(self.root_pem), "-purpose", "any", "-no_check_time",
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(plistlib.loads(result.stdout)["CHALLENGE"], "challenge-1")

    def test_phase2_body_is_shaped_like_a_devices(self) -> None:
        """Like a real device: BER indefinite length, SHA-1, no signed attributes,
        certificates = leaf + Device CA + intermediate + root (a SET: order is
        not kept), content embedded."""
        device = self._device()
        body = device.phase2_body("challenge-1")
        self.assertEqual(body[:2], b"\x30\x80")
        signed_data = cms.ContentInfo.load(body)["content"]
        signer_info = signed_data["signer_infos"][0]
        self.assertIsNone(signer_info["signed_attrs"].native)
        self.assertEqual(signer_info["digest_algorithm"]["algorithm"].native, "sha1")
        certs = [x509.load_der_x509_certificate(c.chosen.dump()) for c in signed_data["certificates"]]
        assert device.identity is not None
        self.assertEqual(set(certs), {device.identity[0], *apple().chain()})
        self.assertEqual(len(certs), 4)
        self.assertIsNotNone(signed_data["encap_content_info"]["content"].native)

    def test_phase2_body_attributes(self) -> None:
        """The plist holds UDID, CHALLENGE, VERSION, PRODUCT, SERIAL, IMEI, MEID and
        the extra attributes; no challenge means no CHALLENGE key; bytes stay data."""
        device = self._device(attributes={"MAC_ADDRESS_EN0": "00:11:22:33:44:55"})
        content, _ = unwrap_signed(device.phase2_body("c"), apple().root)
        attrs = plistlib.loads(content)
        for key in (
            "UDID",
            "CHALLENGE",
            "VERSION",
            "PRODUCT",
            "SERIAL",
            "IMEI",
            "MEID",
        ):
            self.assertIn(key, attrs)
        self.assertEqual(attrs["UDID"], "0000-FAKE-UDID")
        self.assertEqual(attrs["MAC_ADDRESS_EN0"], "00:11:22:33:44:55")
        without, _ = unwrap_signed(device.phase2_body(None), apple().root)
        self.assertNotIn("CHALLENGE", plistlib.loads(without))
        data, _ = unwrap_signed(device.phase2_body(b"\x00\x01"), apple().root)
        self.assertIn(b"<data>", data)
        self.assertEqual(plistlib.loads(data)["CHALLENGE"], b"\x00\x01")

    def test_phase2_body_with_signed_attributes_and_sha256(self) -> None:
        """signed_attributes=True, SHA-256, DER: OpenSSL verifies it and the signer
        info carries contentType and messageDigest."""
        device = self._device()
        body = device.phase2_body("c", signed_attributes=True, digest="sha256", ber=False)
        path = self.tmp / "phase2-attrs.der"
        path.write_bytes(body)
        result = _openssl(
            "cms", "-verify", "-inform", "DER", "-in", str(path),
            "-CAfile", str(self.root_pem), "-purpose", "any", "-no_check_time",
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        attrs = _signed_attrs(body)
        self.assertIn("1.2.840.113549.1.9.3", attrs)
        self.assertIn("1.2.840.113549.1.9.4", attrs)

    def test_phase2_body_with_outside_signer(self) -> None:
        """A self-signed signer (outside the anchors) is embedded alone and does
        not verify against the Apple root."""
        device = self._device()
        outsider = self_signed_identity("rogue device", key=device_key())
        body = device.phase2_body("c", signer=outsider)
        _content, signer = unwrap_signed(body, None)
        self.assertEqual(signer, outsider[0])
        self.assertRaises(CMSError, unwrap_signed, body, apple().root)

    # -- the verifier

    def test_unwrap_signed_accepts_openssl_and_rejects_flipped_byte(self) -> None:
        """unwrap_signed verifies an `openssl cms -sign -nodetach -binary` message
        (signed attributes, SHA-256) and rejects it after one content byte flips."""
        cert, key = server_pki()["signing"]
        (self.tmp / "signer.pem").write_bytes(_pem(cert))
        (self.tmp / "signer.key").write_bytes(_key_pem(key))
        (self.tmp / "content").write_bytes(b"<plist>hello</plist>")
        result = _openssl(
            "cms", "-sign", "-nodetach", "-binary", "-outform", "DER",
            "-md", "sha256", "-in", str(self.tmp / "content"),
            "-signer", str(self.tmp / "signer.pem"),
            "-inkey", str(self.tmp / "signer.key"),
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        der = result.stdout
        ca = server_pki()["ca"][0]
        content, signer = unwrap_signed(der, ca)
        self.assertEqual(content, b"<plist>hello</plist>")
        self.assertEqual(signer, cert)
        index = der.index(b"hello")
        tampered = der[:index] + b"j" + der[index + 1 :]
        self.assertRaises(CMSError, unwrap_signed, tampered, ca)
        self.assertRaises(CMSError, unwrap_signed, der, apple().root)
        self.assertRaises(CMSError, unwrap_signed, der[:-10], ca)

    def test_unwrap_signed_rejects_bad_signature_without_attributes(self) -> None:
        """Without signed attributes the signature covers the content: a changed
        signature byte or content byte is refused."""
        body = self._device().phase2_body("c", ber=False)
        info = cms.ContentInfo.load(body)
        signature = info["content"]["signer_infos"][0]["signature"].native
        index = body.index(signature)
        broken = body[: index + 5] + bytes([body[index + 5] ^ 1]) + body[index + 6 :]
        self.assertRaises(CMSError, unwrap_signed, broken, apple().root)
        index = body.index(b"CHALLENGE")
        tampered = body[:index] + b"X" + body[index + 1 :]
        self.assertRaises(CMSError, unwrap_signed, tampered, apple().root)

    def test_unwrap_signed_real_device_message(self) -> None:
        """A real macOS phase-2 body (BER, SHA-1, no attributes) verifies against
        the real Apple root with dates ignored."""
        fixture = FIXTURES / "zentral" / "ota-phase2-macos13.der"
        if not fixture.exists():
            raise unittest.SkipTest("shared fixtures not present")
        root = x509.load_pem_x509_certificate((FIXTURES / "apple" / "apple_root_ca.pem").read_bytes())
        content, signer = unwrap_signed(fixture.read_bytes(), root)
        self.assertIn("UDID", plistlib.loads(content))
        self.assertEqual(signer.signature_hash_algorithm.name, "sha1")  # type: ignore[union-attr]
        self.assertRaises(CMSError, unwrap_signed, fixture.read_bytes(), apple().root)

    # -- envelopes

    def test_envelope_round_trips_with_openssl(self) -> None:
        """envelope() output (AES-256 and DES3) decrypts with `openssl cms -decrypt`,
        and decrypt_enveloped opens OpenSSL's -aes256 and -des3 envelopes."""
        cert, key = server_pki()["ra"]
        (self.tmp / "ra.pem").write_bytes(_pem(cert))
        (self.tmp / "ra.key").write_bytes(_key_pem(key))
        for aes, cipher, oid_name in (
            (True, "-aes256", "aes256_cbc"),
            (False, "-des3", "tripledes_3key"),
        ):
            ours = envelope(b"payload bytes", cert, aes=aes)
            algorithm = cms.ContentInfo.load(ours)["content"]["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native
            self.assertEqual(algorithm, oid_name)
            result = _openssl(
                "cms", "-decrypt", "-inform", "DER", "-recip", str(self.tmp / "ra.pem"),
                "-inkey", str(self.tmp / "ra.key"), stdin=ours,
            )  # fmt: skip
            self.assertEqual(result.stdout, b"payload bytes", result.stderr)
            theirs = _openssl(
                "cms", "-encrypt", "-binary", "-outform", "DER", cipher,
                str(self.tmp / "ra.pem"), stdin=b"from openssl",
            ).stdout  # fmt: skip
            self.assertEqual(decrypt_enveloped(theirs, cert, key), b"from openssl")
            other = server_pki()["signing"]
            self.assertRaises(CMSError, decrypt_enveloped, theirs, other[0], other[1])

    # -- SCEP request

    def test_subject_from_payload(self) -> None:
        """Apple's array-of-arrays subject maps to RDNs (abbreviations and dotted
        OIDs); the "0" typo from Apple's sample is refused."""
        name = subject_from_payload([[["O", "ACME Inc."]], [["CN", "x"], ["0.9.2342.19200300.100.1.25", "dc"]]])
        self.assertEqual(len(name.rdns), 2)
        self.assertEqual(name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value, "ACME Inc.")
        self.assertEqual(name.get_attributes_for_oid(NameOID.DOMAIN_COMPONENT)[0].value, "dc")
        self.assertRaises(ProfileError, subject_from_payload, [[["0", "Example, Inc."]]])
        self.assertRaises(ProfileError, subject_from_payload, [["CN", "flat"]])

    def test_pkcs_req_csr_has_subject_and_challenge(self) -> None:
        """The CSR carries the payload Subject, challengePassword = Challenge and a
        keyUsage request from "Key Usage" 5; its key is the signer's key."""
        request = _pkcs_req(key_usage=5)
        csr = request.csr
        self.assertTrue(csr.is_signature_valid)
        self.assertEqual(csr.subject.rfc4514_string(), "CN=Profile Service (device 1),O=ACME Inc.")
        self.assertEqual(
            csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value,
            b"scep-challenge-1",
        )
        usage = csr.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.digital_signature and usage.key_encipherment)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(
            csr.public_key().public_bytes(DER, spki),
            request.signer_cert.public_key().public_bytes(DER, spki),
        )

    def test_pkcs_req_openssl_verifies_and_decrypts(self) -> None:
        """`openssl cms -verify -noverify` accepts the PKIMessage and `openssl cms
        -decrypt` with the CA key turns its content into the CSR (AES and DES3)."""
        ca_cert, ca_key = server_pki()["ca"]
        (self.tmp / "ca.pem").write_bytes(_pem(ca_cert))
        (self.tmp / "ca.key").write_bytes(_key_pem(ca_key))
        for aes in (True, False):
            request = _pkcs_req(aes=aes, sha256=aes)
            verified = _openssl(
                "cms",
                "-verify",
                "-noverify",
                "-inform",
                "DER",
                "-binary",
                stdin=request.der,
            )
            self.assertEqual(verified.returncode, 0, verified.stderr)
            decrypted = _openssl(
                "cms", "-decrypt", "-inform", "DER", "-binary",
                "-recip", str(self.tmp / "ca.pem"), "-inkey", str(self.tmp / "ca.key"),
                stdin=verified.stdout,
            )  # fmt: skip
            self.assertEqual(decrypted.returncode, 0, decrypted.stderr)
            self.assertEqual(decrypted.stdout, request.csr.public_bytes(DER))

    def test_pkcs_req_attributes(self) -> None:
        """The PKIMessage's signed attributes: messageType "19" and transactionID
        (hex SHA-256 of the public key) as PrintableString, a 16-octet
        senderNonce; SHA-256 or SHA-1 as asked; the signer is self-signed."""
        request = _pkcs_req()
        attrs = _signed_attrs(request.der)
        self.assertIsInstance(attrs[OID_SCEP_MESSAGE_TYPE], asn1_core.PrintableString)
        self.assertEqual(attrs[OID_SCEP_MESSAGE_TYPE].native, "19")
        spki = device_key().public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertIsInstance(attrs[OID_SCEP_TRANSACTION_ID], asn1_core.PrintableString)
        self.assertEqual(
            attrs[OID_SCEP_TRANSACTION_ID].native,
            hashlib.sha256(spki).hexdigest().upper(),
        )
        self.assertIsInstance(attrs[OID_SCEP_SENDER_NONCE], asn1_core.OctetString)
        self.assertEqual(attrs[OID_SCEP_SENDER_NONCE].native, request.sender_nonce)
        self.assertEqual(len(request.sender_nonce), 16)
        self.assertEqual(request.signer_cert.issuer, request.signer_cert.subject)
        signer_info = cms.ContentInfo.load(request.der)["content"]["signer_infos"][0]
        self.assertEqual(signer_info["digest_algorithm"]["algorithm"].native, "sha256")
        sha1 = cms.ContentInfo.load(_pkcs_req(sha256=False).der)["content"]["signer_infos"][0]
        self.assertEqual(sha1["digest_algorithm"]["algorithm"].native, "sha1")

    # -- SCEP reply

    def test_cert_rep_success(self) -> None:
        """A SUCCESS CertRep built here yields the issued certificate for our key."""
        request = _pkcs_req()
        issued = _issue_for(request)
        der = _cert_rep(request, issued=[server_pki()["ca"][0], issued])
        cert = parse_cert_rep(der, ca_certs=[server_pki()["ca"][0]], request=request, key=device_key())
        self.assertEqual(cert, issued)

    def test_cert_rep_mismatches_are_refused(self) -> None:
        """A CertRep with another recipientNonce or transactionID, or signed by
        someone the GetCACert answer did not name, is refused."""
        request = _pkcs_req()
        issued = [_issue_for(request)]
        ca_certs = [server_pki()["ca"][0]]
        for der in (
            _cert_rep(request, issued=issued, recipient_nonce=os.urandom(16)),
            _cert_rep(request, issued=issued, transaction_id="OTHER"),
            _cert_rep(
                request,
                issued=issued,
                signer=self_signed_identity("rogue", key=device_key()),
            ),
        ):
            self.assertRaises(
                SCEPError,
                parse_cert_rep,
                der,
                ca_certs=ca_certs,
                request=request,
                key=device_key(),
            )

    def test_cert_rep_failure_and_pending(self) -> None:
        """pkiStatus 2 raises SCEPRefused(failInfo) and 3 raises SCEPPending(txid)."""
        request = _pkcs_req()
        ca_certs = [server_pki()["ca"][0]]
        refused = self.assertRaises(
            SCEPRefused, parse_cert_rep, _cert_rep(request, status="2", fail_info="2"),
            ca_certs=ca_certs, request=request, key=device_key(),
        )  # fmt: skip
        self.assertEqual(refused.fail_info, 2)
        pending = self.assertRaises(
            SCEPPending, parse_cert_rep, _cert_rep(request, status="3"),
            ca_certs=ca_certs, request=request, key=device_key(),
        )  # fmt: skip
        self.assertEqual(pending.transaction_id, request.transaction_id)

    def test_select_scep_certs(self) -> None:
        """GetCACert: a single DER CA is the recipient; in a CA+RA bag the non-CA
        keyEncipherment certificate (the RA) is."""
        ca, ra = server_pki()["ca"][0], server_pki()["ra"][0]
        self.assertEqual(select_scep_certs(CONTENT_TYPE_CA_CERT, ca.public_bytes(DER)), (ca, [ca]))
        bag = pkcs7.serialize_certificates([ca, ra], DER)
        recipient, certs = select_scep_certs(CONTENT_TYPE_CA_RA_CERT, bag)
        self.assertEqual(recipient, ra)
        self.assertEqual(set(certs), {ca, ra})
        self.assertRaises(SCEPError, select_scep_certs, b"text/plain", bag)

    # -- profiles

    def test_validate_profile_refuses_what_ios_refuses(self) -> None:
        """Profiles missing PayloadUUID/PayloadIdentifier, with the wrong type, or a
        PKCS#12 payload given as a string instead of data are refused."""
        good = {
            "PayloadType": "Configuration",
            "PayloadVersion": 1,
            "PayloadIdentifier": "x",
            "PayloadUUID": "u",
            "PayloadContent": [
                {
                    "PayloadType": "com.apple.security.pkcs12",
                    "PayloadVersion": 1,
                    "PayloadIdentifier": "y",
                    "PayloadUUID": "v",
                    "PayloadContent": b"p12",
                }
            ],
        }
        self.assertEqual(validate_profile(good, "Configuration"), good)
        self.assertRaises(ProfileError, validate_profile, good, "Profile Service")
        for key in ("PayloadUUID", "PayloadIdentifier", "PayloadVersion"):
            broken = {k: v for k, v in good.items() if k != key}
            self.assertRaises(ProfileError, validate_profile, broken, "Configuration")
        as_string = {
            **good,
            "PayloadContent": [{**good["PayloadContent"][0], "PayloadContent": "cDEy"}],
        }  # type: ignore[dict-item]
        self.assertRaises(ProfileError, validate_profile, as_string, "Configuration")

    # -- over TLS

    async def _serve(self, identity: str = "tls") -> tuple[_StubServer, str]:
        stub = _StubServer()
        site = _TrackingSite(stub)
        cert, key = server_pki()[identity]
        options = ssl.PrivateCertificate.loadPEM(_pem(cert) + _key_pem(key)).options()
        port: IListeningPort = reactor.listenSSL(0, site, options, interface="127.0.0.1")  # type: ignore[attr-defined]
        base = f"https://127.0.0.1:{port.getHost().port}"
        stub.base = base

        async def stop() -> None:
            await port.stopListening()
            await defer.DeferredList(site.lost)

        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        return stub, base

    async def test_full_flow_against_stub_server(self) -> None:
        """Over real TLS: /CA, /enroll with Basic auth, phase 2, SCEP with an RA
        (POST, then GET with message=), phase 3 decrypting the payloads."""
        stub, base = await self._serve()
        device = self._device(base)
        ca = await device.fetch_ca()
        self.assertEqual(ca, server_pki()["ca"][0])
        with self.assertRaises(UnexpectedResponse) as refused:
            await device.enroll("u", "wrong")
        self.assertEqual(refused.exception.response.code, 401)
        service = await device.enroll("u", "p")
        self.assertEqual(device.profile_url, base + "/profile")
        challenge = service["PayloadContent"]["Challenge"]
        configuration = await device.phase2(challenge)
        scep_payload = configuration["PayloadContent"][0]
        cert = await device.scep_enroll(scep_payload)
        self.assertEqual(cert.subject, subject_from_payload(SUBJECT))
        self.assertIn((b"POST", b"/scep?operation=PKIOperation"), stub.seen)
        cert_get = await device.scep_enroll(scep_payload, use_get=True)
        self.assertTrue(any(uri.startswith(b"/scep?operation=PKIOperation&message=") for _, uri in stub.seen))
        self.assertEqual(device.scep_identity, (cert_get, device_key()))
        outer, payloads = await device.phase3()
        self.assertIn("EncryptedPayloadContent", outer)
        self.assertEqual(payloads[0]["Label"], "0000-FAKE-UDID")

    async def test_scep_refusal_and_pkcs12_mode(self) -> None:
        """A wrong SCEP challenge surfaces as SCEPRefused; in PKCS#12 mode
        install_pkcs12 sets the identity that phase 3 then uses."""
        stub, base = await self._serve()
        device = self._device(base)
        stub.payload_scep_challenge = "something else"
        configuration = await device.phase2(stub.challenge)
        with self.assertRaises(SCEPRefused):
            await device.scep_enroll(configuration["PayloadContent"][0])
        stub.pkcs12_mode = True
        configuration = await device.phase2(stub.challenge)
        device.install_pkcs12(configuration["PayloadContent"][0])
        assert device.scep_identity is not None
        _, payloads = await device.phase3()
        self.assertEqual(payloads[0]["PayloadType"], "com.apple.webClip.managed")

    async def test_tls_checks_chain_and_hostname(self) -> None:
        """The device refuses a server whose chain is not from its CA, and one whose
        certificate does not name 127.0.0.1."""
        _, base = await self._serve()
        stranger = self._device(base, ca_pem=_pem(apple().root))
        with self.assertRaises(Exception) as untrusted:
            await stranger.fetch_ca()
        self.assertIn("certificate verify failed", repr(untrusted.exception))
        _, wrong_base = await self._serve("wrong_host")
        wrong = self._device(wrong_base)
        with self.assertRaises(Exception) as mismatch:
            await wrong.fetch_ca()
        self.assertIn("VerificationError", repr(mismatch.exception))
