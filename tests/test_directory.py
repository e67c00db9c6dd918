"""Tests for directory users ([auth] backend = ldap, otad.directory) against a real, throwaway slapd:
both bind modes, escaping, the group, StartTLS and LDAPS with certificate checks, time limits, the
directory going away and coming back; then /enroll in memory and the real daemon."""

from __future__ import annotations

import base64
import dataclasses
import io
import socket
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.trial import unittest

from otad import admin, config
from otad.config import Config
from otad.directory import DirectoryChecker, DirectoryDown
from otad.logins import NotPermitted
from otad.pool import PoolFull
from tests.daemon import Daemon, DaemonExited
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice, UnexpectedResponse
from tests.helpers import InlinePool, MemorySite
from tests.slapd import GROUP, PASSWORDS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, UNIQUE_GROUP, Slapd, user_dn

TEMPLATE = f"uid={{user}},{PEOPLE}"


def ldap_config(directory: Path, slapd: Slapd, **ldap: str) -> Path:
    """An ini file with [auth] backend = ldap and these [ldap] keys (the service password written to a file when asked)."""
    directory.mkdir(parents=True, exist_ok=True)
    if ldap.get("service_dn"):
        secret = directory / "service-password"
        secret.write_text(ldap.pop("service_password", SERVICE_PASSWORD) + "\n")
        ldap.setdefault("service_password_file", str(secret))
    ldap.setdefault("url", slapd.ldap_url)
    ldap.setdefault("ca_file", str(slapd.ca.pem_path))
    lines = "".join(f"{key} = {value}\n" for key, value in ldap.items())
    path = directory / "otad.conf"
    path.write_text(f"[auth]\nbackend = ldap\n[ldap]\n{lines}")
    return path


def search_mode(**extra: str) -> dict[str, str]:
    return {"search_base": PEOPLE, "service_dn": SERVICE_DN, **extra}


class SlapdTestCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> Deferred[None]:
        self.slapd = Slapd(Path(self.mktemp()))
        self.addCleanup(lambda: ensureDeferred(self.slapd.stop()))
        return ensureDeferred(self.slapd.start())

    def settings(self, **ldap: str) -> Config:
        directory = Path(self.mktemp())
        return config.load(ldap_config(directory, self.slapd, **ldap), {"data_dir": str(directory), "hostname": "otad.test"})


