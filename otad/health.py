"""Readiness: whether this otad process should be sent requests now, for load balancers and systemd.

A process is ready once its keys are loaded and it listens, while its store answers, and until
it starts stopping (or draining). The store is asked with a cheap call on the store thread; a
store that does not answer within ``timeout`` makes the process not ready, and while one such
call is outstanding no second one is queued behind it.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from otad.errors import Refused, one_line
from otad.metrics import Metrics
from otad.store import Store, StoreThread

log = Logger()

STARTING = "starting: keys not loaded yet"
STOPPING = "stopping"
DRAINING = "draining"


class Readiness:
    """``problem()`` is None when ready, else the one-line reason why not."""

    def __init__(self, store: StoreThread, clock: IReactorTime, timeout: float = 2.0) -> None:
        self._store = store
        self._clock = clock
        self._timeout = timeout
        self._state: str | None = STARTING
        # Who waits for the outstanding store call (None: there is none).
        self._waiters: list[Deferred[None]] | None = None
        self._pinging_since = 0.0

    def ready(self) -> None:
        """Keys are loaded and the listeners bound: from now on only the store decides."""
        if self._state == STARTING:
            self._state = None

    def stopping(self) -> None:
        self._state = STOPPING

    def draining(self) -> None:
        """Finishing what it has, taking nothing new (for a supervisor that replaces a worker)."""
        if self._state != STOPPING:
            self._state = DRAINING

    @property
    def state(self) -> str | None:
        return self._state

    async def problem(self) -> str | None:
        if self._state is not None:
            return self._state
        try:
            await self._ping()
        except Refused as refused:
            return f"store: {refused.reason}"
        except Exception as error:  # noqa: BLE001 - any failure of the store means "not ready", said in one line
            return f"store: {one_line(str(error)) or type(error).__name__}"
        return self._state

    def _ping(self) -> Deferred[None]:
        """Wait for the outstanding store call, or make one; TimeoutError once it has taken ``timeout`` seconds."""
        answer: Deferred[None] = Deferred()
        first = self._waiters is None
        if self._waiters is None:
            self._waiters = []
            self._pinging_since = self._clock.seconds()
        self._waiters.append(answer)
        if first:
            try:
                pinging = self._store.call(Store.ping)
            except Exception:  # noqa: BLE001 - a store that is not open fails like one that is down
                pinging = fail()
            pinging.addBoth(self._answered)
        if not answer.called:
            remaining = max(0.0, self._timeout - (self._clock.seconds() - self._pinging_since))
            timer = self._clock.callLater(remaining, self._late, answer)

            def settled(result: object) -> object:
                if timer.active():
                    timer.cancel()
                return result

            answer.addBoth(settled)
        return answer

    def _late(self, answer: Deferred[None]) -> None:
        if not answer.called:
            answer.errback(TimeoutError(f"the database has not answered for {self._timeout:g}s"))

    def _answered(self, result: object) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if waiter.called:
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)


class ReadinessGauge(Service):
    """Sets ``otad_ready`` from ``Readiness`` every ``interval`` seconds, so that an alert needs no probe of its own;
    a change is logged once (not every check)."""

    def __init__(self, readiness: Readiness, metrics: Metrics, clock: IReactorTime, interval: float = 15.0) -> None:
        self._readiness = readiness
        self._metrics = metrics
        self._interval = interval
        self._last: str | None = ""
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def check(self) -> Deferred[None]:
        async def update() -> None:
            problem = await self._readiness.problem()
            self._metrics.ready.set(0 if problem else 1)
            if problem != self._last and (problem or self._last):
                if problem:
                    log.warn("not ready: {reason}", reason=problem, outcome="not ready")
                else:
                    log.info("ready", outcome="ready")
            self._last = problem

        # Never let a failure reach the LoopingCall, which would stop checking for good.
        return ensureDeferred(update()).addErrback(lambda failure: log.failure("checking readiness failed", failure=failure))
