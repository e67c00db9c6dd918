"""
A fake iPhone that enrolls over the air the way a real one does.

It speaks HTTPS to otad with ``twisted.web.client.Agent`` (trusting only the
CA it is given), signs its device attributes with a fake Apple identity,
enrolls with SCEP (RFC 8894) and decrypts its encrypted profile.  All CMS and
SCEP handling here is written independently of otad on purpose: this module
must never import from ``otad``, so that a bug in otad's CMS/SCEP code cannot
be cancelled out by the same bug on the client side.
"""

from __future__ import annotations

import base64
import hashlib
import os
import plistlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, ClassVar, cast
from urllib.parse import quote, urljoin, urlsplit

from asn1crypto import cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import AttributeOID, NameOID
from twisted.internet import ssl, threads
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    FileBodyProducer,
    HTTPConnectionPool,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer

from tests.fakeapple import FakeAppleHierarchy, self_signed_identity

__all__ = [
    "CONTENT_TYPE_ASPEN_CONFIG",
    "CONTENT_TYPE_CA_CERT",
    "CONTENT_TYPE_CA_RA_CERT",
    "CONTENT_TYPE_PKCS7_SIGNATURE",
    "CONTENT_TYPE_PKI_MESSAGE",
    "CMSError",
    "CertRep",
    "FakeDevice",
    "FakeDeviceError",
    "PKIRequest",
    "ProfileError",
    "Response",
    "SCEPCaps",
    "SCEPError",
    "SCEPPending",
    "SCEPRefused",
    "SignedContent",
    "UnexpectedResponse",
    "build_csr",
    "build_pkcs_req",
    "decrypt_enveloped",
    "envelope",
    "parse_cert_rep",
    "read_cert_rep",
    "select_scep_certs",
    "sign_cms",
    "subject_from_payload",
    "to_ber_indefinite",
    "unwrap_signed",
    "validate_profile",
    "verify_signed",
]

CONTENT_TYPE_CA_CERT = b"application/x-x509-ca-cert"
CONTENT_TYPE_CA_RA_CERT = b"application/x-x509-ca-ra-cert"
CONTENT_TYPE_ASPEN_CONFIG = b"application/x-apple-aspen-config"
CONTENT_TYPE_PKCS7_SIGNATURE = b"application/pkcs7-signature"
CONTENT_TYPE_PKI_MESSAGE = b"application/x-pki-message"

OID_DATA = "1.2.840.113549.1.7.1"
OID_SIGNED_DATA = "1.2.840.113549.1.7.2"
OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
OID_SIGNING_TIME = "1.2.840.113549.1.9.5"

# SCEP authenticated attributes (RFC 8894 section 3.2.1), VeriSign arc.
OID_SCEP_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
OID_SCEP_PKI_STATUS = "2.16.840.1.113733.1.9.3"
OID_SCEP_FAIL_INFO = "2.16.840.1.113733.1.9.4"
OID_SCEP_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
OID_SCEP_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
OID_SCEP_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"

SCEP_MESSAGE_CERT_REP = "3"
SCEP_MESSAGE_PKCS_REQ = "19"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# Apple's SCEP payload names subject attributes by these abbreviations (or
# by dotted OID); anything else is a profile bug the device should surface.
_SUBJECT_ABBREVIATIONS: dict[str, x509.ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
}

_EOC = b"\x00\x00"


# --------------------------------------------------------------------------
# errors


class FakeDeviceError(Exception):
    """Anything the fake device refuses; a real device would show an error."""


class CMSError(FakeDeviceError):
    """A CMS structure is malformed or its signature/chain does not verify."""


class ProfileError(FakeDeviceError):
    """A profile is not one an iPhone would install (missing/mistyped keys)."""


class UnexpectedResponse(FakeDeviceError):
    """The server answered with a status or content type the device rejects."""

    def __init__(self, message: str, response: Response) -> None:
        super().__init__(f"{message} (HTTP {response.code})")
        self.response = response


class SCEPError(FakeDeviceError):
    """The SCEP exchange failed (bad CertRep, wrong nonce, ...)."""


class SCEPRefused(SCEPError):
    """CertRep pkiStatus FAILURE (2); ``fail_info`` is the RFC 8894 failInfo."""

    def __init__(self, fail_info: int) -> None:
        super().__init__(f"SCEP request refused, failInfo {fail_info}")
        self.fail_info = fail_info


class SCEPPending(SCEPError):
    """CertRep pkiStatus PENDING (3): the CA wants the device to poll later."""

    def __init__(self, transaction_id: str) -> None:
        super().__init__(f"SCEP request pending, transactionID {transaction_id}")
        self.transaction_id = transaction_id


# --------------------------------------------------------------------------
# small DER helpers


def _der_length(length: int) -> bytes:
    """DER definite length octets."""
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _tlv(tag: int, contents: bytes) -> bytes:
    """One DER TLV with a single-octet tag."""
    return bytes([tag]) + _der_length(len(contents)) + contents


def _cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(_cert_der(cert))


class _RawAttribute(asn1_core.Sequence):
    """
    An Attribute whose values stay opaque.

    asn1crypto's ``cms.CMSAttribute`` interprets values through a global OID
    registry that otad may extend in the same process; this private shape
    keeps the fake device's view of SCEP attributes independent of that.
    """

    _fields: ClassVar[list[tuple[str, type]]] = [
        ("type", asn1_core.ObjectIdentifier),
        ("values", cms.SetOfAny),
    ]


class _RawAttributes(asn1_core.SetOf):
    _child_spec = _RawAttribute


def _encode_attributes(attributes: Sequence[tuple[str, bytes]]) -> bytes:
    """
    DER ``SET OF Attribute`` (tag 0x31) from (oid, DER value) pairs.

    SetOf sorts its members, as DER requires; the signature is computed over
    exactly these bytes and verifiers (OpenSSL) re-encode before checking.
    """
    return _RawAttributes(
        [
            _RawAttribute(
                {"type": oid, "values": [asn1_core.Any.load(value)]},
            )
            for oid, value in attributes
        ]
    ).dump()


def _decode_attributes(set_der: bytes) -> dict[str, list[bytes]]:
    """dotted OID -> list of DER values, from a ``SET OF Attribute``."""
    result: dict[str, list[bytes]] = {}
    for attribute in _RawAttributes.load(set_der):
        oid = attribute["type"].dotted
        if oid in result:
            raise CMSError(f"attribute {oid} appears twice")
        result[oid] = [value.dump() for value in attribute["values"]]
    return result


