"""Domain refusals: what the services refuse and why, with a kind that only the resources turn into HTTP.

A service says *what kind* of refusal it is (the request is malformed, the requester may not do
it, a dependency is unavailable...); ``otad.web`` maps each kind to one status code.
"""

from __future__ import annotations

from enum import Enum


class Kind(Enum):
    """Why a request is refused, independent of the protocol that carried it."""

    # The request cannot be read: bad encoding, missing fields, wrong types.
    MALFORMED = "malformed"
    # The request is readable but not allowed: bad signature, untrusted signer, used challenge.
    FORBIDDEN = "forbidden"
    # Something otad depends on (the database, a directory) cannot answer now; try again later.
    UNAVAILABLE = "unavailable"
    # otad itself would have produced something wrong (an invalid profile), so it sent nothing.
    BROKEN = "broken"


class Refused(Exception):
    """A refusal: ``kind``, a one-line ``reason`` safe to show the client, and what it concerns (for the event log)."""

    def __init__(self, kind: Kind, reason: str, *, udid: str | None = None, retry_after: int | None = None) -> None:
        first_line = reason.splitlines()[0] if reason else kind.value
        super().__init__(first_line)
        self.kind = kind
        self.reason = first_line
        self.udid = udid
        self.retry_after = retry_after


class Unavailable(Refused):
    """A dependency is down; the request may be retried unchanged."""

    def __init__(self, reason: str, *, retry_after: int = 5) -> None:
        super().__init__(Kind.UNAVAILABLE, reason, retry_after=retry_after)
