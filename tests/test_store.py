"""Tests for otad.store: schema versions, challenges (expiry, single use, hashing) and events."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.trial import unittest

from otad import tokens
from otad.store import NEWEST_SCHEMA, ChallengeRefused, Store, StoreError


class StoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.store = Store.open(self.path)
        self.addCleanup(self.store.close)

    def test_schema_version_and_wal(self) -> None:
        """A new database is upgraded to the newest schema, in WAL mode."""
        self.assertGreaterEqual(self.store.schema_version(), 1)
        mode = sqlite3.connect(self.path).execute("PRAGMA journal_mode").fetchone()[0]
        self.assertEqual(mode, "wal")

    def test_reopen_keeps_data(self) -> None:
        """Reopening a database keeps its rows and does not re-run upgrades."""
        self.store.record_event(now=1.0, kind="enroll", outcome="ok", user="u")
        version = self.store.schema_version()
        self.store.close()
        self.store = Store.open(self.path)
        self.assertEqual(self.store.schema_version(), version)
        self.assertEqual([e.user for e in self.store.events()], ["u"])

    def test_newer_schema_refused(self) -> None:
        """A database written by a newer otad is refused rather than mangled."""
        raw = sqlite3.connect(self.path)
        raw.execute("INSERT INTO schema_version VALUES (999, 0)")
        raw.commit()
        raw.close()
        self.store.close()
        for opener in (Store.open, Store.open_existing):
            error = self.assertRaises(StoreError, opener, self.path)
            self.assertIn("999", str(error))
        self.store = Store.open(":memory:")

    def downgrade_to_v2(self) -> None:
        """Make the database look like one written by an otad whose newest schema was version 2."""
        self.store.record_event(now=1.0, kind="enroll", outcome="ok", user="before")
        self.store.close()
        raw = sqlite3.connect(self.path)
        raw.execute("ALTER TABLE challenges DROP COLUMN revoked")
        raw.execute("DROP TABLE login_failures")
        raw.execute("DROP TABLE crls")
        raw.execute("DROP INDEX certificates_revoked")
        raw.execute("DELETE FROM schema_version WHERE version > 2")
        raw.commit()
        raw.close()

    def test_open_upgrades_after_copying_aside(self) -> None:
        """The daemon's open upgrades an older database after copying it to otad.sqlite.v2.bak, which still holds
        the old schema and every row; the upgraded one keeps the rows too."""
        self.downgrade_to_v2()
        self.store = Store.open(self.path)
        self.assertEqual(self.store.schema_version(), NEWEST_SCHEMA)
        self.assertEqual([event.user for event in self.store.events()], ["before"])
        backup = self.path.with_name(f"{self.path.name}.v2.bak")
        old = sqlite3.connect(backup)
        self.assertEqual(old.execute("SELECT MAX(version) FROM schema_version").fetchone()[0], 2)
        self.assertEqual(old.execute("SELECT user FROM events").fetchall(), [("before",)])
        old.close()

    def test_open_existing_never_upgrades(self) -> None:
        """A tool's open_existing refuses an older database, saying to restart the daemon, and leaves it as it was;
        it also refuses a path with no database instead of creating one."""
        self.downgrade_to_v2()
        error = self.assertRaises(StoreError, Store.open_existing, self.path)
        self.assertIn("schema version 2 and this otad needs", str(error))
        self.assertIn("restart the daemon", str(error))
        raw = sqlite3.connect(self.path)
        self.assertEqual(raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0], 2)
        raw.close()
        missing = self.path.with_name("missing.sqlite")
        self.assertIn("no state database", str(self.assertRaises(StoreError, Store.open_existing, missing)))
        self.assertFalse(missing.exists())
        self.store = Store.open(self.path)

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
        """A static challenge created with N uses works N times."""
        _, digest = tokens.mint()
        self.store.add_challenge(digest, "static", None, now=0.0, ttl=1000, uses=2)
        self.store.consume_challenge(digest, ("static",), now=1.0)
        self.store.consume_challenge(digest, ("static",), now=2.0)
        self.assertRaises(ChallengeRefused, self.store.consume_challenge, digest, ("static",), now=3.0)

    def test_tokens_are_stored_hashed(self) -> None:
        """The database holds the token's digest, never the token."""
        token, digest = tokens.mint()
        self.store.add_challenge(digest, "enroll", "alice", now=0.0, ttl=10)
        self.assertNotIn(token.encode(), self.path.read_bytes() + Path(f"{self.path}-wal").read_bytes())
        self.assertGreaterEqual(len(token), 22)  # at least 128 bits in URL-safe base64

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
        """events() lists the newest first, with every field kept."""
        self.store.record_event(now=1.0, kind="enroll", outcome="challenge issued", user="a")
        self.store.record_event(now=2.0, kind="profile", outcome="refused", udid="U", reason="bad signature")
        newest = self.store.events()[0]
        self.assertEqual((newest.kind, newest.udid, newest.reason), ("profile", "U", "bad signature"))
