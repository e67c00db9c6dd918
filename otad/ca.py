"""otad's certificate authority: creates its keys and certificates on first start and issues certificates.

Everything here blocks (RSA key generation, file I/O), so callers run it off the reactor thread.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, overload

from asn1crypto import core
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from otad.certificate_rules import tls_server_problems
from otad.files import make_directory, write_atomically

CA_VALIDITY = datetime.timedelta(days=3652)
# Apple refuses TLS server certificates valid for more than 825 days from notBefore to
# notAfter; 824 keeps a day's margin whichever way a client counts the end second.
TLS_VALIDITY = datetime.timedelta(days=824)
SIGNER_VALIDITY = datetime.timedelta(days=3 * 365)
RA_VALIDITY = datetime.timedelta(days=3 * 365)
OCSP_VALIDITY = datetime.timedelta(days=365)
# otad renews its own leaf certificates (TLS, signing, RAs, OCSP) when less than this is left, and
# warns about any of its certificates that will be invalid within WARN_BEFORE (the root CA,
# which cannot renew itself, from a year before, because every certificate it issues ends with it).
RENEW_BEFORE = datetime.timedelta(days=60)
WARN_BEFORE = datetime.timedelta(days=30)
ROOT_WARN_BEFORE = datetime.timedelta(days=365)
# Every notBefore is this much in the past, for devices whose clocks run a little behind;
# lifetimes are counted from it, so the backdating is part of the validity period.
CLOCK_SKEW = datetime.timedelta(minutes=5)
LEAF_KEY_SIZE = 2048


class BootstrapError(RuntimeError):
    """The certs/ directory is in a state otad will not repair by itself; str() says what to do."""


# otad's keys are RSA, except that the TLS key may be ECDSA P-256 ([tls] key_type).
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class Identity:
    """A certificate, its private key, and the chain above it (issuer first, root last)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class Publication:
    """Where relying parties find otad's CRL, OCSP responder and CA certificate: ``base`` (``https://host:port``), once known."""

    base: str | None = None

    @property
    def crl_url(self) -> str:
        return f"{self.base}/crl"

    @property
    def ocsp_url(self) -> str:
        return f"{self.base}/ocsp"

    @property
    def ca_url(self) -> str:
        return f"{self.base}/CA"

    def extensions(self) -> list[tuple[x509.ExtensionType, bool]]:
        """A CRL distribution point and an AIA (OCSP and caIssuers) for certificates relying parties check."""
        if self.base is None:
            return []
        return [
            (
                x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(self.crl_url)], None, None, None)]),
                False,
            ),
            (
                x509.AuthorityInformationAccess(
                    [
                        x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.ocsp_url)),
                        x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(self.ca_url)),
                    ]
                ),
                False,
            ),
        ]


@dataclass
class Authority:
    """The identities otad serves with. ``signer`` signs profiles; the RAs answer SCEP (``ra`` alone, or
    ``ra_encrypt`` and ``ra_sign`` in the NDES layout); ``ocsp`` signs OCSP responses.

    The leaf identities are replaced in place (on the reactor thread) when otad renews them,
    so everything holding the Authority uses the renewed certificate from then on.
    ``publication`` is set once otad knows the URL it is reached at.
    """

    root: Identity
    tls: Identity
    signer: Identity
    ra: Identity
    ra_encrypt: Identity
    ra_sign: Identity
    ocsp: Identity
    certs_dir: Path
    publication: Publication = Publication()

    @property
    def tls_key_path(self) -> Path:
        return self.certs_dir / "tls.key"

    @property
    def tls_cert_path(self) -> Path:
        return self.certs_dir / "tls.pem"

    @property
    def root_cert_path(self) -> Path:
        return self.certs_dir / "ca.pem"

    def leaf(self, name: str) -> Identity:
        """A leaf identity by its file name (``tls``, ``signing``, ``ra``, ``ra-encrypt``, ``ra-sign``, ``ocsp``)."""
        identity: Identity = getattr(self, _FIELDS[name])
        return identity

    def adopt(self, renewed: Authority) -> None:
        """Take the leaf identities of ``renewed`` (same root), as ``maintain`` returned them."""
        if renewed.root.cert != self.root.cert:
            raise ValueError("a renewed authority must keep the same root CA")
        for field in _FIELDS.values():
            setattr(self, field, getattr(renewed, field))


# File name -> Authority field.
_FIELDS = {"tls": "tls", "signing": "signer", "ra": "ra", "ra-encrypt": "ra_encrypt", "ra-sign": "ra_sign", "ocsp": "ocsp"}
# Every file of certs/ (keys end in .key, certificates in .pem).
OWN_FILES = ("ca.key", "ca.pem", *(f"{name}.{kind}" for name in _FIELDS for kind in ("key", "pem")))


