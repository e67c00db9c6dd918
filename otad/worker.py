"""One worker process of ``[server] workers = N`` (see ``otad.workers``): the same configuration, the supervisor's sockets.

The supervisor runs ``python -c "from otad.worker import main; main()" SPEC``. The worker logs
to the supervisor's standard output, serves until SIGTERM or until its supervisor is gone, and
drains before it exits. SIGINT is left to the supervisor (a Ctrl-C reaches the whole process
group), which then stops the workers in order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import ILogObserver, LogEvent, globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure
from zope.interface import implementer

from otad import config as configuration
from otad.workers import PARENT_FD, WorkerSpec


class _ParentWatch:
    """Reads the pipe from the supervisor, which it never writes to: end of file means the supervisor is gone."""

    def __init__(self, fd: int, gone: Callable[[], None]) -> None:
        self._fd = fd
        self._gone = gone
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "supervisor-pipe"

    def doRead(self) -> None:
        try:
            data = os.read(self._fd, 512)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self._gone()
        return None

    def connectionLost(self, reason: Failure) -> None:
        # The reactor reports a hung-up pipe this way rather than by a read of nothing.
        self._gone()


def _tagged(observer: ILogObserver, index: int) -> ILogObserver:
    """Log lines that say which worker wrote them."""

    @implementer(ILogObserver)
    def tag(event: LogEvent) -> None:
        if "log_system" not in event:
            event = {**event, "log_system": f"worker {index} {event.get('log_namespace', '-')}#{event['log_level'].name}"}
        observer(event)

    return tag


def main(argv: list[str] | None = None) -> None:
    spec = WorkerSpec.from_json((argv if argv is not None else sys.argv[1:])[0])
    os.umask(0o077)
    # Only the supervisor speaks to systemd (NotifyAccess=main).
    os.environ.pop("NOTIFY_SOCKET", None)
    try:
        settings = configuration.load(Path(spec.config) if spec.config else None, spec.overrides)
    except configuration.ConfigError as error:
        print(f"otad cannot start: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    from twisted.internet import reactor

    from otad.tap import OtadService

    globalLogBeginner.beginLoggingTo([_tagged(textFileLogObserver(sys.stdout), spec.index)], redirectStandardIO=False)
    service = OtadService(settings, reactor, worker=spec)
    running: Any = reactor

    def supervisor_gone() -> None:
        running.removeReader(watch)
        with contextlib.suppress(ReactorNotRunning):
            # Unless a SIGTERM is already stopping it.
            running.stop()

    watch = _ParentWatch(PARENT_FD, supervisor_gone)
    running.addReader(watch)
    running.callWhenRunning(service.startService)
    running.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    running.addSystemEventTrigger("before", "shutdown", service.stopService)
    running.run()
