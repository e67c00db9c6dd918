"""``StoreThread``: the store's own threads, so the reactor never waits on the database.

Services call ``store.call(operation)`` with a function of a ``Store``; it runs on a store
thread, against SQLite's one connection or a PostgreSQL connection from the pool, and its
result comes back on the reactor. The services never see which engine it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

from otad.pool import WorkerPool
from otad.store.records import StoreError
from otad.store.state import Database, Store

T = TypeVar("T")


class StoreThread(WorkerPool):
    """Runs every store call on the store's threads: one for SQLite (its commits are serial anyway),
    one per pooled connection for PostgreSQL."""

    def __init__(self, reactor: IReactorFromThreads, opener: Callable[[], Database], threads: int = 1) -> None:
        super().__init__(reactor, "otad-store", threads=threads)
        self._opener = opener
        self._database: Database | None = None

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
        return self.run(database.run, operation)

    def stopService(self) -> None:
        database, self._database = self._database, None
        if database is not None:
            self.run(database.close)
        super().stopService()
