"""Tests for ``otad-admin backup`` and ``restore``: in process on a store and certs/ in a temporary data directory,
and end to end with the real daemon enrolling devices while it is backed up."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import sqlite3
import stat
import sys
import tarfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from otad import admin, users
from otad.store import Store
from tests.daemon import Daemon
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice
from tests.helpers import authority

OTAD_ADMIN = str(Path(sys.executable).parent / "otad-admin")


@functools.cache
def apple() -> FakeAppleHierarchy:
    return FakeAppleHierarchy.create()


def _admin(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = admin.main(list(argv))
    return status, out.getvalue(), err.getvalue()


class BackupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.data_dir = Path(self.mktemp()).absolute()
        shutil.copytree(authority().certs_dir, self.data_dir / "certs")
        self.store = Store.open(self.data_dir / "otad.sqlite")
        self.addCleanup(self.store.close)
        with self.store.transaction():
            self.store.record_device("00008101-000A1B2C3D4E5F00", "alice", {"PRODUCT": "iPhone15,2"}, now=time.time())
        users.set_password(self.data_dir / "htpasswd", b"alice", b"secret", rounds=4)
        self.target = Path(self.mktemp()).absolute()
        self.target.mkdir()

    def backup(self, name: str = "otad.tar") -> Path:
        path = self.target / name
        status, out, err = _admin("--data-dir", str(self.data_dir), "backup", str(path))
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"backed up {self.data_dir} to {path} (mode 0600;", out)
        return path

    def test_archive_holds_the_state_and_is_private(self) -> None:
        """The archive (mode 0600 whatever the umask) holds a snapshot of the database, every file of certs/ with the private
        keys, and the users file; the database's -wal and -shm files and old upgrade copies are not in it."""
        (self.data_dir / "otad.sqlite.v1.bak").write_bytes(b"old")
        old_umask = os.umask(0o022)
        self.addCleanup(os.umask, old_umask)
        path = self.backup("otad.tar.gz")
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        with tarfile.open(path) as archive:
            names = archive.getnames()
            certs = sorted(p.relative_to(self.data_dir).as_posix() for p in (self.data_dir / "certs").iterdir())
            self.assertEqual(sorted(names), sorted(["otad.sqlite", "certs", *certs, "htpasswd"]))
            self.assertIn("certs/ca.key", names)
            self.assertEqual(archive.getmember("certs/ca.key").mode & 0o077, 0)
            snapshot = Path(self.mktemp())
            snapshot.write_bytes(archive.extractfile("otad.sqlite").read())  # type: ignore[union-attr]
        copy = sqlite3.connect(snapshot)
        self.addCleanup(copy.close)
        self.assertEqual(copy.execute("SELECT udid FROM devices").fetchall(), [("00008101-000A1B2C3D4E5F00",)])
        self.assertEqual([p.name for p in self.target.iterdir()], ["otad.tar.gz"])

    def test_restore_into_a_new_directory(self) -> None:
        """restore recreates the data directory (0700, keys 0600) that otad-admin then reads as the original."""
        path = self.backup()
        restored = Path(self.mktemp()).absolute() / "new"
        status, out, err = _admin("restore", str(path), str(restored))
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"into {restored}; start otad with --data-dir {restored}", out)
        self.assertEqual(stat.S_IMODE(restored.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE((restored / "certs" / "ca.key").stat().st_mode), 0o600)
        self.assertEqual((restored / "certs" / "ca.key").read_bytes(), (self.data_dir / "certs" / "ca.key").read_bytes())
        self.assertEqual(users.parse((restored / "htpasswd").read_bytes()).keys(), {b"alice"})
        status, out, _ = _admin("--data-dir", str(restored), "devices", "--json")
        self.assertEqual([device["udid"] for device in json.loads(out)], ["00008101-000A1B2C3D4E5F00"])
        self.assertEqual([p.name for p in restored.parent.iterdir()], ["new"])

    def test_restore_refusals(self) -> None:
        """restore refuses, in one line and writing nothing: a non-empty target, a file that is not an otad backup, a truncated
        archive, an archive with a path out of the target or a link, and a damaged database."""
        path = self.backup()
        busy = Path(self.mktemp()).absolute()
        busy.mkdir()
        (busy / "otad.sqlite").write_bytes(b"precious")

        def archive_with(name: str, *, link: bool = False, database: bytes | None = None) -> Path:
            made = Path(self.mktemp()).absolute()
            with tarfile.open(path) as source, tarfile.open(made, "w") as archive:
                for member in source.getmembers():
                    data = source.extractfile(member) if member.isfile() else None
                    if member.name == "otad.sqlite" and database is not None:
                        member.size = len(database)
                        data = io.BytesIO(database)
                    archive.addfile(member, data)
                extra = tarfile.TarInfo(name)
                if link:
                    extra.type, extra.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    archive.addfile(extra)
                elif name:
                    extra.size = 1
                    archive.addfile(extra, io.BytesIO(b"x"))
            return made

        not_backup = Path(self.mktemp())
        with tarfile.open(not_backup, "w") as archive:
            archive.add(self.data_dir / "htpasswd", "htpasswd")
        garbage = Path(self.mktemp())
        garbage.write_bytes(b"not a tar file at all")
        truncated = Path(self.mktemp())
        truncated.write_bytes(self.backup("whole.tar.gz").read_bytes()[:3000])
        for archive_path, target, reason in [
            (truncated, None, "truncated or damaged"),
            (path, busy, "is not an empty directory"),
            (not_backup, None, "is not an otad backup: it has no otad.sqlite"),
            (garbage, None, "cannot read the backup"),
            (archive_with("../escaped"), None, "unsafe member"),
            (archive_with("certs/evil", link=True), None, "neither a file nor a directory"),
            (archive_with("", database=b"SQLite format 3\x00" + b"\x00" * 200), None, "not a usable database"),
        ]:
            destination = target or Path(self.mktemp()).absolute() / "new"
            status, out, err = _admin("restore", str(archive_path), str(destination))
            self.assertEqual((status, out), (1, ""), reason)
            self.assertTrue(err.startswith("otad-admin: ") and err.count("\n") == 1, err)
            self.assertIn(reason, err)
            if target is None:
                self.assertEqual(list(destination.parent.iterdir()) if destination.parent.exists() else [], [])
        self.assertEqual((busy / "otad.sqlite").read_bytes(), b"precious")

    def test_backup_refusals(self) -> None:
        """backup refuses to write into the data directory it copies, and needs a data directory otad has started in."""
        status, _, err = _admin("--data-dir", str(self.data_dir), "backup", str(self.data_dir / "x.tar"))
        self.assertEqual(status, 1)
        self.assertIn("is inside the data directory", err)
        empty = Path(self.mktemp()).absolute()
        empty.mkdir()
        status, _, err = _admin("--data-dir", str(empty), "backup", str(self.target / "x.tar"))
        self.assertEqual(status, 1)
        self.assertIn("no state database", err)
        self.assertEqual(list(self.target.iterdir()), [])


class LiveBackupTests(unittest.TestCase):
    timeout = 240

    async def run_admin(self, *argv: str) -> str:
        out, err, code = await getProcessOutputAndValue(OTAD_ADMIN, argv, env={"PATH": "/usr/bin:/bin"}, reactor=reactor)
        self.assertEqual(code, 0, err)
        return out.decode()

    async def enroll(self, daemon: Daemon, udid: str, password: str) -> FakeDevice:
        device = FakeDevice(reactor, daemon.url("/"), (daemon.data_dir / "certs" / "ca.pem").read_bytes(), apple(), udid)
        self.addCleanup(lambda: ensureDeferred(device.close()))
        service = await device.enroll("apple", password)
        enrollment = await device.phase2(service["PayloadContent"]["Challenge"])
        await device.scep_enroll(enrollment["PayloadContent"][0])
        await device.phase3()
        return device

    def test_backup_while_enrolling_then_restore_and_enroll(self) -> None:
        """Backed up while the daemon runs and devices enroll (none of them fails), restored into a new data directory, a new
        daemon there has the old devices and certificates (otad-admin devices and certs list), serves phase 3 to an old
        device on its old certificate, and enrolls a new device."""

        async def run() -> None:
            folder = Path(self.mktemp()).absolute()
            (folder / "old").mkdir(parents=True)
            (folder / "anchors.pem").write_bytes(apple().anchors_pem())
            extra = ("--device-ca", str(folder / "anchors.pem"))
            daemon = Daemon(folder / "old", extra)
            self.addCleanup(daemon.stop)
            await daemon.start()
            password = daemon.first_password
            assert password is not None
            first = await self.enroll(daemon, "00008101-000A1B2C3D4E5F10", password)

            archive = folder / "otad-backup.tar.gz"
            busy = [ensureDeferred(self.enroll(daemon, f"00008101-000A1B2C3D4E5F1{n}", password)) for n in range(1, 4)]
            backed_up = ensureDeferred(self.run_admin("--data-dir", str(daemon.data_dir), "backup", str(archive)))
            results = await DeferredList([backed_up, *busy], consumeErrors=True)
            self.assertEqual([ok for ok, _ in results], [True] * 4, [str(value) for ok, value in results if not ok])
            self.assertIn("(mode 0600;", results[0][1])
            self.assertEqual(stat.S_IMODE(archive.stat().st_mode), 0o600)
            await daemon.stop()

            restored = folder / "new"
            out = await self.run_admin("restore", str(archive), str(restored))
            self.assertIn(f"into {restored}", out)
            old_certs = json.loads(await self.run_admin("--data-dir", str(daemon.data_dir), "certs", "list", "--json"))
            again = Daemon(restored, extra)
            self.addCleanup(again.stop)
            await again.start()
            self.assertIsNone(again.first_password)
            self.assertEqual((restored / "certs" / "ca.pem").read_bytes(), (folder / "old" / "certs" / "ca.pem").read_bytes())

            devices = json.loads(await self.run_admin("--data-dir", str(restored), "devices", "--json"))
            self.assertIn("00008101-000A1B2C3D4E5F10", [device["udid"] for device in devices])
            certs = json.loads(await self.run_admin("--data-dir", str(restored), "certs", "list", "--json"))
            assert first.scep_identity is not None
            serial = format(first.scep_identity[0].serial_number, "x")
            self.assertIn(serial, [cert["serial"] for cert in certs])
            # Whatever the backup caught of the enrollments under way is a prefix of what the old daemon had.
            self.assertEqual(certs, old_certs[: len(certs)])

            moved = FakeDevice(reactor, again.url("/"), (restored / "certs" / "ca.pem").read_bytes(), apple(), first.udid)
            self.addCleanup(lambda: ensureDeferred(moved.close()))
            moved.scep_identity = first.scep_identity
            outer, _ = await moved.phase3()
            self.assertEqual(outer["PayloadType"], "Configuration")
            await self.enroll(again, "00008101-000A1B2C3D4E5F20", password)
            devices = json.loads(await self.run_admin("--data-dir", str(restored), "devices", "--json"))
            self.assertIn("00008101-000A1B2C3D4E5F20", [device["udid"] for device in devices])

        return ensureDeferred(run())