def generate_key(bits: int = LEAF_KEY_SIZE) -> rsa.RSAPrivateKey:
    """A fresh RSA key; slow (seconds for 4096 bits), never call it on the reactor thread."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _generate(key_type: str) -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1()) if key_type == "ecdsa" else generate_key()


def _key_type(key: PrivateKey) -> str:
    return "ecdsa" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa"


def _describe(key: PrivateKey) -> str:
    return "P-256 ECDSA key" if isinstance(key, ec.EllipticCurvePrivateKey) else f"{key.key_size}-bit key"


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature content_commitment key_encipherment data_encipherment "
        "key_agreement key_cert_sign crl_sign encipher_only decipher_only"
    ).split()
    return x509.KeyUsage(**{name: flags.get(name, False) for name in names})


def issue(
    issuer: Identity,
    public_key: PublicKey,
    subject: x509.Name,
    *,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    serial: int | None = None,
) -> x509.Certificate:
    """Sign a certificate for ``public_key`` with the issuer's key: SHA-256, SKI/AKI, not a CA.

    The validity starts a few minutes early for clock skew, lasts ``lifetime`` from there, and
    never outlasts the issuer.
    """
    not_before = now - CLOCK_SKEW
    not_after = min(not_before + lifetime, issuer.cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer.key, hashes.SHA256())


def _self_signed_root(key: rsa.RSAPrivateKey, subject: x509.Name, now: datetime.datetime) -> x509.Certificate:
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now - CLOCK_SKEW + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        # Optional for a self-signed certificate (RFC 5280 4.2.1.1), but path validators and
        # linters look for it on every certificate.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _general_name(hostname: str) -> x509.GeneralName:
    """A host name as Apple wants it in subjectAltName: an iPAddress entry for an address, else a dNSName."""
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


@dataclass(frozen=True)
class _Names:
    hostname: str
    organization: str
    publication: Publication
    tls_key_type: str = "rsa"


def _tls_cert(root: Identity, key: PrivateKey, names: _Names, now: datetime.datetime) -> x509.Certificate:
    hostname = names.hostname
    # localhost only when it is the host name: a single-label name is not a valid public DNS
    # name (linters refuse it), and local clients reach otad by 127.0.0.1 or ::1 anyway.
    general: list[x509.GeneralName] = [_general_name(hostname)]
    general.extend(x509.IPAddress(ipaddress.ip_address(address)) for address in ("127.0.0.1", "::1") if address != hostname)
    return issue(
        root,
        key.public_key(),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]),
        now=now,
        lifetime=TLS_VALIDITY,
        extensions=[
            (x509.SubjectAlternativeName(general), False),
            # Only digitalSignature: otad offers forward-secret (ECDHE) suites only, which sign.
            (_key_usage(digital_signature=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            *names.publication.extensions(),
        ],
    )


def _signer_cert(root: Identity, key: PrivateKey, names: _Names, now: datetime.datetime) -> x509.Certificate:
    # A dedicated profile signer, not the TLS certificate: the TLS certificate rotates every
    # 825 days and may be swapped for a public CA's, while a profile update must be signed by
    # the same issuer as the installed profile for iOS to accept it as a replacement.
    return issue(
        root,
        key.public_key(),
        _name(f"{names.organization} Profile Signing", names.organization),
        now=now,
        lifetime=SIGNER_VALIDITY,
        extensions=[
            (_key_usage(digital_signature=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False),
            *names.publication.extensions(),
        ],
    )


def _ra_cert(label: str, usage: x509.KeyUsage) -> Callable[[Identity, PrivateKey, _Names, datetime.datetime], x509.Certificate]:
    # SCEP clients encrypt requests to an RA and check the CertRep's signature with one; the
    # single RA has both usages (Apple devices refuse a lone RA that lacks either), the NDES
    # layout's two have one each. No RA is a CA.
    def make(root: Identity, key: PrivateKey, names: _Names, now: datetime.datetime) -> x509.Certificate:
        return issue(
            root,
            key.public_key(),
            _name(f"{names.organization} {label}", names.organization),
            now=now,
            lifetime=RA_VALIDITY,
            extensions=[(usage, True), *names.publication.extensions()],
        )

    return make


def _ocsp_cert(root: Identity, key: PrivateKey, names: _Names, now: datetime.datetime) -> x509.Certificate:
    # A delegated OCSP responder (RFC 6960 4.2.2.2): EKU OCSPSigning, and id-pkix-ocsp-nocheck so
    # that clients do not ask for its own status; it has no CRL distribution point or AIA.
    return issue(
        root,
        key.public_key(),
        _name(f"{names.organization} OCSP Responder", names.organization),
        now=now,
        lifetime=OCSP_VALIDITY,
        extensions=[
            (_key_usage(digital_signature=True), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False),
            (x509.OCSPNoCheck(), False),
        ],
    )


@overload
def _read_key(path: Path) -> rsa.RSAPrivateKey: ...


@overload
def _read_key(path: Path, allow_ecdsa: bool) -> PrivateKey: ...


def _read_key(path: Path, allow_ecdsa: bool = False) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise BootstrapError(f"{path} is not an unencrypted PEM private key: {error}") from None
    if isinstance(key, rsa.RSAPrivateKey) or (allow_ecdsa and isinstance(key, ec.EllipticCurvePrivateKey)):
        return key
    raise BootstrapError(f"{path} is not an {'RSA or ECDSA' if allow_ecdsa else 'RSA'} key")


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as error:
        raise BootstrapError(f"{path} is not a PEM certificate: {error}") from None


def _same_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (by signature, not by comparing names alone)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


@dataclass(frozen=True)
class _Leaf:
    """One of otad's own leaf certificates: its file name, lifetime and how to make it for a key."""

    name: str
    lifetime: datetime.timedelta
    make: Callable[[Identity, PrivateKey, _Names, datetime.datetime], x509.Certificate]