class DirectoryCheckerTests(SlapdTestCase):
    def checker(self, settings: Config, queue: int = 16) -> DirectoryChecker:
        return DirectoryChecker(settings, InlinePool(None, "inline", 1).run, reactor, queue=queue)  # type: ignore[arg-type]

    async def login(self, checker: DirectoryChecker, name: str, password: str) -> bytes | BaseException:
        """The avatar id, or the exception the check raised."""
        try:
            return await checker.requestAvatarId(UsernamePassword(name.encode(), password.encode()))
        except Exception as error:
            return error

    def assertRefused(self, result: object, kind: type[BaseException] = UnauthorizedLogin) -> None:
        self.assertIsInstance(result, kind)
        if kind is UnauthorizedLogin:
            self.assertNotIsInstance(result, NotPermitted)

    def test_template_bind_over_starttls(self) -> None:
        """With bind_dn over ldap:// and StartTLS: the right password logs in; a wrong one, an unknown user and an empty
        password are refused alike; a name with a comma is escaped per RFC 4514 and logs in, and a name that tries to
        reach another DN with a comma does not."""

        async def run() -> None:
            checker = self.checker(self.settings(bind_dn=TEMPLATE))
            self.assertEqual(await self.login(checker, "alice", PASSWORDS["alice"]), b"alice")
            self.assertRefused(await self.login(checker, "alice", "not-her-password"))
            self.assertRefused(await self.login(checker, "zed", "anything"))
            # An empty password would be an anonymous bind, which slapd accepts: it never reaches the directory.
            self.assertRefused(await self.login(checker, "alice", ""))
            self.assertEqual(await self.login(checker, "d,ave", PASSWORDS["d,ave"]), b"d,ave")
            self.assertRefused(await self.login(checker, f"alice,{PEOPLE}", PASSWORDS["alice"]))

        return ensureDeferred(run())

    def test_search_then_bind_over_ldaps(self) -> None:
        """With search_base over ldaps://: the service account finds the one entry and the user binds as it; a wrong
        password and an unknown user are refused; a '*' in the name is escaped per RFC 4515 (no wildcard match); a
        filter that finds two entries refuses the login even with one of their passwords."""

        async def run() -> None:
            checker = self.checker(self.settings(url=self.slapd.ldaps_url, **search_mode()))
            self.assertEqual(await self.login(checker, "alice", PASSWORDS["alice"]), b"alice")
            self.assertEqual(await self.login(checker, "bob", PASSWORDS["bob"]), b"bob")
            self.assertEqual(await self.login(checker, "d,ave", PASSWORDS["d,ave"]), b"d,ave")
            self.assertRefused(await self.login(checker, "bob", PASSWORDS["alice"]))
            self.assertRefused(await self.login(checker, "zed", "anything"))
            self.assertRefused(await self.login(checker, "ali*", PASSWORDS["alice"]))
            self.assertRefused(await self.login(checker, "*", PASSWORDS["alice"]))
            by_cn = self.checker(self.settings(url=self.slapd.ldaps_url, **search_mode(search_filter="(cn={user})")))
            self.assertRefused(await self.login(by_cn, "Sam", PASSWORDS["sam1"]))
            self.assertEqual(await self.login(by_cn, "Alice", PASSWORDS["alice"]), b"Alice")

        return ensureDeferred(run())

    def test_service_account_refused_is_unavailable(self) -> None:
        """A wrong service password is the directory being unusable (503), not the user's wrong password (401)."""

        async def run() -> None:
            checker = self.checker(self.settings(**search_mode(service_password="wrong")))
            down = await self.login(checker, "alice", PASSWORDS["alice"])
            self.assertIsInstance(down, DirectoryDown)
            assert isinstance(down, DirectoryDown)
            self.assertIn(f"refused the service account {SERVICE_DN}", down.reason)

        return ensureDeferred(run())

    def test_group(self) -> None:
        """With a group, a member logs in and a non-member with the right password is NotPermitted; a non-member's
        wrong password is a plain wrong password (the group is told only after the password). groupOfNames (member)
        with a DN template, groupOfUniqueNames (uniqueMember) with search-then-bind."""

        async def run() -> None:
            checker = self.checker(self.settings(bind_dn=TEMPLATE, group=GROUP))
            self.assertEqual(await self.login(checker, "alice", PASSWORDS["alice"]), b"alice")
            self.assertEqual(await self.login(checker, "d,ave", PASSWORDS["d,ave"]), b"d,ave")
            self.assertRefused(await self.login(checker, "bob", PASSWORDS["bob"]), NotPermitted)
            self.assertRefused(await self.login(checker, "bob", "wrong"))
            unique = self.checker(self.settings(**search_mode(group=UNIQUE_GROUP, group_attribute="uniqueMember")))
            self.assertEqual(await self.login(unique, "alice", PASSWORDS["alice"]), b"alice")
            self.assertRefused(await self.login(unique, "d,ave", PASSWORDS["d,ave"]), NotPermitted)
            self.assertRefused(await self.login(unique, "d,ave", "wrong"))
            missing = self.checker(self.settings(bind_dn=TEMPLATE, group=f"cn=nobody,ou=groups,{PEOPLE}"))
            self.assertRefused(await self.login(missing, "alice", PASSWORDS["alice"]), DirectoryDown)

        return ensureDeferred(run())

    def test_server_certificate_checked(self) -> None:
        """LDAPS and StartTLS both refuse a server certificate from another CA, and one that does not name the host
        (127.0.0.1 where it names localhost): the directory is then unavailable, with the reason. ldap:// without
        StartTLS works only with allow_plain."""

        async def run() -> None:
            wrong_ca = str(self.slapd.other_ca.pem_path)
            for settings in (
                self.settings(url=self.slapd.ldaps_url, bind_dn=TEMPLATE, ca_file=wrong_ca),
                self.settings(url=self.slapd.ldap_url, bind_dn=TEMPLATE, ca_file=wrong_ca),
            ):
                down = await self.login(self.checker(settings), "alice", PASSWORDS["alice"])
                self.assertIsInstance(down, DirectoryDown, settings.ldap_url)
                assert isinstance(down, DirectoryDown)
                self.assertEqual(down.why, "TLS handshake failed: certificate verify failed")
            for url in (f"ldaps://127.0.0.1:{self.slapd.ldaps_port}", f"ldap://127.0.0.1:{self.slapd.ldap_port}"):
                down = await self.login(self.checker(self.settings(url=url, bind_dn=TEMPLATE)), "alice", PASSWORDS["alice"])
                self.assertIsInstance(down, DirectoryDown, url)
                assert isinstance(down, DirectoryDown)
                self.assertEqual(down.why, "its TLS certificate does not name this host")
            plain = self.checker(self.settings(bind_dn=TEMPLATE, starttls="no", allow_plain="yes"))
            self.assertEqual(await self.login(plain, "alice", PASSWORDS["alice"]), b"alice")
            error = self.assertRaises(config.ConfigError, self.settings, bind_dn=TEMPLATE, starttls="no")
            self.assertIn("allow_plain", str(error))

        return ensureDeferred(run())

    def test_directory_down_then_back(self) -> None:
        """With slapd stopped the check is DirectoryDown (connection refused); once slapd is back the same checker logs
        in again, with nothing to reset."""

        async def run() -> None:
            checker = self.checker(self.settings(**search_mode(group=GROUP)))
            self.assertEqual(await self.login(checker, "alice", PASSWORDS["alice"]), b"alice")
            await self.slapd.stop()
            down = await self.login(checker, "alice", PASSWORDS["alice"])
            self.assertIsInstance(down, DirectoryDown)
            assert isinstance(down, DirectoryDown)
            self.assertEqual(down.why, "connection refused")
            self.assertEqual(down.retry_after, 5)
            await self.slapd.start()
            self.assertEqual(await self.login(checker, "alice", PASSWORDS["alice"]), b"alice")

        return ensureDeferred(run())

    def test_silent_directory_times_out(self) -> None:
        """A directory that accepts connections but never answers (slapd frozen with SIGSTOP) is DirectoryDown after
        [ldap] timeout, not a hang; thawed, it answers again."""

        async def run() -> None:
            checker = self.checker(self.settings(bind_dn=TEMPLATE, timeout="1s"))
            self.slapd.freeze()
            started = reactor.seconds()
            down = await self.login(checker, "alice", PASSWORDS["alice"])
            elapsed = reactor.seconds() - started
            self.slapd.thaw()
            self.assertIsInstance(down, DirectoryDown)
            assert isinstance(down, DirectoryDown)
            self.assertEqual(down.why, "no answer within 1s")
            self.assertLess(elapsed, 3)
            self.assertEqual(await self.login(checker, "alice", PASSWORDS["alice"]), b"alice")

        return ensureDeferred(run())

    def test_connect_timeout(self) -> None:
        """A directory whose host never completes the TCP handshake (a listener with a full accept queue, whose SYNs
        the kernel drops) is DirectoryDown after [ldap] connect_timeout."""
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        for _ in range(3):
            filler = socket.socket()
            self.addCleanup(filler.close)
            filler.setblocking(False)
            filler.connect_ex(server.getsockname())

        async def run() -> None:
            url = f"ldap://127.0.0.1:{server.getsockname()[1]}"
            checker = self.checker(self.settings(url=url, bind_dn=TEMPLATE, connect_timeout="1s"))
            started = reactor.seconds()
            down = await self.login(checker, "alice", PASSWORDS["alice"])
            self.assertIsInstance(down, DirectoryDown)
            assert isinstance(down, DirectoryDown)
            self.assertEqual(down.why, "no connection within 1s")
            self.assertLess(reactor.seconds() - started, 3)

        return ensureDeferred(run())

    def test_connections_and_queue_are_bounded(self) -> None:
        """With connections = 1 and no queue, a second login while the first talks to the directory is refused at
        once (PoolFull, a 503 with Retry-After: 1) instead of opening another connection."""

        async def run() -> None:
            checker = self.checker(self.settings(bind_dn=TEMPLATE, connections="1"), queue=0)
            first = ensureDeferred(self.login(checker, "alice", PASSWORDS["alice"]))
            second = await self.login(checker, "alice", PASSWORDS["alice"])
            self.assertIsInstance(second, PoolFull)
            self.assertEqual(await first, b"alice")
            self.assertEqual(await self.login(checker, "alice", PASSWORDS["alice"]), b"alice")

        return ensureDeferred(run())

    def test_no_password_is_logged(self) -> None:
        """No log event of a login (right, wrong, outside the group, the service bind, the directory down) holds the
        user's or the service account's password, in its text or its fields."""
        events: list[LogEvent] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        async def run() -> None:
            checker = self.checker(self.settings(**search_mode(group=GROUP)))
            await self.login(checker, "alice", PASSWORDS["alice"])
            await self.login(checker, "bob", PASSWORDS["bob"])
            await self.login(checker, "alice", "wrong-but-secret")
            await self.slapd.stop()
            await self.login(checker, "alice", PASSWORDS["alice"])
            self.assertTrue(any("alice logged in as" in formatEvent(event) for event in events))
            self.assertTrue(any("is not a member of" in formatEvent(event) for event in events))
            self.assertTrue(any("connection refused" in formatEvent(event) for event in events))
            for event in events:
                text = formatEvent(event) + repr(event)
                for secret in (PASSWORDS["alice"], PASSWORDS["bob"], "wrong-but-secret", SERVICE_PASSWORD):
                    self.assertNotIn(secret, text)

        return ensureDeferred(run())


