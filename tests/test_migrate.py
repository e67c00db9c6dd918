"""``otad-admin store migrate --to postgresql://...``: a SQLite store that served real enrollments, and its certs/,
copied into PostgreSQL, where another daemon carries on with the same devices and the same CA."""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.trial import unittest

from otad import admin
from otad.ca import OWN_FILES
from otad.store import Store
from otad.store.migrate import TABLES
from tests import postgres
from tests.daemon import Daemon
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice
from tests.stores import raw


@functools.cache
def apple() -> FakeAppleHierarchy:
    return FakeAppleHierarchy.create()


def run_admin(*args: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = admin.main(list(args))
    return status, out.getvalue() + err.getvalue()


def rows(location: Path | str, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` with every column, in a fixed order, as the driver returns them."""
    columns = [row[1] for row in raw(location, f"PRAGMA table_info({table})")] if isinstance(location, Path) else None
    if columns is None:
        columns = [
            name
            for (name,) in raw(
                location,
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
                (table,),
            )
        ]
    names = ", ".join(f'"{column}"' for column in sorted(columns))
    return sorted(
        (tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in raw(location, f"SELECT {names} FROM {table}")),
        key=repr,
    )


class MigrateTests(unittest.TestCase):
    timeout = 300

    def daemon(self, data_dir: Path, config: str = "") -> Daemon:
        (data_dir / "anchors.pem").write_bytes(apple().anchors_pem())
        (data_dir / "otad.conf").write_text(config)
        daemon = Daemon(data_dir, ("--config", str(data_dir / "otad.conf"), "--device-ca", str(data_dir / "anchors.pem")))
        self.addCleanup(daemon.stop)
        return daemon

    def device(self, daemon: Daemon, udid: str) -> FakeDevice:
        device = FakeDevice(reactor, daemon.url("/"), (daemon.data_dir / "certs" / "ca.pem").read_bytes(), apple(), udid)
        self.addCleanup(lambda: ensureDeferred(device.close()))
        return device

    def test_sqlite_store_moves_to_postgresql(self) -> Deferred[None]:
        """A SQLite daemon enrolls a device (all phases) and half of another, refuses a wrong password, and otad-admin
        adds a static challenge; a held SCEP request is added once it stops. Then migrate copies every table row for
        row (ids, bytes, times, the user column) and certs/ into PostgreSQL. A daemon with a new, empty data directory
        on that database takes the CA from it, recognises the migrated device in phase 3, and enrolls a new device with
        ids that continue after the copied ones. A second migrate into the same database is refused and changes
        nothing."""

        async def run() -> None:
            old_dir = Path(self.mktemp()).absolute()
            old_dir.mkdir(parents=True)
            old = self.daemon(old_dir)
            await old.start()
            password = old.first_password
            assert password is not None
            enrolled = self.device(old, "00008101-0000000000A0B0C1")
            await enrolled.fetch_ca()
            service = await enrolled.enroll("apple", password)
            payload = (await enrolled.phase2(service["PayloadContent"]["Challenge"]))["PayloadContent"][0]
            await enrolled.scep_enroll(payload)
            await enrolled.phase3()
            halfway = self.device(old, "00008101-0000000000A0B0C2")
            await halfway.phase2((await halfway.enroll("apple", password))["PayloadContent"]["Challenge"])
            await halfway.request(b"GET", "/enroll", username="apple", password="wrong")
            self.assertEqual(run_admin("--data-dir", str(old_dir), "challenge", "create", "--uses", "3")[0], 0)
            await old.stop()
            sqlite_path = old_dir / "otad.sqlite"
            store = Store.open_existing(sqlite_path)
            store.hold_request(transaction_id="HELD-1", udid=None, subject="CN=held", csr=b"csr", challenge_id=None, now=5.0)
            store.close()

            location = postgres.new_database()
            status, output = run_admin("--data-dir", str(old_dir), "store", "migrate", "--to", location)
            self.assertEqual(status, 0, output)
            self.assertIn("certificates 1", output)
            for table in TABLES:
                if table == "ca_files":
                    continue
                copied = rows(sqlite_path, table)
                self.assertTrue(copied or table == "ca_files", f"the test should give {table} rows")
                self.assertEqual(rows(location, table), copied, table)
            stored = {name: bytes(content) for name, content in raw(location, "SELECT name, content FROM ca_files")}
            self.assertEqual(stored, {name: (old_dir / "certs" / name).read_bytes() for name in OWN_FILES})

            new_dir = Path(self.mktemp()).absolute()
            new_dir.mkdir(parents=True)
            new = self.daemon(new_dir, f"[store]\nurl = {location}\n")
            await new.start()
            self.assertEqual((new_dir / "certs" / "ca.pem").read_bytes(), (old_dir / "certs" / "ca.pem").read_bytes())
            moved = self.device(new, enrolled.udid)
            moved.scep_identity = enrolled.scep_identity
            await moved.phase3()
            newcomer = self.device(new, "00008101-0000000000A0B0C3")
            new_password = new.first_password
            assert new_password is not None
            newcomer_payload = await newcomer.phase2((await newcomer.enroll("apple", new_password))["PayloadContent"]["Challenge"])
            await newcomer.scep_enroll(newcomer_payload["PayloadContent"][0])
            [(copied_challenges,)] = raw(sqlite_path, "SELECT MAX(id) FROM challenges")
            [(newest,)] = raw(location, "SELECT MAX(id) FROM challenges")
            self.assertGreater(newest, copied_challenges)
            [(deliveries,)] = raw(location, "SELECT COUNT(*) FROM deliveries")
            self.assertEqual(deliveries, 2)

            before = rows(location, "certificates")
            status, output = run_admin("--data-dir", str(old_dir), "store", "migrate", "--to", location)
            self.assertEqual(status, 1)
            self.assertIn("already holds challenges", output)
            self.assertEqual(rows(location, "certificates"), before)

        return ensureDeferred(run())

    def test_refusals(self) -> None:
        """migrate wants a postgresql:// target and a SQLite source, and names what is wrong in one line."""
        data_dir = Path(self.mktemp()).absolute()
        data_dir.mkdir()
        Store.open(data_dir / "otad.sqlite").close()
        status, output = run_admin("--data-dir", str(data_dir), "store", "migrate", "--to", str(data_dir / "other.sqlite"))
        self.assertEqual((status, output.strip()), (1, "otad-admin: --to must be a postgresql:// URL"))
        config = data_dir / "otad.conf"
        config.write_text(f"[store]\nurl = {postgres.new_database()}\n")
        status, output = run_admin("--data-dir", str(data_dir), "--config", str(config), "store", "migrate", "--to", "postgresql:///x")
        self.assertEqual(status, 1)
        self.assertIn("already PostgreSQL", output)
        status, output = run_admin("--data-dir", str(data_dir), "store", "migrate", "--to", "postgresql://otad:pw@127.0.0.1:1/x")
        self.assertEqual(status, 1)
        self.assertIn("cannot connect to the state database postgresql://otad@127.0.0.1:1/x", output)
        self.assertNotIn("pw", output.replace("postgresql", ""))

    def test_every_table_is_copied(self) -> None:
        """migrate's list of tables is the schema's: a table added by an upgrade script cannot be left behind."""
        path = Path(self.mktemp())
        Store.open(path).close()
        tables = {name for (name,) in raw(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.assertEqual(tables - {"schema_version"}, set(TABLES))