_LEAVES = (
    _Leaf("tls", TLS_VALIDITY, _tls_cert),
    _Leaf("signing", SIGNER_VALIDITY, _signer_cert),
    _Leaf("ra", RA_VALIDITY, _ra_cert("SCEP RA", _key_usage(digital_signature=True, key_encipherment=True))),
    _Leaf("ra-encrypt", RA_VALIDITY, _ra_cert("SCEP RA Encryption", _key_usage(key_encipherment=True))),
    _Leaf("ra-sign", RA_VALIDITY, _ra_cert("SCEP RA Signing", _key_usage(digital_signature=True))),
    _Leaf("ocsp", OCSP_VALIDITY, _ocsp_cert),
)


def bootstrap(
    certs_dir: Path,
    *,
    hostname: str,
    organization: str,
    common_name: str,
    ca_key_size: int,
    now: datetime.datetime,
    report: Callable[[str], None],
    warn: Callable[[str], None] | None = None,
    create: bool = True,
    publication: Publication = Publication(),
    tls_key_type: str = "rsa",
    renew: bool = True,
) -> Authority:
    """Load otad's identities from ``certs_dir``, creating whatever has never existed, then ``maintain`` them.

    A key without its certificate (a crash between the two writes) gets a new certificate for
    the same key; a certificate without its key, a key that does not match, or leaf files
    without a CA stop the start: otad never silently replaces a key that may be in use.
    ``report`` receives one line per thing created or renewed, ``warn`` one per certificate
    that will soon be invalid. With ``create`` false (a check while otad runs) a missing file
    is an error: nothing is created behind the running daemon's back. ``publication`` goes
    into the certificates made now. With ``renew`` false (a worker process re-reading what its
    supervisor keeps current) nothing is renewed: one process renews, the others follow.
    """
    make_directory(certs_dir)
    ca_key_path, ca_cert_path = certs_dir / "ca.key", certs_dir / "ca.pem"
    if not create:
        leaf_files = [certs_dir / f"{leaf.name}.{kind}" for leaf in _LEAVES for kind in ("key", "pem")]
        _require_existing(certs_dir, [ca_key_path, ca_cert_path, *leaf_files])
    if not ca_key_path.exists():
        if ca_cert_path.exists():
            raise BootstrapError(f"{ca_cert_path} exists but its key {ca_key_path} does not; restore the key")
        leftovers = sorted(p.name for p in certs_dir.iterdir() if p.suffix in (".key", ".pem"))
        if leftovers:
            raise BootstrapError(f"{certs_dir} holds {', '.join(leftovers)} but no CA key; move them away to start afresh")
        write_atomically(ca_key_path, _key_pem(generate_key(ca_key_size)), 0o600)
        report(f"created a {ca_key_size}-bit CA key at {ca_key_path}")
    ca_key = _read_key(ca_key_path)
    if not ca_cert_path.exists():
        write_atomically(ca_cert_path, _cert_pem(_self_signed_root(ca_key, _name(common_name, organization), now)), 0o644)
        report(f"created the root CA certificate {ca_cert_path} ({common_name})")
    ca_cert = _read_cert(ca_cert_path)
    if not _same_key(ca_cert, ca_key):
        raise BootstrapError(f"{ca_cert_path} does not match the key in {ca_key_path}")
    root = Identity(ca_cert, ca_key)
    names = _Names(hostname, organization, publication, tls_key_type)
    leaves = {_FIELDS[leaf.name]: _load_leaf(certs_dir, leaf, root, names, now, report) for leaf in _LEAVES}
    authority = Authority(root=root, certs_dir=certs_dir, publication=publication, **leaves)
    if not renew:
        return authority
    return maintain(
        authority, hostname=hostname, organization=organization, now=now, report=report, warn=warn or report, tls_key_type=tls_key_type
    )