def _basic(user: str, password: str) -> dict[bytes, list[bytes]]:
    return {b"authorization": [b"Basic " + base64.b64encode(f"{user}:{password}".encode())]}


class EnrollDirectoryTests(SlapdTestCase):
    """/enroll through the production site in memory, checking passwords against the real slapd."""

    def memory(self) -> MemorySite:
        settings = self.settings(**search_mode(group=GROUP))
        fields = {field.name: getattr(settings, field.name) for field in dataclasses.fields(Config) if field.name.startswith("ldap_")}
        memory = MemorySite(Path(self.mktemp()), network=reactor, auth_backend="ldap", **fields)
        self.addCleanup(memory.close)
        return memory

    async def fetch(self, memory: MemorySite, user: str, password: str) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        """GET /enroll; the answer comes from the real reactor (slapd), so the in-memory connection is pumped until it arrives."""
        requesting = ensureDeferred(memory.fetch("GET", "/enroll", headers=_basic(user, password)))
        while not requesting.called:
            memory.treq.flush()
            await deferLater(reactor, 0.01, lambda: None)
        return await requesting

    def test_enroll(self) -> None:
        """The right directory password gets the Profile Service; a wrong password, an unknown user and a member
        outside the group all get the same 401 with the Basic challenge and the same body, each a 'login refused'
        event (the group's says so); the users file is not consulted."""

        async def run() -> None:
            memory = self.memory()
            code, headers, _ = await self.fetch(memory, "alice", PASSWORDS["alice"])
            self.assertEqual(code, 200)
            self.assertEqual(headers[b"content-type"], [b"application/x-apple-aspen-config"])
            answers = [await self.fetch(memory, *attempt) for attempt in (("alice", "wrong"), ("zed", "x"), ("bob", PASSWORDS["bob"]))]
            # MemorySite's users file has alice with "correct horse": not used with backend = ldap.
            answers.append(await self.fetch(memory, "alice", "correct horse"))
            for code, headers, body in answers:
                self.assertEqual(code, 401)
                self.assertEqual(headers[b"www-authenticate"], [b'Basic realm="otad"'])
                self.assertEqual(body, b"unknown user or wrong password\n")
            events = [(event.kind, event.outcome, event.user, event.reason) for event in reversed(memory.events())]
            refused = [event for event in events if event[:2] == ("login", "refused")]
            self.assertEqual([event[2] for event in refused], ["alice", "zed", "bob", "alice"])
            self.assertEqual(refused[2][3], f"not a member of {GROUP} from 127.0.0.1")
            self.assertEqual(refused[0][3], "bad password or unknown user from 127.0.0.1")

        return ensureDeferred(run())

    def test_directory_down_is_503_then_recovers(self) -> None:
        """With slapd stopped /enroll answers 503 with Retry-After and a one-line reason (never 401 or 500), and no
        failed login is counted; after slapd restarts the same site logs alice in."""

        async def run() -> None:
            memory = self.memory()
            await self.slapd.stop()
            for _ in range(7):  # more than failures_per_user: none of them counts
                code, headers, body = await self.fetch(memory, "alice", PASSWORDS["alice"])
                self.assertEqual(code, 503)
            self.assertEqual(headers[b"retry-after"], [b"5"])
            self.assertEqual(body, b"the user directory is unavailable (connection refused); try again later\n")
            self.assertEqual([event for event in memory.events() if event.kind == "login"], [])
            await self.slapd.start()
            code, _, _ = await self.fetch(memory, "alice", PASSWORDS["alice"])
            self.assertEqual(code, 200)

        return ensureDeferred(run())


