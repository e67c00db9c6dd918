"""``[server] workers = N``: the main process starts N worker processes on the sockets it bound, and keeps them running.

The main process (the supervisor) creates and renews certificates, upgrades the store and binds
every listening socket; it serves no requests. Each worker inherits the sockets and serves them
with its own reactor, pools and store connection (``otad.worker``). All state that must agree
across workers (challenges, serials, deliveries, approvals, login failures, CRL numbers) lives in
the store, whose transactions already make one winner of any race.

A worker that dies is started again (at once the first time, then backing off to 30 s while it
keeps dying young). SIGTERM drains: workers stop accepting, answer what they are working on, and
exit; SIGHUP is passed on so that they re-read renewed certificates. A worker notices its
supervisor's death by the end of a pipe and drains on its own, so no worker outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

# In a worker: it writes "ready" here once it serves; its supervisor's end of the other pipe
# (read on PARENT_FD) closes when the supervisor dies.
STATUS_FD = 3
PARENT_FD = 4
# A worker that dies within this many seconds of starting is "dying young": restarts back off.
YOUNG = 60
MAX_BACKOFF = 30
# After drain_timeout, a worker has this long to exit before it is killed.
EXIT_GRACE = 5


@dataclass(frozen=True)
class InheritedSocket:
    """A listening socket the supervisor bound, at the same descriptor number in the worker."""

    fd: int
    family: int


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is told on its command line: which configuration to load and which sockets are its listeners."""

    index: int
    config: str | None
    overrides: dict[str, Any]
    sockets: list[InheritedSocket] = field(default_factory=list)
    # [metrics] listen: served by the workers too, from the metrics of all of them.
    metrics_sockets: list[InheritedSocket] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(
            data["index"],
            data["config"],
            data["overrides"],
            [InheritedSocket(**entry) for entry in data["sockets"]],
            [InheritedSocket(**entry) for entry in data["metrics_sockets"]],
        )


def worker_command(spec: WorkerSpec) -> list[str]:
    return [sys.executable, "-c", "from otad.worker import main; main()", spec.to_json()]


class WorkerExited(Exception):
    """A worker exited before it was serving; str() says how."""


def _describe_end(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    signal_number = getattr(value, "signal", None)
    if signal_number is not None:
        return f"was killed by {signal.Signals(signal_number).name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: Supervisor, index: int, started: float) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = started
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self._status = b""
        # Kept: the transport forgets the pid once the process is reaped.
        self.pid: int | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != STATUS_FD:
            return
        self._status += data
        if b"ready\n" in self._status and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason: Failure) -> None:
        how = _describe_end(reason)
        if not self.ready.called:
            self.ready.errback(WorkerExited(f"worker {self.index} {how} before it was serving"))
        self.ended.callback(None)
        self.supervisor.ended(self, how)

    def signal(self, name: str) -> None:
        if self.transport is not None and not self.ended.called:
            self.transport.signalProcess(name)


class Supervisor:
    """Starts ``count`` workers and keeps that many running until ``stop``."""

    def __init__(
        self,
        reactor: Any,
        count: int,
        spec: Callable[[int], WorkerSpec],
        drain_timeout: float,
        command: Callable[[WorkerSpec], list[str]] = worker_command,
        *,
        environment: dict[str, str] | None = None,
        on_end: Callable[[int], None] | None = None,
    ) -> None:
        """``environment`` adds variables for the workers; ``on_end`` hears the pid of each worker that ends."""
        self._reactor = reactor
        self._environment = environment or {}
        self._on_end = on_end
        self._count = count
        self._spec = spec
        self._drain_timeout = drain_timeout
        self._command = command
        self._workers: dict[int, _Worker] = {}
        self._backoff: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopping = False
        self._serving = False

    @property
    def pids(self) -> list[int]:
        return [pid for worker in self._workers.values() if (pid := worker.pid) is not None]

    def start(self) -> Deferred[Any]:
        """Start every worker; fires once all serve, or fails with the first that could not start."""
        starting = DeferredList([self._spawn(index).ready for index in range(self._count)], fireOnOneErrback=True, consumeErrors=True)

        def serving(result: object) -> object:
            self._serving = True
            return result

        def first_failure(failure: Failure) -> Failure:
            # DeferredList wraps the first failure; the caller wants the worker's own reason.
            return failure.value.subFailure

        return starting.addCallbacks(serving, first_failure)

    def _spawn(self, index: int) -> _Worker:
        spec = self._spec(index)
        worker = _Worker(self, index, self._reactor.seconds())
        # Logs go where the supervisor's go; the sockets keep their numbers.
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2, STATUS_FD: "r", PARENT_FD: "w"}
        for inherited in (*spec.sockets, *spec.metrics_sockets):
            child_fds[inherited.fd] = inherited.fd
        command = self._command(spec)
        process = self._reactor.spawnProcess(worker, command[0], command, env={**os.environ, **self._environment}, childFDs=child_fds)
        worker.pid = process.pid
        self._workers[index] = worker
        log.info("started worker {index} (pid {pid})", index=index, pid=worker.pid)
        return worker

    def ended(self, worker: _Worker, how: str) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        if self._on_end is not None and worker.pid is not None:
            self._on_end(worker.pid)
        if self._stopping:
            log.info("worker {index} {how}", index=worker.index, how=how)
            return
        if not self._serving:
            # Still starting: the failed start reports it and stops otad.
            return
        lived = self._reactor.seconds() - worker.started
        previous = self._backoff.get(worker.index)
        delay = 0.0 if lived >= YOUNG or previous is None else min(MAX_BACKOFF, max(1.0, 2 * previous))
        self._backoff[worker.index] = delay
        log.error("worker {index} {how}; starting another in {delay:.0f} s", index=worker.index, how=how, delay=delay)
        self._restarts[worker.index] = self._reactor.callLater(delay, self._restart, worker.index)

    def _restart(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        replacement = self._spawn(index)
        replacement.ready.addErrback(lambda failure: log.error("{reason}", reason=str(failure.value)))

    def signal(self, name: str) -> None:
        """Pass a signal (``HUP``) on to every worker."""
        for worker in list(self._workers.values()):
            worker.signal(name)

    def stop(self) -> Deferred[Any]:
        """SIGTERM every worker, and SIGKILL those still running after the drain timeout and a grace period."""
        self._stopping = True
        for restart in self._restarts.values():
            if restart.active():
                restart.cancel()
        self._restarts.clear()
        workers = list(self._workers.values())
        for worker in workers:
            worker.signal("TERM")

        def kill_stragglers() -> None:
            for worker in workers:
                if not worker.ended.called:
                    log.warn("worker {index} is still running after the drain; killing it", index=worker.index)
                    worker.signal("KILL")

        timer = self._reactor.callLater(self._drain_timeout + EXIT_GRACE, kill_stragglers)

        def stop_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return DeferredList([worker.ended for worker in workers]).addBoth(stop_timer)


def inherited_sockets(ports: Sequence[Any]) -> list[InheritedSocket]:
    """The supervisor's bound ports as sockets for its workers; the supervisor itself stops accepting on them."""
    sockets = []
    for port in ports:
        port.stopReading()
        sockets.append(InheritedSocket(port.fileno(), int(port.addressFamily)))
    return sockets
