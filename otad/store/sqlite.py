"""The SQLite engine: otad's embedded default, one file in the data directory, in WAL mode.

The daemon holds one connection on one thread; ``otad-admin`` opens a second one while it runs
(WAL lets it), and every write takes the lock up front with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from otad.files import give_like
from otad.store.records import StoreError, StoreUnavailable
from otad.store.schema import NEWEST_SCHEMA
from otad.store.state import Connection, Database, Rows, Store

T = TypeVar("T")


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


class SQLiteConnection(Connection):
    engine = "sqlite"
    errors = (sqlite3.Error,)

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self.location = str(path)

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        return self._db.execute(sql, params)

    def begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def lock_row(self, table: str, column: str, value: object) -> None:
        # BEGIN IMMEDIATE holds the database's one write lock: no other writer runs until we end.
        pass

    def lock(self, name: str) -> None:
        # The write lock of BEGIN IMMEDIATE is already the only one.
        pass

    def schema_version(self) -> int:
        exists = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
        if not exists:
            return 0
        return int(self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)

    def begin_upgrade(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied REAL)")

    def check_upgraded(self) -> None:
        broken = self._db.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise StoreError(f"the upgraded database {self.path} breaks {len(broken)} foreign keys (first in {broken[0][0]})")

    def backup(self, target: Path) -> None:
        """A consistent copy of the whole database at ``target`` (SQLite's online backup)."""
        copy = sqlite3.connect(str(target))
        try:
            self._db.backup(copy)
        finally:
            copy.close()

    def close(self) -> None:
        self._db.close()


def open_store(path: Path) -> Store:
    """For the daemon: create the database, or upgrade it to this otad's schema after copying it aside.

    The copy (``otad.sqlite.vN.bak``, made with SQLite's online backup) is what to restore if
    an upgrade goes wrong; foreign keys are checked once the upgrade is in.
    """
    try:
        db = _connect(path, create=True)
    except sqlite3.Error as error:
        raise StoreError(f"cannot open the state database {path}: {error}") from None
    connection = SQLiteConnection(db, path)
    try:
        current = connection.schema_version()
        if current > NEWEST_SCHEMA:
            raise StoreError(f"the database {path} is at schema version {current}, newer than this otad ({NEWEST_SCHEMA})")
        if current and current < NEWEST_SCHEMA:
            backup_path = path.with_name(f"{path.name}.v{current}.bak")
            connection.backup(backup_path)
            give_like(backup_path, path)
        store = Store(connection)
        store.upgrade()
        return store
    except BaseException as error:
        db.close()
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"cannot open the state database {path}: {error}") from None
        raise


def open_existing(path: Path) -> Store:
    """For tools: the database must exist and be at exactly the schema this otad knows; it is never changed."""
    try:
        db = _connect(path, create=False)
    except sqlite3.OperationalError:
        raise StoreError(f"no state database at {path}; has otad been started with this data directory?") from None
    connection = SQLiteConnection(db, path)
    try:
        current = connection.schema_version()
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
    return Store(connection)


class SQLiteDatabase(Database):
    """The daemon's one SQLite connection, used by one store thread: commits (an fsync each) are serial anyway."""

    threads = 1

    def __init__(self, store: Store) -> None:
        self.store = store

    def run(self, operation: Callable[[Store], T]) -> T:
        try:
            return operation(self.store)
        except sqlite3.OperationalError as error:
            # Locked past the busy timeout, disk I/O errors: the transaction rolled back.
            raise StoreUnavailable(f"the state database is unavailable: {error}") from None

    def close(self) -> None:
        self.store.close()