def _printable(value: str) -> bytes:
    return asn1_core.PrintableString(value).dump()


def _octets(value: bytes) -> bytes:
    return asn1_core.OctetString(value).dump()


# --------------------------------------------------------------------------
# certificates


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """
    True when ``issuer`` issued ``cert`` (name match and valid signature).

    Dates are deliberately ignored (Apple's device CA expired in 2014) and
    SHA-1 is accepted; ``verify_directly_issued_by`` refuses SHA-1, which is
    why this is done by hand.
    """
    if cert.issuer != issuer.subject:
        return False
    public_key = issuer.public_key()
    hash_algorithm = cert.signature_hash_algorithm
    params = cert.signature_algorithm_parameters
    try:
        if isinstance(public_key, rsa.RSAPublicKey) and hash_algorithm is not None:
            if not isinstance(params, (padding.PKCS1v15, padding.PSS)):
                return False
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, params, hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                return False
            public_key.verify(cert.signature, cert.tbs_certificate_bytes, params)
        else:
            return False
    except Exception:  # noqa: BLE001 - any failure means "not issued by"
        return False
    return True


def _chains_to(
    cert: x509.Certificate,
    anchors: Sequence[x509.Certificate],
    pool: Sequence[x509.Certificate],
    depth: int = 0,
) -> bool:
    """Whether a signature path leads from ``cert`` to one of ``anchors``."""
    if cert in anchors:
        return True
    if depth > 8:
        return False
    for issuer in (*anchors, *pool):
        if issuer == cert or not _is_ca(issuer) or not _signed_by(cert, issuer):
            continue
        if issuer in anchors or _chains_to(issuer, anchors, pool, depth + 1):
            return True
    return False


def _public_keys_equal(a: Any, b: Any) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(a.public_bytes(der, spki) == b.public_bytes(der, spki))


# --------------------------------------------------------------------------
# CMS SignedData: signing


def sign_cms(
    content: bytes,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    *,
    digest: str = "sha256",
    signed_attributes: Sequence[tuple[str, bytes]] | None = (),
    certificates: Sequence[x509.Certificate] | None = None,
) -> bytes:
    """
    CMS SignedData (DER ContentInfo) over ``content``, content embedded.

    ``signed_attributes=None`` signs the content itself with no attributes,
    as iPhones sign their device attributes; a sequence (even empty) adds
    contentType + messageDigest followed by the given (oid, DER value)
    attributes, as SCEP needs.  Hand-built because cryptography's builder
    has neither SHA-1 nor custom attributes.  ``certificates`` defaults to
    the signer's certificate alone.
    """
    hash_algorithm = _HASHES[digest]()
    digest_algorithm = cms.DigestAlgorithm({"algorithm": digest})
    asn1_signer = _asn1_cert(cert)
    if signed_attributes is None:
        to_sign = content
        attrs_value = None
    else:
        md = hashes.Hash(hash_algorithm)
        md.update(content)
        to_sign = _encode_attributes(
            [
                (OID_CONTENT_TYPE, asn1_core.ObjectIdentifier(OID_DATA).dump()),
                (OID_MESSAGE_DIGEST, _octets(md.finalize())),
                *signed_attributes,
            ]
        )
        attrs_value = cms.CMSAttributes.load(to_sign)
    signature = key.sign(to_sign, padding.PKCS1v15(), hash_algorithm)
    signer_info: dict[str, Any] = {
        "version": "v1",
        "sid": cms.SignerIdentifier(
            {
                "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                    {
                        "issuer": asn1_signer.issuer,
                        "serial_number": asn1_signer.serial_number,
                    }
                )
            }
        ),
        "digest_algorithm": digest_algorithm,
        "signature_algorithm": cms.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
        "signature": signature,
    }
    if attrs_value is not None:
        signer_info["signed_attrs"] = attrs_value
    bag = [cert] if certificates is None else list(certificates)
    signed_data = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": "data", "content": content},
            "certificates": [_asn1_cert(c) for c in bag],
            "signer_infos": [cms.SignerInfo(signer_info)],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed_data}).dump())


def to_ber_indefinite(der: bytes, chunk_size: int = 1000) -> bytes:
    """
    Re-encode a SignedData ContentInfo the way Apple devices send it.

    ContentInfo, its [0], SignedData, EncapsulatedContentInfo and its [0]
    get indefinite lengths and eContent becomes a constructed OCTET STRING
    of ``chunk_size`` pieces.  Signatures are unaffected (they cover the
    content octets or the DER signed attributes), so this only tests that a
    server really parses BER.
    """
    info = cms.ContentInfo.load(der)
    signed_data = info["content"]
    encap = signed_data["encap_content_info"]
    content = bytes(encap["content"].native or b"")
    chunks = b"".join(_tlv(0x04, content[i : i + chunk_size]) for i in range(0, len(content), chunk_size))
    encap_ber = b"\x30\x80" + encap["content_type"].dump() + b"\xa0\x80" + b"\x24\x80" + chunks + _EOC + _EOC + _EOC
    parts = [signed_data["version"].dump(), signed_data["digest_algorithms"].dump()]
    parts.append(encap_ber)
    if not isinstance(signed_data["certificates"], asn1_core.Void):
        parts.append(signed_data["certificates"].dump())
    parts.append(signed_data["signer_infos"].dump())
    signed_ber = b"\x30\x80" + b"".join(parts) + _EOC
    return b"\x30\x80" + info["content_type"].dump() + b"\xa0\x80" + signed_ber + _EOC + _EOC


# --------------------------------------------------------------------------
# CMS SignedData: verifying


@dataclass(frozen=True)
class SignedContent:
    """What a verified SignedData said, and who said it."""

    content: bytes
    signer: x509.Certificate
    certificates: list[x509.Certificate]
    digest_algorithm: str
    # dotted OID -> DER values; None when the signer used no signed attributes
    signed_attributes: dict[str, list[bytes]] | None
    content_type: str = OID_DATA


