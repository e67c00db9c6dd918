"""Tests for otad.store: schema versions, challenges (expiry, single use, hashing) and events."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.trial import unittest

from otad import tokens
from otad.store import ChallengeRefused, Store, StoreError


class StoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.store = Store(self.path)
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
        self.store = Store(self.path)
        self.assertEqual(self.store.schema_version(), version)
        self.assertEqual([e.user for e in self.store.events()], ["u"])

    def test_newer_schema_refused(self) -> None:
        """A database written by a newer otad is refused rather than mangled."""
        raw = sqlite3.connect(self.path)
        raw.execute("INSERT INTO schema_version VALUES (999, 0)")
        raw.commit()
        raw.close()
        self.store.close()
        error = self.assertRaises(StoreError, Store, self.path)
        self.assertIn("999", str(error))
        self.store = Store.__new__(Store)
        self.store.close = lambda: None  # type: ignore[method-assign]

    def test_challenge_single_use(self) -> None:
        """A challenge is consumed once; the second use is refused as already used."""
        token, digest = tokens.mint()
        self.store.add_challenge(digest, "enroll", "alice", now=100.0, ttl=60)
        challenge = self.store.consume_challenge(tokens.digest(token), ("enroll",), now=110.0)
        self.assertEqual(challenge.bound_to, "alice")
        error = self.assertRaises(ChallengeRefused, self.store.consume_challenge, digest, ("enroll",), now=111.0)
        self.assertEqual(str(error), "challenge already used")

    def test_challenge_expiry(self) -> None:
        """A challenge used at or after its expiry is refused as expired, and stays unused."""
        _, digest = tokens.mint()
        self.store.add_challenge(digest, "enroll", "alice", now=100.0, ttl=60)
        error = self.assertRaises(ChallengeRefused, self.store.consume_challenge, digest, ("enroll",), now=160.0)
        self.assertEqual(str(error), "challenge expired")

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
