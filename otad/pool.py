"""A named thread pool as a Twisted service, for work that must not run on the reactor thread.

otad has three: one thread for SQLite (a single connection, writes serialised), a small pool
for RSA and CMS work (cryptography >= 47 releases the GIL during RSA operations), and one for
bcrypt, so that slow password checks never queue ahead of the enrollment steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class WorkerPool(Service):
    """Runs blocking calls on its own threads and hands the results back to the reactor."""

    def __init__(self, reactor: IReactorFromThreads, name: str, threads: int) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name=name)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def run(self, call: Callable[..., T], *args: Any) -> Deferred[T]:
        """``call(*args)`` on a pool thread; the Deferred fires on the reactor thread."""
        return deferToThreadPool(self._reactor, self._pool, call, *args)
