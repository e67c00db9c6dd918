"""``[server] json_log``: every log event as one JSON object per line, for a log pipeline.

Each line has ``time`` (ISO 8601, UTC, milliseconds, ``Z``), ``level``, ``message`` (the event's
text), ``logger`` (its namespace), then the event's own fields. Fields are copied from an
allow-list, never a deny-list: a field that is not named here (a password, a challenge, a key,
Twisted's ``log_*`` internals) cannot reach the file, whatever a new log call passes. A failure
adds ``error`` (its type and message, one line) and ``traceback``.
"""

from __future__ import annotations

import datetime
import json
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from otad.errors import printable

# The fields otad's log calls pass that are safe to keep: what happened to which request, device,
# certificate or file. Only these are copied.
FIELDS = frozenset(
    {
        # requests (otad.web, otad.channel)
        "method",
        "path",
        "status",
        "outcome",
        "reason",
        "user",
        "client",
        "ms",
        # enrollment and SCEP
        "phase",
        "udid",
        "serial",
        "transaction",
        "template",
        "kind",
        "cipher",
        "transport",
        "digest",
        "who",
        # the daemon's life
        "version",
        "data_dir",
        "url",
        "where",
        "description",
        "line",
        "problem",
        "count",
        "number",
        "keep",
    }
)
# Twisted's own events name their connection here (for example "HTTPChannel,5,127.0.0.1").
_SYSTEM = "log_system"
_PLAIN = (str, int, float, bool, type(None))


def _time(event: LogEvent) -> str:
    seconds = event.get("log_time")
    moment = datetime.datetime.fromtimestamp(seconds if isinstance(seconds, (int, float)) else 0, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _value(value: Any) -> Any:
    return value if isinstance(value, _PLAIN) else str(value)


def as_json(event: LogEvent) -> str:
    """One event as one line of JSON (no newline in it)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": _time(event),
        "level": getattr(level, "name", "info"),
        "message": formatEvent(event),
        "logger": str(event.get("log_namespace") or "-"),
    }
    if event.get(_SYSTEM) not in (None, "-"):
        record["system"] = str(event[_SYSTEM])
    for name in sorted(FIELDS.intersection(event)):
        record[name] = _value(event[name])
    # log.failure() passes log_failure; Twisted's legacy log.err (an "Unhandled Error") passes failure.
    failure = event.get("log_failure", event.get("failure"))
    if isinstance(failure, Failure):
        record["error"] = printable(f"{getattr(failure.type, '__name__', failure.type)}: {failure.getErrorMessage()}")
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, default=str)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes ``as_json(event)`` and a newline to ``stream`` for each event."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: LogEvent) -> None:
        self._stream.write(as_json(event) + "\n")
        self._stream.flush()
