"""SCEP (RFC 8894) PKIMessages as pure functions on top of otad.cms.

It reads a client's signed request and its CSR, and builds the signed CertRep answering it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from asn1crypto import core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ObjectIdentifier

from otad import cms

__all__ = [
    "CSRInfo",
    "FailInfo",
    "MessageType",
    "PKIMessage",
    "PKIStatus",
    "SCEPError",
    "build_cert_rep",
    "open_envelope",
    "parse_csr",
    "parse_issuer_and_serial",
    "parse_issuer_and_subject",
    "parse_pki_message",
]

_MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
_PKI_STATUS = "2.16.840.1.113733.1.9.3"
_FAIL_INFO = "2.16.840.1.113733.1.9.4"
_SENDER_NONCE = "2.16.840.1.113733.1.9.5"
_RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
_TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
_CHALLENGE_PASSWORD = "1.2.840.113549.1.9.7"

# RFC 8894 asks for 16-byte nonces, but macOS has been seen sending 8.
_NONCE_SIZES = range(8, 65)
_MAX_TRANSACTION_ID = 256
_MAX_CSR = 64 * 1024
_MAX_NAME_PAYLOAD = 16 * 1024
_CSR_HASHES = (hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)
_STRING_TYPES = (
    core.PrintableString,
    core.UTF8String,
    core.IA5String,
    core.TeletexString,
    core.BMPString,
)


class MessageType(IntEnum):
    """SCEP messageType values."""

    CertRep = 3
    RenewalReq = 17
    PKCSReq = 19
    CertPoll = 20
    GetCert = 21
    GetCRL = 22


class PKIStatus(IntEnum):
    """CertRep pkiStatus values."""

    SUCCESS = 0
    FAILURE = 2
    PENDING = 3


class FailInfo(IntEnum):
    """CertRep failInfo values: why a request was refused."""

    badAlg = 0
    badMessageCheck = 1
    badRequest = 2
    badTime = 3
    badCertId = 4


class SCEPError(ValueError):
    """A request SCEP must refuse; str() is a one-line reason, fail_info goes in the CertRep."""

    def __init__(self, reason: str, fail_info: FailInfo = FailInfo.badRequest) -> None:
        super().__init__(reason)
        self.fail_info = fail_info


@dataclass(frozen=True)
class PKIMessage:
    """A verified SCEP request; envelope is its still-encrypted pkcsPKIEnvelope."""

    message_type: int
    transaction_id: str
    sender_nonce: bytes
    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]
    digest: str
    envelope: bytes


@dataclass(frozen=True)
class CSRInfo:
    """A PKCS#10 request whose own signature verified."""

    der: bytes
    subject: x509.Name
    public_key: PublicKeyTypes
    challenge: str | None
    extensions: x509.Extensions
    version: int


class _RequestInfo(core.Sequence):
    # Only what asn1crypto must decode here; cryptography reads the subject, key and
    # extensions, and the attribute values stay raw so every string type is accepted.
    _fields: ClassVar[list[tuple[str, type, dict[str, int]]]] = [
        ("version", core.Integer, {}),
        ("subject", core.Any, {}),
        ("subject_pk_info", core.Any, {}),
        ("attributes", cms.RawAttributes, {"implicit": 0}),
    ]


class _Request(core.Sequence):
    _fields: ClassVar[list[tuple[str, type]]] = [
        ("certification_request_info", _RequestInfo),
        ("signature_algorithm", core.Any),
        ("signature", core.Any),
    ]


class _TypeAndValue(core.Sequence):
    _fields: ClassVar[list[tuple[str, type]]] = [
        ("type", core.ObjectIdentifier),
        ("value", core.Any),
    ]


class _RelativeName(core.SetOf):
    _child_spec: ClassVar[type] = _TypeAndValue


class _Name(core.SequenceOf):
    _child_spec: ClassVar[type] = _RelativeName


class _IssuerAndSubject(core.Sequence):
    _fields: ClassVar[list[tuple[str, type]]] = [("issuer", _Name), ("subject", _Name)]


class _IssuerAndSerial(core.Sequence):
    _fields: ClassVar[list[tuple[str, type]]] = [
        ("issuer", _Name),
        ("serial_number", core.Integer),
    ]


@contextmanager
def _malformed(what: str) -> Iterator[None]:
    try:
        yield
    except SCEPError:
        raise
    except Exception as exc:
        # asn1crypto (and cryptography) report bad input with assorted exception
        # types, some only when a field is first read.
        raise SCEPError(f"malformed {what}") from exc


def _value(attributes: Mapping[str, tuple[bytes, ...]], oid: str, name: str) -> bytes:
    try:
        return cms.single_attribute(attributes, oid, name)
    except cms.CMSError as error:
        raise SCEPError(str(error)) from None


