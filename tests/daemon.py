"""Runs the real ``twistd otad`` in a child process on an ephemeral TLS port on 127.0.0.1, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.ssl import Certificate
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(rb"otad listening on (https?)://[^:]+:(\d+)/")
_PASSWORD = re.compile(rb"user 'apple' and password (\S+);")
_WORKER = re.compile(rb"started worker (\d+) \(pid (\d+)\)")
_METRICS = re.compile(rb"otad metrics and health checks on http://[^ ]+:(\d+) ")


class DaemonExited(Exception):
    """The daemon exited before it was listening; the message holds its output."""


class Daemon(ProcessProtocol):
    """One ``twistd -n otad`` child. ``start()`` fires with the port once it is listening."""

    def __init__(
        self,
        data_dir: Path,
        extra: Sequence[str] = (),
        listen: str = "ssl:0:interface=127.0.0.1",
        *,
        environment: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """``prefix`` runs the daemon through another command (``setpriv --reuid=...``); ``environment`` adds variables."""
        self.data_dir = data_dir
        self.args = ["--data-dir", str(data_dir), "--hostname", "localhost", "--listen", listen, *extra]
        self.environment = dict(environment or {})
        self.prefix = list(prefix)
        self.output = b""
        self.errors = b""
        self.port = 0
        self.metrics_port = 0
        self._metrics: Deferred[int] = Deferred()
        self._listening: Deferred[int] = Deferred()
        self._exited: Deferred[int | None] = Deferred()
        self.exit_code: int | None = None
        self._watches: list[tuple[re.Pattern[bytes], int, Deferred[re.Match[bytes]]]] = []

    def start(self) -> Deferred[int]:
        environment = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **self.environment}
        twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
        command = [*self.prefix, *twistd, "otad", *self.args]
        global_reactor.spawnProcess(self, command[0], command, env=environment, path=str(self.data_dir.parent))
        return self._listening

    def outReceived(self, data: bytes) -> None:
        self.output += data
        metrics = _METRICS.search(self.output)
        if metrics and not self._metrics.called:
            self.metrics_port = int(metrics.group(1))
            self._metrics.callback(self.metrics_port)
        match = _LISTENING.search(self.output)
        if match and not self._listening.called:
            self.port = int(match.group(2))
            self._listening.callback(self.port)
        for watch in list(self._watches):
            pattern, start, found = watch
            seen = pattern.search(self.output, start)
            if seen:
                self._watches.remove(watch)
                found.callback(seen)

    def wait_for(self, pattern: bytes, after: int | None = None) -> Deferred[re.Match[bytes]]:
        """Fires with the first match of ``pattern`` in the output from offset ``after`` on (default: from now)."""
        compiled = re.compile(pattern)
        start = len(self.output) if after is None else after
        found: Deferred[re.Match[bytes]] = Deferred()
        seen = compiled.search(self.output, start)
        if seen:
            found.callback(seen)
        else:
            self._watches.append((compiled, start, found))
        return found

    @property
    def worker_pids(self) -> dict[int, int]:
        """The pid of each worker (``[server] workers``) as last started, from the supervisor's log."""
        return {int(index): int(pid) for index, pid in _WORKER.findall(self.output)}

    def errReceived(self, data: bytes) -> None:
        self.errors += data
        self.outReceived(data)

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = reason.value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        if not self._listening.called:
            self._listening.errback(DaemonExited(self.output.decode("utf-8", "replace")))
        if not self._metrics.called:
            # A waiter gets the failure; without one (no metrics listener), it is dropped here.
            self._metrics.errback(DaemonExited(self.output.decode("utf-8", "replace")))
            self._metrics.addErrback(lambda failure: None)
        self._exited.callback(self.exit_code)

    def metrics_listening(self) -> Deferred[int]:
        """Fires with the port of ``[metrics] listen`` (configured as tcp:0:interface=127.0.0.1) once it listens."""
        return self._metrics

    def metrics_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def operator_client(self) -> treq.client.HTTPClient:
        """A plain-HTTP client for the metrics listener that keeps no connection open after an answer."""
        return treq.client.HTTPClient(Agent(global_reactor))

    @property
    def first_password(self) -> str | None:
        match = _PASSWORD.search(self.output)
        return match.group(1).decode() if match else None

    def stop(self, sig: int = signal.SIGTERM) -> Deferred[int | None]:
        """Signal the daemon (SIGTERM, or SIGKILL for crash tests: its workers die with it) and wait until it has exited."""
        if self.exit_code is None and not self._exited.called:
            with contextlib.suppress(ProcessExitedAlready):
                self.transport.signalProcess({signal.SIGTERM: "TERM", signal.SIGKILL: "KILL"}[sig])
            if sig == signal.SIGKILL:
                for pid in self.worker_pids.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        return self._exited

    def signal(self, name: str) -> None:
        """Send a signal (``HUP`` to reload) without waiting."""
        self.transport.signalProcess(name)

    def exited(self) -> Deferred[int | None]:
        """Fires with the exit status (None if a signal ended it)."""
        return self._exited

    def url(self, path: str) -> str:
        return f"https://localhost:{self.port}{path}"

    def client(self) -> treq.client.HTTPClient:
        """An HTTP client that trusts only this daemon's root CA and checks the host name, as a device would."""
        trust = Certificate.loadPEM((self.data_dir / "certs" / "ca.pem").read_bytes())
        return treq.client.HTTPClient(Agent(global_reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust)))
