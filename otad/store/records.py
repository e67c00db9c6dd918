"""What the store holds and hands back (challenges, devices, certificates, CRLs, held requests, events), and its errors.

Plain frozen dataclasses built from rows, the same for every engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from otad.errors import Unavailable

CHALLENGE_KINDS = ("enroll", "scep", "static")


class StoreError(RuntimeError):
    """The database cannot be opened or upgraded."""


class StoreUnavailable(Unavailable):
    """The database did not answer; nothing was written (the transaction rolled back), or, when the
    connection broke during COMMIT, what was written is whole (PostgreSQL commits atomically)."""


class ChallengeRefused(Exception):
    """A challenge that is unknown, expired, already used or of the wrong kind; str() is the reason
    (``unknown challenge``, ``challenge expired``, ``challenge already used``, ``challenge revoked``)."""


class DuplicateSerial(Exception):
    """The serial is already taken; the caller draws a new one and signs again."""


@dataclass(frozen=True)
class Challenge:
    id: int
    kind: str
    bound_to: str | None
    created: float
    expires: float
    uses_left: int
    revoked: float | None = None

    def refusal(self, kinds: tuple[str, ...], now: float) -> str | None:
        """Why this challenge cannot be used now for one of ``kinds``, or None if it can."""
        if self.kind not in kinds:
            return "unknown challenge"
        if self.revoked is not None:
            return "challenge revoked"
        if self.expires <= now:
            return "challenge expired"
        if self.uses_left <= 0:
            return "challenge already used"
        return None


@dataclass(frozen=True)
class Device:
    udid: str
    user: str | None
    attributes: dict[str, object]
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    udid: str | None
    subject: str
    not_before: float
    not_after: float
    der: bytes
    challenge_id: int | None
    transaction_id: str | None
    issued: float
    revoked: float | None
    revocation_reason: str | None


@dataclass(frozen=True)
class Revocation:
    serial: str
    revoked: float
    reason: str | None


@dataclass(frozen=True)
class CRLRecord:
    number: int
    this_update: float
    next_update: float
    revocations: int
    newest_revocation: float | None
    der: bytes


@dataclass(frozen=True)
class HeldRequest:
    """A SCEP request waiting for (or given) an admin's decision."""

    transaction_id: str
    udid: str | None
    subject: str
    csr: bytes
    challenge_id: int | None
    status: str
    created: float
    decided: float | None
    serial: str | None


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    outcome: str
    user: str | None
    udid: str | None
    serial: str | None
    reason: str | None