def _string(der: bytes, name: str) -> str:
    with _malformed(name):
        value = core.load(der, strict=True)
        if not isinstance(value, _STRING_TYPES):
            raise SCEPError(f"{name} is not a string")
        return str(value.native)


def _octets(der: bytes, name: str) -> bytes:
    with _malformed(name):
        return bytes(core.OctetString.load(der, strict=True).native)


def parse_pki_message(der: bytes) -> PKIMessage:
    """Verify a PKIMessage's signature and read its SCEP attributes.

    Trust in the signer is not decided here. The message type is returned even when
    it is not a MessageType, for the caller to refuse.
    """
    try:
        verified = cms.verify(der)
    except cms.CMSError as exc:
        raise SCEPError(str(exc), FailInfo.badMessageCheck) from None
    attributes = verified.attributes
    message_type = _string(_value(attributes, _MESSAGE_TYPE, "messageType"), "messageType")
    if not (message_type.isascii() and message_type.isdigit() and len(message_type) <= 4):
        raise SCEPError("messageType is not a decimal number")
    transaction_id = _string(_value(attributes, _TRANSACTION_ID, "transactionID"), "transactionID")
    if not transaction_id or len(transaction_id) > _MAX_TRANSACTION_ID:
        raise SCEPError("transactionID is empty or too long")
    # The CertRep echoes it as a PrintableString.
    if not (transaction_id.isascii() and transaction_id.isprintable()):
        raise SCEPError("transactionID is not printable ASCII")
    sender_nonce = _octets(_value(attributes, _SENDER_NONCE, "senderNonce"), "senderNonce")
    if len(sender_nonce) not in _NONCE_SIZES:
        raise SCEPError("senderNonce has a bad length")
    return PKIMessage(
        message_type=int(message_type),
        transaction_id=transaction_id,
        sender_nonce=sender_nonce,
        signer=verified.signer,
        certificates=verified.certificates,
        digest=verified.digest,
        envelope=verified.content,
    )