def _find_signer(sid: cms.SignerIdentifier, certificates: Sequence[x509.Certificate]) -> x509.Certificate:
    for cert in certificates:
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            asn1 = _asn1_cert(cert)
            if ias["serial_number"].native == asn1.serial_number and ias["issuer"] == asn1.issuer:
                return cert
        elif sid.name == "subject_key_identifier":
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
            except x509.ExtensionNotFound:
                continue
            if ski == sid.chosen.native:
                return cert
    raise CMSError("signer certificate is not in the SignedData")


def _verify_signature(public_key: Any, signature: bytes, data: bytes, digest: str, scheme: str) -> None:
    hash_algorithm = _HASHES[digest]()
    if isinstance(public_key, rsa.RSAPublicKey) and scheme == "rsassa_pkcs1v15":
        public_key.verify(signature, data, padding.PKCS1v15(), hash_algorithm)
    elif isinstance(public_key, ec.EllipticCurvePublicKey) and scheme == "ecdsa":
        public_key.verify(signature, data, ec.ECDSA(hash_algorithm))
    else:
        raise CMSError(f"unsupported signature scheme {scheme}")


def verify_signed(
    der: bytes,
    anchors: Sequence[x509.Certificate] | None,
    extra_certificates: Sequence[x509.Certificate] = (),
) -> SignedContent:
    """
    Verify a CMS SignedData (DER or BER) with exactly one signer.

    With signed attributes: contentType must match eContentType, the
    messageDigest must equal the hash of the content, and the signature
    covers the attributes re-tagged as a universal SET.  Without them the
    signature covers the content.  When ``anchors`` is given the signer must
    be an anchor or chain to one by signatures through the embedded
    certificates (plus ``extra_certificates``), dates ignored.  Missing
    eContent counts as empty content (SCEP failure replies carry none).
    """
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].dotted != OID_SIGNED_DATA:
            raise CMSError("ContentInfo is not SignedData")
        signed_data = info["content"]
        encap = signed_data["encap_content_info"]
        content_type = encap["content_type"].dotted
        raw_content = encap["content"].native
        content = b"" if raw_content is None else bytes(raw_content)
        certificates: list[x509.Certificate] = []
        if not isinstance(signed_data["certificates"], asn1_core.Void):
            for choice in signed_data["certificates"]:
                if choice.name == "certificate":
                    certificates.append(x509.load_der_x509_certificate(choice.chosen.dump()))
        signer_infos = list(signed_data["signer_infos"])
        if len(signer_infos) != 1:
            raise CMSError(f"expected one signer, found {len(signer_infos)}")
        signer_info = signer_infos[0]
        digest = signer_info["digest_algorithm"]["algorithm"].native
        scheme = signer_info["signature_algorithm"].signature_algo
        signature = signer_info["signature"].native
        signer = _find_signer(signer_info["sid"], [*certificates, *extra_certificates])
        if digest not in _HASHES:
            raise CMSError(f"unsupported digest {digest}")
        attributes: dict[str, list[bytes]] | None = None
        if isinstance(signer_info["signed_attrs"], asn1_core.Void):
            signed_bytes = content
        else:
            signed_bytes = _tlv(0x31, signer_info["signed_attrs"].contents)
            attributes = _decode_attributes(signed_bytes)
            md = hashes.Hash(_HASHES[digest]())
            md.update(content)
            if attributes.get(OID_MESSAGE_DIGEST) != [_octets(md.finalize())]:
                raise CMSError("messageDigest does not match the content")
            expected_type = asn1_core.ObjectIdentifier(content_type).dump()
            if attributes.get(OID_CONTENT_TYPE) != [expected_type]:
                raise CMSError("contentType attribute does not match eContentType")
        try:
            _verify_signature(signer.public_key(), signature, signed_bytes, digest, scheme)
        except CMSError:
            raise
        except Exception as e:
            raise CMSError(f"bad signature: {e!r}") from e
    except CMSError:
        raise
    except Exception as e:
        raise CMSError(f"malformed SignedData: {e!r}") from e
    if anchors is not None and not _chains_to(signer, list(anchors), [*certificates, *extra_certificates]):
        raise CMSError(f"signer {signer.subject.rfc4514_string()} does not chain to the anchors")
    return SignedContent(
        content=content,
        signer=signer,
        certificates=certificates,
        digest_algorithm=digest,
        signed_attributes=attributes,
        content_type=content_type,
    )


def unwrap_signed(der: bytes, trust: x509.Certificate | Sequence[x509.Certificate] | None) -> tuple[bytes, x509.Certificate]:
    """
    Verify a SignedData and return (content, signer certificate).

    ``trust`` is the anchor (or anchors) the signer must chain to; None
    checks the signature only.
    """
    if trust is None:
        anchors = None
    elif isinstance(trust, x509.Certificate):
        anchors = [trust]
    else:
        anchors = list(trust)
    verified = verify_signed(der, anchors)
    return verified.content, verified.signer


# --------------------------------------------------------------------------
# CMS EnvelopedData


def envelope(data: bytes, recipient: x509.Certificate, *, aes: bool = True) -> bytes:
    """
    EnvelopedData (DER ContentInfo) of ``data`` for ``recipient``.

    AES-256-CBC through cryptography's builder; DES-EDE3-CBC (what SCEP CAs
    without the "AES" capability need) hand-built, since the builder has
    none.  Key transport is RSA PKCS#1 v1.5 either way.
    """
    if aes:
        return bytes(
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(data)
            .add_recipient(recipient)
            .set_content_encryption_algorithm(algorithms.AES256)
            .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        )
    public_key = recipient.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise TypeError("recipient must have an RSA key")
    content_key = os.urandom(24)
    iv = os.urandom(8)
    padder = sym_padding.PKCS7(64).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(TripleDES(content_key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    asn1_recipient = _asn1_cert(recipient)
    recipient_info = cms.RecipientInfo(
        {
            "ktri": cms.KeyTransRecipientInfo(
                {
                    "version": "v0",
                    "rid": cms.RecipientIdentifier(
                        {
                            "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                                {
                                    "issuer": asn1_recipient.issuer,
                                    "serial_number": asn1_recipient.serial_number,
                                }
                            )
                        }
                    ),
                    "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
                    "encrypted_key": public_key.encrypt(content_key, padding.PKCS1v15()),
                }
            )
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [recipient_info],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {
                    "algorithm": "tripledes_3key",
                    "parameters": asn1_core.OctetString(iv),
                },
                "encrypted_content": encrypted,
            },
        }
    )
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


