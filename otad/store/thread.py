"""``StoreThread``: the store's own threads, so the reactor never waits on the database.

Services call ``store.call(operation)`` with a function of a ``Store``; it runs on a store
thread, against SQLite's one connection or a PostgreSQL connection from the pool, and its
result comes back on the reactor. The services never see which engine it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

from otad.metrics import Metrics
from otad.pool import WorkerPool
from otad.store.records import StoreError, StoreUnavailable
from otad.store.state import Database, Store

T = TypeVar("T")


def _answering(operation: Callable[[Store], T], database: Database, metrics: Metrics | None) -> T:
    """``database.run(operation)``, measured once as one call however often the engine ran it (PostgreSQL runs
    it again after a lost connection): its whole time, a write if any run of it began a transaction, and
    failed if the database could not answer."""
    started = time.monotonic()
    wrote = False
    failed = False

    def counted(store: Store) -> T:
        nonlocal wrote
        transactions = store.transactions
        try:
            return operation(store)
        finally:
            wrote = wrote or store.transactions != transactions

    try:
        return database.run(counted)
    except StoreUnavailable:
        failed = True
        raise
    finally:
        if metrics is not None:
            metrics.store_call("write" if wrote else "read", time.monotonic() - started, failed)


class StoreThread(WorkerPool):
    """Runs every store call on the store's threads: one for SQLite (its commits are serial anyway),
    one per pooled connection for PostgreSQL.

    With ``metrics``, each call's time is measured on the store thread, as a read or (when it began
    a transaction) a write.
    """

    def __init__(
        self, reactor: IReactorFromThreads, opener: Callable[[], Database], threads: int = 1, *, metrics: Metrics | None = None
    ) -> None:
        super().__init__(reactor, "otad-store", threads=threads, metrics=metrics)
        self._opener = opener
        self._database: Database | None = None
        self._store_metrics = metrics

    def open(self) -> Deferred[Database]:
        """Open (and upgrade) the database on a store thread."""

        def opened(database: Database) -> Database:
            self._database = database
            return database

        return self.run(self._opener).addCallback(opened)

    def call(self, operation: Callable[[Store], T]) -> Deferred[T]:
        """Run ``operation(store)`` on a store thread; a database that cannot answer (locked past the busy
        timeout, disk I/O errors, a PostgreSQL server that is down) fails it with ``StoreUnavailable``,
        which the resources answer 503."""
        database = self._database
        if database is None:
            raise StoreError("the store is not open")
        return self.run(_answering, operation, database, self._store_metrics)

    def stopService(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            self.run(database.close)
        super().stopService()
