"""Tests for otad.cms, with the openssl command line as the independent oracle."""

from __future__ import annotations

import functools
import os
import random
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asn1crypto import algos, core  # type: ignore[import-untyped]
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.padding import PKCS7
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import TestCase

from otad import cms

OPENSSL = "/usr/bin/openssl"
DATA = Path(__file__).parent / "data"
ZENTRAL = DATA / "zentral" / "ota-phase2-macos13.der"
APPLE = sorted((DATA / "apple").glob("*.pem"))
APPLE_ROOT = DATA / "apple" / "apple_root_ca.pem"
CONTENT = b"<plist>otad test content, long enough to span several cipher blocks</plist>"
GENERIC = "cannot decrypt the enveloped content"


@functools.cache
def _key(index: int, bits: int = 2048) -> rsa.RSAPrivateKey:
    """Test keys, generated on first use only, because RSA key generation is slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Identity:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


def _issue(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: Identity | None = None,
    *,
    ca: bool = False,
    serial: int | None = None,
    sha1: bool = False,
) -> Identity:
    """A certificate for key, self-signed when issuer is None."""
    now = datetime.now(UTC)
    issuer_name = issuer.cert.subject if issuer else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    signing_key = issuer.key if issuer else key
    cert = builder.sign(signing_key, hashes.SHA256())
    if sha1:
        cert = _resign_sha1(cert, signing_key)
    return Identity(cert, key)


def _resign_sha1(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """cert signed again with SHA-1, which cryptography's builder no longer does."""
    parsed = asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))
    algorithm = {"algorithm": "sha1_rsa", "parameters": core.Null()}
    tbs = parsed["tbs_certificate"]
    tbs["signature"] = algorithm
    signature = key.sign(tbs.dump(force=True), padding.PKCS1v15(), hashes.SHA1())
    resigned = asn1_x509.Certificate(
        {
            "tbs_certificate": tbs,
            "signature_algorithm": algorithm,
            "signature_value": signature,
        }
    )
    return x509.load_der_x509_certificate(resigned.dump())


@functools.cache
def _pki() -> tuple[Identity, Identity, Identity]:
    """A test CA, a signer it issued, and another identity it issued."""
    ca = _issue("otad test CA", _key(0), ca=True)
    return ca, _issue("signer", _key(1), ca), _issue("other", _key(2), ca)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def _openssl(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([OPENSSL, *map(str, args)], capture_output=True, check=False, timeout=60)


def _must(*args: str | Path) -> bytes:
    result = _openssl(*args)
    if result.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))} failed: " + result.stderr.decode(errors="replace"))
    return result.stdout


@functools.cache
def _legacy_provider() -> bool:
    """Whether this openssl can use single DES once the legacy provider is loaded."""
    return _openssl("list", "-provider", "legacy", "-cipher-algorithms").returncode == 0


def _rebuild(der: bytes, change: Callable[[Any], None]) -> bytes:
    """Re-encode a ContentInfo after change(content) edited its parsed structure."""
    info = asn1_cms.ContentInfo.load(der)
    change(info["content"])
    return bytes(info.dump(force=True))


class _Base(TestCase):
    def files(self, **contents: bytes) -> dict[str, Path]:
        """Write each keyword's bytes to a file of that name in a fresh directory."""
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        paths = {}
        for name, data in contents.items():
            paths[name] = directory / name
            paths[name].write_bytes(data)
        return paths

    def identity_files(self) -> dict[str, Path]:
        ca, signer, other = _pki()
        return self.files(
            ca=_pem(ca.cert),
            signer=_pem(signer.cert),
            signer_key=_key_pem(signer.key),
            other=_pem(other.cert),
            other_key=_key_pem(other.key),
            content=CONTENT,
        )

    def assertCMSError(self, reason: str, function: Callable[..., object], *args: object) -> None:
        error = self.assertRaises(cms.CMSError, function, *args)
        self.assertEqual(str(error), reason)

    def assertOnlyCMSErrors(self, der: bytes, function: Callable[..., object], *args: object) -> None:
        """Every single-byte corruption of der is either accepted or a CMSError."""
        for position in range(len(der)):
            corrupted = bytearray(der)
            corrupted[position] ^= 0x41
            try:
                function(bytes(corrupted), *args)
            except cms.CMSError:
                pass
            except Exception as exc:  # noqa: BLE001 - the test is that none escape
                self.fail(f"byte {position}: {exc!r} escaped")


