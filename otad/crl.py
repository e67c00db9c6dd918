"""RFC 5280 v2 CRLs of otad's CA, and the revocation reasons they carry.

A pure function builds one from the store's revocations: CRL number, authority key identifier,
``nextUpdate``, and a reason code on each entry except ``unspecified`` (RFC 5280 5.3.1: that
one SHOULD be absent).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from otad.ca import Identity

# RFC 5280's names for CRLReason values, as otad-admin and the store spell them.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
}
NAMES = {flag: name for name, flag in REASONS.items()}


def reason_flag(name: str | None) -> x509.ReasonFlags:
    """The CRLReason for a stored reason; text from before otad knew reasons counts as unspecified."""
    return REASONS.get(name or "", x509.ReasonFlags.unspecified)


def build(
    issuer: Identity,
    *,
    number: int,
    revoked: Iterable[tuple[int, datetime.datetime, str | None]],
    this_update: datetime.datetime,
    next_update: datetime.datetime,
) -> bytes:
    """The DER CRL listing ``revoked`` (serial, revocation time, reason name), signed by the CA with SHA-256."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    for serial, when, reason in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        flag = reason_flag(reason)
        if flag is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
