"""otad's persistent state: one-time challenges, devices, certificates, deliveries, held SCEP requests, events.

The store is synchronous and takes ``now`` from its caller, so it needs no clock and no reactor;
``StoreThread`` runs it on one dedicated thread so the reactor never waits on SQLite. Each
method changes its own rows only: a caller that wants an event writes it with ``record_event``
in the same transaction.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

from otad.errors import Unavailable
from otad.files import give_like
from otad.metrics import Metrics
from otad.pool import WorkerPool

T = TypeVar("T")

CHALLENGE_KINDS = ("enroll", "scep", "static")


class StoreError(RuntimeError):
    """The database cannot be opened or upgraded."""


class ChallengeRefused(Exception):
    """A challenge that is unknown, expired, already used or of the wrong kind; str() is the reason
    (``unknown challenge``, ``challenge expired``, ``challenge already used``, ``challenge revoked``)."""


@dataclass(frozen=True)
class Challenge:
    id: int
    kind: str
    bound_to: str | None
    created: float
    expires: float
    uses_left: int
    revoked: float | None = None

    def refusal(self, kinds: tuple[str, ...], now: float) -> str | None:
        """Why this challenge cannot be used now for one of ``kinds``, or None if it can."""
        if self.kind not in kinds:
            return "unknown challenge"
        if self.revoked is not None:
            return "challenge revoked"
        if self.expires <= now:
            return "challenge expired"
        if self.uses_left <= 0:
            return "challenge already used"
        return None


_CHALLENGE_COLUMNS = "id, kind, bound_to, created, expires, uses_left, revoked"


@dataclass(frozen=True)
class Device:
    udid: str
    user: str | None
    attributes: dict[str, object]
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    udid: str | None
    subject: str
    not_before: float
    not_after: float
    der: bytes
    challenge_id: int | None
    transaction_id: str | None
    issued: float
    revoked: float | None
    revocation_reason: str | None


_CERTIFICATE_COLUMNS = "serial, udid, subject, not_before, not_after, der, challenge_id, transaction_id, issued, revoked, revocation_reason"


@dataclass(frozen=True)
class Revocation:
    serial: str
    revoked: float
    reason: str | None


@dataclass(frozen=True)
class CRLRecord:
    number: int
    this_update: float
    next_update: float
    revocations: int
    newest_revocation: float | None
    der: bytes


@dataclass(frozen=True)
class HeldRequest:
    """A SCEP request waiting for (or given) an admin's decision."""

    transaction_id: str
    udid: str | None
    subject: str
    csr: bytes
    challenge_id: int | None
    status: str
    created: float
    decided: float | None
    serial: str | None


_HELD_COLUMNS = "transaction_id, udid, subject, csr, challenge_id, status, created, decided, serial"


class DuplicateSerial(Exception):
    """The serial is already taken; the caller draws a new one and signs again."""


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    outcome: str
    user: str | None
    udid: str | None
    serial: str | None
    reason: str | None


def _upgrade_scripts() -> list[tuple[int, str]]:
    """The shipped ``upgrade-to-vN.sql`` scripts, in version order."""
    scripts = []
    for entry in resources.files("otad").joinpath("schema").iterdir():
        name = entry.name
        if name.startswith("upgrade-to-v") and name.endswith(".sql"):
            scripts.append((int(name[len("upgrade-to-v") : -len(".sql")]), entry.read_text(encoding="utf-8")))
    return sorted(scripts)


NEWEST_SCHEMA = _upgrade_scripts()[-1][0]


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a write transaction takes
    # the write lock up front instead of failing half-way with SQLITE_BUSY. mode=rw never
    # creates a file, so a mistyped path cannot look like an empty database.
    uri = f"file:{quote(str(path))}?mode={'rwc' if create else 'rw'}"
    db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a certificate otad has sent must survive a power cut, not only a crash.
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def _version(db: sqlite3.Connection) -> int:
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not exists:
        return 0
    return int(db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)


