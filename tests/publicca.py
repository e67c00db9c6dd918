"""A throwaway "public" CA (a root and an intermediate) standing in for Let's Encrypt in tests.

It issues TLS server certificates the way a public CA does: leaf signed by the intermediate,
subjectAltName with the names, EKU serverAuth, 90 days, and writes certbot's files (cert.pem,
chain.pem, fullchain.pem, privkey.pem). It shares no code with otad.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PEM = serialization.Encoding.PEM
Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Throwaway Public CA"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _ca(subject: str, key: Key, issuer: x509.Name, signer: Key, now: datetime.datetime, path_length: int | None) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(signer, hashes.SHA256())
    )


@dataclass
class PublicCA:
    root_key: Key
    root: x509.Certificate
    intermediate_key: Key
    intermediate: x509.Certificate

    @classmethod
    def create(cls) -> PublicCA:
        now = datetime.datetime.now(datetime.UTC)
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = _ca("Throwaway Root X1", root_key, _name("Throwaway Root X1"), root_key, now, 1)
        intermediate_key = ec.generate_private_key(ec.SECP256R1())
        intermediate = _ca("Throwaway Intermediate R3", intermediate_key, root.subject, root_key, now, 0)
        return cls(root_key, root, intermediate_key, intermediate)

    def root_pem(self) -> bytes:
        return self.root.public_bytes(PEM)

    def issue(self, names: tuple[str, ...] = ("localhost", "127.0.0.1"), key: Key | None = None) -> tuple[x509.Certificate, Key]:
        """A 90-day TLS server certificate for ``names`` (DNS names or IP addresses), signed by the intermediate."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.intermediate_key, hashes.SHA256())
        )
        return cert, key

    def write_certbot_files(self, directory: Path, cert: x509.Certificate, key: Key, *, serial: int = 1) -> dict[str, Path]:
        """certbot's layout: ``archive/NAME/cert{N}.pem`` (and chain, fullchain, privkey), with ``live/NAME/*.pem`` symlinks
        swapped to point at the new files, one rename each, as certbot's renewal does."""
        archive = directory / "archive" / "otad"
        live = directory / "live" / "otad"
        archive.mkdir(parents=True, exist_ok=True)
        live.mkdir(parents=True, exist_ok=True)
        contents = {
            "cert": cert.public_bytes(PEM),
            "chain": self.intermediate.public_bytes(PEM),
            "fullchain": cert.public_bytes(PEM) + self.intermediate.public_bytes(PEM),
            "privkey": key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        }
        paths = {}
        for name, data in contents.items():
            target = archive / f"{name}{serial}.pem"
            target.write_bytes(data)
            target.chmod(0o600 if name == "privkey" else 0o644)
            link = live / f"{name}.pem"
            temporary = live / f".{name}.pem.new"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(Path("..", "..", "archive", "otad", target.name))
            temporary.rename(link)
            paths[name] = link
        return paths
