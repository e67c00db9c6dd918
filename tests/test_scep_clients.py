"""Interoperability of ``/scep`` with real SCEP clients: certmonger and micromdm's scepclient.

Each test starts the real daemon on plain HTTP on 127.0.0.1 (SCEP protects its own messages),
mints a static challenge with ``otad-admin challenge create`` and lets an unmodified client enroll
against it. The certificate the client writes must verify against ``DATA_DIR/certs/ca.pem`` with
openssl; a wrong challenge must come back as a rejection the client reports.

Every client runs as a child process in a process group of its own, so that each test can end
everything it started (certmonger, its helpers, the private D-Bus daemon) even when it fails.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.daemon import ROOT, Daemon
from tests.stores import PostgreSQLStore, SQLiteStore

CERTMONGER = "/usr/lib/certmonger/certmonger-session"
GETCERT = "/usr/bin/getcert"
SCEP_SUBMIT = "/usr/lib/certmonger/scep-submit"
DBUS_RUN_SESSION = "/usr/bin/dbus-run-session"
SCEPCLIENT = "/usr/bin/scepclient"
OPENSSL = "/usr/bin/openssl"
_PACKAGES = {
    CERTMONGER: "certmonger",
    GETCERT: "certmonger",
    SCEP_SUBMIT: "certmonger",
    DBUS_RUN_SESSION: "dbus",
    SCEPCLIENT: "scep",
    OPENSSL: "openssl",
}
_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# The child makes itself the leader of a new session and process group, then becomes the command.
# Twisted's child is never a group leader, so setsid() cannot fail and the group id is its pid.
_IN_OWN_GROUP = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"

# Run by certmonger itself (``certmonger -c``), on the private session bus, so certmonger exits
# when it does. certmonger fetches GetCACaps and GetCACert in the background after add-scep-ca,
# so the script waits until it knows the CA before asking for a certificate, then polls the
# request until it is issued or refused. Every loop is bounded. certmonger runs the script with a
# clean environment, so its settings are written at its top.
_CERTMONGER_SCRIPT = r"""
set -u
getcert add-scep-ca -s -c otad -u "$OTAD_SCEP_URL" -v || { echo "=== add-scep-ca failed"; exit 10; }
i=0
until getcert list-cas -s -c otad | grep -q 'SCEP CA certificate thumbprint'; do
    i=$((i + 1)); [ "$i" -ge 100 ] && { echo "=== certmonger did not fetch the CA certificates"; break; }
    sleep 0.1
done
echo "=== list-cas"
getcert list-cas -s -c otad
getcert request -s -c otad -I otad-test -k "$OTAD_KEY" -f "$OTAD_CERT" -l "$OTAD_CHALLENGE_FILE" \
    -N "$OTAD_SUBJECT" || { echo "=== request failed"; exit 11; }
i=0
while :; do
    status=$(getcert list -s -i otad-test | sed -n 's/^[[:space:]]*status: //p')
    case "$status" in MONITORING|CA_REJECTED|CA_UNREACHABLE|CA_UNCONFIGURED) break ;; esac
    i=$((i + 1)); [ "$i" -ge 150 ] && { echo "=== gave up waiting, status $status"; break; }
    sleep 0.1
done
echo "=== list"
getcert list -s -i otad-test
echo "=== end"
"""

# Where the system-wide certmonger keeps its state: the tests must not touch it.
_SYSTEM_STATE = (Path("/var/lib/certmonger"), Path("/etc/certmonger"), Path("/run/certmonger"))


def _state_snapshot() -> list[tuple[str, int, int]]:
    entries = []
    for top in _SYSTEM_STATE:
        if not top.exists():
            continue
        for path in sorted([top, *top.rglob("*")]):
            info = path.lstat()
            entries.append((str(path), info.st_mtime_ns, info.st_size))
    return entries


class _Child(ProcessProtocol):
    """Collects a child's stdout and stderr together; ``ended`` fires with the exit code."""

    def __init__(self) -> None:
        self.output = b""
        self.code: int | None = None
        self.ended: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.code = reason.value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        self.ended.callback(self.code)