def _require_existing(certs_dir: Path, paths: list[Path]) -> None:
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        raise BootstrapError(f"{certs_dir} lacks {', '.join(missing)}; restore it, or restart otad to create new ones")


def _load_leaf(
    certs_dir: Path, leaf: _Leaf, root: Identity, names: _Names, now: datetime.datetime, report: Callable[[str], None]
) -> Identity:
    key_path, cert_path = certs_dir / f"{leaf.name}.key", certs_dir / f"{leaf.name}.pem"
    wanted = names.tls_key_type if leaf.name == "tls" else "rsa"
    if not key_path.exists():
        if cert_path.exists():
            raise BootstrapError(f"{cert_path} exists but its key {key_path} does not; restore the key")
        fresh = _generate(wanted)
        write_atomically(key_path, _key_pem(fresh), 0o600)
        report(f"created a {_describe(fresh)} at {key_path}")
    key = _read_key(key_path, allow_ecdsa=leaf.name == "tls")
    if _key_type(key) != wanted:
        # Only the TLS key can change type ([tls] key_type); nobody pins it, devices trust the CA.
        key = _generate(wanted)
        write_atomically(key_path, _key_pem(key), 0o600)
        write_atomically(cert_path, _cert_pem(leaf.make(root, key, names, now)), 0o644)
        report(f"created a {_describe(key)} at {key_path} and its certificate, as [tls] key_type asks")
    if not cert_path.exists():
        write_atomically(cert_path, _cert_pem(leaf.make(root, key, names, now)), 0o644)
        report(f"created the certificate {cert_path}")
    cert = _read_cert(cert_path)
    if not _same_key(cert, key):
        raise BootstrapError(f"{cert_path} does not match the key in {key_path}")
    if not issued_by(cert, root.cert):
        raise BootstrapError(f"{cert_path} was not issued by the CA in {certs_dir / 'ca.pem'}")
    return Identity(cert, key, (root.cert,))


def _renewal_reason(leaf: _Leaf, identity: Identity, root: Identity, hostname: str, now: datetime.datetime) -> str | None:
    """Why ``identity`` should be reissued now, or None to keep it."""
    cert = identity.cert
    if leaf.name == "tls":
        broken = tls_server_problems(cert, hostname, now)
        if broken:
            return f"it breaks Apple's TLS rules: {'; '.join(broken)}"
    left = cert.not_valid_after_utc - now
    # Reissuing cannot outlast the root; near the root's end it would change nothing.
    if left < RENEW_BEFORE and cert.not_valid_after_utc < root.cert.not_valid_after_utc:
        return f"it expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def maintain(
    authority: Authority,
    *,
    hostname: str,
    organization: str,
    now: datetime.datetime,
    report: Callable[[str], None],
    warn: Callable[[str], None],
    tls_key_type: str = "rsa",
) -> Authority:
    """Reissue otad's own leaf certificates that need it; return the authority to use from now on.

    The TLS, profile-signing, RA and OCSP certificates keep their keys: devices and SCEP clients
    hold the RA certificates between requests (a reply to a request encrypted to the old
    certificate must still decrypt), and a key that never leaves certs/ gains nothing from
    rotation that a new certificate does not give. The TLS certificate is also reissued when it
    no longer names ``hostname`` or breaks Apple's rules (an older otad made it). ``warn`` gets
    a line for each certificate, the root included, that will be invalid soon.
    """
    names = _Names(hostname, organization, authority.publication, tls_key_type)
    current = {leaf.name: authority.leaf(leaf.name) for leaf in _LEAVES}
    for leaf in _LEAVES:
        identity = current[leaf.name]
        reason = _renewal_reason(leaf, identity, authority.root, hostname, now)
        if reason is None:
            continue
        cert = leaf.make(authority.root, identity.key, names, now)
        write_atomically(authority.certs_dir / f"{leaf.name}.pem", _cert_pem(cert), 0o644)
        report(
            f"renewed {authority.certs_dir / f'{leaf.name}.pem'} (same key) because {reason}; now valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d}"
        )
        current[leaf.name] = Identity(cert, identity.key, identity.chain)
    renewed = Authority(
        root=authority.root,
        certs_dir=authority.certs_dir,
        publication=authority.publication,
        **{_FIELDS[name]: identity for name, identity in current.items()},
    )
    for name, identity, horizon in (
        ("root CA", authority.root, ROOT_WARN_BEFORE),
        *((leaf.name, current[leaf.name], WARN_BEFORE) for leaf in _LEAVES),
    ):
        end = identity.cert.not_valid_after_utc
        if end - now < horizon:
            warn(expiry_warning(name, identity.cert, now))
    return renewed