def decrypt_enveloped(der: bytes, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> bytes:
    """
    Decrypt an EnvelopedData addressed to ``cert`` (issuer and serial).

    AES goes to cryptography's ``pkcs7_decrypt_der``; DES-EDE3-CBC, which it
    lacks, is done here.  A recipient that does not name ``cert`` is an
    error, as on a device that holds only that identity.
    """
    try:
        info = cms.ContentInfo.load(der, strict=True)
        if info["content_type"].dotted != OID_ENVELOPED_DATA:
            raise CMSError("ContentInfo is not EnvelopedData")
        enveloped = info["content"]
        encrypted_info = enveloped["encrypted_content_info"]
        algorithm = encrypted_info["content_encryption_algorithm"]
        name = algorithm["algorithm"].native
        if name in ("aes128_cbc", "aes256_cbc"):
            return bytes(pkcs7.pkcs7_decrypt_der(der, cert, key, []))
        if name != "tripledes_3key":
            raise CMSError(f"unsupported content encryption {name}")
        asn1 = _asn1_cert(cert)
        encrypted_key = None
        for recipient_info in enveloped["recipient_infos"]:
            if recipient_info.name != "ktri":
                continue
            rid = recipient_info.chosen["rid"]
            if (
                rid.name == "issuer_and_serial_number"
                and rid.chosen["serial_number"].native == asn1.serial_number
                and rid.chosen["issuer"] == asn1.issuer
            ):
                encrypted_key = recipient_info.chosen["encrypted_key"].native
        if encrypted_key is None:
            raise CMSError("no recipient matches the certificate")
        content_key = key.decrypt(encrypted_key, padding.PKCS1v15())
        iv = algorithm["parameters"].native
        decryptor = Cipher(TripleDES(content_key), modes.CBC(iv)).decryptor()
        ciphertext = bytes(encrypted_info["encrypted_content"].native)
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = sym_padding.PKCS7(64).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except CMSError:
        raise
    except Exception as e:
        raise CMSError(f"cannot decrypt EnvelopedData: {e!r}") from e


# --------------------------------------------------------------------------
# profiles


def _require(payload: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in payload:
        raise ProfileError(f"payload lacks {key}")
    value = payload[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProfileError(f"{key} has type {type(value).__name__}")
    return value


def _check_common(payload: Any) -> None:
    """The four keys iOS insists on in every profile and payload."""
    if not isinstance(payload, dict):
        raise ProfileError(f"payload is a {type(payload).__name__}, not a dict")
    _require(payload, "PayloadType", str)
    if _require(payload, "PayloadVersion", int) != 1:
        raise ProfileError("PayloadVersion is not 1")
    if not _require(payload, "PayloadIdentifier", str):
        raise ProfileError("PayloadIdentifier is empty")
    if not _require(payload, "PayloadUUID", str):
        raise ProfileError("PayloadUUID is empty")


def _check_payload(payload: Any) -> None:
    _check_common(payload)
    kind = payload["PayloadType"]
    if kind == "com.apple.security.scep":
        content = _require(payload, "PayloadContent", dict)
        if not _require(content, "URL", str).startswith(("https://", "http://")):
            raise ProfileError("SCEP URL is not http(s)")
        if "Subject" in content:
            subject_from_payload(content["Subject"])
        if "Challenge" in content:
            _require(content, "Challenge", str)
        if "Keysize" in content:
            _require(content, "Keysize", int)
    elif kind == "com.apple.security.pkcs12":
        # A base64 <string> here is the classic mistake: it must be <data>.
        _require(payload, "PayloadContent", bytes)


def validate_profile(profile: Any, expected_type: str) -> dict[str, Any]:
    """
    Refuse profiles an iPhone would refuse ("missing a required field").

    Every profile and payload needs PayloadType, PayloadVersion 1,
    PayloadIdentifier and PayloadUUID; a Profile Service needs an https URL
    and DeviceAttributes; a Configuration needs PayloadContent (array of
    payloads) or EncryptedPayloadContent (data).
    """
    _check_common(profile)
    if profile["PayloadType"] != expected_type:
        raise ProfileError(f"PayloadType is {profile['PayloadType']!r}, expected {expected_type!r}")
    if expected_type == "Profile Service":
        content = _require(profile, "PayloadContent", dict)
        if not _require(content, "URL", str).startswith("https://"):
            raise ProfileError("Profile Service URL is not https")
        attributes = _require(content, "DeviceAttributes", list)
        if not all(isinstance(a, str) for a in attributes):
            raise ProfileError("DeviceAttributes holds non-strings")
        if "Challenge" in content:
            _require(content, "Challenge", (str, bytes))
    elif expected_type == "Configuration":
        if "EncryptedPayloadContent" in profile:
            _require(profile, "EncryptedPayloadContent", bytes)
        else:
            for payload in _require(profile, "PayloadContent", list):
                _check_payload(payload)
    return dict(profile)


def _load_plist(data: bytes, what: str) -> Any:
    try:
        return plistlib.loads(data)
    except Exception as e:
        raise ProfileError(f"{what} is not a property list: {e!r}") from e


# --------------------------------------------------------------------------
# SCEP


def subject_from_payload(subject: Any) -> x509.Name:
    """
    X.509 Name from Apple's array-of-arrays Subject.

    Each outer element is one RDN: a list of [type, value] pairs, type being
    CN/C/ST/L/O/OU or a dotted OID.  Anything else (for example the "0"
    typo in Apple's own sample) is rejected, because a server that sends it
    has a bug a real device would also trip over.
    """
    if not isinstance(subject, list):
        raise ProfileError("Subject is not an array")
    rdns = []
    for rdn in subject:
        if not isinstance(rdn, list) or not rdn:
            raise ProfileError("Subject RDN is not a non-empty array")
        attributes = []
        for pair in rdn:
            if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
                raise ProfileError(f"Subject entry {pair!r} is not [type, value]")
            kind, value = pair
            if kind in _SUBJECT_ABBREVIATIONS:
                oid = _SUBJECT_ABBREVIATIONS[kind]
            elif kind.count(".") >= 1 and kind.replace(".", "").isdigit():
                oid = x509.ObjectIdentifier(kind)
            else:
                raise ProfileError(f"Subject type {kind!r} is not recognised")
            try:
                attributes.append(x509.NameAttribute(oid, value))
            except ValueError as e:
                raise ProfileError(f"Subject {kind}={value!r}: {e}") from e
        rdns.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(rdns)


def _key_usage(bits: int) -> x509.KeyUsage:
    """Apple's Key Usage bit mask: 1 = digitalSignature, 4 = keyEncipherment."""
    return x509.KeyUsage(
        digital_signature=bool(bits & 1),
        content_commitment=False,
        key_encipherment=bool(bits & 4),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def build_csr(
    key: rsa.RSAPrivateKey,
    subject: Any,
    challenge: str | None,
    *,
    key_usage: int | None = None,
    subject_alt_name: Mapping[str, Any] | None = None,
) -> x509.CertificateSigningRequest:
    """
    The PKCS#10 request iOS builds from a SCEP payload.

    Subject from the payload's array-of-arrays, challengePassword (UTF8String,
    cryptography's encoding) = the payload Challenge, and an extensionRequest
    with keyUsage (payload "Key Usage") and subjectAltName (payload
    "SubjectAltName": dNSName / rfc822Name / uniformResourceIdentifier).
    """
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject_from_payload(subject))
    if challenge is not None:
        builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, challenge.encode("utf-8"))
    if key_usage:
        builder = builder.add_extension(_key_usage(key_usage), critical=True)
    if subject_alt_name:
        names: list[x509.GeneralName] = []
        for kind, maker in (
            ("dNSName", x509.DNSName),
            ("rfc822Name", x509.RFC822Name),
            ("uniformResourceIdentifier", x509.UniformResourceIdentifier),
        ):
            values = subject_alt_name.get(kind, [])
            for value in [values] if isinstance(values, str) else values:
                names.append(maker(value))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


@dataclass(frozen=True)
class PKIRequest:
    """A PKCSReq PKIMessage and what the reply must echo back."""

    der: bytes
    csr: x509.CertificateSigningRequest
    transaction_id: str
    sender_nonce: bytes
    signer_cert: x509.Certificate
    recipient: x509.Certificate
    aes: bool
    digest: str


def build_pkcs_req(
    key: rsa.RSAPrivateKey,
    signer_cert: x509.Certificate,
    recipient: x509.Certificate,
    *,
    subject: Any,
    challenge: str | None,
    key_usage: int | None = None,
    subject_alt_name: Mapping[str, Any] | None = None,
    aes: bool = True,
    sha256: bool = True,
    transaction_id: str | None = None,
    sender_nonce: bytes | None = None,
) -> PKIRequest:
    """
    A SCEP PKCSReq (RFC 8894) built as iOS builds it, without any I/O.

    The CSR is enveloped to ``recipient`` (AES-256-CBC, or DES-EDE3-CBC when
    ``aes`` is false), then signed by ``signer_cert`` (iOS: a self-signed
    certificate of the CSR's own key) with SHA-256 (SHA-1 when ``sha256``
    is false) and signed attributes contentType, messageDigest, messageType
    "19", transactionID (hex SHA-256 of the public key) and senderNonce
    (16 random octets).
    """
    csr = build_csr(
        key,
        subject,
        challenge,
        key_usage=key_usage,
        subject_alt_name=subject_alt_name,
    )
    if transaction_id is None:
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        transaction_id = hashlib.sha256(spki).hexdigest().upper()
    if sender_nonce is None:
        sender_nonce = os.urandom(16)
    enveloped = envelope(csr.public_bytes(serialization.Encoding.DER), recipient, aes=aes)
    digest = "sha256" if sha256 else "sha1"
    der = sign_cms(
        enveloped,
        signer_cert,
        key,
        digest=digest,
        signed_attributes=[
            (OID_SCEP_MESSAGE_TYPE, _printable(SCEP_MESSAGE_PKCS_REQ)),
            (OID_SCEP_TRANSACTION_ID, _printable(transaction_id)),
            (OID_SCEP_SENDER_NONCE, _octets(sender_nonce)),
        ],
        certificates=[signer_cert],
    )
    return PKIRequest(
        der=der,
        csr=csr,
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        signer_cert=signer_cert,
        recipient=recipient,
        aes=aes,
        digest=digest,
    )


@dataclass(frozen=True)
class CertRep:
    """A verified CertRep's attributes and (still enveloped) content."""

    message_type: str
    pki_status: str
    fail_info: int | None
    transaction_id: str
    sender_nonce: bytes
    recipient_nonce: bytes
    content: bytes
    signer: x509.Certificate


def _single(attributes: Mapping[str, list[bytes]], oid: str, spec: type[asn1_core.Asn1Value]) -> Any:
    values = attributes.get(oid)
    if values is None:
        raise SCEPError(f"CertRep lacks attribute {oid}")
    if len(values) != 1:
        raise SCEPError(f"CertRep attribute {oid} has {len(values)} values")
    try:
        parsed = spec.load(values[0], strict=True)
        native = parsed.native
    except Exception as e:
        raise SCEPError(f"CertRep attribute {oid} is not a {spec.__name__}: {e!r}") from e
    return native


def read_cert_rep(der: bytes, ca_certs: Sequence[x509.Certificate]) -> CertRep:
    """
    Verify a CertRep's signature and decode its SCEP attributes.

    The signer must be one of the GetCACert certificates or chain to one by
    signature.  messageType, pkiStatus, failInfo and transactionID must be
    PrintableStrings and the nonces OCTET STRINGs, as RFC 8894 says.
    """
    try:
        verified = verify_signed(der, list(ca_certs), list(ca_certs))
    except CMSError as e:
        raise SCEPError(f"CertRep does not verify: {e}") from e
    attributes = verified.signed_attributes
    if attributes is None:
        raise SCEPError("CertRep has no signed attributes")
    fail_info = None
    if OID_SCEP_FAIL_INFO in attributes:
        fail_info = int(_single(attributes, OID_SCEP_FAIL_INFO, asn1_core.PrintableString))
    return CertRep(
        message_type=_single(attributes, OID_SCEP_MESSAGE_TYPE, asn1_core.PrintableString),
        pki_status=_single(attributes, OID_SCEP_PKI_STATUS, asn1_core.PrintableString),
        fail_info=fail_info,
        transaction_id=_single(attributes, OID_SCEP_TRANSACTION_ID, asn1_core.PrintableString),
        sender_nonce=_single(attributes, OID_SCEP_SENDER_NONCE, asn1_core.OctetString),
        recipient_nonce=_single(attributes, OID_SCEP_RECIPIENT_NONCE, asn1_core.OctetString),
        content=verified.content,
        signer=verified.signer,
    )


def parse_cert_rep(
    der: bytes,
    *,
    ca_certs: Sequence[x509.Certificate],
    request: PKIRequest,
    key: rsa.RSAPrivateKey,
) -> x509.Certificate:
    """
    Check a CertRep against the request it answers and return the new cert.

    messageType must be 3, transactionID equal to ours, recipientNonce equal
    to our senderNonce.  SUCCESS: the content is EnvelopedData (to our
    signer certificate) of a degenerate SignedData; the certificate for our
    key must be in it and chain to the CA.  FAILURE raises SCEPRefused,
    PENDING raises SCEPPending.
    """
    rep = read_cert_rep(der, ca_certs)
    if rep.message_type != SCEP_MESSAGE_CERT_REP:
        raise SCEPError(f"messageType is {rep.message_type}, expected 3")
    if rep.transaction_id != request.transaction_id:
        raise SCEPError("transactionID does not match the request")
    if rep.recipient_nonce != request.sender_nonce:
        raise SCEPError("recipientNonce does not match our senderNonce")
    if rep.pki_status == "2":
        if rep.fail_info is None:
            raise SCEPError("FAILURE CertRep without failInfo")
        raise SCEPRefused(rep.fail_info)
    if rep.pki_status == "3":
        raise SCEPPending(rep.transaction_id)
    if rep.pki_status != "0":
        raise SCEPError(f"unknown pkiStatus {rep.pki_status!r}")
    try:
        inner = decrypt_enveloped(rep.content, request.signer_cert, key)
        issued = pkcs7.load_der_pkcs7_certificates(inner)
    except Exception as e:
        raise SCEPError(f"CertRep content unusable: {e!r}") from e
    for cert in issued:
        if _public_keys_equal(cert.public_key(), key.public_key()):
            if not _chains_to(cert, list(ca_certs), [*ca_certs, *issued]):
                raise SCEPError("issued certificate does not chain to the CA")
            return cert
    raise SCEPError("CertRep holds no certificate for our key")


@dataclass(frozen=True)
class SCEPCaps:
    """The GetCACaps answer, reduced to what changes the device's choices."""

    aes: bool
    sha256: bool
    post: bool
    raw: tuple[str, ...]

    @classmethod
    def parse(cls, body: bytes) -> SCEPCaps:
        """One capability per line, case-insensitive; SCEPStandard implies all."""
        text = body.decode("ascii", "replace")
        raw = tuple(line.strip() for line in text.splitlines())
        caps = {c.lower() for c in raw if c}
        standard = "scepstandard" in caps
        return cls(
            aes=standard or "aes" in caps,
            sha256=standard or "sha-256" in caps,
            post=standard or "postpkioperation" in caps,
            raw=raw,
        )


def select_scep_certs(content_type: bytes, body: bytes) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """
    (recipient, all certificates) from a GetCACert reply.

    ``application/x-x509-ca-cert`` is one DER certificate, the CA.
    ``application/x-x509-ca-ra-cert`` is a degenerate PKCS#7: the recipient
    is the non-CA certificate with keyEncipherment (the RA) when present,
    else the CA.
    """
    if content_type == CONTENT_TYPE_CA_CERT:
        cert = x509.load_der_x509_certificate(body)
        return cert, [cert]
    if content_type != CONTENT_TYPE_CA_RA_CERT:
        raise SCEPError(f"GetCACert content type {content_type!r}")
    certs = pkcs7.load_der_pkcs7_certificates(body)
    for cert in certs:
        if _is_ca(cert):
            continue
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if usage.key_encipherment:
            return cert, certs
    for cert in certs:
        if _is_ca(cert):
            return cert, certs
    raise SCEPError("GetCACert holds neither an RA nor a CA certificate")


def _check_ca_fingerprint(fingerprint: bytes, certs: Sequence[x509.Certificate]) -> None:
    """The payload's CAFingerprint must match one GetCACert certificate."""
    for cert in certs:
        for algorithm in (hashes.SHA256(), hashes.SHA1(), hashes.MD5()):
            if cert.fingerprint(algorithm) == fingerprint:
                return
    raise SCEPError("CAFingerprint matches no GetCACert certificate")


# --------------------------------------------------------------------------
# the device


@dataclass
class Response:
    """An HTTP answer, body read in full."""

    code: int
    headers: Headers
    body: bytes

    @property
    def content_type(self) -> bytes:
        """Media type without parameters, lower case (b"" when absent)."""
        values = self.headers.getRawHeaders(b"content-type") or [b""]
        return values[0].split(b";")[0].strip().lower()


def _default_attributes(udid: str) -> dict[str, str]:
    return {
        "VERSION": "21A351",
        "PRODUCT": "iPhone15,2",
        "SERIAL": "F2LFAKE" + udid[:5].upper(),
        "IMEI": "35 123456 789012 3",
        "MEID": "35123456789012",
    }


@dataclass(eq=False)
class FakeDevice:
    """
    One fake iPhone: its Apple identity, HTTP client and enrollment state.

    Network methods are coroutines; wrap them in ``defer.ensureDeferred``.
    Call ``close()`` at the end of a test (``addCleanup``) so no connection
    outlives it.
    """

    reactor: Any
    base_url: str
    ca_pem: bytes | None
    apple: FakeAppleHierarchy
    udid: str
    attributes: dict[str, str] | None = None
    scep_key: rsa.RSAPrivateKey | None = None
    identity: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None
    user_agent: bytes = b"fakedevice/1.0 (iPhone; otad tests)"
    # False: a new TCP and TLS connection for every request, as a device whose steps run in
    # different processes (profile installer, SCEP agent) makes them.
    persistent: bool = True
    # The local address to connect from (e.g. 127.0.0.2, so that a proxy in front of the server can be told apart).
    bind_address: str | None = None

    scep_identity: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = field(default=None, init=False)
    profile_url: str = field(default="/profile", init=False)
    server_ca: x509.Certificate | None = field(default=None, init=False)
    profile_service: dict[str, Any] | None = field(default=None, init=False)
    last_pki_request: PKIRequest | None = field(default=None, init=False)
    ca_certs: list[x509.Certificate] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        """Make the Apple identity (RSA-1024: quick) and the TLS client."""
        if self.identity is None:
            self.identity = self.apple.issue_device_identity(self.udid)
        if self.ca_pem is not None:
            self.ca_certs = x509.load_pem_x509_certificates(self.ca_pem)
            trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in self.ca_certs]
            )
            policy = BrowserLikePolicyForHTTPS(trustRoot=trust)
        else:
            policy = BrowserLikePolicyForHTTPS()
        self._pool = HTTPConnectionPool(self.reactor, persistent=self.persistent)
        bind = (self.bind_address, 0) if self.bind_address is not None else None
        self._agent = Agent(self.reactor, contextFactory=policy, pool=self._pool, bindAddress=bind)

    async def close(self) -> None:
        """Drop pooled connections, so trial sees no open sockets."""
        await self._pool.closeCachedConnections()

    # ------------------------------------------------------------ plumbing

    def _url(self, path: str) -> str:
        if urlsplit(path).scheme:
            return path
        return urljoin(self.base_url.rstrip("/") + "/", path.lstrip("/"))

    def _anchors(self) -> list[x509.Certificate]:
        """Who may sign profiles: the CA(s) we were given, plus /CA's cert."""
        anchors = list(self.ca_certs)
        if self.server_ca is not None and self.server_ca not in anchors:
            anchors.append(self.server_ca)
        if not anchors:
            raise CMSError("no trust anchor: pass ca_pem or call fetch_ca() first")
        return anchors

    async def request(
        self,
        method: bytes,
        path: str,
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> Response:
        """
        One HTTP(S) request; ``path`` is "/x" (joined to base_url) or a URL.

        Basic auth is added when ``username`` is given.  The whole body is
        read before returning.
        """
        raw = Headers({b"user-agent": [self.user_agent]})
        for name, values in (headers or {}).items():
            raw.setRawHeaders(name, values)
        if username is not None:
            token = base64.b64encode(f"{username}:{password or ''}".encode())
            raw.setRawHeaders(b"authorization", [b"Basic " + token])
        producer: IBodyProducer | None = None
        if body is not None:
            producer = cast(IBodyProducer, FileBodyProducer(BytesIO(body)))
        response = await self._agent.request(method, self._url(path).encode("ascii"), raw, producer)
        data = await readBody(response)
        return Response(code=response.code, headers=response.headers, body=data)

    def _expect(self, response: Response, content_type: bytes | Iterable[bytes]) -> None:
        if response.code != 200:
            raise UnexpectedResponse(f"expected 200: {response.body[:200]!r}", response)
        allowed = {content_type} if isinstance(content_type, bytes) else set(content_type)
        if response.content_type not in allowed:
            raise UnexpectedResponse(
                f"content type {response.content_type!r} not in {sorted(allowed)}",
                response,
            )

    def _open_profile(self, response: Response, expected_type: str) -> dict[str, Any]:
        """Verify a signed profile reply and validate its plist."""
        self._expect(response, CONTENT_TYPE_ASPEN_CONFIG)
        content, _signer = unwrap_signed(response.body, self._anchors())
        return validate_profile(_load_plist(content, "profile"), expected_type)

    # ------------------------------------------------------------ phase 1

    async def fetch_ca(self) -> x509.Certificate:
        """GET /CA: one DER CA certificate as application/x-x509-ca-cert."""
        response = await self.request(b"GET", "/CA")
        self._expect(response, CONTENT_TYPE_CA_CERT)
        try:
            cert = x509.load_der_x509_certificate(response.body)
        except ValueError as e:
            raise UnexpectedResponse(f"/CA is not DER: {e}", response) from e
        if not _is_ca(cert):
            raise UnexpectedResponse("/CA certificate is not a CA", response)
        self.server_ca = cert
        return cert

    async def enroll(self, username: str, password: str) -> dict[str, Any]:
        """
        GET /enroll with Basic auth; return the verified Profile Service.

        Remembers the payload's URL (later phase 2/3 POSTs go there, as on a
        device) and the whole payload in ``profile_service``.
        """
        response = await self.request(b"GET", "/enroll", username=username, password=password)
        profile = self._open_profile(response, "Profile Service")
        self.profile_service = profile
        self.profile_url = profile["PayloadContent"]["URL"]
        return profile

    # ------------------------------------------------------------ phase 2

    def device_attributes(self, challenge: str | bytes | None) -> dict[str, Any]:
        """UDID, CHALLENGE (when given), VERSION, PRODUCT, SERIAL, IMEI, MEID."""
        attrs: dict[str, Any] = {"UDID": self.udid}
        attrs.update(_default_attributes(self.udid))
        attrs.update(self.attributes or {})
        if challenge is not None:
            attrs["CHALLENGE"] = challenge
        return attrs

    def phase2_body(
        self,
        challenge: str | bytes | None,
        signer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
        signed_attributes: bool = False,
        *,
        digest: str = "sha1",
        ber: bool = True,
    ) -> bytes:
        """
        The device-attributes plist signed like a real device signs it.

        Default: by the fake Apple identity, SHA-1, no signed attributes,
        certificates = leaf + Device CA + intermediate + root, content
        embedded, BER with indefinite lengths (``ber=False`` for DER).
        A custom ``signer`` embeds only its own certificate.
        """
        body = plistlib.dumps(self.device_attributes(challenge), fmt=plistlib.FMT_XML)
        if signer is None:
            assert self.identity is not None
            cert, key = self.identity
            certificates = [cert, *self.apple.chain()]
        else:
            cert, key = signer
            certificates = [cert]
        der = sign_cms(
            body,
            cert,
            key,
            digest=digest,
            signed_attributes=() if signed_attributes else None,
            certificates=certificates,
        )
        return to_ber_indefinite(der) if ber else der

    async def post_profile(self, body: bytes, url: str | None = None) -> Response:
        """POST a signed body (application/pkcs7-signature) to the profile URL."""
        return await self.request(
            b"POST",
            url or self.profile_url,
            body,
            headers={b"content-type": [CONTENT_TYPE_PKCS7_SIGNATURE]},
        )

    async def phase2(self, challenge: str | bytes | None) -> dict[str, Any]:
        """
        Send the signed attributes; return the verified Configuration.

        Its first payload must be com.apple.security.scep or
        com.apple.security.pkcs12.
        """
        response = await self.post_profile(self.phase2_body(challenge))
        profile = self._open_profile(response, "Configuration")
        payloads = profile.get("PayloadContent")
        if not payloads or payloads[0]["PayloadType"] not in (
            "com.apple.security.scep",
            "com.apple.security.pkcs12",
        ):
            raise ProfileError("phase 2 profile carries no SCEP/PKCS#12 payload")
        return profile

    def install_pkcs12(self, payload: dict[str, Any]) -> None:
        """Take the identity from a com.apple.security.pkcs12 payload."""
        _check_payload(payload)
        password = payload.get("Password")
        key, cert, _extra = pkcs12.load_key_and_certificates(
            payload["PayloadContent"],
            None if password is None else password.encode("utf-8"),
        )
        if not isinstance(key, rsa.RSAPrivateKey) or cert is None:
            raise ProfileError("PKCS#12 lacks an RSA key and certificate")
        if not _public_keys_equal(cert.public_key(), key.public_key()):
            raise ProfileError("PKCS#12 certificate does not match its key")
        self.scep_identity = (cert, key)

    # ------------------------------------------------------------ SCEP

    def _scep_url(self, base: str, operation: str, message: str | None) -> str:
        url = f"{base}{'&' if '?' in base else '?'}operation={operation}"
        if message is not None:
            url += "&message=" + quote(message, safe="")
        return url

    async def _new_key(self, key_size: int) -> rsa.RSAPrivateKey:
        """RSA keygen on a thread: it must never stall the reactor."""
        pool = self.reactor.getThreadPool()
        key: rsa.RSAPrivateKey = await threads.deferToThreadPool(self.reactor, pool, rsa.generate_private_key, 65537, key_size)
        return key

    async def scep_enroll(self, scep_payload: dict[str, Any], *, use_get: bool = False) -> x509.Certificate:
        """
        Enroll with SCEP as iOS does, from a com.apple.security.scep payload.

        GetCACaps, GetCACert (with message=Name when the payload has a Name),
        CAFingerprint check when present, CSR + PKCSReq, POST PKIOperation
        (GET with base64 message= when ``use_get`` or the CA lacks
        POSTPKIOperation), CertRep checked by ``parse_cert_rep``.
        """
        content = scep_payload
        if scep_payload.get("PayloadType") == "com.apple.security.scep":
            _check_payload(scep_payload)
            content = scep_payload["PayloadContent"]
        url = content["URL"]
        name = content.get("Name")

        response = await self.request(b"GET", self._scep_url(url, "GetCACaps", name))
        if response.code != 200:
            raise UnexpectedResponse("GetCACaps failed", response)
        caps = SCEPCaps.parse(response.body)

        response = await self.request(b"GET", self._scep_url(url, "GetCACert", name))
        self._expect(response, (CONTENT_TYPE_CA_CERT, CONTENT_TYPE_CA_RA_CERT))
        recipient, ca_certs = select_scep_certs(response.content_type, response.body)
        if "CAFingerprint" in content:
            _check_ca_fingerprint(content["CAFingerprint"], ca_certs)

        key = self.scep_key
        if key is None:
            key = await self._new_key(int(content.get("Keysize", 2048)))
        subject = content.get("Subject", [])
        # iOS names its transient signer after the requested subject
        common_names = subject_from_payload(subject).get_attributes_for_oid(NameOID.COMMON_NAME)
        signer_cert, _ = self_signed_identity(str(common_names[0].value) if common_names else "SCEP SIGNER", key=key)
        request = build_pkcs_req(
            key,
            signer_cert,
            recipient,
            subject=subject,
            challenge=content.get("Challenge"),
            key_usage=content.get("Key Usage"),
            subject_alt_name=content.get("SubjectAltName"),
            aes=caps.aes,
            sha256=caps.sha256,
        )
        self.last_pki_request = request

        if use_get or not caps.post:
            message = base64.b64encode(request.der).decode("ascii")
            response = await self.request(b"GET", self._scep_url(url, "PKIOperation", message))
        else:
            response = await self.request(
                b"POST",
                self._scep_url(url, "PKIOperation", None),
                request.der,
                headers={b"content-type": [CONTENT_TYPE_PKI_MESSAGE]},
            )
        self._expect(response, CONTENT_TYPE_PKI_MESSAGE)
        cert = parse_cert_rep(response.body, ca_certs=ca_certs, request=request, key=key)
        self.scep_identity = (cert, key)
        return cert

    # ------------------------------------------------------------ phase 3

    def phase3_body(self) -> bytes:
        """
        Device attributes (no CHALLENGE) signed by the enrolled identity.

        SHA-256 with signed attributes, certificates = the identity only;
        built with cryptography's PKCS7SignatureBuilder.
        """
        if self.scep_identity is None:
            raise FakeDeviceError("no identity yet: scep_enroll or install_pkcs12")
        cert, key = self.scep_identity
        body = plistlib.dumps(self.device_attributes(None), fmt=plistlib.FMT_XML)
        return bytes(
            pkcs7.PKCS7SignatureBuilder()
            .set_data(body)
            .add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        )

    async def phase3(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """
        Ask for the final profile; return (outer profile, decrypted payloads).

        The outer Configuration must be signed by the server and carry
        EncryptedPayloadContent: EnvelopedData to our identity of a plist
        array of payloads, each of which is validated.
        """
        response = await self.post_profile(self.phase3_body())
        profile = self._open_profile(response, "Configuration")
        if "EncryptedPayloadContent" not in profile:
            raise ProfileError("phase 3 profile has no EncryptedPayloadContent")
        assert self.scep_identity is not None
        cert, key = self.scep_identity
        plain = decrypt_enveloped(profile["EncryptedPayloadContent"], cert, key)
        payloads = _load_plist(plain, "EncryptedPayloadContent")
        if not isinstance(payloads, list):
            raise ProfileError("EncryptedPayloadContent is not an array")
        for payload in payloads:
            _check_payload(payload)
        return profile, payloads
