"""Tests for ``otad-admin``, driven in-process through ``main`` on a real store in a temporary data directory."""

from __future__ import annotations

import datetime
import functools
import io
import json
import os
import plistlib
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import TestCase

from otad import admin, cms, payloads, tokens
from otad.ca import serial_hex
from otad.store import ChallengeRefused, Store
from tests.helpers import webclip
from tests.test_payloads import SEED_BROKEN

UDID = "00008030-001A2B3C4D5E6F70"
OTHER_UDID = "00008030-00FFEEDDCCBBAA99"
TOKEN_FORM = re.compile(r"[A-Za-z0-9_-]{32,}")


@functools.cache
def _key() -> rsa.RSAPrivateKey:
    """One signing key for the whole run: RSA key generation is slow."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _self_signed(serial: int, not_after: datetime.datetime, common_name: str = "otad test") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(_key().public_key())
        .serial_number(serial)
        .not_valid_before(not_after - datetime.timedelta(days=365))
        .not_valid_after(not_after)
        .sign(_key(), hashes.SHA256())
    )


def _profile() -> payloads.Payload:
    return payloads.configuration_profile(
        identifier="com.example.otad.test",
        organization="Example Inc.",
        display_name="Test",
        description="A valid profile",
        content=[
            webclip(
                url="https://otad.example.com/",
                label="otad",
                identifier="com.example.otad.test.webclip",
                organization="Example Inc.",
            )
        ],
    )


class AdminTests(TestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir(parents=True)
        # The test's own connection stays open, as the daemon's would while an admin works.
        self.store = Store.open(self.directory / "otad.sqlite")
        self.addCleanup(self.store.close)

    def admin(self, *argv: str, stdin: bytes = b"", options_first: bool = False) -> tuple[int, str, str]:
        """Run ``otad-admin`` on this data directory; returns the exit status, stdout and stderr."""
        self.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        common = ["--data-dir", str(self.directory)]
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = admin.main([*common, *argv] if options_first else [*argv, *common])
        return status, out.getvalue(), err.getvalue()

    def assertOneErrorLine(self, err: str, *fragments: str) -> None:
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.startswith("otad-admin: "), err)
        for fragment in fragments:
            self.assertIn(fragment, err)

    def add_certificate(self, serial: int, *, udid: str | None, not_after: datetime.datetime) -> x509.Certificate:
        cert = _self_signed(serial, not_after)
        now = time.time()
        if udid is not None:
            # certificates.udid references devices, as it does for every certificate the daemon issues.
            self.store.record_device(udid, "alice", {"UDID": udid, "PRODUCT": "iPhone15,2"}, now=now)
        self.store.add_certificate(
            serial=serial_hex(serial),
            udid=udid,
            subject=cert.subject.rfc4514_string(),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            der=cert.public_bytes(serialization.Encoding.DER),
            csr=None,
            challenge_id=None,
            transaction_id=None,
            now=now,
        )
        return cert

    def sign(self, content: bytes) -> bytes:
        return cms.sign(content, _self_signed(7, datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)), _key())

    # -- challenge create --------------------------------------------------------------------

    def test_challenge_create_prints_only_a_token_usable_n_times(self) -> None:
        """`challenge create --uses 3` prints one token alone; the store accepts it three times, then refuses."""
        status, out, err = self.admin("challenge", "create", "--uses", "3")
        self.assertEqual(status, 0)
        self.assertEqual(out.count("\n"), 1)
        token = out.rstrip("\n")
        self.assertRegex(token, f"^{TOKEN_FORM.pattern}$")
        self.assertNotIn(token, err)
        for _ in range(3):
            challenge = self.store.consume_challenge(tokens.digest(token), ("static",), now=time.time())
        self.assertEqual((challenge.kind, challenge.bound_to), ("static", None))
        error = self.assertRaises(ChallengeRefused, self.store.consume_challenge, tokens.digest(token), ("static",), now=time.time())
        self.assertEqual(str(error), "challenge already used")

    def test_challenge_token_is_never_stored(self) -> None:
        """The database (and its WAL) holds the token's digest and never the token, not even in the event."""
        status, out, _ = self.admin("challenge", "create")
        self.assertEqual(status, 0)
        token = out.strip()
        stored = b"".join(path.read_bytes() for path in self.directory.glob("otad.sqlite*"))
        self.assertIn(tokens.digest(token), stored)
        self.assertNotIn(token.encode("ascii"), stored)
        [event] = self.store.events()
        self.assertEqual((event.kind, event.outcome, event.reason), ("challenge", "created", "static, 1 uses"))

    def test_challenge_defaults_and_binding(self) -> None:
        """By default a challenge has one use and lives an hour; --bind-udid and --ttl are stored, options go anywhere."""
        status, out, _ = self.admin("challenge", "create", "--bind-udid", UDID, "--ttl", "15m", options_first=True)
        self.assertEqual(status, 0)
        bound = self.store.find_challenge(tokens.digest(out.strip()), ("static",), now=time.time())
        self.assertEqual((bound.bound_to, bound.uses_left, bound.expires - bound.created), (UDID, 1, 900))
        self.assertEqual(self.store.events()[0].udid, UDID)
        status, out, _ = self.admin("challenge", "create")
        self.assertEqual(status, 0)
        default = self.store.find_challenge(tokens.digest(out.strip()), ("static",), now=time.time())
        self.assertEqual((default.bound_to, default.uses_left, default.expires - default.created), (None, 1, 3600))
        self.assertRaises(ChallengeRefused, self.store.consume_challenge, tokens.digest(out.strip()), ("static",), now=default.expires)

    def test_challenge_refuses_bad_uses_ttl_and_udid(self) -> None:
        """Uses outside 1..1000000, a zero or malformed TTL and a UDID of the wrong shape are usage errors (exit 2)
        whose last stderr line names the option, and they create nothing."""
        for argv in (
            ["--uses", "0"],
            ["--uses", "1000001"],
            ["--uses", "many"],
            ["--ttl", "0"],
            ["--ttl", "1y"],
            ["--bind-udid", "short"],
            ["--bind-udid", "has space 0123456789"],
            ["--bind-udid", "x" * 65],
        ):
            status, out, err = self.admin("challenge", "create", *argv)
            self.assertEqual((status, out), (2, ""), argv)
            self.assertIn(argv[0], err.splitlines()[-1])
        self.assertEqual(self.store.events(), [])

    def test_missing_database_is_an_error(self) -> None:
        """A data directory with no state database is reported, not silently given an empty one."""
        self.directory = self.directory / "elsewhere"
        status, out, err = self.admin("challenge", "create")
        self.assertEqual((status, out), (1, ""))
        self.assertOneErrorLine(err, "no state database")
        self.assertFalse((self.directory / "otad.sqlite").exists())

    def test_challenge_create_console_script(self) -> None:
        """The installed `otad-admin` script prints exactly one line, the token, so $(...) captures it."""
        script = Path(sys.executable).parent / "otad-admin"
        if not script.exists():
            self.fail(f"no console script next to {sys.executable}: install the package (.ci/run does)")
        result = subprocess.run(
            [str(script), "challenge", "create", "--data-dir", str(self.directory)],
            capture_output=True,
            check=False,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.decode("ascii").splitlines()
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], f"^{TOKEN_FORM.pattern}$")
        self.assertIn(b"static challenge", result.stderr)
        self.store.consume_challenge(tokens.digest(lines[0]), ("static",), now=time.time())

    # -- certs -------------------------------------------------------------------------------

    def test_certs_list(self) -> None:
        """`certs list` shows each certificate's serial, status and expiry; --udid filters; --json has the fields."""
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.add_certificate(0xA1B2C3, udid=UDID, not_after=now + datetime.timedelta(days=30))
        self.add_certificate(0x0F, udid=OTHER_UDID, not_after=now - datetime.timedelta(days=1))
        self.add_certificate(0xBEEF, udid=None, not_after=now + datetime.timedelta(days=30))
        self.store.revoke("beef", reason="key compromise", now=time.time())

        status, out, _ = self.admin("certs", "list", "--json")
        self.assertEqual(status, 0)
        rows = json.loads(out)
        self.assertEqual(
            [(row["serial"], row["udid"], row["status"]) for row in rows],
            [
                ("a1b2c3", UDID, "valid"),
                ("f", OTHER_UDID, "expired"),
                ("beef", None, "revoked"),
            ],
        )
        self.assertEqual(rows[0]["subject"], "CN=otad test")
        self.assertEqual(rows[0]["not_after"], (now + datetime.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"))

        status, out, _ = self.admin("certs", "list")
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertEqual(len(lines), 3)
        self.assertEqual(lines[0].split()[:2], ["a1b2c3", "valid"])
        self.assertIn(UDID, lines[0])

        status, out, _ = self.admin("certs", "list", "--json", "--udid", OTHER_UDID)
        self.assertEqual([row["serial"] for row in json.loads(out)], ["f"])

    def test_certs_show_accepts_any_hex_form(self) -> None:
        """`certs show` finds a serial written with or without 0x, in any case, with colons and leading zeros."""
        cert = self.add_certificate(0xA1B2C3, udid=UDID, not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30))
        fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
        for form in ("a1b2c3", "A1B2C3", "0xa1b2c3", "0XA1B2C3", "a1:b2:c3", "00:A1:B2:C3", "0x00a1b2c3"):
            status, out, err = self.admin("certs", "show", form, "--json")
            self.assertEqual((status, err), (0, ""), form)
            shown = json.loads(out)
            self.assertEqual(shown["serial"], "a1b2c3")
            self.assertEqual(shown["sha256"], fingerprint)
            self.assertEqual(x509.load_pem_x509_certificate(shown["pem"].encode("ascii")), cert)
            self.assertEqual((shown["udid"], shown["status"], shown["revoked"]), (UDID, "valid", None))

        status, out, _ = self.admin("certs", "show", "A1:B2:C3")
        self.assertEqual(status, 0)
        self.assertIn(f"sha256: {fingerprint}\n", out)
        self.assertIn(f"udid: {UDID}\n", out)
        self.assertIn("revoked: -\n", out)
        self.assertIn(cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), out)

    def test_certs_show_unknown_or_malformed_serial(self) -> None:
        """An unknown serial and text that is not hex are one-line errors with exit 1."""
        status, out, err = self.admin("certs", "show", "0xdead")
        self.assertEqual((status, out), (1, ""))
        self.assertOneErrorLine(err, "no certificate with serial dead")
        for malformed in ("0x", "xyz", "-1", "1_0", ""):
            status, out, err = self.admin("certs", "show", malformed)
            self.assertEqual((status, out), (1, ""), malformed)
            self.assertOneErrorLine(err, "not a hexadecimal serial number")

    def test_certs_revoke_once(self) -> None:
        """`certs revoke` marks the record revoked with the reason and logs it, saying when the CRL will list it (the
        configured [ca] crl_check); revoking again exits 1."""
        self.add_certificate(0xA1B2C3, udid=UDID, not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30))
        config = self.directory / "otad.conf"
        config.write_text("[ca]\ncrl_check = 10s\n")
        status, out, err = self.admin("certs", "revoke", "0xA1:B2:C3", "--reason", "keyCompromise", "--config", str(config))
        self.assertEqual((status, err), (0, ""))
        self.assertIn("a1b2c3", out)
        self.assertIn("re-signs the CRL within 10 s", out)
        record = self.store.certificate("a1b2c3")
        assert record is not None
        self.assertIsNotNone(record.revoked)
        self.assertEqual(record.revocation_reason, "keyCompromise")

        status, out, err = self.admin("certs", "revoke", "a1b2c3")
        self.assertEqual((status, out), (1, ""))
        self.assertOneErrorLine(err, "no unrevoked certificate with serial a1b2c3")
        self.assertEqual(self.store.certificate("a1b2c3"), record)

        status, out, _ = self.admin("events", "--json")
        self.assertEqual(status, 0)
        [event] = json.loads(out)
        self.assertEqual(
            (event["kind"], event["outcome"], event["serial"], event["reason"]),
            ("certificate", "revoked", "a1b2c3", "keyCompromise"),
        )
        self.assertRegex(event["at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    # -- devices, events, users ----------------------------------------------------------------

    def test_devices(self) -> None:
        """`devices` lists UDID, user, product and last-seen time, newest first, as text or JSON."""
        self.store.record_device(UDID, "alice", {"UDID": UDID, "PRODUCT": "iPhone15,2"}, now=1_700_000_000)
        self.store.record_device(OTHER_UDID, None, {"UDID": OTHER_UDID}, now=1_800_000_000)
        status, out, _ = self.admin("devices", "--json")
        self.assertEqual(status, 0)
        self.assertEqual(
            json.loads(out),
            [
                {"udid": OTHER_UDID, "user": None, "product": None, "last_seen": "2027-01-15T08:00:00Z"},
                {"udid": UDID, "user": "alice", "product": "iPhone15,2", "last_seen": "2023-11-14T22:13:20Z"},
            ],
        )
        status, out, _ = self.admin("devices")
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines()[1].split(), [UDID, "alice", "iPhone15,2", "2023-11-14T22:13:20Z"])

    def test_events_text(self) -> None:
        """`events` prints one line per event, newest first, with its fields."""
        self.store.record_event(now=1_700_000_000, kind="enroll", outcome="refused", user="bob", reason="bad password")
        self.store.record_event(now=1_700_000_060, kind="profile", outcome="sent", udid=UDID)
        status, out, _ = self.admin("events", "--limit", "5")
        self.assertEqual(status, 0)
        self.assertEqual(
            out.splitlines(),
            [
                f"2023-11-14T22:14:20Z profile sent udid={UDID}",
                "2023-11-14T22:13:20Z enroll refused user=bob bad password",
            ],
        )

    def test_users(self) -> None:
        """`user add` reads the password from stdin, `user list --json` shows it and `user remove` removes it."""
        status, _, _ = self.admin("user", "add", "alice", stdin=b"correct horse\n")
        self.assertEqual(status, 0)
        status, out, _ = self.admin("user", "list", "--json")
        self.assertEqual((status, json.loads(out)), (0, ["alice"]))
        status, _, _ = self.admin("user", "remove", "alice")
        self.assertEqual(status, 0)
        status, out, err = self.admin("user", "remove", "alice")
        self.assertEqual((status, out), (1, ""))
        self.assertOneErrorLine(err, "no user alice")

    def test_usage_error_exits_2(self) -> None:
        """An unknown command exits 2 (argparse's usage status) with the usage and a line naming it on stderr."""
        status, out, err = self.admin("certs", "frobnicate")
        self.assertEqual((status, out), (2, ""))
        self.assertTrue(err.startswith("usage: otad-admin"), err)
        self.assertIn("frobnicate", err.splitlines()[-1])

    def test_version(self) -> None:
        """`otad-admin --version` prints otad's version and exits 0."""
        from otad import __version__

        status, out, _ = self.admin("--version")
        self.assertEqual((status, out), (0, f"otad-admin {__version__}\n"))

    def test_empty_listings_say_so(self) -> None:
        """On a fresh store every listing prints nothing on stdout and one line on stderr saying it is empty."""
        self.store.close()
        for path in self.directory.glob("otad.sqlite*"):
            path.unlink()
        self.store = Store.open(self.directory / "otad.sqlite")
        for argv, words in (
            (["devices"], "no devices"),
            (["certs", "list"], "no certificates"),
            (["certs", "list", "--udid", UDID], f"no certificates for {UDID}"),
            (["requests", "list"], "no SCEP requests"),
            (["events"], "no events"),
            (["challenge", "list"], "no usable static challenges"),
            (["user", "list"], "no users"),
        ):
            status, out, err = self.admin(*argv)
            self.assertEqual((status, out), (0, ""), argv)
            self.assertOneErrorLine(err, words)
        status, out, err = self.admin("devices", "--json")
        self.assertEqual((status, out, err), (0, "[]\n", ""))

    def test_closed_pipe_is_quiet(self) -> None:
        """`otad-admin events | head -1` prints one line and no traceback; otad-admin exits 141 (SIGPIPE's status)."""
        script = Path(sys.executable).parent / "otad-admin"
        with self.store.transaction():
            for number in range(3000):
                self.store.record_event(now=1_700_000_000 + number, kind="test", outcome="filler", reason="x" * 40)
        result = subprocess.run(
            ["bash", "-c", f"'{script}' events --limit 3000 --data-dir '{self.directory}' | head -1; exit ${{PIPESTATUS[0]}}"],
            capture_output=True,
            check=False,
            timeout=60,
        )
        self.assertEqual(result.stderr, b"")
        self.assertEqual(len(result.stdout.splitlines()), 1)
        self.assertEqual(result.returncode, admin.CLOSED_PIPE)

    # -- challenge list and revoke ---------------------------------------------------------------

    def test_challenge_list_and_revoke(self) -> None:
        """`challenge list` shows usable static challenges; `challenge revoke ID` makes one unusable at once,
        the store then refuses it as revoked, `--all` still lists it, and revoking twice is an error."""
        status, out, err = self.admin("challenge", "create", "--uses", "2", "--bind-udid", UDID)
        token = out.strip()
        challenge_id = int(re.search(r"static challenge (\d+)", err).group(1))  # type: ignore[union-attr]
        status, out, _ = self.admin("challenge", "list", "--json")
        [row] = json.loads(out)
        self.assertEqual(
            (row["id"], row["kind"], row["status"], row["uses_left"], row["bound_to"]), (challenge_id, "static", "usable", 2, UDID)
        )
        status, out, _ = self.admin("challenge", "revoke", str(challenge_id))
        self.assertEqual((status, out), (0, f"revoked challenge {challenge_id}\n"))
        error = self.assertRaises(ChallengeRefused, self.store.consume_challenge, tokens.digest(token), ("static",), now=time.time())
        self.assertEqual(str(error), "challenge revoked")
        status, out, err = self.admin("challenge", "list")
        self.assertEqual((status, out), (0, ""))
        status, out, _ = self.admin("challenge", "list", "--all")
        self.assertRegex(out, rf"^{challenge_id}  static  revoked  2 left  ")
        self.assertEqual((self.store.events()[0].outcome, self.store.events()[0].reason), ("revoked", f"challenge {challenge_id}"))
        status, out, err = self.admin("challenge", "revoke", str(challenge_id))
        self.assertEqual((status, out), (1, ""))
        self.assertOneErrorLine(err, "no unrevoked challenge")

    # -- ownership ---------------------------------------------------------------------------------

    def test_root_keeps_the_daemons_ownership(self) -> None:
        """Run as root on a data directory owned by another user, `user add`, `challenge create` and `certs revoke`
        leave every file in it owned by that user, and the replaced users file keeps its mode."""
        if os.geteuid() != 0:
            self.fail("this test checks what root does: run the suite as root (CI does)")
        self.add_certificate(0xBEEF, udid=UDID, not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=9))
        self.store.close()
        (self.directory / "htpasswd").write_bytes(b"")
        (self.directory / "htpasswd").chmod(0o640)
        for path in [self.directory, *self.directory.iterdir()]:
            os.chown(path, 65534, 65534)
        # A connection that root holds open, as the daemon would: its -wal and -shm files must not become root's.
        self.store = Store.open(self.directory / "otad.sqlite")
        self.assertEqual(self.admin("user", "add", "alice", stdin=b"correct horse\n")[0], 0)
        self.assertEqual(self.admin("challenge", "create")[0], 0)
        self.assertEqual(self.admin("certs", "revoke", "beef")[0], 0)
        owners = {path.name: (path.stat().st_uid, path.stat().st_gid) for path in self.directory.iterdir()}
        self.assertIn("otad.sqlite-wal", owners)
        self.assertEqual(set(owners.values()), {(65534, 65534)}, owners)
        self.assertEqual(stat.S_IMODE((self.directory / "htpasswd").stat().st_mode), 0o640)

    def test_other_user_is_refused(self) -> None:
        """As a user who is neither root nor the data directory's owner, otad-admin refuses with one line naming the owner."""
        if os.geteuid() != 0:
            self.fail("this test switches users with setpriv: run the suite as root (CI does)")
        # Somewhere the other user can reach: the trial directory's parents are root's own.
        self.directory = Path(tempfile.mkdtemp(prefix="otad-admin-"))
        self.addCleanup(shutil.rmtree, self.directory)
        self.directory.chmod(0o777)
        Store.open(self.directory / "otad.sqlite").close()
        os.chown(self.directory, 65534, 65534)
        script = Path(sys.executable).parent / "otad-admin"
        result = subprocess.run(
            [
                "setpriv",
                "--reuid=65533",
                "--regid=65533",
                "--clear-groups",
                str(script),
                "challenge",
                "create",
                "--data-dir",
                str(self.directory),
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        self.assertEqual((result.returncode, result.stdout), (1, b""), result.stderr)
        self.assertEqual(result.stderr.count(b"\n"), 1, result.stderr)
        self.assertIn(b"belongs to nobody (uid 65534); run as that user", result.stderr)

    # -- lint --------------------------------------------------------------------------------

    def lint(self, data: bytes) -> tuple[int, list[str]]:
        path = self.directory / "profile.mobileconfig"
        path.write_bytes(data)
        status, out, err = self.admin("lint", str(path))
        self.assertEqual(err, "")
        return status, out.splitlines()

    def test_lint_seed_broken_profile(self) -> None:
        """The seed developer's broken profile exits 1 and names every missing or mistyped key path."""
        status, lines = self.lint(SEED_BROKEN)
        self.assertEqual(status, admin.LINT_ERRORS)
        self.assertIn("error: PayloadUUID: missing required key", lines)
        self.assertIn("error: PayloadIdentifier: missing required key", lines)
        self.assertIn("error: PayloadContent[0].PayloadContent: must be <data>, not <string>", lines)

    def test_lint_valid_profile(self) -> None:
        """A profile built by payloads.configuration_profile passes, as XML, as binary plist and from stdin."""
        for data in (payloads.serialize(_profile()), plistlib.dumps(_profile(), fmt=plistlib.FMT_BINARY)):
            self.assertEqual(self.lint(data), (0, ["ok: no problems"]))
        status, out, _ = self.admin("lint", "-", stdin=payloads.serialize(_profile()))
        self.assertEqual((status, out), (0, "ok: no problems\n"))

    def test_lint_signed_profile(self) -> None:
        """A CMS-signed profile is unwrapped and its content linted; its errors still give exit 1."""
        self.assertEqual(self.lint(self.sign(payloads.serialize(_profile()))), (0, ["ok: no problems"]))
        status, lines = self.lint(self.sign(SEED_BROKEN))
        self.assertEqual(status, admin.LINT_ERRORS)
        self.assertIn("error: PayloadUUID: missing required key", lines)

    def test_lint_unreadable_signed_profile(self) -> None:
        """DER that is not a verifiable SignedData, or whose content was altered, is one error line and exit 1."""
        signed = self.sign(payloads.serialize(_profile()))
        tampered = signed.replace(b"A valid profile", b"A VALID profile")
        self.assertNotEqual(tampered, signed)
        for data in (signed[:100], tampered, b"\x30\x03abc"):
            status, lines = self.lint(data)
            self.assertEqual(status, admin.LINT_ERRORS)
            self.assertEqual(len(lines), 1)
            self.assertTrue(lines[0].startswith("error: not a readable signed profile: "), lines)

    def test_lint_garbage(self) -> None:
        """Bytes that are no property list are a lint error (exit 1)."""
        status, lines = self.lint(b"\x00\xffnot a profile at all")
        self.assertEqual(status, admin.LINT_ERRORS)
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("error: not a property list"), lines)

    def test_lint_warnings_only(self) -> None:
        """A profile with only warnings (an unknown top-level key) prints them and exits 0."""
        profile = _profile()
        profile["ExtraKey"] = "surprise"
        status, lines = self.lint(plistlib.dumps(profile))
        self.assertEqual(status, 0)
        self.assertEqual(lines, ["warning: ExtraKey: unknown key for Configuration payloads"])

    def test_lint_unreadable_file(self) -> None:
        """A file that cannot be read is one error line and exit 1."""
        status, out, err = self.admin("lint", str(self.directory / "missing.mobileconfig"))
        self.assertEqual((status, out), (1, ""))
        self.assertOneErrorLine(err, "cannot read", "No such file")