class DirectoryDaemonTests(SlapdTestCase):
    timeout = 180

    def test_daemon_enrolls_directory_user(self) -> None:
        """The real daemon with [auth] backend = ldap (search-then-bind over LDAPS, with the group): no users file and
        no first user are made; the fake iPhone enrolls with alice's directory password through phase 2; bob (outside
        the group) and a wrong password get 401; slapd stopped gives 503, and restarted, alice enrolls again."""

        async def run() -> None:
            data_dir = Path(self.mktemp()).absolute()
            conf = ldap_config(data_dir.parent / "conf", self.slapd, url=self.slapd.ldaps_url, group=GROUP, **search_mode())
            apple = FakeAppleHierarchy.create()
            anchors = data_dir.parent / "anchors.pem"
            anchors.write_bytes(apple.anchors_pem())
            data_dir.mkdir()
            daemon = Daemon(data_dir, ("--config", str(conf), "--device-ca", str(anchors)))
            self.addCleanup(daemon.stop)
            await daemon.start()
            output = daemon.output.decode()
            self.assertIn(f"users: logins at /enroll are checked by the directory {self.slapd.ldaps_url}", output)
            self.assertNotIn("user 'apple'", output)
            self.assertFalse((data_dir / "htpasswd").exists())
            self.assertFalse((data_dir / "first-password").exists())

            ca_pem = (data_dir / "certs" / "ca.pem").read_bytes()
            device = FakeDevice(reactor, daemon.url("/"), ca_pem, apple, "00008030-0011AA22BB33CC44")
            self.addCleanup(lambda: ensureDeferred(device.close()))
            service = await device.enroll("alice", PASSWORDS["alice"])
            profile = await device.phase2(service["PayloadContent"]["Challenge"])
            self.assertEqual(profile["PayloadContent"][0]["PayloadType"], "com.apple.security.scep")
            for user, password in (("bob", PASSWORDS["bob"]), ("alice", "wrong")):
                with self.assertRaises(UnexpectedResponse) as refused:
                    await device.enroll(user, password)
                self.assertEqual(refused.exception.response.code, 401)

            await self.slapd.stop()
            with self.assertRaises(UnexpectedResponse) as down:
                await device.enroll("alice", PASSWORDS["alice"])
            self.assertEqual(down.exception.response.code, 503)
            self.assertIn(b"the user directory is unavailable (connection refused)", down.exception.response.body)
            await self.slapd.start()
            await device.enroll("alice", PASSWORDS["alice"])

            # The daemon's log never shows a password.
            for secret in (PASSWORDS["alice"], PASSWORDS["bob"], SERVICE_PASSWORD):
                self.assertNotIn(secret.encode(), daemon.output)
            self.assertIn(f"directory: alice logged in as {user_dn('alice')}", daemon.output.decode())

        return ensureDeferred(run())

    def test_unreadable_files_stop_the_start(self) -> None:
        """A ca_file or service_password_file that cannot be read stops the daemon's start with one line naming it
        (exit status 1), before any key is made."""

        async def run() -> None:
            for key in ("ca_file", "service_password_file"):
                folder = Path(self.mktemp()).absolute()
                conf = ldap_config(folder, self.slapd, **search_mode(**{key: str(folder / "missing.pem")}))
                data_dir = folder / "data"
                data_dir.mkdir()
                daemon = Daemon(data_dir, ("--config", str(conf)))
                self.addCleanup(daemon.stop)
                with self.assertRaises(DaemonExited) as raised:
                    await daemon.start()
                self.assertIn(
                    f"otad cannot start: [ldap]: cannot read {folder / 'missing.pem'}: No such file or directory", str(raised.exception)
                )
                self.assertEqual(daemon.exit_code, 1)
                self.assertFalse((data_dir / "certs" / "ca.key").exists())

        return ensureDeferred(run())