def open_envelope(msg: PKIMessage, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> cms.Decrypted:
    """Decrypt the request's pkcsPKIEnvelope with the CA's (or RA's) cert and key."""
    try:
        return cms.decrypt(msg.envelope, cert, key)
    except cms.CMSError as exc:
        raise SCEPError(str(exc), FailInfo.badMessageCheck) from None


def _header_length(der: bytes, position: int) -> int:
    length_octet = der[position + 1]
    return 2 + (length_octet & 0x7F if length_octet & 0x80 else 0)


def _as_v1(der: bytes, version: int) -> bytes:
    """der with its version field set to 0 (v1), which cryptography insists on."""
    if version == 0:
        return der
    # Same-length patch of the INTEGER that opens CertificationRequestInfo, so
    # nothing else is re-encoded.
    start = _header_length(der, 0)
    start += _header_length(der, start)
    if der[start : start + 3] != bytes([0x02, 0x01, version]):
        raise SCEPError("unsupported CSR version")
    return der[:start] + b"\x02\x01\x00" + der[start + 3 :]


def _verify_csr_signature(public_key: PublicKeyTypes, csr: x509.CertificateSigningRequest, signed: bytes) -> None:
    try:
        algorithm = csr.signature_hash_algorithm
        parameters = csr.signature_algorithm_parameters
    except UnsupportedAlgorithm:
        raise SCEPError("unsupported CSR signature algorithm", FailInfo.badAlg) from None
    if not isinstance(algorithm, _CSR_HASHES):
        raise SCEPError("unsupported CSR signature algorithm", FailInfo.badAlg)
    try:
        if isinstance(public_key, rsa.RSAPublicKey) and isinstance(parameters, padding.PKCS1v15):
            public_key.verify(csr.signature, signed, parameters, algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(parameters, ec.ECDSA):
            public_key.verify(csr.signature, signed, parameters)
        else:
            raise SCEPError("unsupported CSR signature algorithm", FailInfo.badAlg)
    except InvalidSignature:
        raise SCEPError("CSR signature does not verify", FailInfo.badMessageCheck) from None


def _challenge(attributes: cms.RawAttributes) -> str | None:
    challenge = None
    for attribute in attributes:
        if attribute["type"].dotted != _CHALLENGE_PASSWORD:
            continue
        if challenge is not None or len(attribute["values"]) != 1:
            raise SCEPError("challengePassword must have exactly one value")
        challenge = _string(attribute["values"][0].dump(), "challengePassword")
    return challenge


def parse_csr(der: bytes) -> CSRInfo:
    """Read a PKCS#10 request and verify its own signature.

    Version 2, which Apple devices send, is tolerated; the challengePassword may be any
    of the usual string types.
    """
    if len(der) > _MAX_CSR:
        raise SCEPError("CSR too large")
    with _malformed("CSR"):
        info = _Request.load(der, strict=True)["certification_request_info"]
        version = info["version"].native
        if version not in (0, 1, 2):
            raise SCEPError("unsupported CSR version")
        signed = info.dump()
        challenge = _challenge(info["attributes"])
        csr = x509.load_der_x509_csr(_as_v1(der, version))
        try:
            public_key = csr.public_key()
        except UnsupportedAlgorithm:
            raise SCEPError("unsupported CSR key type", FailInfo.badAlg) from None
        subject = csr.subject
        extensions = csr.extensions
    _verify_csr_signature(public_key, csr, signed)
    return CSRInfo(
        der=der,
        subject=subject,
        public_key=public_key,
        challenge=challenge,
        extensions=extensions,
        version=version,
    )


def _x509_name(name: _Name) -> x509.Name:
    relative_names = []
    for relative_name in name:
        attributes = []
        for pair in relative_name:
            value = core.load(pair["value"].dump(), strict=True)
            if not isinstance(value, _STRING_TYPES + (core.VisibleString,)):
                raise SCEPError("unsupported name attribute")
            attributes.append(x509.NameAttribute(ObjectIdentifier(pair["type"].dotted), value.native))
        relative_names.append(x509.RelativeDistinguishedName(attributes))
    return x509.Name(relative_names)


def parse_issuer_and_subject(der: bytes) -> tuple[x509.Name, x509.Name]:
    """Read the IssuerAndSubject of a CertPoll (GetCertInitial) request."""
    if len(der) > _MAX_NAME_PAYLOAD:
        raise SCEPError("IssuerAndSubject too large")
    with _malformed("IssuerAndSubject"):
        parsed = _IssuerAndSubject.load(der, strict=True)
        return _x509_name(parsed["issuer"]), _x509_name(parsed["subject"])


def parse_issuer_and_serial(der: bytes) -> tuple[x509.Name, int]:
    """Read the IssuerAndSerialNumber of a GetCert request."""
    if len(der) > _MAX_NAME_PAYLOAD:
        raise SCEPError("IssuerAndSerialNumber too large")
    with _malformed("IssuerAndSerialNumber"):
        parsed = _IssuerAndSerial.load(der, strict=True)
        return _x509_name(parsed["issuer"]), int(parsed["serial_number"].native)


def build_cert_rep(
    *,
    request: PKIMessage,
    status: PKIStatus,
    signer_cert: x509.Certificate,
    signer_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    fail_info: FailInfo | None = None,
    issued: Sequence[x509.Certificate] = (),
    crl: bytes | None = None,
    cipher: str = "aes256",
    digest: str = "sha256",
    chain: Sequence[x509.Certificate] = (),
) -> bytes:
    """Build the signed CertRep answering request, carrying ``chain`` (the signer's issuers) beside the signer.

    On SUCCESS the issued certificates (or, for GetCRL, the CRL) are enveloped to the request's
    signer; otherwise the content is empty. A FAILURE needs a fail_info, and only a FAILURE may
    have one. Callers that were asked for single DES must choose "des3" instead.
    """
    status = PKIStatus(status)
    if (status is PKIStatus.FAILURE) != (fail_info is not None):
        raise ValueError("fail_info goes with a FAILURE status, and only with one")
    if status is PKIStatus.SUCCESS and not issued and crl is None:
        raise ValueError("a SUCCESS CertRep needs the issued certificate or the CRL")
    if cipher == "des":
        raise SCEPError("single DES is not allowed for a CertRep", FailInfo.badAlg)
    attributes = [
        (_MESSAGE_TYPE, core.PrintableString(str(int(MessageType.CertRep))).dump()),
        (_PKI_STATUS, core.PrintableString(str(int(status))).dump()),
        (_TRANSACTION_ID, core.PrintableString(request.transaction_id).dump()),
        (_SENDER_NONCE, core.OctetString(os.urandom(16)).dump()),
        (_RECIPIENT_NONCE, core.OctetString(request.sender_nonce).dump()),
    ]
    if fail_info is not None:
        attributes.append((_FAIL_INFO, core.PrintableString(str(int(FailInfo(fail_info)))).dump()))
    content = b""
    if status is PKIStatus.SUCCESS:
        try:
            bag = cms.crl_bag(crl) if crl is not None else cms.certs_only(issued)
            content = cms.encrypt(bag, [request.signer], cipher)
        except cms.CMSError as exc:
            raise SCEPError(str(exc), FailInfo.badAlg) from None
    return cms.sign(
        content,
        signer_cert,
        signer_key,
        chain,
        digest,
        attributes=attributes,
        rsa_encryption_oid=True,
    )
