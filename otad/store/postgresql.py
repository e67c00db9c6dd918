"""The PostgreSQL engine, for several otad instances on one database (``[store] url = postgresql://...``).

psycopg 3 with psycopg_pool: the daemon keeps ``[store] connections`` connections, one per
store thread, so no SQL runs on the reactor; the pool checks a connection before lending it and
reconnects by itself after the database comes back. Transactions are READ COMMITTED; the
decisions that must be taken once are made by the rows themselves (``otad.store.state``), and
the schema is upgraded under an advisory lock, so two instances starting together upgrade once.

A lost connection is retried when that is safe, a read or a transaction that never reached
COMMIT (the server rolled it back), for a few seconds; after that, or when the connection broke
during COMMIT (the outcome is unknown, so running the operation again could do it twice), the
operation fails with ``StoreUnavailable``, which devices see as 503.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import psycopg
import psycopg.errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from otad.store.records import StoreError, StoreUnavailable
from otad.store.schema import NEWEST_SCHEMA, for_postgresql
from otad.store.state import Connection, Database, Rows, Store

T = TypeVar("T")

# pg_advisory_xact_lock keys: "otad" in the high 32 bits, then what the lock guards.
SCHEMA_LOCK = 0x6F746164_00000001
LOCKS = {"ca": 0x6F746164_00000002}
# How long one operation may keep retrying a lost connection before it answers 503.
RETRY_FOR = 3.0


def describe(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparsable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "")
    port = f":{parts['port']}" if parts.get("port") else ""
    database = parts.get("dbname") or ""
    if host.startswith("/"):
        # A Unix socket's directory, as libpq's URLs write it.
        return f"postgresql://{user}{port}/{database}?host={host}"
    return f"postgresql://{user}{host}{port}/{database}"


def conninfo(url: str) -> str:
    """The URL with otad's defaults for what it leaves out: a connect timeout, keepalives, otad's name."""
    parts = conninfo_to_dict(url)
    defaults = {"connect_timeout": "5", "keepalives_idle": "30", "application_name": "otad"}
    return make_conninfo("", **{**defaults, **parts})


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    # otad's SQL has no literal "?" or "%"; psycopg wants %s and %% instead.
    return sql.replace("%", "%%").replace("?", "%s")


def _text_safe(value: object) -> object:
    # PostgreSQL text cannot hold NUL, which SQLite keeps; a client-chosen string (a user name at
    # a failed login) must not turn into an error, so NUL is stored as U+FFFD, for lookups too.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


class PostgreSQLConnection(Connection):
    engine = "postgresql"
    errors = (psycopg.Error,)

    def __init__(self, connection: psycopg.Connection[tuple[object, ...]], location: str) -> None:
        self._connection = connection
        self.location = location

    def execute(self, sql: str, params: Sequence[object] = ()) -> Rows:
        return self._connection.execute(_placeholders(sql), [_text_safe(value) for value in params])

    def begin(self) -> None:
        self._connection.execute("BEGIN")

    def lock_row(self, table: str, column: str, value: object) -> None:
        self.execute(f"SELECT 1 FROM {table} WHERE {column} = ? FOR UPDATE", (value,))

    def lock(self, name: str) -> None:
        self.execute("SELECT pg_advisory_xact_lock(?)", (LOCKS[name],))

    def sequence_after(self, table: str, column: str) -> None:
        self.execute(
            f"SELECT setval(pg_get_serial_sequence(?, ?), COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)", (table, column)
        )

    def schema_version(self) -> int:
        if self.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
            return 0
        return int(self.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0)

    def begin_upgrade(self) -> None:
        # Held until this transaction ends: a second otad waits here, then finds the upgrade done.
        self.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
        self.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied DOUBLE PRECISION)")

    def check_writable(self) -> None:
        # A hot standby, or default_transaction_read_only, makes every transaction read-only: each
        # write would fail with "cannot execute ... in a read-only transaction".
        if self.execute("SELECT current_setting('transaction_read_only')").fetchone()[0] == "on":
            raise StoreUnavailable(f"the state database is unavailable: {self.location} is read-only (transaction_read_only is on)")

    def ddl(self, statement: str) -> str:
        return for_postgresql(statement)

    def close(self) -> None:
        self._connection.close()


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(conninfo(url), autocommit=True)
    except psycopg.Error as error:
        raise StoreError(f"cannot connect to the state database {describe(url)}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def open_store(url: str) -> Store:
    """For the daemon: create the schema or upgrade it, under the schema lock."""
    store = Store(PostgreSQLConnection(_connect(url), describe(url)))
    try:
        store.upgrade()
    except psycopg.Error as error:
        store.close()
        raise StoreError(f"cannot upgrade the state database {describe(url)}: {_first_line(error)}") from None
    except BaseException:
        store.close()
        raise
    return store


def open_existing(url: str) -> Store:
    """For tools: the schema must be exactly this otad's; it is never changed."""
    store = Store(PostgreSQLConnection(_connect(url), describe(url)))
    try:
        current = store.schema_version()
    except psycopg.Error as error:
        store.close()
        raise StoreError(f"cannot read the state database {describe(url)}: {_first_line(error)}") from None
    if current != NEWEST_SCHEMA:
        store.close()
        if current == 0:
            raise StoreError(f"no otad schema in {describe(url)}; has otad been started with this [store] url?")
        if current < NEWEST_SCHEMA:
            raise StoreError(
                f"the database {describe(url)} is at schema version {current} and this otad needs {NEWEST_SCHEMA}: "
                "restart the daemon (it upgrades the database) before using this tool"
            )
        raise StoreError(f"the database {describe(url)} is at schema version {current}, newer than this otad ({NEWEST_SCHEMA})")
    return store


