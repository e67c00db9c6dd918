"""Whether a phase-2 request was signed by a genuine device identity: the anchors, the path and the policy.

Apple's device identities chain to "Apple iPhone Device CA", which expired in 2014 and still
issues, with SHA-1 and RSA-1024 leaves; so this chain, and only this check, ignores validity
dates and allows those legacy algorithms.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from otad import cms

POLICIES = ("strict", "log", "off")

_MAX_PATH = 8
# Bounds the signature checks one path search may make, so a message carrying many
# cross-signed certificates with the same names cannot make the search explode.
_MAX_PATH_CHECKS = 64
_HASHES = (hashes.SHA1, hashes.SHA224, hashes.SHA256, hashes.SHA384, hashes.SHA512)


class UntrustedDevice(ValueError):
    """The signer does not chain to the anchors; str() is a short reason safe to show a client."""


def _validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return "certificate in the chain is not yet valid"
    if now > cert.not_valid_after_utc:
        return "certificate in the chain has expired"
    return None


def _key_problem(cert: x509.Certificate, allow_legacy: bool) -> str | None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "unsupported public key in the chain"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < (1024 if allow_legacy else 2048):
            return "RSA key too small in the chain"
    elif not isinstance(key, ec.EllipticCurvePublicKey):
        return "unsupported public key in the chain"
    return None


def _signature_problem(cert: x509.Certificate, allow_legacy: bool) -> str | None:
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return "unsupported signature algorithm in the chain"
    if isinstance(algorithm, hashes.SHA1) and not allow_legacy:
        return "SHA-1 signature in the chain"
    if not isinstance(algorithm, _HASHES):
        return "unsupported signature algorithm in the chain"
    return None


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> object | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    # Certificate.verify_directly_issued_by refuses SHA-1, which Apple's chain needs.
    try:
        key = issuer.public_key()
        algorithm = cert.signature_hash_algorithm
        parameters = cert.signature_algorithm_parameters
        if isinstance(key, rsa.RSAPublicKey) and isinstance(parameters, (padding.PKCS1v15, padding.PSS)) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, parameters, algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(parameters, ec.ECDSA):
            key.verify(cert.signature, cert.tbs_certificate_bytes, parameters)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


# Every phase 2 checks the same intermediate against the same anchor: remembering the answer
# (certificates compare and hash by their DER) spares that signature check. Only checks against
# an anchor are remembered, so a message full of other certificates cannot flush the useful ones.
_signed_by_anchor = functools.lru_cache(maxsize=64)(_signed_by)


def _issuer_problem(issuer: x509.Certificate, below: int, is_anchor: bool) -> str | None:
    """Whether issuer may issue a certificate with `below` intermediates under it."""
    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None:
        # Old self-signed roots predate basicConstraints; trust in them is explicit.
        return None if is_anchor else "issuer in the chain is not a CA"
    assert isinstance(constraints, x509.BasicConstraints)
    if not constraints.ca:
        return "issuer in the chain is not a CA"
    if constraints.path_length is not None and below > constraints.path_length:
        return "path length constraint exceeded"
    usage = _extension(issuer, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
        return "issuer in the chain may not sign certificates"
    return None


@dataclass
class _PathSearch:
    # Certificates compare by their DER. A subject is read when a name is first compared, so a
    # certificate the search never reaches is never parsed.
    pool: list[x509.Certificate]
    anchors: set[x509.Certificate]
    now: datetime | None
    allow_legacy: bool
    problems: list[str] = field(default_factory=list)
    checks: int = 0
    subjects: dict[x509.Certificate, x509.Name] = field(default_factory=dict)

    def subject(self, cert: x509.Certificate) -> x509.Name:
        name = self.subjects.get(cert)
        if name is None:
            name = self.subjects[cert] = cert.subject
        return name

    def cert_problem(self, cert: x509.Certificate) -> str | None:
        if self.now is not None:
            problem = _validity_problem(cert, self.now)
            if problem:
                return problem
        return _key_problem(cert, self.allow_legacy)

    def extend(self, path: list[x509.Certificate]) -> list[x509.Certificate] | None:
        current = path[-1]
        if current in self.anchors:
            return path
        problem = _signature_problem(current, self.allow_legacy)
        if problem:
            self.problems.append(problem)
            return None
        if len(path) >= _MAX_PATH:
            self.problems.append("certificate chain too long")
            return None
        issuer = current.issuer
        for candidate in self.pool:
            # Names only preselect candidates; the signature decides.
            if self.subject(candidate) != issuer or candidate in path:
                continue
            self.checks += 1
            if self.checks > _MAX_PATH_CHECKS:
                self.problems.append("certificate chain too complex")
                return None
            is_anchor = candidate in self.anchors
            if not (_signed_by_anchor if is_anchor else _signed_by)(current, candidate):
                continue
            problem = _issuer_problem(candidate, len(path) - 1, is_anchor)
            problem = problem or self.cert_problem(candidate)
            if problem:
                self.problems.append(problem)
                continue
            found = self.extend([*path, candidate])
            if found:
                return found
        return None


def verify_chain(
    signer: x509.Certificate,
    certs: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    ignore_validity: bool = False,
    allow_legacy: bool = False,
    now: datetime | None = None,
) -> list[x509.Certificate]:
    """Return a path from signer to one of anchors, following signatures.

    Anchors are trusted because they are in anchors (compared by DER); the anchor's
    own signature is not checked. allow_legacy accepts SHA-1 signatures and RSA keys
    of 1024 to 2047 bits, as Apple's device chain needs (smaller keys are refused even
    then); ignore_validity skips the dates, which that chain also needs.
    """
    try:
        return _search(signer, certs, anchors, ignore_validity=ignore_validity, allow_legacy=allow_legacy, now=now)
    except UntrustedDevice:
        raise
    except Exception:  # noqa: BLE001 - the boundary: cryptography parses a carried certificate's fields lazily
        # A certificate in the message whose subject or extensions do not parse (ValueError,
        # DuplicateExtension...) can be on no path.
        raise UntrustedDevice("a certificate in the chain is malformed") from None


def _search(
    signer: x509.Certificate,
    certs: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    ignore_validity: bool,
    allow_legacy: bool,
    now: datetime | None,
) -> list[x509.Certificate]:
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    search = _PathSearch(
        pool=list(dict.fromkeys((*certs, *anchors))),
        anchors=set(anchors),
        now=None if ignore_validity else now,
        allow_legacy=allow_legacy,
    )
    problem = search.cert_problem(signer)
    if problem:
        raise UntrustedDevice(problem)
    path = search.extend([signer])
    if path is None:
        if search.problems:
            raise UntrustedDevice(search.problems[0])
        raise UntrustedDevice("signer does not chain to a trusted anchor")
    return path


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
        """Apply the policy to a verified request: raise UntrustedDevice under ``strict``, return the reason under ``log``."""
        if self.policy == "off":
            return None
        try:
            verify_chain(signed.signer, signed.certificates, self.anchors, ignore_validity=True, allow_legacy=True)
        except UntrustedDevice as error:
            if self.policy == "strict":
                raise
            return str(error)
        return None
