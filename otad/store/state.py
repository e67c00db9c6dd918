"""otad's persistent state: one-time challenges, devices, certificates, deliveries, held SCEP requests, events.

``Store`` is synchronous, takes ``now`` from its caller (so it needs no clock and no reactor),
and is written once for both engines: its SQL is what SQLite and PostgreSQL share, and a
``Connection`` subclass per engine carries the differences (placeholders, how a write
transaction starts, row locks, the schema table). Each method changes its own rows only: a
caller that wants an event writes it with ``record_event`` in the same transaction.

Every decision that must be taken once, whichever otad instance takes it, is made by the
database itself: a challenge use is a conditional ``UPDATE`` whose row count says who won, a
serial is an ``INSERT ... ON CONFLICT DO NOTHING`` on the primary key, a held request is decided
or issued by an ``UPDATE`` that names the state it leaves, and the phase-3 repeat decision
counts deliveries with the certificate's row locked.
"""

from __future__ import annotations

import abc
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from otad.store.records import (
    CHALLENGE_KINDS,
    CertificateRecord,
    Challenge,
    ChallengeRefused,
    CRLRecord,
    Device,
    DuplicateSerial,
    Event,
    HeldRequest,
    Revocation,
    StoreError,
)
from otad.store.schema import NEWEST_SCHEMA, julian_day, statements, upgrade_scripts

T = TypeVar("T")

_CHALLENGE_COLUMNS = "id, kind, bound_to, created, expires, uses_left, revoked"
_CERTIFICATE_COLUMNS = "serial, udid, subject, not_before, not_after, der, challenge_id, transaction_id, issued, revoked, revocation_reason"
_HELD_COLUMNS = "transaction_id, udid, subject, csr, challenge_id, status, created, decided, serial"
_DEVICE_COLUMNS = 'udid, "user", attributes, first_seen, last_seen'