def _section(output: str, name: str) -> str:
    """The lines the certmonger script printed after ``=== name``, up to the next marker."""
    marker = f"=== {name}\n"
    if marker not in output:
        return ""
    return output.split(marker, 1)[1].split("\n=== ", 1)[0]


def _field(listing: str, name: str) -> str | None:
    for line in listing.splitlines():
        key, separator, value = line.strip().partition(": ")
        if separator and key == name:
            return value
    return None


class SCEPClientTests(SQLiteStore, unittest.TestCase):
    """On the SQLite store; PostgreSQLSCEPClientTests runs every test again on PostgreSQL."""

    timeout = 60

    def setUp(self) -> None:
        missing = [f"{path} (Debian package {_PACKAGES[path]})" for path in _PACKAGES if not os.access(path, os.X_OK)]
        if missing:
            self.fail("the SCEP client tests need " + ", ".join(missing) + "; .ci/run installs them")

    # -- harness -------------------------------------------------------------------------------

    def directory(self) -> Path:
        path = Path(self.mktemp()).absolute()
        path.mkdir(parents=True)
        return path

    async def start_daemon(self, ra_layout: str = "ndes") -> Daemon:
        """otad on plain HTTP, with the RA layout given ([scep] ra_layout)."""
        folder = self.directory()
        config = folder / "otad.conf"
        config.write_text(f"[scep]\nra_layout = {ra_layout}\n" + self.store_config(folder / "data"))
        daemon = Daemon(folder / "data", ("--config", str(config)), listen="tcp:0:interface=127.0.0.1")
        daemon.data_dir.mkdir()
        self.addCleanup(daemon.stop)
        await daemon.start()
        self.assertIn(b"otad listening on http://", daemon.output)
        return daemon

    def scep_url(self, daemon: Daemon) -> str:
        return f"http://127.0.0.1:{daemon.port}/scep"

    async def challenge(self, daemon: Daemon, uses: int = 1) -> str:
        """A static challenge from ``otad-admin challenge create``, which prints only the token on stdout."""
        environment = {"PATH": _PATH, "PYTHONPATH": str(ROOT)}
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "otad.admin",
                "--data-dir",
                str(daemon.data_dir),
                "--config",
                str(daemon.data_dir.parent / "otad.conf"),
                "challenge",
                "create",
                "--uses",
                str(uses),
                "--ttl",
                "10m",
            ],
            env=environment,
            path=str(ROOT),
            reactor=reactor,
        )
        self.assertEqual(code, 0, f"otad-admin challenge create failed: {err.decode(errors='replace')}")
        lines = out.decode().splitlines()
        self.assertEqual(len(lines), 1, f"expected the challenge alone on stdout, got {out!r}")
        self.assertGreaterEqual(len(lines[0]), 16)
        return lines[0]

    async def run_in_group(self, argv: Sequence[str], env: dict[str, str], cwd: Path, limit: float = 30.0) -> tuple[str, int | None]:
        """Run argv in a new process group; fail if it outlives ``limit``. Cleanup ends the whole group."""
        child = _Child()
        transport = reactor.spawnProcess(child, sys.executable, [sys.executable, "-c", _IN_OWN_GROUP, *argv], env=env, path=str(cwd))
        group = transport.pid
        self.addCleanup(self._end_group, group, child)
        timer = reactor.callLater(limit, self._signal_group, group, signal.SIGKILL)
        self.addCleanup(lambda: timer.cancel() if timer.active() else None)
        code = await child.ended
        if not timer.active():
            self.fail(f"{argv[0]} did not finish within {limit} s; its output:\n{child.output.decode(errors='replace')}")
        return child.output.decode("utf-8", "replace"), code

    @staticmethod
    def _signal_group(group: int, number: int) -> bool:
        """Signal every process left in the group; False when none is left."""
        try:
            os.killpg(group, number)
        except ProcessLookupError:
            return False
        return True

    async def _end_group(self, group: int, child: _Child) -> None:
        # The leader (dbus-run-session, scepclient) normally exits on its own and takes the rest
        # along; whatever is left of the group gets SIGTERM, then SIGKILL.
        for number in (signal.SIGTERM, signal.SIGKILL):
            if not self._signal_group(group, 0) and child.ended.called:
                return
            self._signal_group(group, number)
            for _ in range(50):
                if not self._signal_group(group, 0) and child.ended.called:
                    return
                await deferLater(reactor, 0.05, lambda: None)
        self.fail(f"process group {group} survived SIGKILL")

    async def openssl_verify(self, ca: Path, cert: Path) -> tuple[int, str]:
        out, err, code = await getProcessOutputAndValue(
            OPENSSL, ["verify", "-CAfile", str(ca), str(cert)], env={"PATH": _PATH}, reactor=reactor
        )
        return code, (out + err).decode(errors="replace")

    async def assert_issued(self, daemon: Daemon, cert_path: Path, key_path: Path, common_name: str) -> x509.Certificate:
        """The client wrote a certificate for its own key and CN that openssl verifies against otad's root."""
        self.assertTrue(cert_path.exists(), f"the client wrote no certificate at {cert_path}")
        ca = daemon.data_dir / "certs" / "ca.pem"
        code, said = await self.openssl_verify(ca, cert_path)
        self.assertEqual(code, 0, said)
        self.assertIn(f"{cert_path}: OK", said)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        self.assertEqual(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, common_name)
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(
            cert.public_key().public_bytes(serialization.Encoding.DER, spki),
            key.public_key().public_bytes(serialization.Encoding.DER, spki),
            "the certificate is not for the client's key",
        )
        root = x509.load_pem_x509_certificate(ca.read_bytes())
        self.assertEqual(cert.issuer, root.subject)
        return cert

    # -- certmonger ----------------------------------------------------------------------------

    async def certmonger(self, daemon: Daemon, challenge: str, common_name: str) -> tuple[str, Path, Path]:
        """Run certmonger on a private session bus with all of its state in a temporary directory.

        certmonger-session (the per-user build of certmonger) runs under ``dbus-run-session``,
        which starts a private bus daemon and ends it when certmonger exits; certmonger runs the
        getcert script itself (``-c``) and exits when the script does. ``CERTMONGER_*_DIR`` and
        HOME point into the test's directory, so nothing is read or written under /var/lib,
        /etc or the real home directory, and nothing talks to the system bus.
        """
        work = self.directory()
        state = {name: work / name for name in ("home", "config", "requests", "cas", "local", "tmp", "out")}
        for path in state.values():
            path.mkdir()
        (state["config"] / "certmonger.conf").write_text("")  # defaults, without a warning per read
        challenge_file = work / "challenge"
        challenge_file.write_text(challenge)
        key, cert = state["out"] / "key.pem", state["out"] / "cert.pem"
        env = {
            "PATH": _PATH,
            "LANG": "C",
            "HOME": str(state["home"]),
            "XDG_CONFIG_HOME": str(state["home"]),
            "TMPDIR": str(state["tmp"]),
            "CERTMONGER_CONFIG_DIR": str(state["config"]),
            "CERTMONGER_REQUESTS_DIR": str(state["requests"]),
            "CERTMONGER_CAS_DIR": str(state["cas"]),
            "CERTMONGER_LOCAL_CA_DIR": str(state["local"]),
            "CERTMONGER_TMPDIR": str(state["tmp"]),
        }
        settings = {
            "OTAD_SCEP_URL": self.scep_url(daemon),
            "OTAD_KEY": str(key),
            "OTAD_CERT": str(cert),
            "OTAD_CHALLENGE_FILE": str(challenge_file),
            "OTAD_SUBJECT": f"CN={common_name}",
        }
        script = work / "enroll.sh"
        script.write_text("".join(f"{name}={shlex.quote(value)}\n" for name, value in settings.items()) + _CERTMONGER_SCRIPT)
        before = _state_snapshot()
        output, code = await self.run_in_group(
            [DBUS_RUN_SESSION, "--", CERTMONGER, "-s", "-n", "-d", "1", "-c", f"/bin/sh {script}"],
            env,
            work,
            limit=40.0,
        )
        self.assertEqual(code, 0, output)
        self.assertIn("=== end", output, f"the getcert script did not run to its end:\n{output}")
        self.assertEqual(_state_snapshot(), before, "certmonger changed the system-wide certmonger state")
        requests = list(state["requests"].iterdir())
        self.assertEqual(len(requests), 1, "certmonger kept its request outside the test's directory")
        return output, key, cert

    def assert_certmonger_knows_the_ca(self, daemon: Daemon, output: str) -> None:
        """GetCACert worked: certmonger shows the thumbprint of otad's root as the SCEP CA."""
        root = x509.load_pem_x509_certificate((daemon.data_dir / "certs" / "ca.pem").read_bytes())
        sha1 = hashlib.sha1(root.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
        shown = (_field(_section(output, "list-cas"), "SCEP CA certificate thumbprint (SHA1)") or "").replace(" ", "")
        self.assertEqual(shown, sha1, output)

    def test_certmonger_enrolls(self) -> Deferred[None]:
        """certmonger (getcert add-scep-ca + request, scep-submit underneath) enrolls with a static challenge.

        This drives the real certmonger daemon rather than scep-submit alone, so the whole client
        runs: GetCACaps and GetCACert when the CA is added, key and CSR generation, the PKCSReq
        and saving the certificate. certmonger (0.79) picks AES-256 and SHA-256 from GetCACaps,
        encrypts to the RA, and sends PKIOperation by GET (percent-encoded base64) even though
        POSTPKIOperation is advertised, so this also covers otad's GET path. It must end in
        MONITORING with a certificate for its key that openssl verifies.
        """

        async def run() -> None:
            daemon = await self.start_daemon()
            challenge = await self.challenge(daemon)
            output, key, cert = await self.certmonger(daemon, challenge, "certmonger-test")
            self.assert_certmonger_knows_the_ca(daemon, output)
            listing = _section(output, "list")
            self.assertEqual(_field(listing, "status"), "MONITORING", output)
            self.assertIn("Server supports AES, using AES256.", output)
            self.assertIn("Server supports SHA-256, using that.", output)
            self.assertIn(f'GET "{self.scep_url(daemon)}?operation=PKIOperation&message=', output)
            issued = await self.assert_issued(daemon, cert, key, "certmonger-test")
            self.assertIn("certmonger-test", _field(listing, "subject") or "")
            self.assertEqual(issued.subject.rfc4514_string(), "CN=certmonger-test")
            # In the NDES layout certmonger picks the encryption RA (its key usage), as NDES clients do.
            self.assertIn(b"envelope aes256 to the encryption RA, transaction", daemon.output)

        return ensureDeferred(run())

    def test_certmonger_enrolls_with_a_single_ra(self) -> Deferred[None]:
        """With ra_layout = single, certmonger encrypts to the one RA and enrolls just the same."""

        async def run() -> None:
            daemon = await self.start_daemon("single")
            challenge = await self.challenge(daemon)
            output, key, cert = await self.certmonger(daemon, challenge, "certmonger-single")
            self.assertEqual(_field(_section(output, "list"), "status"), "MONITORING", output)
            await self.assert_issued(daemon, cert, key, "certmonger-single")
            self.assertIn(b"envelope aes256 to the RA, transaction", daemon.output)

        return ensureDeferred(run())

    def test_certmonger_wrong_challenge_is_rejected(self) -> Deferred[None]:
        """With a challenge otad never issued, certmonger ends in CA_REJECTED, with no certificate written."""

        async def run() -> None:
            daemon = await self.start_daemon()
            await self.challenge(daemon)  # a real challenge exists, but not this one
            output, _, cert = await self.certmonger(daemon, "not-a-challenge-otad-issued", "certmonger-wrong")
            self.assert_certmonger_knows_the_ca(daemon, output)
            listing = _section(output, "list")
            self.assertEqual(_field(listing, "status"), "CA_REJECTED", output)
            self.assertIn('SCEP status is "failure".', output)
            # scep-submit's words for failInfo badRequest (badMessageCheck, badAlg and the rest differ).
            self.assertEqual(_field(listing, "ca-error"), "Transaction either is not permitted or is not supported by server.", output)
            self.assertFalse(cert.exists())

        return ensureDeferred(run())

    # -- micromdm scepclient -------------------------------------------------------------------

    async def scepclient(self, daemon: Daemon, challenge: str, common_name: str, *extra: str) -> tuple[str, int | None, Path, Path]:
        """Run scepclient in a directory of its own (it writes csr.pem and self.pem next to it)."""
        work = self.directory()
        key, cert = work / "key.pem", work / "cert.pem"
        argv = [
            SCEPCLIENT,
            "-server-url",
            self.scep_url(daemon),
            "-challenge",
            challenge,
            "-private-key",
            str(key),
            "-certificate",
            str(cert),
            "-cn",
            common_name,
            "-keySize",
            "2048",
            "-debug",
            *extra,
        ]
        output, code = await self.run_in_group(argv, {"PATH": _PATH, "HOME": str(work)}, work, limit=30.0)
        return output, code, key, cert

    def test_scepclient_enrolls(self) -> Deferred[None]:
        """scepclient enrolls with a one-use challenge; the same challenge then fails with badRequest.

        scepclient (2.1.0) ignores GetCACaps for its crypto: it POSTs a PKCSReq signed with SHA-1
        whose envelope is single DES, encrypted to every certificate GetCACert returned (CA and
        RA), with the encrypted content in BER constructed form, as Go's pkcs7 writes it.
        """

        async def run() -> None:
            daemon = await self.start_daemon()
            challenge = await self.challenge(daemon, uses=1)
            output, code, key, cert = await self.scepclient(daemon, challenge, "scepclient-test")
            self.assertEqual(code, 0, output)
            await self.assert_issued(daemon, cert, key, "scepclient-test")
            again, code, _, second = await self.scepclient(daemon, challenge, "scepclient-again")
            self.assertNotEqual(code, 0, again)
            self.assertIn("failInfo: badRequest", again)
            self.assertFalse(second.exists())
            # It encrypts to every certificate; otad opens the envelope with the encryption RA's key.
            self.assertIn(b"to the encryption RA", daemon.output)

        return ensureDeferred(run())

    def test_scepclient_enrolls_with_a_single_ra(self) -> Deferred[None]:
        """With ra_layout = single, scepclient enrolls; otad opens its envelope with the RA's key and the RA signs."""

        async def run() -> None:
            daemon = await self.start_daemon("single")
            challenge = await self.challenge(daemon)
            output, code, key, cert = await self.scepclient(daemon, challenge, "scepclient-single")
            self.assertEqual(code, 0, output)
            await self.assert_issued(daemon, cert, key, "scepclient-single")
            self.assertIn(b"envelope des to the RA, transaction", daemon.output)

        return ensureDeferred(run())

    def test_scepclient_with_ca_fingerprint(self) -> Deferred[None]:
        """scepclient pinned to otad's root by -ca-fingerprint enrolls.

        Pinned, scepclient encrypts to the CA alone and checks the CertRep's signature against
        the CA alone (it replaces the reply's certificates with the pinned one), so the reply
        must be signed by the CA.
        """

        async def run() -> None:
            daemon = await self.start_daemon()
            root = x509.load_pem_x509_certificate((daemon.data_dir / "certs" / "ca.pem").read_bytes())
            fingerprint = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
            challenge = await self.challenge(daemon)
            output, code, key, cert = await self.scepclient(daemon, challenge, "scepclient-pinned", "-ca-fingerprint", fingerprint)
            self.assertEqual(code, 0, output)
            await self.assert_issued(daemon, cert, key, "scepclient-pinned")
            self.assertIn(b" to the CA, transaction", daemon.output)

        return ensureDeferred(run())

    def test_scepclient_wrong_challenge_is_rejected(self) -> Deferred[None]:
        """With a challenge otad never issued, scepclient exits non-zero reporting failInfo badRequest."""

        async def run() -> None:
            daemon = await self.start_daemon()
            await self.challenge(daemon)
            output, code, _, cert = await self.scepclient(daemon, "not-a-challenge-otad-issued", "scepclient-wrong")
            self.assertNotEqual(code, 0, output)
            self.assertIn("PKCSReq (19) request failed, failInfo: badRequest", output)
            self.assertFalse(cert.exists())

        return ensureDeferred(run())


class PostgreSQLSCEPClientTests(PostgreSQLStore, SCEPClientTests):
    """Every SCEPClientTests test again, the daemon on a PostgreSQL store."""
