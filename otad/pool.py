"""A named thread pool as a Twisted service, for work that must not run on the reactor thread.

otad has three: one thread for SQLite (a single connection, writes serialised), a small pool
for RSA and CMS work (cryptography >= 47 releases the GIL during RSA operations), and one for
bcrypt, so that slow password checks never queue ahead of the enrollment steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from otad.errors import Unavailable
from otad.metrics import Metrics

T = TypeVar("T")


class PoolFull(Unavailable):
    """More calls are waiting for the pool than its queue holds; try again in a moment."""


class WorkerPool(Service):
    """Runs blocking calls on its own threads and hands the results back to the reactor.

    With ``queue`` set, at most ``threads + queue`` calls are in flight; more fail at once with
    PoolFull instead of waiting in an unbounded line (a flood of logins must not queue bcrypt
    work for minutes).

    With ``metrics``, the pool reports its running and waiting calls (and refusals) under its
    name less the ``otad-`` prefix.
    """

    def __init__(
        self, reactor: IReactorFromThreads, name: str, threads: int, queue: int | None = None, *, metrics: Metrics | None = None
    ) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name=name)
        self._threads = threads
        self._capacity = None if queue is None else threads + queue
        self._metrics = metrics
        self._label = name.removeprefix("otad-")
        self.in_flight = 0

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def run(self, call: Callable[..., T], *args: Any) -> Deferred[T]:
        """``call(*args)`` on a pool thread; the Deferred fires on the reactor thread (call it from there)."""
        if self._capacity is not None and self.in_flight >= self._capacity:
            if self._metrics is not None:
                self._metrics.pool_refused.labels(pool=self._label).inc()
            return fail(PoolFull("too many password checks are waiting; try again in a moment", retry_after=1))
        self._count(+1)
        running = deferToThreadPool(self._reactor, self._pool, call, *args)

        def done(result: T) -> T:
            self._count(-1)
            return result

        return running.addBoth(done)

    def _count(self, change: int) -> None:
        self.in_flight += change
        if self._metrics is not None:
            self._metrics.pool(self._label, self.in_flight, self._threads)