class Rows(Protocol):
    """What ``execute`` returns, as both drivers' cursors provide it."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(abc.ABC):
    """One open connection to the state database, as ``Store`` uses it; one subclass per engine.

    SQL reaches ``execute`` with ``?`` placeholders (the engine rewrites them if it must).
    """

    engine: str
    # Where the database is, for messages: a file path, or a URL without its password.
    location: str
    # The driver's own error classes, for tools that report them.
    errors: tuple[type[BaseException], ...]

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows: ...

    @abc.abstractmethod
    def begin(self) -> None:
        """Start a write transaction (SQLite: take the write lock now, not half-way)."""

    def commit(self) -> None:
        self.execute("COMMIT")

    def rollback(self) -> None:
        self.execute("ROLLBACK")

    @abc.abstractmethod
    def lock_row(self, table: str, column: str, value: object) -> None:
        """Inside a write transaction, hold the row ``table.column = value`` until it ends, so that a
        decision read from other rows is made by one transaction at a time."""

    @abc.abstractmethod
    def lock(self, name: str) -> None:
        """Inside a write transaction, hold the lock ``name`` (``ca``) until it ends, across every otad
        on this database, so that what it guards is decided by one of them at a time."""

    def sequence_after(self, table: str, column: str) -> None:
        """After rows were copied in with their ids: make the ids the database generates continue after them
        (SQLite's rowids always do)."""
        return None

    @abc.abstractmethod
    def schema_version(self) -> int:
        """The newest applied upgrade, 0 for an empty database."""

    @abc.abstractmethod
    def begin_upgrade(self) -> None:
        """Inside the upgrade transaction: make sure no other otad upgrades at the same time, and that
        ``schema_version`` exists."""

    def check_writable(self) -> None:
        """Inside a transaction begun with ``begin``: fail (``StoreUnavailable``) if it could not write
        (SQLite's ``begin`` has taken the write lock already, or failed)."""
        return None

    def ddl(self, statement: str) -> str:
        """An upgrade script's statement as this engine spells it."""
        return statement

    def check_upgraded(self) -> None:
        """Inside the upgrade transaction, after the scripts: refuse a result that breaks the schema's rules
        (PostgreSQL checks foreign keys as it goes; SQLite is asked afterwards)."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...


class Store:
    """The state API over one connection. The daemon opens it with ``open`` (which creates and upgrades
    the schema); tools use ``open_existing``, which never changes the schema under a running daemon.

    ``location`` is a SQLite file's path or a ``postgresql://`` URL.
    """

    def __init__(self, connection: Connection) -> None:
        self._db = connection
        self._depth = 0
        # Write transactions begun so far: a call that began one counts as a write in the metrics.
        self.transactions = 0
        # For retries after a lost connection: has this store committed anything, or was it
        # committing when the connection broke (then nobody knows whether it did)?
        self.commits = 0
        self.committing = False

    @property
    def location(self) -> str:
        return self._db.location

    @property
    def engine(self) -> str:
        return self._db.engine

    @property
    def errors(self) -> tuple[type[BaseException], ...]:
        return self._db.errors

    @classmethod
    def open(cls, location: Path | str) -> Store:
        """For the daemon: create the database, or upgrade it to this otad's schema (SQLite copies the
        file aside first; PostgreSQL upgrades under an advisory lock, so two otads starting together
        upgrade once)."""
        from otad.store import postgresql, sqlite

        return postgresql.open_store(str(location)) if is_postgresql(location) else sqlite.open_store(Path(location))

    @classmethod
    def open_existing(cls, location: Path | str) -> Store:
        """For tools: the database must exist and be at exactly the schema this otad knows; it is never changed."""
        from otad.store import postgresql, sqlite

        return postgresql.open_existing(str(location)) if is_postgresql(location) else sqlite.open_existing(Path(location))

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
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
        self._db.begin()
        self._depth = 1
        try:
            yield self._db
        except BaseException:
            self._depth = 0
            with contextlib.suppress(*self._db.errors):
                # On a broken connection the rollback fails too; the server has rolled back already.
                self._db.rollback()
            raise
        self._depth = 0
        self.committing = True
        self._db.commit()
        self.committing = False
        self.commits += 1

    def ping(self) -> None:
        """Answers only when the database could take a write now, writing nothing: it begins a write
        transaction as every write does (SQLite takes the write lock), reads the schema version, asks
        the engine whether the transaction could write, and rolls back. A database that is down,
        locked or read-only (a PostgreSQL standby) fails."""
        self._db.begin()
        try:
            self._db.schema_version()
            self._db.check_writable()
        finally:
            self._db.rollback()

    def schema_version(self) -> int:
        return self._db.schema_version()

    def backup(self, target: Path) -> None:
        """A consistent copy of the whole SQLite database at ``target``, while others (the daemon) go on writing:
        SQLite's online backup copies every page inside one read transaction, a snapshot in WAL mode that holds up
        no writer. A PostgreSQL store is backed up with PostgreSQL's own tools (pg_dump)."""
        copy = getattr(self._db, "backup", None)
        if copy is None:
            raise StoreError(f"{self.location} is a {self.engine} database: back it up with pg_dump")
        copy(target)

    def upgrade(self) -> int:
        """Apply the scripts this database lacks, in one transaction; returns the version it was at."""
        with self.transaction() as db:
            db.begin_upgrade()
            current = db.schema_version()
            if current > NEWEST_SCHEMA:
                raise StoreError(f"the database {db.location} is at schema version {current}, newer than this otad ({NEWEST_SCHEMA})")
            for version, script in upgrade_scripts():
                if version > current:
                    for statement in statements(script):
                        db.execute(db.ddl(statement))
                    db.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (version, julian_day(time.time())))
            db.check_upgraded()
        return current

    # -- challenges ------------------------------------------------------------------------

    def add_challenge(self, digest: bytes, kind: str, bound_to: str | None, *, now: float, ttl: float, uses: int = 1) -> int:
        """Store a challenge by its digest; returns its id."""
        if kind not in CHALLENGE_KINDS:
            raise ValueError(f"unknown challenge kind {kind!r}")
        with self.transaction() as db:
            row = db.execute(
                "INSERT INTO challenges (digest, kind, bound_to, created, expires, uses_left) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (digest, kind, bound_to, now, now + ttl, uses),
            ).fetchone()
        return int(row[0])

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
        """Use one of a challenge's uses, atomically: of concurrent consumers (on any otad sharing the
        database) at most ``uses_left`` succeed, because the UPDATE that takes a use re-checks it."""
        with self.transaction() as db:
            challenge = self._usable_challenge(digest, kinds, now)
            taken = db.execute(
                "UPDATE challenges SET uses_left = uses_left - 1, last_used = ? "
                "WHERE id = ? AND uses_left > 0 AND revoked IS NULL AND expires > ?",
                (now, challenge.id, now),
            ).rowcount
            if not taken:
                # Another transaction took the last use (or revoked it) between the read and the UPDATE.
                raise ChallengeRefused("challenge already used")
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
            'SELECT "user", failures, since FROM login_failures WHERE address = ? AND "user" IN (\'\', ?) AND since > ?',
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
                    'INSERT INTO login_failures (address, "user", failures, since) VALUES (?, ?, 1, ?) '
                    'ON CONFLICT (address, "user") DO UPDATE SET '
                    "failures = CASE WHEN login_failures.since > ? THEN login_failures.failures + 1 ELSE 1 END, "
                    "since = CASE WHEN login_failures.since > ? THEN login_failures.since ELSE excluded.since END",
                    (address, name, now, now - window, now - window),
                )

    def clear_login_failures(self, address: str, user: str) -> None:
        """A good password from ``address`` clears that user's count there (not the address's own)."""
        with self.transaction() as db:
            db.execute('DELETE FROM login_failures WHERE address = ? AND "user" = ?', (address, user))

    def purge_login_failures(self, *, now: float, window: float) -> int:
        """Forget counts whose window has passed; returns how many."""
        with self.transaction() as db:
            return db.execute("DELETE FROM login_failures WHERE since <= ?", (now - window,)).rowcount

    # -- devices -----------------------------------------------------------------------------

    def record_device(self, udid: str, user: str | None, attributes: Mapping[str, object], *, now: float) -> None:
        """Create the device or refresh its attributes, user and last-seen time."""
        with self.transaction() as db:
            db.execute(
                f"INSERT INTO devices ({_DEVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                'ON CONFLICT (udid) DO UPDATE SET "user" = excluded."user", attributes = excluded.attributes, '
                "last_seen = excluded.last_seen",
                (udid, user, json.dumps(attributes, sort_keys=True, default=str), now, now),
            )

    def device(self, udid: str) -> Device | None:
        row = self._db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE udid = ?", (udid,)).fetchone()
        if row is None:
            return None
        return Device(row[0], row[1], json.loads(row[2]), row[3], row[4])

    def devices(self) -> list[Device]:
        rows = self._db.execute(f"SELECT {_DEVICE_COLUMNS} FROM devices ORDER BY last_seen DESC")
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
        """Record an issued certificate; raises DuplicateSerial if the serial exists (or another
        transaction, on any otad, is recording it now and commits)."""
        with self.transaction() as db:
            added = db.execute(
                "INSERT INTO certificates (serial, udid, subject, not_before, not_after, der, csr, challenge_id, "
                "transaction_id, issued) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",
                (serial, udid, subject, not_before, not_after, der, csr, challenge_id, transaction_id, now),
            ).rowcount
            if not added:
                raise DuplicateSerial(serial)

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
            rows = self._db.execute(f"SELECT {_CERTIFICATE_COLUMNS} FROM certificates ORDER BY issued, serial")
        else:
            rows = self._db.execute(f"SELECT {_CERTIFICATE_COLUMNS} FROM certificates WHERE udid = ? ORDER BY issued, serial", (udid,))
        return [CertificateRecord(*row) for row in rows]

    def has_certificates(self) -> bool:
        return self._db.execute("SELECT 1 FROM certificates LIMIT 1").fetchone() is not None

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
            "SELECT serial, revoked, revocation_reason FROM certificates WHERE revoked IS NOT NULL AND not_after > ? "
            "ORDER BY revoked, serial",
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
    ) -> bool:
        """Keep a request for an admin's decision; False if a request with this transaction id is held already."""
        with self.transaction() as db:
            added = db.execute(
                f"INSERT INTO scep_requests ({_HELD_COLUMNS}) VALUES (?, ?, ?, ?, ?, 'pending', ?, NULL, NULL) "
                "ON CONFLICT (transaction_id) DO NOTHING",
                (transaction_id, udid, subject, csr, challenge_id, now),
            ).rowcount
        return bool(added)

    def held_request(self, transaction_id: str) -> HeldRequest | None:
        row = self._db.execute(f"SELECT {_HELD_COLUMNS} FROM scep_requests WHERE transaction_id = ?", (transaction_id,)).fetchone()
        return HeldRequest(*row) if row else None

    def held_requests(self, status: str | None = None) -> list[HeldRequest]:
        if status is None:
            rows = self._db.execute(f"SELECT {_HELD_COLUMNS} FROM scep_requests ORDER BY created, transaction_id")
        else:
            rows = self._db.execute(
                f"SELECT {_HELD_COLUMNS} FROM scep_requests WHERE status = ? ORDER BY created, transaction_id", (status,)
            )
        return [HeldRequest(*row) for row in rows]

    def decide_request(self, transaction_id: str, *, approve: bool, now: float) -> bool:
        """Approve or reject a pending request; False if there is no pending request with that id (two
        admins deciding at once: the second finds it decided)."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE scep_requests SET status = ?, decided = ? WHERE transaction_id = ? AND status = 'pending'",
                ("approved" if approve else "rejected", now, transaction_id),
            ).rowcount
        return bool(changed)

    def mark_issued(self, transaction_id: str, serial: str) -> bool:
        """Record that an approved request got its certificate; False if it is not (or no longer) approved,
        as when another otad issued it first: the caller's transaction must then not commit."""
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE scep_requests SET status = 'issued', serial = ? WHERE transaction_id = ? AND status = 'approved'",
                (serial, transaction_id),
            ).rowcount
        return bool(changed)

    # -- deliveries (phase 3) ------------------------------------------------------------------

    def record_delivery(self, *, serial: str, udid: str, profile_identifier: str, template: str, now: float) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO deliveries (serial, udid, profile_identifier, template, at) VALUES (?, ?, ?, ?, ?)",
                (serial, udid, profile_identifier, template, now),
            )

    def delivery_count(self, serial: str) -> int:
        """How many configurations were delivered to the identity with this serial.

        Inside a write transaction the certificate's row is locked first, so that a decision taken
        on the count (phase 3's ``on_repeat``) and the delivery it leads to are one step: a second
        transaction, on any otad, waits and then counts the first one's delivery.
        """
        if self._depth:
            self._db.lock_row("certificates", "serial", serial)
        return int(self._db.execute("SELECT COUNT(*) FROM deliveries WHERE serial = ?", (serial,)).fetchone()[0])

    # -- otad's own keys and certificates, shared by instances -------------------------------

    def lock_ca(self) -> None:
        """Inside a write transaction: be the only otad creating, renewing or copying the CA files until it ends."""
        if not self._depth:
            raise RuntimeError("lock_ca needs a transaction")
        self._db.lock("ca")

    def ca_files(self) -> dict[str, bytes]:
        """The stored files of certs/, by name (empty until an instance has written them)."""
        return {name: bytes(content) for name, content in self._db.execute("SELECT name, content FROM ca_files ORDER BY name")}

    def ca_generation(self) -> int:
        """Changes whenever any stored file does: instances compare it to notice a renewal made elsewhere."""
        return int(self._db.execute("SELECT COALESCE(MAX(generation), 0) FROM ca_files").fetchone()[0])

    def put_ca_files(self, files: Mapping[str, bytes], *, now: float) -> int:
        """Store new or changed files as the next generation; returns it. Call it under ``lock_ca``."""
        with self.transaction() as db:
            generation = self.ca_generation() + 1
            for name, content in sorted(files.items()):
                db.execute(
                    "INSERT INTO ca_files (name, content, generation, updated) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET content = excluded.content, generation = excluded.generation, "
                    "updated = excluded.updated",
                    (name, content, generation, now),
                )
        return generation

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
                'INSERT INTO events (at, kind, outcome, "user", udid, serial, reason) VALUES (?, ?, ?, ?, ?, ?, ?)',
                (now, kind, outcome, user, udid, serial, reason),
            )

    def events(self, *, limit: int = 100) -> list[Event]:
        """The newest events, newest first."""
        rows = self._db.execute(
            'SELECT at, kind, outcome, "user", udid, serial, reason FROM events ORDER BY id DESC LIMIT ?', (limit,)
        ).fetchall()
        return [Event(*row) for row in rows]


def is_postgresql(location: Path | str) -> bool:
    """Whether a store location is a PostgreSQL URL (anything else is a SQLite file's path)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


class Database(abc.ABC):
    """What the daemon's ``StoreThread`` runs operations against: one SQLite connection, or a pool of
    PostgreSQL connections (one per store thread)."""

    # How many threads may run operations at once.
    threads = 1

    @abc.abstractmethod
    def run(self, operation: Callable[[Store], T]) -> T:
        """``operation(store)`` on this (store) thread; a database that cannot answer raises StoreUnavailable."""

    @abc.abstractmethod
    def close(self) -> None: ...
