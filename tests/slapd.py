"""A throwaway OpenLDAP ``slapd`` (Debian's package) for the directory tests.

Each ``Slapd`` lives in a temporary directory: a slapd.conf, an mdb database loaded with
``slapadd`` (a few people, a service account, two groups), ldap:// and ldaps:// on free ports
of 127.0.0.1, and a server certificate from a CA made for the test. It can be stopped and started
again on the same ports (the directory going down and coming back), or frozen with SIGSTOP
(a directory that accepts connections and never answers).
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
LDAPWHOAMI = Path("/usr/bin/ldapwhoami")
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")

BASE = "dc=example,dc=org"
PEOPLE = f"ou=people,{BASE}"
GROUP = f"cn=otad-users,ou=groups,{BASE}"
UNIQUE_GROUP = f"cn=legacy,ou=groups,{BASE}"
SERVICE_DN = f"cn=otad,ou=services,{BASE}"
SERVICE_PASSWORD = "service-secret-4711"
ADMIN_DN = f"cn=admin,{BASE}"
ADMIN_PASSWORD = "admin-secret"

# uid -> password. alice and "d,ave" are in GROUP, bob is in none, alice alone in UNIQUE_GROUP;
# sam1 and sam2 share the cn "Sam", so a search by cn finds two entries.
PASSWORDS = {
    "alice": "wonderland",
    "bob": "builder-7",
    "d,ave": "comma-user",
    "sam1": "sam-one",
    "sam2": "sam-two",
}


def user_dn(uid: str) -> str:
    escaped = uid.replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
    return f"uid={escaped},{PEOPLE}"


def _ldif() -> str:
    people = {"alice": "Alice", "bob": "Bob", "d,ave": "Dave", "sam1": "Sam", "sam2": "Sam"}
    entries = [
        f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: ou=services,{BASE}\nobjectClass: organizationalUnit\nou: services\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: otad\n"
        f"userPassword: {SERVICE_PASSWORD}\n",
    ]
    for uid, cn in people.items():
        entries.append(f"dn: {user_dn(uid)}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\nsn: {cn}\nuserPassword: {PASSWORDS[uid]}\n")
    entries.append(f"dn: {GROUP}\nobjectClass: groupOfNames\ncn: otad-users\nmember: {user_dn('alice')}\nmember: {user_dn('d,ave')}\n")
    entries.append(f"dn: {UNIQUE_GROUP}\nobjectClass: groupOfUniqueNames\ncn: legacy\nuniqueMember: {user_dn('alice')}\n")
    return "\n".join(entries)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class TestCA:
    """A CA made for one test run, PEM on disk."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem_path: Path

    @classmethod
    def create(cls, directory: Path, common_name: str) -> TestCA:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        path = directory / f"{common_name.replace(' ', '-')}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, path)

    def issue_server(self, directory: Path, host: str) -> tuple[Path, Path]:
        """A server certificate naming ``host`` (DNS only) and its key, as PEM files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = directory / "server.pem", directory / "server.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Process(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


class Slapd:
    """One throwaway slapd; ``start()`` (again after ``stop()``), ``stop()``, ``freeze()`` and ``thaw()``."""

    def __init__(self, directory: Path) -> None:
        for binary, package in ((SLAPD, "slapd"), (SLAPADD, "slapd"), (LDAPWHOAMI, "ldap-utils")):
            if not binary.exists():
                raise FailTest(f"{binary} is missing: install Debian's {package} and ldap-utils packages (.ci/run does)")
        self.directory = directory.absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = TestCA.create(self.directory, "Directory Test CA")
        # Another CA, which did not issue the server's certificate.
        self.other_ca = TestCA.create(self.directory, "Unrelated Test CA")
        self.ldap_port = _free_port()
        self.ldaps_port = _free_port()
        self._process: _Process | None = None
        self._transport: object = None
        self._loaded = False

    @property
    def ldap_url(self) -> str:
        return f"ldap://localhost:{self.ldap_port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://localhost:{self.ldaps_port}"

    def _write_config(self) -> Path:
        cert, key = self.ca.issue_server(self.directory, "localhost")
        (self.directory / "db").mkdir(exist_ok=True)
        config = self.directory / "slapd.conf"
        config.write_text(
            f"""include {SCHEMA}/core.schema
include {SCHEMA}/cosine.schema
include {SCHEMA}/inetorgperson.schema
pidfile {self.directory}/slapd.pid
modulepath {MODULES}
moduleload back_mdb
TLSCACertificateFile {self.ca.pem_path}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
database mdb
maxsize 10485760
suffix "{BASE}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {self.directory}/db
# Passwords are for binding only; nothing is readable without binding first.
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
"""
        )
        return config

    async def start(self) -> None:
        """Start slapd (loading the directory the first time) and wait until it accepts connections."""
        config = self.directory / "slapd.conf"
        if not self._loaded:
            config = self._write_config()
            data = self.directory / "data.ldif"
            data.write_text(_ldif())
            out, err, code = await getProcessOutputAndValue(str(SLAPADD), ["-f", str(config), "-l", str(data)], reactor=reactor)
            if code != 0:
                raise FailTest(f"slapadd failed: {(out + err).decode(errors='replace')}")
            self._loaded = True
        process = _Process()
        urls = f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        # -d 0: stay in the foreground (a child of the test) and log nothing but errors. setpriv --pdeathsig
        # (util-linux) ends slapd with the test process, should that die before stop().
        args = ["setpriv", "--pdeathsig", "KILL", "--", str(SLAPD), "-d", "0", "-f", str(config), "-h", urls]
        self._transport = reactor.spawnProcess(process, "/usr/bin/setpriv", args, env={"PATH": "/usr/sbin:/usr/bin:/bin"})
        self._process = process
        # Ready when OpenLDAP's own client can bind as the service account, which also checks the loaded data.
        whoami = ["-x", "-o", "nettimeout=1", "-H", f"ldap://127.0.0.1:{self.ldap_port}", "-D", SERVICE_DN, "-w", SERVICE_PASSWORD]
        answer = b""
        for _ in range(100):
            if process.ended.called:
                raise FailTest(f"slapd exited at start: {process.output.decode(errors='replace')}")
            out, err, code = await getProcessOutputAndValue(str(LDAPWHOAMI), whoami, reactor=reactor)
            if code == 0:
                return
            answer = out + err
            await deferLater(reactor, 0.05, lambda: None)
        raise FailTest(f"slapd did not answer on 127.0.0.1:{self.ldap_port} within 10 s: {answer.decode(errors='replace')}")

    async def stop(self) -> None:
        """Stop slapd (thawed first if frozen) and wait until it has exited."""
        process, self._process = self._process, None
        if process is None or process.ended.called:
            return
        transport = self._transport
        transport.signalProcess(signal.SIGCONT)  # type: ignore[attr-defined]
        transport.signalProcess("TERM")  # type: ignore[attr-defined]
        await process.ended

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, but nothing is answered."""
        os.kill(self._pid(), signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self._pid(), signal.SIGCONT)

    def _pid(self) -> int:
        pid = getattr(self._transport, "pid", None)
        assert isinstance(pid, int), "slapd is not running"
        return pid
