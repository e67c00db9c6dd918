"""Whether a phase-2 request was signed by a genuine device identity: the anchors and the policy.

Apple's device identities chain to "Apple iPhone Device CA", which expired in 2014 and still
issues, with SHA-1 and RSA-1024 leaves; so this chain, and only this check, ignores validity
dates and allows those legacy algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography import x509

from otad import cms

POLICIES = ("strict", "log", "off")


class AnchorsError(ValueError):
    """The anchors file cannot be used; str() names it."""


def load_anchors(path: Path | None) -> tuple[x509.Certificate, ...]:
    """The PEM anchors in ``path``, or Apple's shipped anchors when ``path`` is None."""
    if path is None:
        folder = resources.files("otad").joinpath("anchors")
        data = b"".join(entry.read_bytes() for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".pem"))
        name = "the shipped Apple anchors"
    else:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise AnchorsError(f"cannot read the device anchors {path}: {error.strerror}") from None
        name = str(path)
    try:
        anchors = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise AnchorsError(f"{name} holds no PEM certificates") from None
    return anchors


@dataclass(frozen=True)
class DeviceTrust:
    policy: str
    anchors: tuple[x509.Certificate, ...]

    def check(self, signed: cms.Verified) -> str | None:
        """Apply the policy to a verified request: raise CMSError under ``strict``, return the reason under ``log``."""
        if self.policy == "off":
            return None
        try:
            cms.verify_chain(signed.signer, signed.certificates, self.anchors, ignore_validity=True, allow_legacy=True)
        except cms.CMSError as error:
            if self.policy == "strict":
                raise
            return str(error)
        return None