class DirectoryAdminTests(unittest.TestCase):
    def test_user_commands_refused(self) -> None:
        """With backend = ldap, otad-admin user add, remove and list exit 1 with one line saying the users live in the
        directory, and no users file appears."""
        directory = Path(self.mktemp())
        directory.mkdir()
        conf = directory / "otad.conf"
        conf.write_text(f"[auth]\nbackend = ldap\n[ldap]\nurl = ldaps://ldap.example.org\nbind_dn = {TEMPLATE}\n")
        for argv in (["user", "add", "carol"], ["user", "remove", "carol"], ["user", "list", "--json"]):
            self.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"pw\n")))
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                status = admin.main([*argv, "--config", str(conf), "--data-dir", str(directory)])
            self.assertEqual(status, 1, argv)
            self.assertEqual(out.getvalue(), "")
            self.assertEqual(err.getvalue().count("\n"), 1)
            self.assertIn("users live in the directory ldaps://ldap.example.org", err.getvalue())
        self.assertFalse((directory / "htpasswd").exists())


class DirectoryConfigTests(unittest.TestCase):
    def load(self, text: str) -> Config:
        path = Path(self.mktemp())
        path.write_text(text)
        return config.load(path)

    def test_settings_checked(self) -> None:
        """[ldap] settings are checked when backend = ldap: a URL, exactly one bind mode, the service account for
        search, {user} in templates, valid DNs and filters; each error names its key on one line."""
        good = self.load(f"[auth]\nbackend = ldap\n[ldap]\nurl = ldaps://ldap.example.org:1636/\nbind_dn = {TEMPLATE}\n")
        self.assertEqual((good.ldap_url, good.ldap_bind_dn, good.ldap_timeout), ("ldaps://ldap.example.org:1636", TEMPLATE, 10))
        cases = {
            "[auth]\nbackend = ldap\n": "[ldap] url",
            "[auth]\nbackend = ldap\n[ldap]\nurl = ldaps://h\n": "[ldap] bind_dn",
            f"[auth]\nbackend = ldap\n[ldap]\nurl = ldaps://h\nbind_dn = {TEMPLATE}\nsearch_base = {PEOPLE}\n": "[ldap] bind_dn",
            f"[auth]\nbackend = ldap\n[ldap]\nurl = ldaps://h\nsearch_base = {PEOPLE}\n": "[ldap] service_dn",
            "[ldap]\nurl = http://h\n": "[ldap] url",
            "[ldap]\nurl = ldap://h:99999\n": "[ldap] url",
            f"[ldap]\nbind_dn = {PEOPLE}\n": "[ldap] bind_dn",
            "[ldap]\nbind_dn = uid={user},,dc=x\n": "[ldap] bind_dn",
            "[ldap]\nbind_dn = uid={user},{base}\n": "[ldap] bind_dn",
            "[ldap]\nsearch_filter = uid={user}\n": "[ldap] search_filter",
            "[ldap]\nsearch_filter = (uid=x)\n": "[ldap] search_filter",
            "[ldap]\ngroup = garbage\n": "[ldap] group",
            "[ldap]\ngroup_attribute = memberOf\n": "[ldap] group_attribute",
            "[auth]\nbackend = kerberos\n": "[auth] backend",
        }
        for text, key in cases.items():
            error = self.assertRaises(config.ConfigError, self.load, text)
            self.assertIn(key, str(error), text)
            self.assertNotIn("\n", str(error))
        # With the default backend the [ldap] section's completeness is not required.
        self.assertEqual(self.load("[ldap]\nurl = ldaps://h\n").auth_backend, "htpasswd")
