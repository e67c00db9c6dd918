"""Domain refusals: what the services refuse and why, with a kind that only the resources turn into HTTP.

A service says *what kind* of refusal it is (the request is malformed, the requester may not do
it, a dependency is unavailable...); ``otad.web`` maps each kind to one status code.
"""

from __future__ import annotations

import re
from enum import Enum

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_REASON = 300


def printable(text: str, limit: int = MAX_REASON) -> str:
    """``text`` made safe to echo into a log line or a refusal: control characters (and line and
    paragraph separators) escaped as ``\\xNN``, and at most ``limit`` characters, marked with "..." when cut."""
    safe = _UNSAFE.sub(lambda match: f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else f"\\u{ord(match.group()):04x}", text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def one_line(text: str) -> str:
    """A reason as a refusal shows it: its first line only, then ``printable``."""
    lines = text.splitlines()
    return printable(lines[0] if lines else "")


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
    # The requester tried too often (failed logins); it may try again after ``retry_after``.
    THROTTLED = "throttled"
    # The credentials are wrong or missing.
    UNAUTHENTICATED = "unauthenticated"


class Refused(Exception):
    """A refusal: ``kind``, a one-line ``reason`` safe to show the client, and what it concerns (for the event log)."""

    def __init__(self, kind: Kind, reason: str, *, udid: str | None = None, retry_after: int | None = None) -> None:
        safe = one_line(reason) if reason else kind.value
        super().__init__(safe)
        self.kind = kind
        self.reason = safe
        self.udid = udid
        self.retry_after = retry_after


class Unavailable(Refused):
    """A dependency is down; the request may be retried unchanged."""

    def __init__(self, reason: str, *, retry_after: int = 5) -> None:
        super().__init__(Kind.UNAVAILABLE, reason, retry_after=retry_after)