class PostgreSQLDatabase(Database):
    """The daemon's pool of connections, one per store thread, with retries where they are safe."""

    def __init__(self, url: str, connections: int, *, retry_for: float = RETRY_FOR) -> None:
        self.location = describe(url)
        self.threads = connections
        self._retry_for = retry_for
        open_store(url).close()
        self._pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]] = ConnectionPool(
            conninfo(url),
            min_size=connections,
            max_size=connections,
            kwargs={"autocommit": True},
            # An empty query before each loan: a connection the server dropped (a restart) is
            # replaced instead of failing the operation.
            check=ConnectionPool.check_connection,
            name="otad-store",
            # psycopg_pool retries a lost connection with a doubling delay; giving each attempt up
            # after 2 s lets the next operation that waits start a fresh one (at once), so otad is
            # back within moments of the server, however long it was away.
            reconnect_timeout=2.0,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=10)
        except psycopg.Error as error:
            self._pool.close()
            raise StoreError(f"cannot connect to the state database {self.location}: {_first_line(error)}") from None

    def run(self, operation: Callable[[Store], T]) -> T:
        deadline = time.monotonic() + self._retry_for
        delay = 0.05
        while True:
            store: Store | None = None
            try:
                with self._pool.connection(timeout=max(0.1, deadline - time.monotonic())) as connection:
                    store = Store(PostgreSQLConnection(connection, self.location))
                    return operation(store)
            except psycopg.errors.ReadOnlySqlTransaction as error:
                # A standby, or a primary put into read-only mode: nothing was written, and waiting
                # here would not change it (a failover moves the address instead).
                raise StoreUnavailable(f"the state database cannot take writes now: {_first_line(error)}") from None
            except psycopg.OperationalError as error:
                # Lost or refused connections, a server shutting down, deadlocks and serialization
                # failures (both rolled back), and the pool's own timeout are all OperationalErrors.
                if store is not None and (store.committing or store.commits):
                    # Running it again could do twice what may have been done; every transaction is
                    # whole either way, and a client's retry meets the committed state.
                    raise StoreUnavailable(f"the state database connection broke while committing: {_first_line(error)}") from None
                if time.monotonic() + delay >= deadline:
                    raise StoreUnavailable(f"the state database is unavailable: {_first_line(error)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def close(self) -> None:
        self._pool.close()