class Store:
    """SQLite state, in WAL mode so ``otad-admin`` can read and write while the daemon runs.

    The daemon opens it with ``open`` (which creates and upgrades the schema); tools use
    ``open_existing``, which never changes the schema under a running daemon.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._depth = 0
        # Write transactions begun so far: a call that began one counts as a write in the metrics.
        self.transactions = 0

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """For the daemon: create the database, or upgrade it to this otad's schema after copying it aside.

        The copy (``otad.sqlite.vN.bak``, made with SQLite's online backup) is what to restore if
        an upgrade goes wrong; foreign keys are checked once the upgrade is in.
        """
        path = Path(path)
        try:
            db = _connect(path, create=True)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the state database {path}: {error}") from None
        try:
            current = _version(db)
            if current > NEWEST_SCHEMA:
                raise StoreError(f"the database {path} is at schema version {current}, newer than this otad ({NEWEST_SCHEMA})")
            if current and current < NEWEST_SCHEMA:
                _copy_aside(db, path, current)
            store = cls(db, path)
            store._upgrade(current)
            return store
        except BaseException as error:
            db.close()
            if isinstance(error, sqlite3.Error):
                raise StoreError(f"cannot open the state database {path}: {error}") from None
            raise

    @classmethod
    def open_existing(cls, path: Path | str) -> Store:
        """For tools: the database must exist and be at exactly the schema this otad knows; it is never changed."""
        path = Path(path)
        try:
            db = _connect(path, create=False)
        except sqlite3.OperationalError:
            raise StoreError(f"no state database at {path}; has otad been started with this data directory?") from None
        try:
            current = _version(db)
        except sqlite3.Error as error:
            db.close()
            raise StoreError(f"cannot read the state database {path}: {error}") from None
        if current != NEWEST_SCHEMA:
            db.close()
            if current < NEWEST_SCHEMA:
                raise StoreError(
                    f"the database {path} is at schema version {current} and this otad needs {NEWEST_SCHEMA}: "
                    "restart the daemon (it upgrades the database) before using this tool"
                )
            raise StoreError(f"the database {path} is at schema version {current}, newer than this otad ({NEWEST_SCHEMA})")
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; nested uses join the outermost one, so callers can compose steps."""
        if self._depth:
            self._depth += 1
            try:
                yield self._db
            finally:
                self._depth -= 1
            return
        # Counted first: a write the database refuses at BEGIN is still a write.
        self.transactions += 1
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self._db
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")

    def ping(self) -> None:
        """Answers only when the database could take a write now: it takes the write lock, reads the
        schema version and rolls back, writing nothing (a read-only or locked database fails)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            _version(self._db)
        finally:
            self._db.execute("ROLLBACK")

    def schema_version(self) -> int:
        return _version(self._db)

    def backup(self, target: Path) -> None:
        """A consistent copy of the whole database at ``target``, while others (the daemon) go on writing.

        SQLite's online backup copies every page in one step, inside one read transaction: in WAL
        mode that is a snapshot, and it holds up no writer.
        """
        copy = sqlite3.connect(str(target))
        try:
            self._db.backup(copy)
        finally:
            copy.close()

    def _upgrade(self, current: int) -> None:
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL)")
            for version, script in _upgrade_scripts():
                if version > current:
                    for statement in _statements(script):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version VALUES (?, julianday('now'))", (version,))
            broken = db.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise StoreError(f"the upgraded database {self.path} breaks {len(broken)} foreign keys (first in {broken[0][0]})")

    # -- challenges ------------------------------------------------------------------------

    def add_challenge(self, digest: bytes, kind: str, bound_to: str | None, *, now: float, ttl: float, uses: int = 1) -> int:
        """Store a challenge by its digest; returns its id."""
        if kind not in CHALLENGE_KINDS:
            raise ValueError(f"unknown challenge kind {kind!r}")
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO challenges (digest, kind, bound_to, created, expires, uses_left) VALUES (?, ?, ?, ?, ?, ?)",
                (digest, kind, bound_to, now, now + ttl, uses),
            )
        return int(cursor.lastrowid or 0)

    def _usable_challenge(self, digest: bytes, kinds: tuple[str, ...], now: float) -> Challenge:
        row = self._db.execute(f"SELECT {_CHALLENGE_COLUMNS} FROM challenges WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise ChallengeRefused("unknown challenge")
        challenge = Challenge(*row)
        reason = challenge.refusal(kinds, now)
        if reason is not None:
            raise ChallengeRefused(reason)
        return challenge

    def consume_challenge(self, digest: bytes, kinds: tuple[str, ...], *, now: float) -> Challenge:
        """Use one of a challenge's uses, atomically; two concurrent consumers can't both succeed."""
        with self.transaction() as db:
            challenge = self._usable_challenge(digest, kinds, now)
            db.execute(
                "UPDATE challenges SET uses_left = uses_left - 1, last_used = ? WHERE id = ? AND uses_left > 0",
                (now, challenge.id),
            )
        return challenge

    def find_challenge(self, digest: bytes, kinds: tuple[str, ...], *, now: float) -> Challenge:
        """The live challenge with this digest, without using it (``consume_challenge`` decides later)."""
        return self._usable_challenge(digest, kinds, now)

    def challenges(self, kinds: tuple[str, ...] = CHALLENGE_KINDS) -> list[Challenge]:
        """Every stored challenge of ``kinds``, oldest first (expired ones stay a day, see ``purge_challenges``)."""
        marks = ", ".join("?" for _ in kinds)
        rows = self._db.execute(f"SELECT {_CHALLENGE_COLUMNS} FROM challenges WHERE kind IN ({marks}) ORDER BY id", kinds)
        return [Challenge(*row) for row in rows]

    def revoke_challenge(self, challenge_id: int, *, now: float) -> bool:
        """Make a challenge unusable at once; False if there is no such unrevoked challenge."""
        with self.transaction() as db:
            changed = db.execute("UPDATE challenges SET revoked = ? WHERE id = ? AND revoked IS NULL", (now, challenge_id)).rowcount
        return bool(changed)

    def expired_unused(self, *, since: float, until: float) -> dict[str, int]:
        """How many challenges of each kind expired in ``(since, until]`` with uses left and unrevoked."""
        rows = self._db.execute(
            "SELECT kind, COUNT(*) FROM challenges WHERE expires > ? AND expires <= ? AND uses_left > 0 AND revoked IS NULL GROUP BY kind",
            (since, until),
        ).fetchall()
        return {kind: int(count) for kind, count in rows}

    def purge_challenges(self, *, now: float, keep: float = 86400) -> int:
        """Forget challenges that expired more than ``keep`` seconds ago; returns how many."""
        with self.transaction() as db:
            return db.execute("DELETE FROM challenges WHERE expires < ?", (now - keep,)).rowcount

    # -- failed logins -------------------------------------------------------------------------

    def login_wait(self, address: str, user: str, *, now: float, window: float, per_address: int, per_user: int) -> float:
        """Seconds until ``user`` may try a password from ``address`` again (0: now), given the failures
        counted in the current window per address and per user from that address."""
        rows = self._db.execute(
            "SELECT user, failures, since FROM login_failures WHERE address = ? AND user IN ('', ?) AND since > ?",
            (address, user, now - window),
        ).fetchall()
        wait = 0.0
        for name, failures, since in rows:
            if failures >= (per_address if name == "" else per_user):
                wait = max(wait, since + window - now)
        return wait

    def record_login_failure(self, address: str, user: str, *, now: float, window: float) -> None:
        """Count a failure for the address and for the user from it; a window that has passed starts again."""
        with self.transaction() as db:
            for name in ("", user):
                db.execute(
                    "INSERT INTO login_failures (address, user, failures, since) VALUES (?, ?, 1, ?) "
                    "ON CONFLICT (address, user) DO UPDATE SET "
                    "failures = CASE WHEN since > ? THEN failures + 1 ELSE 1 END, "
                    "since = CASE WHEN since > ? THEN since ELSE excluded.since END",
                    (address, name, now, now - window, now - window),
                )

    def clear_login_failures(self, address: str, user: str) -> None:
        """A good password from ``address`` clears that user's count there (not the address's own)."""
        with self.transaction() as db:
            db.execute("DELETE FROM login_failures WHERE address = ? AND user = ?", (address, user))

    def purge_login_failures(self, *, now: float, window: float) -> int:
        """Forget counts whose window has passed; returns how many."""
        with self.transaction() as db:
            return db.execute("DELETE FROM login_failures WHERE since <= ?", (now - window,)).rowcount

    # -- devices -----------------------------------------------------------------------------

    def record_device(self, udid: str, user: str | None, attributes: Mapping[str, object], *, now: float) -> None:
        """Create the device or refresh its attributes, user and last-seen time."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO devices (udid, user, attributes, first_seen, last_seen) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (udid) DO UPDATE SET user = excluded.user, attributes = excluded.attributes, "
                "last_seen = excluded.last_seen",
                (udid, user, json.dumps(attributes, sort_keys=True, default=str), now, now),
            )

    def device(self, udid: str) -> Device | None:
        row = self._db.execute("SELECT udid, user, attributes, first_seen, last_seen FROM devices WHERE udid = ?", (udid,)).fetchone()
        if row is None:
            return None
        return Device(row[0], row[1], json.loads(row[2]), row[3], row[4])

    def devices(self) -> list[Device]:
        rows = self._db.execute("SELECT udid, user, attributes, first_seen, last_seen FROM devices ORDER BY last_seen DESC")
        return [Device(row[0], row[1], json.loads(row[2]), row[3], row[4]) for row in rows]

    # -- certificates ------------------------------------------------------------------------

    def add_certificate(
        self,
        *,
        serial: str,
        udid: str | None,
        subject: str,
        not_before: float,
        not_after: float,
        der: bytes,
        csr: bytes | None,
        challenge_id: int | None,
        transaction_id: str | None,
        now: float,
    ) -> None:
        """Record an issued certificate; raises DuplicateSerial if the serial exists."""
        with self.transaction() as db:
            try:
                db.execute(
                    "INSERT INTO certificates (serial, udid, subject, not_before, not_after, der, csr, challenge_id, "
                    "transaction_id, issued) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (serial, udid, subject, not_before, not_after, der, csr, challenge_id, transaction_id, now),
                )
            except sqlite3.IntegrityError as error:
                if "certificates.serial" in str(error):
                    raise DuplicateSerial(serial) from None
                raise

    def certificate(self, serial: str) -> CertificateRecord | None:
        row = self._db.execute(f"SELECT {_CERTIFICATE_COLUMNS} FROM certificates WHERE serial = ?", (serial,)).fetchone()
        return CertificateRecord(*row) if row else None

    def certificate_for_transaction(self, transaction_id: str) -> CertificateRecord | None:
        """The newest certificate issued for a SCEP transaction, for polls and retried requests."""
        row = self._db.execute(
            f"SELECT {_CERTIFICATE_COLUMNS} FROM certificates WHERE transaction_id = ? ORDER BY issued DESC LIMIT 1",
            (transaction_id,),
        ).fetchone()
        return CertificateRecord(*row) if row else None

    def certificates(self, udid: str | None = None) -> list[CertificateRecord]:
        if udid is None:
            rows = self._db.execute(f"SELECT {_CERTIFICATE_COLUMNS} FROM certificates ORDER BY issued")
        else:
            rows = self._db.execute(f"SELECT {_CERTIFICATE_COLUMNS} FROM certificates WHERE udid = ? ORDER BY issued", (udid,))
        return [CertificateRecord(*row) for row in rows]

    def revoke(self, serial: str, *, reason: str, now: float) -> bool:
        """Mark a certificate revoked with an RFC 5280 reason name; False if there is no such (unrevoked) certificate."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE certificates SET revoked = ?, revocation_reason = ? WHERE serial = ? AND revoked IS NULL",
                (now, reason, serial),
            ).rowcount
        return bool(changed)

    def revocations(self, *, now: float) -> list[Revocation]:
        """Every revoked certificate that has not yet expired, oldest revocation first: what a CRL lists."""
        rows = self._db.execute(
            "SELECT serial, revoked, revocation_reason FROM certificates WHERE revoked IS NOT NULL AND not_after > ? ORDER BY revoked",
            (now,),
        )
        return [Revocation(*row) for row in rows]

    # -- CRLs -------------------------------------------------------------------------------------

    def latest_crl(self) -> CRLRecord | None:
        row = self._db.execute(
            "SELECT number, this_update, next_update, revocations, newest_revocation, der FROM crls ORDER BY number DESC LIMIT 1"
        ).fetchone()
        return CRLRecord(*row) if row else None

    def add_crl(self, record: CRLRecord) -> bool:
        """Keep a newly signed CRL; False if another otad already stored one with that number."""
        with self.transaction() as db:
            added = db.execute(
                "INSERT INTO crls (number, this_update, next_update, revocations, newest_revocation, der) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (number) DO NOTHING",
                (record.number, record.this_update, record.next_update, record.revocations, record.newest_revocation, record.der),
            ).rowcount
        return bool(added)

    # -- SCEP requests held for manual approval -------------------------------------------------

    def hold_request(
        self, *, transaction_id: str, udid: str | None, subject: str, csr: bytes, challenge_id: int | None, now: float
    ) -> None:
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO scep_requests ({_HELD_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'pending', ?, NULL, NULL)",
                (transaction_id, udid, subject, csr, challenge_id, now),
            )

    def held_request(self, transaction_id: str) -> HeldRequest | None:
        row = self._db.execute(f"SELECT {_HELD_COLUMNS} FROM scep_requests WHERE transaction_id = ?", (transaction_id,)).fetchone()
        return HeldRequest(*row) if row else None

    def held_requests(self, status: str | None = None) -> list[HeldRequest]:
        if status is None:
            rows = self._db.execute(f"SELECT {_HELD_COLUMNS} FROM scep_requests ORDER BY created")
        else:
            rows = self._db.execute(f"SELECT {_HELD_COLUMNS} FROM scep_requests WHERE status = ? ORDER BY created", (status,))
        return [HeldRequest(*row) for row in rows]

    def decide_request(self, transaction_id: str, *, approve: bool, now: float) -> bool:
        """Approve or reject a pending request; False if there is no pending request with that id."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE scep_requests SET status = ?, decided = ? WHERE transaction_id = ? AND status = 'pending'",
                ("approved" if approve else "rejected", now, transaction_id),
            ).rowcount
        return bool(changed)

    def mark_issued(self, transaction_id: str, serial: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE scep_requests SET status = 'issued', serial = ? WHERE transaction_id = ?", (serial, transaction_id))

    # -- deliveries (phase 3) ------------------------------------------------------------------

    def record_delivery(self, *, serial: str, udid: str, profile_identifier: str, template: str, now: float) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO deliveries (serial, udid, profile_identifier, template, at) VALUES (?, ?, ?, ?, ?)",
                (serial, udid, profile_identifier, template, now),
            )

    def delivery_count(self, serial: str) -> int:
        """How many configurations were delivered to the identity with this serial."""
        return int(self._db.execute("SELECT COUNT(*) FROM deliveries WHERE serial = ?", (serial,)).fetchone()[0])

    # -- events ------------------------------------------------------------------------------

    def record_event(
        self,
        *,
        now: float,
        kind: str,
        outcome: str,
        user: str | None = None,
        udid: str | None = None,
        serial: str | None = None,
        reason: str | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (at, kind, outcome, user, udid, serial, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, kind, outcome, user, udid, serial, reason),
            )

    def events(self, *, limit: int = 100) -> list[Event]:
        """The newest events, newest first."""
        rows = self._db.execute(
            "SELECT at, kind, outcome, user, udid, serial, reason FROM events ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [Event(*row) for row in rows]


def _copy_aside(db: sqlite3.Connection, path: Path, version: int) -> None:
    """Copy the database to ``PATH.vVERSION.bak`` (owned like the database) before upgrading it."""
    backup_path = path.with_name(f"{path.name}.v{version}.bak")
    target = sqlite3.connect(str(backup_path))
    try:
        db.backup(target)
    finally:
        target.close()
    give_like(backup_path, path)


def _statements(script: str) -> list[str]:
    """Split an upgrade script into statements (they contain no semicolons inside literals)."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]


class StoreUnavailable(Unavailable):
    """The database did not answer; nothing was written (the transaction rolled back)."""


def _answering(operation: Callable[[Store], T], store: Store, metrics: Metrics | None) -> T:
    started = time.monotonic()
    transactions = store.transactions
    failed = False
    try:
        return operation(store)
    except sqlite3.OperationalError as error:
        failed = True
        raise StoreUnavailable(f"the state database is unavailable: {error}") from None
    finally:
        if metrics is not None:
            kind = "write" if store.transactions != transactions else "read"
            metrics.store_call(kind, time.monotonic() - started, failed)


class StoreThread(WorkerPool):
    """Runs every store call on one dedicated thread: SQLite commits (an fsync each) never block the reactor.

    With ``metrics``, each call's time is measured on the store thread, as a read or (when it began
    a transaction) a write.
    """

    def __init__(self, reactor: IReactorFromThreads, opener: Callable[[], Store], *, metrics: Metrics | None = None) -> None:
        super().__init__(reactor, "otad-store", threads=1, metrics=metrics)
        self._opener = opener
        self._store: Store | None = None
        self._store_metrics = metrics

    def open(self) -> Deferred[Store]:
        """Open (and upgrade) the database on the store thread."""

        def opened(store: Store) -> Store:
            self._store = store
            return store

        return self.run(self._opener).addCallback(opened)

    def call(self, operation: Callable[[Store], T]) -> Deferred[T]:
        """Run ``operation(store)`` on the store thread; a database that cannot answer (locked past the
        busy timeout, disk I/O errors) fails it with ``StoreUnavailable``, which the resources answer 503."""
        store = self._store
        if store is None:
            raise StoreError("the store is not open")
        return self.run(_answering, operation, store, self._store_metrics)

    def stopService(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            self.run(store.close)
        super().stopService()