def expiry_warning(name: str, cert: x509.Certificate, now: datetime.datetime) -> str:
    """One line about a certificate that expires soon (or has), and what that stops."""
    end = cert.not_valid_after_utc
    when = f"expired on {end:%Y-%m-%d}" if end <= now else f"expires on {end:%Y-%m-%d} ({(end - now).days} days left)"
    if name == "root CA":
        return f"otad's root CA {when}; certificates it issues end with it: plan a new CA (README, 'When the root CA ends')"
    return f"otad's {name} certificate {when} and cannot be renewed past the root CA's end"


def serial_hex(serial: int) -> str:
    """How otad writes serial numbers everywhere (store, admin, logs): lower-case hex, no leading zeros."""
    return format(serial, "x")


# The device binding inside each certificate otad issues to a device: a subjectAltName otherName
# of RFC 4043's permanentIdentifier (id-on-permanentIdentifier) whose identifierValue is the UDID
# and whose assigner is left out, which RFC 4043 reads as "assigned by the issuer". The store
# holds the same binding by serial, and is what phase 3 trusts. otad 0.1 wrote a URI,
# urn:x-otad:udid:UDID, which linters refuse.
PERMANENT_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.3")
LEGACY_UDID_URI_PREFIX = "urn:x-otad:udid:"


class _PermanentIdentifier(core.Sequence):
    _fields: ClassVar[list[tuple[str, type, dict[str, bool]]]] = [
        ("identifier_value", core.UTF8String, {"optional": True}),
        ("assigner", core.ObjectIdentifier, {"optional": True}),
    ]


def udid_name(udid: str) -> x509.OtherName:
    """The device binding for ``udid``: a permanentIdentifier otherName."""
    return x509.OtherName(PERMANENT_IDENTIFIER, bytes(_PermanentIdentifier({"identifier_value": udid}).dump()))


def _claims_binding(name: x509.GeneralName) -> bool:
    """Whether a requested name would pose as otad's device binding (which only otad writes)."""
    if isinstance(name, x509.OtherName):
        return name.type_id == PERMANENT_IDENTIFIER
    return isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(LEGACY_UDID_URI_PREFIX)


def issue_client_certificate(
    issuer: Identity,
    public_key: rsa.RSAPublicKey,
    subject: x509.Name,
    requested: x509.Extensions,
    *,
    udid: str | None,
    serial: int,
    now: datetime.datetime,
    lifetime: datetime.timedelta,
    allowed_usage: Sequence[str] = ("digitalSignature", "keyEncipherment"),
    copy_names: bool = False,
    publication: Publication = Publication(),
) -> x509.Certificate:
    """A client-authentication certificate for a SCEP request, with where to check its revocation.

    Key usage is what the request asked for within ``allowed_usage`` (all of it when it asked
    for none of those); requested SANs are copied only with ``copy_names``, and never a name
    posing as the UDID binding, which only otad writes: the device binding, when there is one.
    """
    try:
        asked = requested.get_extension_for_class(x509.KeyUsage).value
        wanted = {"digitalSignature": asked.digital_signature, "keyEncipherment": asked.key_encipherment}
    except x509.ExtensionNotFound:
        wanted = {}
    granted = {usage for usage in allowed_usage if wanted.get(usage)} or set(allowed_usage)
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (
            _key_usage(digital_signature="digitalSignature" in granted, key_encipherment="keyEncipherment" in granted),
            True,
        ),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]
    names: list[x509.GeneralName] = []
    if copy_names:
        try:
            requested_names = requested.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            requested_names = x509.SubjectAlternativeName([])
        names.extend(name for name in requested_names if not _claims_binding(name))
    if udid is not None:
        names.append(udid_name(udid))
    if names:
        extensions.append((x509.SubjectAlternativeName(names), False))
    extensions.extend(publication.extensions())
    return issue(issuer, public_key, subject, now=now, lifetime=lifetime, extensions=extensions, serial=serial)
