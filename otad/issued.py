"""The one answer to "did otad issue this certificate, and what does the store know of it?".

Phase 3 (a device signing with the identity otad gave it) and SCEP renewal (a client signing with
its current certificate) both ask it: first by signature, then by the stored record, whose DER
must be this very certificate.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from otad.ca import Authority, issued_by, serial_hex
from otad.store import CertificateRecord, StoreThread


@dataclass(frozen=True)
class Provenance:
    """``signed_by_otad``: otad's root signed it; ``record``: the store's record of exactly this certificate, if any."""

    signed_by_otad: bool
    record: CertificateRecord | None = None

    def valid_at(self, now: float) -> bool:
        """Whether otad issued it, recorded it, has not revoked it, and ``now`` is within its validity."""
        record = self.record
        return record is not None and record.revoked is None and record.not_before <= now < record.not_after


class IssuedCertificates:
    def __init__(self, authority: Authority, store: StoreThread) -> None:
        self._authority = authority
        self._store = store

    async def lookup(self, cert: x509.Certificate) -> Provenance:
        if not issued_by(cert, self._authority.root.cert):
            return Provenance(signed_by_otad=False)
        serial = serial_hex(cert.serial_number)
        record = await self._store.call(lambda store: store.certificate(serial))
        if record is None or record.der != cert.public_bytes(serialization.Encoding.DER):
            return Provenance(signed_by_otad=True)
        return Provenance(signed_by_otad=True, record=record)