class CMSTests(_Base):
    """SignedData: sign, verify, and refuse what should not verify."""

    def openssl_signed(self, *options: str | Path) -> bytes:
        f = self.identity_files()
        return _must(
            "cms", "-sign", "-in", f["content"], "-signer", f["signer"],
            "-inkey", f["signer_key"], "-nodetach", "-binary", "-outform", "DER",
            *options,
        )  # fmt: skip

    def openssl_verify(self, der: bytes) -> bytes:
        f = self.identity_files()
        message = self.files(message=der)["message"]
        return _must(
            "cms", "-verify", "-inform", "DER", "-in", message, "-CAfile", f["ca"],
            "-purpose", "any", "-binary",
        )  # fmt: skip

    def test_openssl_verifies_every_digest(self) -> None:
        """What otad signs, openssl verifies and extracts intact, for every digest."""
        _, signer, _ = _pki()
        for digest in cms.DIGESTS:
            der = cms.sign(CONTENT, signer.cert, signer.key, digest=digest)
            self.assertEqual(self.openssl_verify(der), CONTENT, digest)

    def test_verifies_openssl_every_digest(self) -> None:
        """otad verifies openssl signatures, with and without signed attributes."""
        _, signer, _ = _pki()
        for digest in cms.DIGESTS:
            verified = cms.verify(self.openssl_signed("-md", digest))
            self.assertEqual(verified.content, CONTENT)
            self.assertEqual(verified.digest, digest)
            self.assertEqual(verified.signer, signer.cert)
            self.assertIn("1.2.840.113549.1.9.4", verified.attributes)

            bare = cms.verify(self.openssl_signed("-md", digest, "-noattr"))
            self.assertEqual((bare.content, bare.digest), (CONTENT, digest))
            self.assertEqual(dict(bare.attributes), {})

    def test_streamed_ber(self) -> None:
        """Indefinite-length BER from openssl -stream verifies, chunked content and all."""
        der = self.openssl_signed("-stream")
        self.assertEqual(der[:2], b"\x30\x80")
        self.assertEqual(cms.verify(der).content, CONTENT)

    def test_subject_key_identifier(self) -> None:
        """A signer identified by subjectKeyIdentifier is found among the carried certs."""
        _, signer, _ = _pki()
        verified = cms.verify(self.openssl_signed("-keyid"))
        self.assertEqual(verified.signer, signer.cert)

    def test_certificates(self) -> None:
        """The signer and chain are carried, each once, and verify() returns them all."""
        ca, signer, _ = _pki()
        der = cms.sign(CONTENT, signer.cert, signer.key, [ca.cert, signer.cert])
        self.assertEqual(
            sorted(cms.verify(der).certificates, key=_der),
            sorted([signer.cert, ca.cert], key=_der),
        )

    def test_extra_attributes(self) -> None:
        """Extra signed attributes come back verbatim, and openssl accepts them."""
        _, signer, _ = _pki()
        value = core.PrintableString("19").dump()
        der = cms.sign(
            CONTENT, signer.cert, signer.key,
            attributes=[("2.16.840.1.113733.1.9.2", value)],
        )  # fmt: skip
        attributes = cms.verify(der).attributes
        self.assertEqual(attributes["2.16.840.1.113733.1.9.2"], (value,))
        self.assertEqual(
            set(attributes),
            {
                "2.16.840.1.113733.1.9.2",
                "1.2.840.113549.1.9.3",
                "1.2.840.113549.1.9.4",
                "1.2.840.113549.1.9.5",
            },
        )
        self.assertEqual(self.openssl_verify(der), CONTENT)

    def test_attributes_as_received(self) -> None:
        """The signature is checked over the attributes as sent, not a re-encoding.

        The signer here encoded its attributes out of DER order; a verifier that
        re-encoded them (sorting the SET OF) would check the wrong bytes.
        """
        _, signer, _ = _pki()
        der = cms.sign(CONTENT, signer.cert, signer.key)
        signer_info = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]
        attrs = signer_info["signed_attrs"]
        unsorted = b"".join(reversed([attr.dump() for attr in attrs]))
        self.assertNotEqual(unsorted, attrs.contents)
        signature = signer.key.sign(
            b"\x31" + attrs.dump()[1:].replace(attrs.contents, unsorted),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
        spliced = der.replace(attrs.contents, unsorted).replace(signer_info["signature"].native, signature)
        self.assertEqual(cms.verify(spliced).content, CONTENT)

    def test_rsa_encryption_oid(self) -> None:
        """rsa_encryption_oid names rsaEncryption as the signature algorithm (for SCEP)."""
        _, signer, _ = _pki()
        der = cms.sign(CONTENT, signer.cert, signer.key, rsa_encryption_oid=True)
        signer_info = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]
        self.assertEqual(
            signer_info["signature_algorithm"]["algorithm"].dotted,
            "1.2.840.113549.1.1.1",
        )
        self.assertEqual(cms.verify(der).digest, "sha256")
        self.assertEqual(self.openssl_verify(der), CONTENT)

    def test_empty_content_is_embedded(self) -> None:
        """Empty content is still embedded as an empty OCTET STRING, not left out."""
        _, signer, _ = _pki()
        der = cms.sign(b"", signer.cert, signer.key)
        encapsulated = asn1_cms.ContentInfo.load(der)["content"]["encap_content_info"]
        self.assertEqual(encapsulated["content"].native, b"")
        self.assertEqual(cms.verify(der).content, b"")

    def test_refuses_unknown_digest(self) -> None:
        """sign() refuses a digest outside DIGESTS."""
        _, signer, _ = _pki()
        self.assertCMSError(
            "unsupported digest: md5", cms.sign, CONTENT, signer.cert, signer.key,
            (), "md5",
        )  # fmt: skip

    def test_refuses_mismatched_key(self) -> None:
        """sign() refuses a key that is not the certificate's."""
        _, signer, other = _pki()
        self.assertCMSError(
            "signer key does not match the certificate",
            cms.sign,
            CONTENT,
            signer.cert,
            other.key,
        )

    def test_flipped_content(self) -> None:
        """A changed content byte fails the messageDigest check, or the signature."""
        with_attrs = bytearray(self.openssl_signed())
        with_attrs[with_attrs.index(CONTENT) + 3] ^= 1
        self.assertCMSError("message digest does not match the content", cms.verify, bytes(with_attrs))
        bare = bytearray(self.openssl_signed("-noattr"))
        bare[bare.index(CONTENT) + 3] ^= 1
        self.assertCMSError("signature does not verify", cms.verify, bytes(bare))

    def test_flipped_signature(self) -> None:
        """A changed signature byte (the last byte of the DER) does not verify."""
        _, signer, _ = _pki()
        der = bytearray(cms.sign(CONTENT, signer.cert, signer.key))
        der[-1] ^= 1
        self.assertCMSError("signature does not verify", cms.verify, bytes(der))

    def test_message_digest_mismatch(self) -> None:
        """Validly signed attributes whose messageDigest is of other content are refused."""
        _, signer, _ = _pki()
        der = cms.sign(b"the signed content", signer.cert, signer.key)

        def swap(signed_data: asn1_cms.SignedData) -> None:
            signed_data["encap_content_info"] = {
                "content_type": "data",
                "content": b"something else",
            }

        self.assertCMSError("message digest does not match the content", cms.verify, _rebuild(der, swap))

    def test_swapped_signer_certificate(self) -> None:
        """A carried cert with the signer's issuer and serial but another key is refused."""
        ca, signer, _ = _pki()
        impostor = _issue("signer", _key(3), ca, serial=signer.cert.serial_number)
        der = cms.sign(CONTENT, signer.cert, signer.key)

        def swap(signed_data: asn1_cms.SignedData) -> None:
            signed_data["certificates"] = [asn1_cms.CertificateChoices.load(impostor.cert.public_bytes(Encoding.DER))]

        self.assertCMSError("signature does not verify", cms.verify, _rebuild(der, swap))

    def test_missing_signer_certificate(self) -> None:
        """A SignedData that does not carry its signer's certificate is refused."""
        _, signer, other = _pki()
        der = cms.sign(CONTENT, signer.cert, signer.key)

        def swap(signed_data: asn1_cms.SignedData) -> None:
            signed_data["certificates"] = [asn1_cms.CertificateChoices.load(other.cert.public_bytes(Encoding.DER))]

        self.assertCMSError("signer certificate not included", cms.verify, _rebuild(der, swap))

    def test_extra_signer(self) -> None:
        """Two SignerInfos are refused: exactly one signer is expected."""
        f = self.identity_files()
        der = self.openssl_signed("-signer", f["other"], "-inkey", f["other_key"])
        signed_data = asn1_cms.ContentInfo.load(der)["content"]
        self.assertEqual(len(signed_data["signer_infos"]), 2)
        self.assertCMSError("expected exactly one signer", cms.verify, der)

    def test_algorithms_disagree(self) -> None:
        """A shaNWithRSAEncryption that contradicts the digestAlgorithm is refused."""
        _, signer, _ = _pki()
        der = cms.sign(CONTENT, signer.cert, signer.key, digest="sha256")

        def relabel(signed_data: asn1_cms.SignedData) -> None:
            signed_data["signer_infos"][0]["signature_algorithm"] = algos.SignedDigestAlgorithm({"algorithm": "sha1_rsa"})

        self.assertCMSError(
            "signature and digest algorithms disagree",
            cms.verify,
            _rebuild(der, relabel),
        )

    def test_detached(self) -> None:
        """A detached SignedData (no embedded content) is refused."""
        f = self.identity_files()
        der = _must(
            "cms", "-sign", "-in", f["content"], "-signer", f["signer"],
            "-inkey", f["signer_key"], "-binary", "-outform", "DER",
        )  # fmt: skip
        self.assertCMSError("detached SignedData is not supported", cms.verify, der)

    def test_not_signed_data(self) -> None:
        """An EnvelopedData given to verify() is named as not a SignedData."""
        _, signer, _ = _pki()
        der = cms.encrypt(CONTENT, [signer.cert])
        self.assertCMSError("not a CMS SignedData", cms.verify, der)

    def test_framing(self) -> None:
        """Empty, truncated, oversized and trailing-garbage inputs get short reasons."""
        _, signer, _ = _pki()
        der = cms.sign(CONTENT, signer.cert, signer.key)
        self.assertCMSError("empty input", cms.verify, b"")
        self.assertCMSError("truncated DER", cms.verify, der[:-10])
        self.assertCMSError("truncated DER", cms.verify, self.openssl_signed("-stream")[:-2])
        self.assertCMSError("trailing data after the CMS structure", cms.verify, der + b"\0")
        self.assertCMSError("input too large", cms.verify, b"\x30" * (17 * 1024 * 1024))
        self.assertCMSError("ASN.1 nesting too deep", cms.verify, b"\x30\x80" * 100_000)

    def test_junk(self) -> None:
        """10 MB of junk and random byte strings raise CMSError and nothing else."""
        self.assertRaises(cms.CMSError, cms.verify, b"A" * (10 * 1000 * 1000))
        self.assertRaises(cms.CMSError, cms.verify, os.urandom(10 * 1000 * 1000))
        rng = random.Random(8894)
        for _ in range(200):
            junk = rng.randbytes(rng.randrange(1, 4096))
            self.assertRaises(cms.CMSError, cms.verify, junk)

    def test_corruption_never_escapes(self) -> None:
        """No byte corruption of a DER or BER SignedData lets a non-CMSError escape."""
        _, signer, _ = _pki()
        self.assertOnlyCMSErrors(cms.sign(CONTENT, signer.cert, signer.key), cms.verify)
        self.assertOnlyCMSErrors(ZENTRAL.read_bytes(), cms.verify)


