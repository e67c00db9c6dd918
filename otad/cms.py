"""CMS (RFC 5652) SignedData and EnvelopedData as pure functions from bytes to bytes.

It signs and encrypts what otad sends, and verifies and decrypts what devices send, including
the indefinite-length BER that Apple devices produce. ``cryptography``'s PKCS#7 builders (Rust)
sign profiles, encrypt AES envelopes and carry certificate bags; the code here builds and reads
only what they cannot: SignedData with SCEP's own signed attributes, 3DES envelopes, and
verifying and decrypting devices' BER (signatures without signed attributes, SHA-1, DES,
Go's constructed ``[0] encryptedContent``), for which ``cryptography`` has no API.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import ClassVar

from asn1crypto import algos, cms, core, parser
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import (
    BlockCipherAlgorithm,
    Cipher,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.padding import PKCS7
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

__all__ = [
    "CIPHERS",
    "DIGESTS",
    "CMSError",
    "Decrypted",
    "RawAttributes",
    "SignatureInvalid",
    "Verified",
    "certs_only",
    "crl_bag",
    "decrypt",
    "encrypt",
    "read_certs_only",
    "sign",
    "sign_profile",
    "single_attribute",
    "verify",
]

DIGESTS = ("sha1", "sha224", "sha256", "sha384", "sha512")
CIPHERS = ("aes128", "aes192", "aes256", "des3", "des")

MAX_INPUT = 16 * 1024 * 1024

_ID_DATA = "1.2.840.113549.1.7.1"
_ID_SIGNED_DATA = "1.2.840.113549.1.7.2"
_ID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_SIGNING_TIME = "1.2.840.113549.1.9.5"
_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"

_DIGEST_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha224": "2.16.840.1.101.3.4.2.4",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
_DIGEST_BY_OID = {oid: name for name, oid in _DIGEST_OIDS.items()}
_RSA_SIGNATURE_OIDS = {
    "sha1": "1.2.840.113549.1.1.5",
    "sha224": "1.2.840.113549.1.1.14",
    "sha256": "1.2.840.113549.1.1.11",
    "sha384": "1.2.840.113549.1.1.12",
    "sha512": "1.2.840.113549.1.1.13",
}
_DIGEST_BY_RSA_SIGNATURE_OID = {oid: name for name, oid in _RSA_SIGNATURE_OIDS.items()}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True)
class _CipherSpec:
    oid: str
    key_size: int
    block_size: int


_CIPHER_SPECS = {
    "aes128": _CipherSpec("2.16.840.1.101.3.4.1.2", 16, 16),
    "aes192": _CipherSpec("2.16.840.1.101.3.4.1.22", 24, 16),
    "aes256": _CipherSpec("2.16.840.1.101.3.4.1.42", 32, 16),
    "des3": _CipherSpec("1.2.840.113549.3.7", 24, 8),
    "des": _CipherSpec("1.3.14.3.2.7", 8, 8),
}
_CIPHER_BY_OID = {spec.oid: name for name, spec in _CIPHER_SPECS.items()}

_CANNOT_DECRYPT = "cannot decrypt the enveloped content"


class CMSError(ValueError):
    """Every failure in this module; str() is a short reason that is safe to show a client."""


class SignatureInvalid(CMSError):
    """A well-formed SignedData whose signature or digest does not match: tampered or wrongly signed."""


@dataclass(frozen=True)
class Verified:
    """The content of a SignedData whose signature verified, and who signed it."""

    content: bytes
    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]
    digest: str
    attributes: Mapping[str, tuple[bytes, ...]]


@dataclass(frozen=True)
class Decrypted:
    """The content of an EnvelopedData and the content cipher its sender chose."""

    content: bytes
    cipher: str


class _AnyValues(core.SetOf):
    _child_spec: ClassVar[type] = core.Any


class RawAttribute(core.Sequence):
    # asn1crypto decodes the values of attribute types it knows, and may fail lazily
    # on them; this spec keeps every value as the raw bytes that were received.
    _fields: ClassVar[list[tuple[str, type]]] = [
        ("type", core.ObjectIdentifier),
        ("values", _AnyValues),
    ]


class RawAttributes(core.SetOf):
    """A SET OF Attribute whose values stay raw DER: shared with scep.py for CSR attributes."""

    _child_spec: ClassVar[type] = RawAttribute


@contextmanager
def _malformed(reason: str) -> Iterator[None]:
    try:
        yield
    except CMSError:
        raise
    except Exception as exc:
        # asn1crypto parses lazily and reports bad input with ValueError, TypeError,
        # KeyError, IndexError and others, often on attribute access far from load().
        raise CMSError(reason) from exc


def _check_ber(data: bytes) -> None:
    """Check the framing of the whole input (lengths, indefinite-length nesting, trailing bytes)
    before asn1crypto parses it lazily."""
    if not isinstance(data, bytes):
        raise CMSError("input is not bytes")
    if not data:
        raise CMSError("empty input")
    if len(data) > MAX_INPUT:
        raise CMSError("input too large")
    try:
        parser.parse(data, strict=True)
    except ValueError as error:
        text = str(error)
        if "trailing" in text:
            raise CMSError("trailing data after the CMS structure") from None
        if "Insufficient data" in text:
            raise CMSError("truncated DER") from None
        if "recursion limit" in text:
            raise CMSError("ASN.1 nesting too deep") from None
        raise CMSError("malformed BER") from None


def _load(der: bytes, content_type: str, reason: str) -> core.Asn1Value:
    _check_ber(der)
    with _malformed("not a CMS ContentInfo"):
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].dotted != content_type:
            raise CMSError(reason)
        return info["content"]


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(_der(cert))


def _carried_certificates(
    signed_data: cms.SignedData,
) -> list[tuple[asn1_x509.Certificate, x509.Certificate]]:
    carried = []
    field_ = signed_data["certificates"]
    if isinstance(field_, core.Void):
        return []
    for choice in field_:
        if choice.name != "certificate":
            continue
        try:
            cert = x509.load_der_x509_certificate(choice.chosen.dump())
        except ValueError as exc:
            raise CMSError("cannot parse a carried certificate") from exc
        carried.append((choice.chosen, cert))
    return carried


def _matches(identifier: core.Choice, cert: asn1_x509.Certificate) -> bool:
    """Whether a SignerIdentifier or RecipientIdentifier names cert.

    The issuer is compared as encoded: a sender copies it from the certificate, and asn1crypto's
    own Name comparison (LDAP string preparation of every attribute) costs more than the RSA check.
    """
    if identifier.name == "issuer_and_serial_number":
        wanted = identifier.chosen
        return bool(wanted["serial_number"].native == cert.serial_number and wanted["issuer"].dump() == cert.issuer.dump())
    if identifier.name == "subject_key_identifier":
        return bool(identifier.chosen.native == cert.key_identifier)
    return False


def _hash(digest: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[digest]()
    except KeyError:
        raise CMSError(f"unsupported digest: {digest}") from None


def _tlv(tag: int, contents: bytes) -> bytes:
    """One DER element: the tag, the definite length, the contents."""
    size = len(contents)
    if size < 0x80:
        return bytes((tag, size)) + contents
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + contents


_SEQUENCE, _SET, _OCTET_STRING, _CONTEXT_0 = 0x30, 0x31, 0x04, 0xA0


def _attribute_set(attributes: Sequence[tuple[str, bytes]]) -> bytes:
    """The DER SET OF Attribute, each with its single value; sorted by encoding, as DER wants
    (OpenSSL re-encodes before verifying, so an unsorted set would not verify there)."""
    oids = [oid for oid, _ in attributes]
    if len(set(oids)) != len(oids):
        raise CMSError("duplicate signed attribute")
    with _malformed("signed attribute value is not DER"):
        for _, value in attributes:
            core.Any.load(value, strict=True)
    encoded = sorted(_tlv(_SEQUENCE, core.ObjectIdentifier(oid).dump() + _tlv(_SET, value)) for oid, value in attributes)
    return _tlv(_SET, b"".join(encoded))


def _read_attributes(attribute_set: bytes) -> dict[str, tuple[bytes, ...]]:
    with _malformed("malformed signed attributes"):
        parsed = RawAttributes.load(attribute_set, strict=True)
        attributes: dict[str, tuple[bytes, ...]] = {}
        for attribute in parsed:
            oid = attribute["type"].dotted
            if oid in attributes:
                raise CMSError("duplicate signed attribute")
            values = tuple(value.dump() for value in attribute["values"])
            if not values:
                raise CMSError("signed attribute without a value")
            attributes[oid] = values
        return attributes


def single_attribute(attributes: Mapping[str, tuple[bytes, ...]], oid: str, name: str) -> bytes:
    """The one value of a signed attribute (as ``Verified.attributes`` holds them); CMSError if absent or repeated."""
    values = attributes.get(oid)
    if values is None:
        raise CMSError(f"missing {name}")
    if len(values) != 1:
        raise CMSError(f"{name} must have exactly one value")
    return values[0]


def _algorithm(digest: str, rsa_encryption_oid: bool) -> tuple[str, str]:
    """OIDs of the digestAlgorithm and signatureAlgorithm for an RSA signer."""
    if digest not in _DIGEST_OIDS:
        raise CMSError(f"unsupported digest: {digest}")
    signature = _RSA_ENCRYPTION if rsa_encryption_oid else _RSA_SIGNATURE_OIDS[digest]
    return _DIGEST_OIDS[digest], signature


def _unique(certs: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """``certs`` without repeats (by DER), in their first order."""
    return list({_der(cert): cert for cert in certs}.values())


def sign_profile(content: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey, chain: Sequence[x509.Certificate] = ()) -> bytes:
    """Sign a profile, embedding it: SHA-256 with contentType, messageDigest and signingTime signed.

    ``Binary`` keeps the plist's bytes as they are (no MIME line-ending canonicalisation).
    """
    if cert.public_key() != key.public_key():
        raise CMSError("signer key does not match the certificate")
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(cert, key, hashes.SHA256())
    for extra in _unique(chain):
        if extra != cert:
            builder = builder.add_certificate(extra)
    return builder.sign(Encoding.DER, [pkcs7.PKCS7Options.Binary])


def sign(
    content: bytes,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    chain: Sequence[x509.Certificate] = (),
    digest: str = "sha256",
    *,
    attributes: Sequence[tuple[str, bytes]] = (),
    rsa_encryption_oid: bool = False,
) -> bytes:
    """Sign content with key, embedding it, and return the DER ContentInfo(SignedData).

    attributes are extra signed attributes as (dotted OID, DER of the single value): SCEP's,
    which ``cryptography``'s builder cannot add, and the reason this signer exists beside
    ``sign_profile``. rsa_encryption_oid names the signature algorithm rsaEncryption, as SCEP
    wants. The SignedData is assembled from DER parts (each leaf encoded by asn1crypto) rather
    than built as an asn1crypto tree: that tree re-encodes every carried certificate and cost
    three times the RSA signature on each SCEP reply (bench/README.md).
    """
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CMSError("signer key is not RSA")
    if cert.public_key() != key.public_key():
        raise CMSError("signer key does not match the certificate")
    digest_oid, signature_oid = _algorithm(digest, rsa_encryption_oid)
    digest_algorithm = algos.DigestAlgorithm({"algorithm": digest_oid}).dump()
    signature_algorithm = _tlv(_SEQUENCE, core.ObjectIdentifier(signature_oid).dump() + core.Null().dump())
    standard = [
        (_CONTENT_TYPE, core.ObjectIdentifier(_ID_DATA).dump()),
        (_MESSAGE_DIGEST, core.OctetString(_digest_of(content, digest)).dump()),
        (_SIGNING_TIME, core.UTCTime(datetime.now(UTC)).dump()),
    ]
    attribute_set = _attribute_set(standard + list(attributes))
    signature = key.sign(attribute_set, padding.PKCS1v15(), _hash(digest))
    issuer_and_serial = _tlv(_SEQUENCE, cert.issuer.public_bytes() + core.Integer(cert.serial_number).dump())
    signer_info = _tlv(
        _SEQUENCE,
        core.Integer(1).dump()
        + issuer_and_serial
        + digest_algorithm
        # signedAttrs is [0] IMPLICIT SET OF: the same contents under the context tag.
        + bytes((_CONTEXT_0,))
        + attribute_set[1:]
        + signature_algorithm
        + _tlv(_OCTET_STRING, signature),
    )
    encapsulated = _tlv(_SEQUENCE, core.ObjectIdentifier(_ID_DATA).dump() + _tlv(_CONTEXT_0, _tlv(_OCTET_STRING, content)))
    certificates = b"".join(_der(carried) for carried in _unique([cert, *chain]))
    signed_data = _tlv(
        _SEQUENCE,
        core.Integer(1).dump() + _tlv(_SET, digest_algorithm) + encapsulated + _tlv(_CONTEXT_0, certificates) + _tlv(_SET, signer_info),
    )
    return _tlv(_SEQUENCE, core.ObjectIdentifier(_ID_SIGNED_DATA).dump() + _tlv(_CONTEXT_0, signed_data))


def _digest_of(content: bytes, digest: str) -> bytes:
    return hashlib.new(digest, content).digest()


def verify(der: bytes) -> Verified:
    """Verify a SignedData with embedded content and exactly one RSA signer.

    This checks the signature and the messageDigest attribute only; whom to trust is
    for verify_chain. BER, including indefinite lengths, is accepted.
    """
    signed_data = _load(der, _ID_SIGNED_DATA, "not a CMS SignedData")
    with _malformed("malformed SignedData"):
        return _verify_signed_data(signed_data)


def _verify_signed_data(signed_data: cms.SignedData) -> Verified:
    encapsulated = signed_data["encap_content_info"]
    if isinstance(encapsulated["content"], core.Void):
        raise CMSError("detached SignedData is not supported")
    content = bytes(encapsulated["content"])
    signer_infos = signed_data["signer_infos"]
    if len(signer_infos) != 1:
        raise CMSError("expected exactly one signer")
    signer_info = signer_infos[0]
    carried = _carried_certificates(signed_data)
    signer = next((cert for asn1, cert in carried if _matches(signer_info["sid"], asn1)), None)
    if signer is None:
        raise CMSError("signer certificate not included")

    digest = _DIGEST_BY_OID.get(signer_info["digest_algorithm"]["algorithm"].dotted)
    if digest is None:
        raise CMSError("unsupported digest algorithm")
    signature_oid = signer_info["signature_algorithm"]["algorithm"].dotted
    if signature_oid != _RSA_ENCRYPTION:
        implied = _DIGEST_BY_RSA_SIGNATURE_OID.get(signature_oid)
        if implied is None:
            raise CMSError("unsupported signature algorithm")
        if implied != digest:
            raise CMSError("signature and digest algorithms disagree")

    attributes: dict[str, tuple[bytes, ...]] = {}
    signed_attrs = signer_info["signed_attrs"]
    if isinstance(signed_attrs, core.Void):
        signed = content
    else:
        # The signature covers the attributes as the signer encoded them, so verify
        # over the received bytes re-tagged as a SET rather than over a re-encoding.
        signed = bytes(signed_attrs.untag().dump())
        attributes = _read_attributes(signed)
        content_type = single_attribute(attributes, _CONTENT_TYPE, "contentType")
        if core.ObjectIdentifier.load(content_type, strict=True).dotted != (encapsulated["content_type"].dotted):
            raise SignatureInvalid("contentType attribute does not match the content")
        message_digest = single_attribute(attributes, _MESSAGE_DIGEST, "messageDigest")
        if core.OctetString.load(message_digest, strict=True).native != _digest_of(content, digest):
            raise SignatureInvalid("message digest does not match the content")

    public_key = signer.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CMSError("unsupported signer key type")
    try:
        public_key.verify(signer_info["signature"].native, signed, padding.PKCS1v15(), _hash(digest))
    except (InvalidSignature, ValueError):
        raise SignatureInvalid("signature does not verify") from None
    return Verified(
        content=content,
        signer=signer,
        certificates=tuple(cert for _, cert in carried),
        digest=digest,
        attributes=MappingProxyType(attributes),
    )


def _block_cipher(name: str, key: bytes) -> BlockCipherAlgorithm:
    if name.startswith("aes"):
        return algorithms.AES(key)
    if name == "des":
        # Single DES is three-key 3DES with one key three times: E(k) D(k) E(k) = E(k).
        return TripleDES(key * 3)
    return TripleDES(key)


def _recipient_info(cert: x509.Certificate, content_key: bytes) -> cms.RecipientInfo:
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise CMSError("recipient key is not RSA")
    asn1 = _asn1_cert(cert)
    return cms.RecipientInfo(
        name="ktri",
        value=cms.KeyTransRecipientInfo(
            {
                "version": "v0",
                "rid": cms.RecipientIdentifier(
                    name="issuer_and_serial_number",
                    value=cms.IssuerAndSerialNumber({"issuer": asn1.issuer, "serial_number": asn1.serial_number}),
                ),
                "key_encryption_algorithm": cms.KeyEncryptionAlgorithm({"algorithm": _RSA_ENCRYPTION, "parameters": core.Null()}),
                "encrypted_key": public_key.encrypt(content_key, padding.PKCS1v15()),
            }
        ),
    )


_LIBRARY_CIPHERS: dict[str, type[algorithms.AES128] | type[algorithms.AES256]] = {
    "aes128": algorithms.AES128,
    "aes256": algorithms.AES256,
}


def encrypt(content: bytes, recipients: Sequence[x509.Certificate], cipher: str = "aes256") -> bytes:
    """Encrypt content to each RSA recipient and return the DER ContentInfo(EnvelopedData).

    The content key and IV are fresh for every call; single DES is refused. AES-128 and
    AES-256 go through ``cryptography``'s envelope builder; 3DES and AES-192 (only ever a SCEP
    client's own choice, mirrored in its reply) are built here, because the builder has neither.
    """
    if cipher == "des" or cipher not in _CIPHER_SPECS:
        raise CMSError(f"cipher not allowed for encryption: {cipher}")
    if not recipients:
        raise CMSError("no recipients")
    for recipient in recipients:
        if not isinstance(recipient.public_key(), rsa.RSAPublicKey):
            raise CMSError("recipient key is not RSA")
    if cipher in _LIBRARY_CIPHERS:
        builder = pkcs7.PKCS7EnvelopeBuilder().set_data(content).set_content_encryption_algorithm(_LIBRARY_CIPHERS[cipher])
        for recipient in recipients:
            builder = builder.add_recipient(recipient)
        return builder.encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary])
    spec = _CIPHER_SPECS[cipher]
    content_key = os.urandom(spec.key_size)
    iv = os.urandom(spec.block_size)
    padder = PKCS7(spec.block_size * 8).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = Cipher(_block_cipher(cipher, content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [_recipient_info(cert, content_key) for cert in recipients],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": algos.EncryptionAlgorithm({"algorithm": spec.oid, "parameters": core.OctetString(iv)}),
                "encrypted_content": ciphertext,
            },
        }
    )
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


def decrypt(der: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> Decrypted:
    """Decrypt an EnvelopedData addressed to cert (RSA key transport, CBC content cipher).

    Every failure once the recipient is found raises the same CMSError, so that callers
    cannot become a padding oracle.
    """
    enveloped = _load(der, _ID_ENVELOPED_DATA, "not a CMS EnvelopedData")
    own = _asn1_cert(cert)
    with _malformed("malformed EnvelopedData"):
        recipient = next(
            (info.chosen for info in enveloped["recipient_infos"] if info.name == "ktri" and _matches(info.chosen["rid"], own)),
            None,
        )
        if recipient is None:
            raise CMSError("no RecipientInfo for this certificate")
        if recipient["key_encryption_algorithm"]["algorithm"].dotted != _RSA_ENCRYPTION:
            raise CMSError("unsupported key transport algorithm")
        encrypted_key = recipient["encrypted_key"].native
        algorithm, ciphertext = _encrypted_content_info(enveloped["encrypted_content_info"].contents)
        cipher = _CIPHER_BY_OID.get(algorithm["algorithm"].dotted)
        if cipher is None:
            raise CMSError("unsupported content encryption algorithm")
        parameters = algorithm["parameters"]
        if isinstance(parameters, core.Void):
            raise CMSError("content encryption algorithm lacks an IV")
        iv = core.OctetString.load(parameters.dump(), strict=True).native
        if ciphertext is None:
            raise CMSError("EnvelopedData has no encrypted content")
    return Decrypted(
        content=_decrypt_content(cipher, key, encrypted_key, iv, ciphertext),
        cipher=cipher,
    )


def _elements(data: bytes) -> Iterator[tuple[int, int, int, bytes, bytes]]:
    """(class, constructed, tag, whole encoding, contents) of each BER element in ``data``, in order."""
    position = 0
    while position < len(data):
        klass, method, tag, header, contents, trailer = parser.parse(data[position:])
        whole = header + contents + trailer
        yield klass, method, tag, whole, contents
        position += len(whole)


def _octet_string_bytes(constructed: int, contents: bytes) -> bytes:
    """The bytes of an OCTET STRING in either BER form: primitive, or constructed from nested pieces."""
    if not constructed:
        return contents
    return b"".join(_octet_string_bytes(method, inner) for _, method, _, _, inner in _elements(contents))


def _encrypted_content_info(contents: bytes) -> tuple[algos.EncryptionAlgorithm, bytes | None]:
    """Read EncryptedContentInfo by hand: asn1crypto refuses a constructed ``[0] encryptedContent``.

    Go's pkcs7 (micromdm's scepclient) sends exactly that valid BER form, as do streaming encoders.
    """
    fields = list(_elements(contents))
    if len(fields) < 2:
        raise CMSError("malformed EnvelopedData")
    algorithm = algos.EncryptionAlgorithm.load(fields[1][3])
    ciphertext = None
    for klass, method, tag, _, inner in fields[2:]:
        if klass == 2 and tag == 0:  # [0] IMPLICIT encryptedContent
            ciphertext = _octet_string_bytes(method, inner)
    return algorithm, ciphertext


def _decrypt_content(
    cipher: str,
    key: rsa.RSAPrivateKey,
    encrypted_key: bytes,
    iv: bytes,
    ciphertext: bytes,
) -> bytes:
    spec = _CIPHER_SPECS[cipher]
    try:
        content_key = key.decrypt(encrypted_key, padding.PKCS1v15())
    except ValueError:
        content_key = b""
    key_is_bad = len(content_key) != spec.key_size
    if key_is_bad:
        # Carry on with a random key (Bleichenbacher countermeasure): a bad RSA block then
        # costs the same work as a bad CBC padding and ends in the same error, even in the
        # 1-in-256 case where the random key happens to give valid padding.
        content_key = os.urandom(spec.key_size)
    try:
        decryptor = Cipher(_block_cipher(cipher, content_key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = PKCS7(spec.block_size * 8).unpadder()
        content = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CMSError(_CANNOT_DECRYPT) from None
    if key_is_bad:
        raise CMSError(_CANNOT_DECRYPT)
    return content


def certs_only(certs: Sequence[x509.Certificate]) -> bytes:
    """A degenerate SignedData carrying certs (at least one) and nothing else (SCEP's certificate bag)."""
    if not certs:
        raise CMSError("a certificate bag needs at least one certificate")
    return pkcs7.serialize_certificates(_unique(certs), Encoding.DER)


def crl_bag(crl_der: bytes) -> bytes:
    """A degenerate SignedData carrying one CRL and nothing else (SCEP's GetCRL answer, RFC 8894 3.3.4).

    Built here: cryptography serializes certificate bags but not CRL bags.
    """
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [],
            "encap_content_info": {"content_type": "data"},
            "crls": [cms.RevocationInfoChoice(name="crl", value=asn1_crl.CertificateList.load(crl_der))],
            "signer_infos": [],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


def read_certs_only(der: bytes) -> list[x509.Certificate]:
    """The certificates carried by a SignedData, such as one made by certs_only."""
    _check_ber(der)
    try:
        return pkcs7.load_der_pkcs7_certificates(der)
    except (ValueError, UnsupportedAlgorithm):
        raise CMSError("not a CMS SignedData carrying certificates") from None
