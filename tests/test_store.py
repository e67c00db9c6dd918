"""Tests for otad.store on both engines: schema versions, challenges (expiry, single use, hashing), events, and the
decisions that must be taken once when several connections (several otad instances) race for them.

``StoreContract`` holds what both engines must do alike; ``SQLiteStoreTests`` and
``PostgreSQLStoreTests`` run it, each with what only its engine has (WAL and the copy aside;
the advisory lock, retries after a lost connection, the database going away).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from twisted.trial import unittest

from otad import tokens
from otad.store import NEWEST_SCHEMA, ChallengeRefused, DuplicateSerial, Store, StoreError, StoreUnavailable, open_database
from otad.store.postgresql import PostgreSQLDatabase
from tests import postgres
from tests.stores import PostgreSQLStore, SQLiteStore, raw


def add_certificate(store: Store, serial: str, now: float = 1.0) -> None:
    store.add_certificate(
        serial=serial,
        udid="UDID1",
        subject="CN=x",
        not_before=0.0,
        not_after=1e12,
        der=b"\x30\x00" + serial.encode(),
        csr=None,
        challenge_id=None,
        transaction_id=None,
        now=now,
    )


class Race:
    """Two connections: ``first`` runs in a transaction on one, and waits before committing until ``second``,
    started on the other, has had time to block on it (PostgreSQL: until the server shows it waiting for a lock)."""

    def __init__(self, test: StoreContract) -> None:
        self.test = test
        self.waited_on_lock = False

    def run(self, first: Callable[[Store], Any], second: Callable[[Store], Any]) -> tuple[Any, Any]:
        one, two = self.test.open_another(), self.test.open_another()
        results: dict[str, Any] = {}
        inside = threading.Event()

        def run_second() -> None:
            inside.wait(10)
            try:
                results["second"] = second(two)
            except Exception as error:  # the test looks at what it raised
                results["second"] = error

        thread = threading.Thread(target=run_second)
        thread.start()
        try:
            with one.transaction():
                results["first"] = first(one)
                inside.set()
                self.waited_on_lock = self.test.wait_until_blocked()
            thread.join(20)
        finally:
            one.close()
            two.close()
        self.test.assertFalse(thread.is_alive())
        return results["first"], results["second"]


class StoreContract:
    """What every engine's store does; mixed into a TestCase with an engine mixin."""

    location: Path | str
    store: Store

    # TestCase's, provided by the class this is mixed into.
    assertEqual: Any
    assertRaises: Any
    assertFalse: Any
    assertTrue: Any
    assertIsInstance: Any
    addCleanup: Any
    mktemp: Any
    store_location: Any

    def setUp(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        self.location = self.store_location(data_dir)
        self.store = Store.open(self.location)
        self.addCleanup(lambda: self.store.close())

    def open_another(self) -> Store:
        """A second connection to the same database, as another otad instance (or otad-admin) has."""
        return Store.open_existing(self.location)

    def wait_until_blocked(self) -> bool:
        """Give the racing connection time to block; True if it was seen waiting for a lock."""
        time.sleep(0.3)
        return False

    def test_reopen_keeps_data(self) -> None:
        """Reopening a database keeps its rows and does not re-run upgrades."""
        self.store.record_event(now=1.0, kind="enroll", outcome="ok", user="u")
        version = self.store.schema_version()
        self.store.close()
        self.store = Store.open(self.location)
        self.assertEqual(self.store.schema_version(), version)
        self.assertEqual(version, NEWEST_SCHEMA)
        self.assertEqual([e.user for e in self.store.events()], ["u"])

    def test_newer_schema_refused(self) -> None:
        """A database written by a newer otad is refused rather than mangled, by the daemon and by tools."""
        raw(self.location, "INSERT INTO schema_version (version, applied) VALUES (999, 0)")
        for opener in (Store.open, Store.open_existing):
            error = self.assertRaises(StoreError, opener, self.location)
            self.assertIn("999", str(error))

    def test_challenge_single_use(self) -> None:
        """A challenge is consumed once; the second use is refused as already used."""
        token, digest = tokens.mint()
        self.store.add_challenge(digest, "enroll", "alice", now=100.0, ttl=60)
        challenge = self.store.consume_challenge(tokens.digest(token), ("enroll",), now=110.0)
        self.assertEqual(challenge.bound_to, "alice")
        error = self.assertRaises(ChallengeRefused, self.store.consume_challenge, digest, ("enroll",), now=111.0)
        self.assertEqual(str(error), "challenge already used")

    def test_challenge_expiry(self) -> None:
        """A challenge used at or after its expiry is refused as expired, and its use is not counted."""
        _, digest = tokens.mint()
        self.store.add_challenge(digest, "enroll", "alice", now=100.0, ttl=60)
        error = self.assertRaises(ChallengeRefused, self.store.consume_challenge, digest, ("enroll",), now=160.0)
        self.assertEqual(str(error), "challenge expired")
        [stored] = self.store.challenges(("enroll",))
        self.assertEqual(stored.uses_left, 1)

    def test_challenge_kind(self) -> None:
        """A challenge of another kind is as good as unknown: a SCEP challenge can't pass as a phase-1 one."""
        _, digest = tokens.mint()
        self.store.add_challenge(digest, "scep", "UDID1", now=100.0, ttl=60)
        error = self.assertRaises(ChallengeRefused, self.store.consume_challenge, digest, ("enroll",), now=101.0)
        self.assertEqual(str(error), "unknown challenge")

    def test_challenge_with_several_uses(self) -> None:
        """A static challenge created with N uses works N times; ids come from the database, in order."""
        _, digest = tokens.mint()
        _, other = tokens.mint()
        first = self.store.add_challenge(digest, "static", None, now=0.0, ttl=1000, uses=2)
        self.assertEqual(self.store.add_challenge(other, "static", None, now=0.0, ttl=1000), first + 1)
        self.store.consume_challenge(digest, ("static",), now=1.0)
        self.store.consume_challenge(digest, ("static",), now=2.0)
        self.assertRaises(ChallengeRefused, self.store.consume_challenge, digest, ("static",), now=3.0)

    def test_transaction_rolls_back(self) -> None:
        """An exception inside a transaction undoes every step in it, including nested ones."""
        _, digest = tokens.mint()

        def failing() -> None:
            with self.store.transaction():
                self.store.add_challenge(digest, "enroll", "alice", now=0.0, ttl=10)
                self.store.record_event(now=0.0, kind="enroll", outcome="ok")
                raise RuntimeError("boom")

        self.assertRaises(RuntimeError, failing)
        self.assertEqual(self.store.events(), [])
        self.assertRaises(ChallengeRefused, self.store.consume_challenge, digest, ("enroll",), now=1.0)

    def test_purge(self) -> None:
        """Long-expired challenges are purged, live ones are kept."""
        _, old = tokens.mint()
        _, live = tokens.mint()
        self.store.add_challenge(old, "enroll", "a", now=0.0, ttl=10)
        self.store.add_challenge(live, "enroll", "a", now=100000.0, ttl=10)
        self.assertEqual(self.store.purge_challenges(now=100001.0), 1)
        self.store.consume_challenge(live, ("enroll",), now=100002.0)

    def test_events_newest_first(self) -> None:
        """events() lists the newest first, with every field kept, a user name too (a reserved word in SQL)."""
        self.store.record_event(now=1.0, kind="enroll", outcome="challenge issued", user="a")
        self.store.record_event(now=2.5, kind="profile", outcome="refused", udid="U", reason="bad signature")
        newest, oldest = self.store.events()
        self.assertEqual((newest.at, newest.kind, newest.udid, newest.reason), (2.5, "profile", "U", "bad signature"))
        self.assertEqual(oldest.user, "a")

    def test_values_round_trip(self) -> None:
        """Timestamps keep full double precision, DER bytes and JSON attributes come back as written."""
        now = 1_764_000_000.123456
        add_certificate(self.store, "abc", now=now)
        record = self.store.certificate("abc")
        assert record is not None
        self.assertEqual((record.issued, record.der, record.not_after), (now, b"\x30\x00abc", 1e12))
        self.store.record_device("UDID1", "alice", {"PRODUCT": "iPhone", "VERSION": 17}, now=now)
        device = self.store.device("UDID1")
        assert device is not None
        self.assertEqual((device.user, device.attributes, device.last_seen), ("alice", {"PRODUCT": "iPhone", "VERSION": 17}, now))

    def test_login_failures_counted_per_address_and_user(self) -> None:
        """Failures count per address and per user from it; a window that has passed starts the count again."""
        for now in (10.0, 11.0):
            self.store.record_login_failure("192.0.2.1", "bob", now=now, window=100)
        wait = self.store.login_wait("192.0.2.1", "bob", now=12.0, window=100, per_address=10, per_user=2)
        self.assertEqual(wait, 98.0)
        self.assertEqual(self.store.login_wait("192.0.2.1", "carol", now=12.0, window=100, per_address=10, per_user=2), 0.0)
        self.store.record_login_failure("192.0.2.1", "bob", now=200.0, window=100)
        self.assertEqual(self.store.login_wait("192.0.2.1", "bob", now=201.0, window=100, per_address=10, per_user=2), 0.0)

    def test_duplicate_serial(self) -> None:
        """A serial already recorded is refused with DuplicateSerial, and the first record stays."""
        add_certificate(self.store, "1234")
        self.assertRaises(DuplicateSerial, add_certificate, self.store, "1234", 2.0)
        self.assertEqual([record.issued for record in self.store.certificates()], [1.0])

    # -- races between two connections: the decisions that are taken once -------------------

    def test_challenge_consumed_once_by_racing_connections(self) -> None:
        """Two connections use a one-use challenge at once: the second one, which read it before the first
        committed, is refused as already used, and the challenge has no use left."""
        _, digest = tokens.mint()
        self.store.add_challenge(digest, "scep", "UDID1", now=0.0, ttl=100)
        race = Race(self)
        first, second = race.run(
            lambda store: store.consume_challenge(digest, ("scep",), now=1.0),
            lambda store: store.consume_challenge(digest, ("scep",), now=1.0),
        )
        self.assertEqual(first.bound_to, "UDID1")
        self.assertIsInstance(second, ChallengeRefused)
        self.assertEqual(str(second), "challenge already used")
        self.assertEqual([challenge.uses_left for challenge in self.store.challenges()], [0])
        self.check_raced(race)

    def test_challenge_uses_never_overspent(self) -> None:
        """Twelve connections at once on a five-use challenge: exactly five succeed."""
        _, digest = tokens.mint()
        self.store.add_challenge(digest, "static", None, now=0.0, ttl=100, uses=5)
        stores = [self.open_another() for _ in range(12)]
        for store in stores:
            self.addCleanup(store.close)
        start = threading.Barrier(len(stores))
        outcomes: list[str] = []

        def use(store: Store) -> None:
            start.wait(10)
            try:
                store.consume_challenge(digest, ("static",), now=1.0)
                outcomes.append("used")
            except ChallengeRefused as refused:
                outcomes.append(str(refused))

        threads = [threading.Thread(target=use, args=(store,)) for store in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(sorted(outcomes), ["challenge already used"] * 7 + ["used"] * 5)

    def test_serial_recorded_once_by_racing_connections(self) -> None:
        """Two connections record the same serial at once: the second waits for the first and gets DuplicateSerial."""
        race = Race(self)
        _, second = race.run(lambda store: add_certificate(store, "beef"), lambda store: add_certificate(store, "beef", 2.0))
        self.assertIsInstance(second, DuplicateSerial)
        self.assertEqual([record.issued for record in self.store.certificates()], [1.0])
        self.check_raced(race)

    def test_repeat_decision_sees_the_racing_delivery(self) -> None:
        """Phase 3's repeat decision: a second transaction counting deliveries while the first delivers waits
        for it and counts its delivery, so only one of them can be "the first delivery"."""
        add_certificate(self.store, "cafe")

        def deliver(store: Store) -> int:
            with store.transaction():
                seen = store.delivery_count("cafe")
                store.record_delivery(serial="cafe", udid="UDID1", profile_identifier="p", template="t", now=1.0)
                return seen

        race = Race(self)
        first, second = race.run(deliver, deliver)
        self.assertEqual((first, second), (0, 1))
        self.assertEqual(self.store.delivery_count("cafe"), 2)
        self.check_raced(race)

    def test_approval_decided_once_by_racing_connections(self) -> None:
        """An approval and a rejection at once: the one that comes second finds the request decided; an approved
        request is marked issued once."""
        self.assertTrue(self.store.hold_request(transaction_id="T1", udid="U", subject="CN=x", csr=b"csr", challenge_id=None, now=0.0))
        self.assertFalse(self.store.hold_request(transaction_id="T1", udid="U", subject="CN=y", csr=b"csr", challenge_id=None, now=1.0))
        race = Race(self)
        first, second = race.run(
            lambda store: store.decide_request("T1", approve=True, now=1.0),
            lambda store: store.decide_request("T1", approve=False, now=1.0),
        )
        self.assertEqual((first, second), (True, False))
        held = self.store.held_request("T1")
        assert held is not None
        self.assertEqual((held.status, held.subject), ("approved", "CN=x"))
        self.check_raced(race)
        add_certificate(self.store, "aa")
        add_certificate(self.store, "bb")
        race = Race(self)
        first, second = race.run(lambda store: store.mark_issued("T1", "aa"), lambda store: store.mark_issued("T1", "bb"))
        self.assertEqual((first, second), (True, False))
        held = self.store.held_request("T1")
        assert held is not None
        self.assertEqual((held.status, held.serial), ("issued", "aa"))

    def check_raced(self, race: Race) -> None:
        """Engines that can show it: the second connection really waited on the first."""


class SQLiteStoreTests(SQLiteStore, StoreContract, unittest.TestCase):
    def test_wal(self) -> None:
        """A new SQLite database is in WAL mode (otad-admin can read and write while the daemon runs)."""
        mode = sqlite3.connect(self.location).execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")

    def downgrade_to_v2(self) -> None:
        """Make the database look like one written by an otad whose newest schema was version 2."""
        self.store.record_event(now=1.0, kind="enroll", outcome="ok", user="before")
        self.store.close()
        raw_db = sqlite3.connect(self.location)
        raw_db.execute("ALTER TABLE challenges DROP COLUMN revoked")
        raw_db.execute("DROP TABLE login_failures")
        raw_db.execute("DROP TABLE crls")
        raw_db.execute("DROP TABLE ca_files")
        raw_db.execute("DROP INDEX certificates_revoked")
        raw_db.execute("DROP INDEX certificates_transaction")
        raw_db.execute("DELETE FROM schema_version WHERE version > 2")
        raw_db.commit()
        raw_db.close()

    def test_open_upgrades_after_copying_aside(self) -> None:
        """The daemon's open upgrades an older database after copying it to otad.sqlite.v2.bak, which still holds
        the old schema and every row; the upgraded one keeps the rows too."""
        self.downgrade_to_v2()
        self.store = Store.open(self.location)
        self.assertEqual(self.store.schema_version(), NEWEST_SCHEMA)
        self.assertEqual([event.user for event in self.store.events()], ["before"])
        path = Path(self.location)
        backup = path.with_name(f"{path.name}.v2.bak")
        self.assertEqual(raw(backup, "SELECT MAX(version) FROM schema_version"), [(2,)])
        self.assertEqual(raw(backup, 'SELECT "user" FROM events'), [("before",)])

    def test_open_existing_never_upgrades(self) -> None:
        """A tool's open_existing refuses an older database, saying to restart the daemon, and leaves it as it was;
        it also refuses a path with no database instead of creating one."""
        self.downgrade_to_v2()
        error = self.assertRaises(StoreError, Store.open_existing, self.location)
        self.assertIn("schema version 2 and this otad needs", str(error))
        self.assertIn("restart the daemon", str(error))
        self.assertEqual(raw(self.location, "SELECT MAX(version) FROM schema_version"), [(2,)])
        missing = Path(self.location).with_name("missing.sqlite")
        self.assertIn("no state database", str(self.assertRaises(StoreError, Store.open_existing, missing)))
        self.assertFalse(missing.exists())
        self.store = Store.open(self.location)

    def test_tokens_are_stored_hashed(self) -> None:
        """The database holds the token's digest, never the token."""
        token, digest = tokens.mint()
        self.store.add_challenge(digest, "enroll", "alice", now=0.0, ttl=10)
        path = Path(self.location)
        self.assertNotIn(token.encode(), path.read_bytes() + Path(f"{path}-wal").read_bytes())
        self.assertGreaterEqual(len(token), 22)  # at least 128 bits in URL-safe base64


def _columns_sqlite(location: Path | str) -> dict[str, dict[str, tuple[str, bool]]]:
    tables = [name for (name,) in raw(location, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    kinds = {"INTEGER": "integer", "REAL": "float", "BLOB": "bytes", "TEXT": "text"}
    return {
        table: {row[1]: (kinds[row[2]], bool(row[3]) or bool(row[5])) for row in raw(location, f"PRAGMA table_info({table})")}
        for table in tables
    }


def _columns_postgresql(location: Path | str) -> dict[str, dict[str, tuple[str, bool]]]:
    kinds = {"bigint": "integer", "double precision": "float", "bytea": "bytes", "text": "text"}
    columns: dict[str, dict[str, tuple[str, bool]]] = {}
    for table, column, kind, nullable in raw(
        location,
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
    ):
        columns.setdefault(table, {})[column] = (kinds[kind], nullable == "NO")
    return columns


class PostgreSQLStoreTests(PostgreSQLStore, StoreContract, unittest.TestCase):
    timeout = 120

    def wait_until_blocked(self) -> bool:
        """Poll the server until one session of this database waits for a lock (or give up after 10 s)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            [(waiting,)] = raw(
                self.location,
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            if waiting:
                return True
            time.sleep(0.02)
        return False

    def check_raced(self, race: Race) -> None:
        self.assertTrue(race.waited_on_lock, "the second connection never waited for the first one's lock")

    def test_same_schema_as_sqlite(self) -> None:
        """The one set of upgrade scripts gives both engines the same tables and columns, with the same kinds of
        values and the same NOT NULL rules (schema_version included)."""
        sqlite_path = Path(self.mktemp())
        Store.open(sqlite_path).close()
        self.assertEqual(_columns_postgresql(self.location), _columns_sqlite(sqlite_path))

    def test_instances_starting_together_upgrade_once(self) -> None:
        """Six daemons opening one empty database at the same moment all succeed (the advisory lock lets one
        upgrade and the others find it done), and every version is applied exactly once."""
        location = postgres.new_database()
        start = threading.Barrier(6)
        outcomes: list[object] = []

        def open_it() -> None:
            start.wait(10)
            try:
                store = Store.open(location)
                outcomes.append(store.schema_version())
                store.close()
            except Exception as error:  # the test reports it
                outcomes.append(error)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(outcomes, [NEWEST_SCHEMA] * 6)
        self.assertEqual(raw(location, "SELECT version FROM schema_version ORDER BY version"), [(v,) for v in range(1, NEWEST_SCHEMA + 1)])

    def test_open_existing_refuses_an_empty_database(self) -> None:
        """A tool pointed at a database otad never started on is told so, and creates nothing there."""
        location = postgres.new_database()
        self.assertIn("no otad schema", str(self.assertRaises(StoreError, Store.open_existing, location)))
        self.assertEqual(raw(location, "SELECT to_regclass('schema_version') IS NULL"), [(True,)])

    def test_unreachable_database_names_it_without_password(self) -> None:
        """A server that is not there stops the open with one line naming it, and never shows the password."""
        error = self.assertRaises(StoreError, Store.open, "postgresql://otad:s3cret@127.0.0.1:1/otad?connect_timeout=2")
        self.assertIn("postgresql://otad@127.0.0.1:1/otad", str(error))
        self.assertNotIn("s3cret", str(error))

    def test_nul_in_text_is_kept_as_a_replacement_character(self) -> None:
        """A client-chosen name with a NUL (PostgreSQL text cannot hold one) is counted, not an error."""
        self.store.record_login_failure("192.0.2.1", "bo\x00b", now=1.0, window=100)
        self.store.record_login_failure("192.0.2.1", "bo\x00b", now=2.0, window=100)
        self.assertEqual(self.store.login_wait("192.0.2.1", "bo\x00b", now=3.0, window=100, per_address=10, per_user=2), 98.0)

    # -- the daemon's pool: retries where safe, 503 where not, recovery ---------------------------

    def database(self) -> PostgreSQLDatabase:
        database = open_database(self.location, connections=2)
        assert isinstance(database, PostgreSQLDatabase)
        self.addCleanup(database.close)
        return database

    def test_lost_connection_before_commit_is_retried(self) -> None:
        """The server drops the connection in the middle of a write transaction: it rolled back, so the operation
        runs again on a new connection and its rows are there once."""
        database = self.database()
        attempts: list[int] = []
        _, digest = tokens.mint()

        def write(store: Store) -> int:
            attempts.append(1)
            with store.transaction():
                challenge_id = store.add_challenge(digest, "static", None, now=0.0, ttl=100)
                if len(attempts) == 1:
                    store._db.execute("SELECT pg_terminate_backend(pg_backend_pid())")
                store.record_event(now=0.0, kind="challenge", outcome="created")
            return challenge_id

        database.run(write)
        self.assertEqual(len(attempts), 2)
        self.assertEqual(len(self.store.challenges()), 1)
        self.assertEqual(len(self.store.events()), 1)

    def test_lost_connection_after_a_commit_is_not_retried(self) -> None:
        """An operation whose first transaction committed loses its connection in the second: it is not run again
        (that would repeat the first), the caller gets StoreUnavailable, and the first transaction is whole."""
        database = self.database()
        attempts: list[int] = []

        def two_steps(store: Store) -> None:
            attempts.append(1)
            store.record_event(now=0.0, kind="one", outcome="ok")
            with store.transaction():
                store.record_event(now=0.0, kind="two", outcome="ok")
                store._db.execute("SELECT pg_terminate_backend(pg_backend_pid())")

        self.assertRaises(StoreUnavailable, database.run, two_steps)
        self.assertEqual(len(attempts), 1)
        self.assertEqual([event.kind for event in self.store.events()], ["one"])

    def test_lost_connection_during_commit_is_not_retried(self) -> None:
        """The connection breaks while COMMIT waits (for a synchronous standby that never answers, then the
        server ends the session): nobody knows whether it committed, so the operation is not run again and the
        caller gets StoreUnavailable. Here it had committed locally, and its rows are there once."""
        admin = psycopg.connect(postgres.cluster().url(), autocommit=True)
        self.addCleanup(admin.close)

        def configure(*settings: str) -> None:
            for setting in settings:
                admin.execute(setting)
            admin.execute("SELECT pg_reload_conf()")
            time.sleep(0.2)

        # Only sessions asking for synchronous_commit = on wait for the standby that does not exist.
        configure("ALTER SYSTEM SET synchronous_commit = 'local'", "ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        self.addCleanup(configure, "ALTER SYSTEM RESET synchronous_commit", "ALTER SYSTEM RESET synchronous_standby_names")
        database = self.database()
        attempts: list[int] = []

        def write(store: Store) -> None:
            attempts.append(1)
            store._db.execute("SET synchronous_commit = on")
            try:
                store.record_event(now=0.0, kind="committing", outcome="ok")
            finally:
                store._db.execute("RESET synchronous_commit")

        def terminate_when_waiting() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep'").fetchall()
                if rows:
                    admin.execute("SELECT pg_terminate_backend(%s)", rows[0])
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=terminate_when_waiting)
        killer.start()
        error = self.assertRaises(StoreUnavailable, database.run, write)
        killer.join(30)
        self.assertIn("while committing", str(error))
        self.assertEqual(len(attempts), 1)
        self.assertEqual([event.kind for event in self.store.events()], ["committing"])

    def test_database_away_then_back(self) -> None:
        """With the server stopped, an operation fails with StoreUnavailable (after its retries, in bounded time)
        rather than hanging or raising the driver's error; once the server is back the same pool serves again."""
        database = self.database()
        database.run(lambda store: store.record_event(now=0.0, kind="before", outcome="ok"))
        self.store.close()
        cluster = postgres.cluster()
        cluster.stop()
        try:
            started = time.monotonic()
            self.assertRaises(StoreUnavailable, database.run, lambda store: store.events())
            self.assertLess(time.monotonic() - started, 15)
        finally:
            cluster.start()
        self.assertEqual([event.kind for event in database.run(lambda store: store.events())], ["before"])
        self.store = Store.open_existing(self.location)