class EnvelopeTests(_Base):
    """EnvelopedData: encrypt, decrypt, and a single error for every failure."""

    def openssl_decrypt(self, der: bytes) -> bytes:
        f = self.identity_files()
        message = self.files(message=der)["message"]
        return _must(
            "cms", "-decrypt", "-inform", "DER", "-in", message, "-recip", f["signer"],
            "-inkey", f["signer_key"], "-binary",
        )  # fmt: skip

    def test_decrypts_constructed_encrypted_content(self) -> None:
        """A BER envelope whose [0] encryptedContent is constructed from OCTET STRING pieces (as Go's pkcs7 sends) decrypts."""
        from asn1crypto import cms as asn1_cms

        _, signer, _ = _pki()
        der = cms.encrypt(CONTENT * 10, [signer.cert], "aes128")
        info = asn1_cms.ContentInfo.load(der)["content"]["encrypted_content_info"]
        ciphertext = info["encrypted_content"].native

        def tlv(tag: int, body: bytes) -> bytes:
            length = len(body)
            encoded = (
                bytes([length])
                if length < 128
                else bytes([0x80 | ((length.bit_length() + 7) // 8)]) + length.to_bytes((length.bit_length() + 7) // 8, "big")
            )
            return bytes([tag]) + encoded + body

        pieces = tlv(0x04, ciphertext[:16]) + tlv(0x04, ciphertext[16:])
        constructed = tlv(0x30, info["content_type"].dump() + info["content_encryption_algorithm"].dump() + tlv(0xA0, pieces))
        enveloped = asn1_cms.ContentInfo.load(der)["content"]
        body = enveloped["version"].dump() + enveloped["recipient_infos"].dump() + constructed
        rebuilt = tlv(0x30, asn1_cms.ContentInfo.load(der)["content_type"].dump() + tlv(0xA0, tlv(0x30, body)))
        self.assertEqual(cms.decrypt(rebuilt, signer.cert, signer.key), cms.Decrypted(CONTENT * 10, "aes128"))

    def openssl_encrypt(self, *options: str | Path) -> bytes:
        f = self.identity_files()
        return _must(
            "cms", "-encrypt", "-in", f["content"], "-binary", "-outform", "DER",
            *options, f["signer"],
        )  # fmt: skip

    def test_openssl_decrypts(self) -> None:
        """What otad encrypts, openssl decrypts, for every cipher otad may use."""
        _, signer, _ = _pki()
        for cipher in ("aes128", "aes192", "aes256", "des3"):
            der = cms.encrypt(CONTENT, [signer.cert], cipher)
            self.assertEqual(self.openssl_decrypt(der), CONTENT, cipher)

    def test_decrypts_openssl(self) -> None:
        """otad decrypts openssl envelopes and reports the sender's cipher."""
        _, signer, _ = _pki()
        for cipher in ("aes128", "aes192", "aes256", "des3"):
            decrypted = cms.decrypt(self.openssl_encrypt(f"-{cipher}"), signer.cert, signer.key)
            self.assertEqual(decrypted, cms.Decrypted(CONTENT, cipher))

    def test_decrypts_openssl_des(self) -> None:
        """otad decrypts an openssl single-DES envelope (legacy provider)."""
        if not _legacy_provider():
            self.fail("this openssl has no legacy provider for single DES; .ci/run installs Debian's openssl, which has it")
        _, signer, _ = _pki()
        der = self.openssl_encrypt("-des", "-provider", "legacy", "-provider", "default")
        self.assertEqual(cms.decrypt(der, signer.cert, signer.key), cms.Decrypted(CONTENT, "des"))

    def test_decrypts_handmade_des(self) -> None:
        """otad decrypts a single-DES envelope built here without openssl."""
        _, signer, _ = _pki()
        key, iv = os.urandom(8), os.urandom(8)
        padder = PKCS7(64).padder()
        encryptor = Cipher(TripleDES(key * 3), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padder.update(CONTENT) + padder.finalize())
        ciphertext += encryptor.finalize()
        der = cms.encrypt(CONTENT, [signer.cert], "des3")

        def make_des(enveloped: asn1_cms.EnvelopedData) -> None:
            ktri = enveloped["recipient_infos"][0].chosen
            ktri["encrypted_key"] = signer.key.public_key().encrypt(key, padding.PKCS1v15())
            enveloped["encrypted_content_info"] = {
                "content_type": "data",
                "content_encryption_algorithm": {
                    "algorithm": "1.3.14.3.2.7",
                    "parameters": core.OctetString(iv),
                },
                "encrypted_content": ciphertext,
            }

        self.assertEqual(
            cms.decrypt(_rebuild(der, make_des), signer.cert, signer.key),
            cms.Decrypted(CONTENT, "des"),
        )

    def test_streamed_ber(self) -> None:
        """An indefinite-length envelope from openssl -stream decrypts."""
        _, signer, _ = _pki()
        der = self.openssl_encrypt("-aes256", "-stream")
        self.assertEqual(der[:2], b"\x30\x80")
        self.assertEqual(cms.decrypt(der, signer.cert, signer.key).content, CONTENT)

    def test_subject_key_identifier(self) -> None:
        """A recipient named by subjectKeyIdentifier is found."""
        _, signer, _ = _pki()
        der = self.openssl_encrypt("-aes128", "-keyid")
        self.assertEqual(cms.decrypt(der, signer.cert, signer.key).content, CONTENT)

    def test_several_recipients(self) -> None:
        """Every recipient of a multi-recipient envelope can decrypt it."""
        _, signer, other = _pki()
        der = cms.encrypt(CONTENT, [signer.cert, other.cert])
        self.assertEqual(cms.decrypt(der, signer.cert, signer.key).content, CONTENT)
        self.assertEqual(cms.decrypt(der, other.cert, other.key).content, CONTENT)
        self.assertEqual(self.openssl_decrypt(der), CONTENT)

    def test_fresh_keys(self) -> None:
        """Two envelopes of the same content differ (fresh key and IV each time)."""
        _, signer, _ = _pki()
        self.assertNotEqual(cms.encrypt(CONTENT, [signer.cert]), cms.encrypt(CONTENT, [signer.cert]))

    def test_refuses_des(self) -> None:
        """encrypt() refuses single DES and unknown ciphers."""
        _, signer, _ = _pki()
        self.assertCMSError(
            "cipher not allowed for encryption: des",
            cms.encrypt,
            CONTENT,
            [signer.cert],
            "des",
        )
        self.assertCMSError(
            "cipher not allowed for encryption: aes256-gcm",
            cms.encrypt, CONTENT, [signer.cert], "aes256-gcm",
        )  # fmt: skip

    def test_wrong_key(self) -> None:
        """The right certificate with the wrong private key gets the generic error."""
        _, signer, other = _pki()
        der = cms.encrypt(CONTENT, [signer.cert])
        self.assertCMSError(GENERIC, cms.decrypt, der, signer.cert, other.key)

    def test_corrupted(self) -> None:
        """Bad CBC padding, bad length and a bad RSA block all get the generic error."""
        _, signer, _ = _pki()
        der = cms.encrypt(CONTENT, [signer.cert], "aes256")
        # The DER ends with the ciphertext: flipping the penultimate block's last byte
        # flips the last padding byte, which can then never be valid.
        bad_padding = bytearray(der)
        bad_padding[-17] ^= 1
        self.assertCMSError(GENERIC, cms.decrypt, bytes(bad_padding), signer.cert, signer.key)

        def shorten(enveloped: asn1_cms.EnvelopedData) -> None:
            content_info = enveloped["encrypted_content_info"]
            content_info["encrypted_content"] = content_info["encrypted_content"].native[:-1]

        self.assertCMSError(GENERIC, cms.decrypt, _rebuild(der, shorten), signer.cert, signer.key)

        def corrupt_key(enveloped: asn1_cms.EnvelopedData) -> None:
            ktri = enveloped["recipient_infos"][0].chosen
            ktri["encrypted_key"] = bytes(256)

        self.assertCMSError(GENERIC, cms.decrypt, _rebuild(der, corrupt_key), signer.cert, signer.key)

    def test_not_a_recipient(self) -> None:
        """A certificate the envelope is not addressed to is named as such."""
        _, signer, other = _pki()
        der = cms.encrypt(CONTENT, [signer.cert])
        self.assertCMSError(
            "no RecipientInfo for this certificate",
            cms.decrypt,
            der,
            other.cert,
            other.key,
        )

    def test_bad_input(self) -> None:
        """Non-envelopes, truncations and corruptions raise CMSError and nothing else."""
        _, signer, _ = _pki()
        der = cms.encrypt(CONTENT, [signer.cert])
        self.assertCMSError(
            "not a CMS EnvelopedData",
            cms.decrypt,
            cms.certs_only([signer.cert]),
            signer.cert,
            signer.key,
        )
        self.assertCMSError("truncated DER", cms.decrypt, der[:100], signer.cert, signer.key)
        self.assertOnlyCMSErrors(der, cms.decrypt, signer.cert, signer.key)


class CertsOnlyTests(_Base):
    """The degenerate certificates-only SignedData."""

    def test_round_trip(self) -> None:
        """certs_only() output reads back as the same certificates, in order."""
        ca, signer, other = _pki()
        certs: Sequence[x509.Certificate] = [ca.cert, signer.cert, other.cert]
        # A DER SET OF is sorted by encoding, so the order is not kept.
        self.assertEqual(set(cms.read_certs_only(cms.certs_only(certs))), set(certs))
        self.assertEqual(len(cms.read_certs_only(cms.certs_only(certs))), 3)
        self.assertCMSError("a certificate bag needs at least one certificate", cms.certs_only, [])

    def test_openssl_reads(self) -> None:
        """openssl pkcs7 prints the certificates of a certs_only() bag."""
        ca, signer, _ = _pki()
        bag = self.files(bag=cms.certs_only([ca.cert, signer.cert]))["bag"]
        printed = _must("pkcs7", "-inform", "DER", "-in", bag, "-print_certs")
        self.assertEqual(
            {x509.load_pem_x509_certificate(block) for block in _pem_blocks(printed)},
            {ca.cert, signer.cert},
        )

    def test_reads_openssl(self) -> None:
        """read_certs_only() reads openssl's crl2pkcs7 certificate bag."""
        ca, signer, _ = _pki()
        f = self.files(certs=_pem(ca.cert) + _pem(signer.cert))
        bag = _must("crl2pkcs7", "-nocrl", "-certfile", f["certs"], "-outform", "DER")
        self.assertEqual(cms.read_certs_only(bag), [ca.cert, signer.cert])

    def test_signed_data_without_signer(self) -> None:
        """certs_only() has no signer, so verify() refuses it."""
        ca, _, _ = _pki()
        self.assertCMSError(
            "detached SignedData is not supported",
            cms.verify,
            cms.certs_only([ca.cert]),
        )


def _pem_blocks(text: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    return [block + marker for block in text.split(marker)[:-1]]
