"""otad's OCSP responder (RFC 6960): good, revoked or unknown for the certificates its CA issued.

Answers are signed by the delegated responder certificate (EKU OCSPSigning, id-pkix-ocsp-nocheck)
and cached: a certificate whose status has not changed gets the same signed answer until it is
an hour old, so OCSP load costs no RSA signature per request. A request with a nonce gets a fresh
answer that echoes it, within a signing budget; past the budget it gets the cached answer without
the nonce (RFC 8954 lets a responder leave it out), or tryLater when there is none. Every
failure is an OCSP error status, never an HTTP error.

The cache is per process, and safe when several otad instances share a database: every request
reads the certificate's status from the store first, and a cached answer is served only for the
status it was signed with, so a revocation recorded by any instance (or otad-admin) is in the
very next answer of every instance.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from dataclasses import dataclass

from asn1crypto import keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from otad import crl
from otad.ca import Authority, serial_hex
from otad.pool import WorkerPool
from otad.store import StoreThread

log = Logger()

# How long an answer is valid (nextUpdate), and how old a cached one may get before it is re-signed.
VALIDITY = datetime.timedelta(days=1)
REFRESH_AFTER = 3600
CACHE_SIZE = 10_000
MAX_REQUEST = 16 * 1024
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def error_response(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned OCSP error answer (malformedRequest, unauthorized, tryLater...)."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class _Status:
    status: ocsp.OCSPCertStatus
    revoked: float | None = None
    reason: str | None = None


class SigningBudget:
    """A token bucket of fresh signatures per second, so a flood of nonces or unknown serials cannot
    make otad sign without end."""

    def __init__(self, per_second: float, clock: IReactorTime) -> None:
        self._rate = per_second
        self._tokens = per_second * 2
        self._clock = clock
        self._stamp = clock.seconds()

    def take(self) -> bool:
        now = self._clock.seconds()
        self._tokens = min(self._rate * 2, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class OCSPResponder:
    def __init__(
        self, authority: Authority, store: StoreThread, crypto: WorkerPool, clock: IReactorTime, signatures_per_second: float = 50
    ) -> None:
        self._authority = authority
        self._store = store
        self._crypto = crypto
        self._clock = clock
        self._budget = SigningBudget(signatures_per_second, clock)
        # (hash algorithm, serial) -> (status, when signed, DER)
        self._cache: OrderedDict[tuple[str, int], tuple[_Status, float, bytes]] = OrderedDict()

    def _issuer_hashes(self, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
        """The issuerNameHash and issuerKeyHash a request for one of otad's certificates carries."""
        root = self._authority.root.cert
        name = hashes.Hash(algorithm)
        name.update(root.subject.public_bytes())
        return name.finalize(), _hash_public_key(root, algorithm)

    async def respond(self, der: bytes) -> bytes:
        """An OCSP request (DER) in, a DER OCSP response out."""
        if len(der) > MAX_REQUEST:
            return error_response(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        try:
            request = ocsp.load_der_ocsp_request(der)
            algorithm_class = _HASHES.get(request.hash_algorithm.name)
            serial = request.serial_number
            nonce = _nonce(request)
        except Exception:  # noqa: BLE001 - the boundary: cryptography raises assorted errors on hostile requests
            return error_response(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        if algorithm_class is None:
            return error_response(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        algorithm = algorithm_class()
        if (request.issuer_name_hash, request.issuer_key_hash) != self._issuer_hashes(algorithm):
            # Not a certificate of otad's CA: RFC 6960 2.3.
            return error_response(ocsp.OCSPResponseStatus.UNAUTHORIZED)
        record = await self._store.call(lambda store: store.certificate(serial_hex(serial)))
        if record is None:
            status = _Status(ocsp.OCSPCertStatus.UNKNOWN)
        elif record.revoked is not None:
            status = _Status(ocsp.OCSPCertStatus.REVOKED, record.revoked, record.revocation_reason)
        else:
            status = _Status(ocsp.OCSPCertStatus.GOOD)
        key = (algorithm.name, serial)
        now = self._clock.seconds()
        cached = self._cache.get(key)
        usable = cached is not None and cached[0] == status and now - cached[1] < REFRESH_AFTER
        if nonce is not None and self._budget.take():
            return await self._sign(request, algorithm, status, now, nonce)
        if usable:
            assert cached is not None
            self._cache.move_to_end(key)
            return cached[2]
        if not self._budget.take():
            return error_response(ocsp.OCSPResponseStatus.TRY_LATER)
        signed = await self._sign(request, algorithm, status, now, None)
        self._cache[key] = (status, now, signed)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return signed

    async def _sign(
        self, request: ocsp.OCSPRequest, algorithm: hashes.HashAlgorithm, status: _Status, now: float, nonce: bytes | None
    ) -> bytes:
        responder = self._authority.ocsp
        this_update = datetime.datetime.fromtimestamp(now, datetime.UTC)
        revoked_at = datetime.datetime.fromtimestamp(status.revoked, datetime.UTC) if status.revoked is not None else None
        reason = crl.reason_flag(status.reason) if status.status is ocsp.OCSPCertStatus.REVOKED else None
        builder = (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                request.issuer_name_hash,
                request.issuer_key_hash,
                request.serial_number,
                algorithm,
                status.status,
                this_update,
                this_update + VALIDITY,
                revoked_at,
                None if reason is x509.ReasonFlags.unspecified else reason,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, responder.cert)
            .certificates([responder.cert])
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        response = await self._crypto.run(builder.sign, responder.key, hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)


def _hash_public_key(cert: x509.Certificate, algorithm: hashes.HashAlgorithm) -> bytes:
    """The hash of a certificate's subjectPublicKey BIT STRING contents (RFC 6960's issuerKeyHash)."""
    info = keys.PublicKeyInfo.load(
        cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    digest = hashes.Hash(algorithm)
    digest.update(bytes(info["public_key"].contents[1:]))
    return digest.finalize()


def _nonce(request: ocsp.OCSPRequest) -> bytes | None:
    try:
        return request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None
