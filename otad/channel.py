"""HTTP connections that answer or close promptly, whatever bytes arrive and at whatever pace.

Twisted's HTTPChannel parses requests; this subclass adds what a server facing the open network
needs around it: lines must end in CRLF (a bare LF is refused at once rather than waited on),
header values may not hold control characters, a declared body over the cap gets 413 before a
byte of it is read (and no ``100 Continue``), and time limits a slow client cannot stretch: the
request head (with a new connection's TLS handshake) within ``head_timeout``, the body at
``body_rate`` or faster with no pause longer than ``body_idle``, and ``idle_timeout`` between
kept-alive requests. Connections beyond
``max_connections`` in total or ``max_connections_per_address`` from one address (a trusted
proxy excepted) get 503.
A stopping daemon drains (``OpenChannels.drain``): idle connections close at once, the others
after the answer they are working on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

from otad.errors import printable

log = Logger()

# Request lines and single header lines longer than this get a 431 (Twisted's default is to
# drop the connection silently, which leaves clients hanging). SCEP by GET carries a whole
# base64 PKIMessage in the request line (about 3.5 KB from certmonger, more for 4096-bit keys).
MAX_LINE = 16384
# After otad has answered and closed, a peer that does not read gets this long before the
# connection is aborted.
ABORT_AFTER = 15
# RFC 9110 5.5: a field value is visible characters, spaces and tabs; controls are refused.
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# The one private Twisted hook otad overrides: HTTPChannel calls it for every request it cannot
# parse (a bad request line or header, too many header bytes, a bad Content-Length). Twisted's
# own answer has no body and no length; otad says why and closes. Twisted offers no public hook
# for this, so tests.test_web.TwistedHookTests fails loudly if the name or its callers change.
TWISTED_BAD_REQUEST_HOOK = "_respondToBadRequestAndDisconnect"


@dataclass(frozen=True)
class Limits:
    """What a connection may take; ``[limits]`` in the configuration."""

    max_body: int = 65536
    head_timeout: float = 4
    idle_timeout: float = 30
    body_rate: int = 2048
    body_idle: float = 3
    max_connections: int = 2048
    max_connections_per_address: int = 64


class ConnectionCounter:
    """Open connections, in total and per client address, for one site."""

    def __init__(self, limits: Limits, exempt: Callable[[str], bool] = lambda address: False) -> None:
        """``exempt`` names the addresses the per-address cap does not apply to (trusted proxies)."""
        self._limits = limits
        self._exempt = exempt
        self._per_address: Counter[str] = Counter()
        self.total = 0

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``, or say why it is refused (then it is not counted)."""
        if self.total >= self._limits.max_connections:
            return "too many connections to this server; try again shortly"
        if self._per_address[address] >= self._limits.max_connections_per_address and not self._exempt(address):
            return "too many connections from your address; try again shortly"
        self.total += 1
        self._per_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        self._per_address[address] -= 1
        if not self._per_address[address]:
            del self._per_address[address]


class OpenChannels:
    """A site's open connections, so that a stopping daemon can let their requests finish."""

    def __init__(self) -> None:
        self._channels: set[OtadChannel] = set()
        self._emptied: list[Deferred[int]] = []
        self.draining = False

    def __len__(self) -> int:
        return len(self._channels)

    def add(self, channel: OtadChannel) -> None:
        self._channels.add(channel)

    def discard(self, channel: OtadChannel) -> None:
        self._channels.discard(channel)
        if self.draining and not self._channels:
            waiting, self._emptied = self._emptied, []
            for emptied in waiting:
                emptied.callback(0)

    def drain(self, clock: IReactorTime, timeout: float) -> Deferred[int]:
        """Close idle connections now and the rest after their answers; fires with how many were cut off at ``timeout``."""
        self.draining = True
        for channel in list(self._channels):
            channel.close_when_answered()
        if not self._channels:
            return succeed(0)
        emptied: Deferred[int] = Deferred()
        self._emptied.append(emptied)

        def give_up() -> None:
            if emptied.called:
                return
            self._emptied.remove(emptied)
            remaining = list(self._channels)
            for channel in remaining:
                channel.abort()
            emptied.callback(len(remaining))

        timer = clock.callLater(timeout, give_up)

        def stop_timer(result: int) -> int:
            if timer.active():
                timer.cancel()
            return result

        return emptied.addCallback(stop_timer)


def _peer_address(transport: Any) -> str:
    peer = transport.getPeer() if transport is not None else None
    return str(getattr(peer, "host", None) or "local")


class OtadChannel(http.HTTPChannel):
    """An HTTP/1.1 channel with otad's framing rules, time limits and connection limits (see the module)."""

    MAX_LENGTH = MAX_LINE
    # Lines are split at LF and must end in CRLF: a bare LF gets a 400 at once.
    delimiter = b"\n"

    def __init__(self) -> None:
        super().__init__()
        self._closing = False
        self._counted: str | None = None
        self._timer: IDelayedCall | None = None
        self._body_pause: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        # Between requests (waiting for a first byte), reading a head, reading a body, or answering.
        self._phase = "idle"
        self._heads = 0
        # Whether bytes of a request not yet answered have arrived (a draining daemon waits for those).
        self._received = False
        self.draining = False

    @property
    def limits(self) -> Limits:
        return self.site.limits  # type: ignore[attr-defined]

    # -- connection lifetime -------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        address = _peer_address(self.transport)
        refusal = self.site.connections.admit(address)  # type: ignore[attr-defined]
        if refusal is not None:
            self._refuse_and_close(b"503 Service Unavailable", refusal.encode(), b"Retry-After: 5\r\n")
            return
        self._counted = address
        self.site.open_channels.add(self)  # type: ignore[attr-defined]
        # A new connection's first request head, TLS handshake included, is due within head_timeout.
        self._phase = "head"
        self._wait(self.limits.head_timeout, self._too_slow)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        if self._counted is not None:
            self.site.connections.release(self._counted)  # type: ignore[attr-defined]
            self._counted = None
        self.site.open_channels.discard(self)  # type: ignore[attr-defined]
        super().connectionLost(reason)

    def close_when_answered(self) -> None:
        """Close now if no request is under way, else once it is answered (with ``Connection: close``)."""
        self.draining = True
        self.persistent = False
        if not self._received and self._phase in ("idle", "head"):
            self._cancel()
            self._closing = True
            self.loseConnection()

    def abort(self) -> None:
        """Cut the connection: a drain that waited long enough."""
        self._closing = True
        self._cancel()
        self._abort_connection()

    def _wait(self, seconds: float, expired: Any) -> None:
        self._cancel()
        self._timer = self.callLater(seconds, expired)

    def _cancel(self) -> None:
        for timer in (self._timer, self._body_pause):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._body_pause = None

    def _too_slow(self) -> None:
        self._timer = None
        self._refuse_and_close(b"408 Request Timeout", b"the request did not arrive in time")

    def _idle_expired(self) -> None:
        self._timer = None
        self._closing = True
        self.loseConnection()

    # -- parsing -------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # After a refusal the connection is closing: whatever else arrives is not parsed.
        if self._closing:
            return
        self._received = self._received or bool(data)
        if self._phase == "idle" and data:
            self._start_head()
        elif self._phase == "body" and self._body_pause is not None and self._body_pause.active():
            self._body_pause.reset(self.limits.body_idle)
        super().dataReceived(data)

    def _start_head(self) -> None:
        self._heads += 1
        self._phase = "head"
        self._wait(self.limits.head_timeout, self._too_slow)

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if not line.endswith(b"\r"):
            self._refuse_and_close(b"400 Bad Request", b"request lines and headers must end with CRLF")
            return
        if self._phase == "idle":
            self._start_head()
        super().lineReceived(line[:-1])

    def headerReceived(self, line: bytes) -> bool:
        _, _, value = line.partition(b":")
        if _BAD_VALUE.search(value.strip(b" \t")):
            self._refuse_and_close(b"400 Bad Request", b"a header value holds control characters")
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        declared = self.length
        if declared is not None and declared > self.limits.max_body:
            # Refused before any of the body is read, and before Twisted would send 100 Continue.
            self._refuse_and_close(b"413 Content Too Large", f"request body larger than {self.limits.max_body} bytes".encode())
            return
        super().allHeadersReceived()
        if declared != 0:
            # A chunked body (no length) may be up to max_body long.
            size = self.limits.max_body if declared is None else declared
            self._phase = "body"
            self._wait(self.limits.head_timeout + size / self.limits.body_rate, self._too_slow)
            self._body_pause = self.callLater(self.limits.body_idle, self._too_slow)

    def allContentReceived(self) -> None:
        self._cancel()
        self._phase = "answering"
        super().allContentReceived()

    def requestDone(self, request: http.Request) -> None:
        heads = self._heads
        super().requestDone(request)
        # Unless a pipelined request has already begun, nothing unanswered has arrived.
        self._received = heads != self._heads
        if self.draining and not self._received:
            self._closing = True
            self._cancel()
            # HTTPChannel has closed it already unless the request asked for keep-alive after the drain began.
            if not getattr(self.transport, "disconnecting", False):
                self.loseConnection()
            return
        # Unless a pipelined request has already begun, wait for the next one.
        if heads == self._heads and self.persistent and not self._closing and self._phase == "answering":
            self._phase = "idle"
            self._wait(self.limits.idle_timeout, self._idle_expired)

    # -- refusals --------------------------------------------------------------------------------

    def _refuse_and_close(self, status: bytes, reason: bytes, headers: bytes = b"") -> None:
        if self._closing:
            return
        self._closing = True
        self._cancel()
        body = reason + b"\n"
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            + headers
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        self.site.metrics.http_connections_refused.labels(status=status.split(b" ", 1)[0].decode()).inc()  # type: ignore[attr-defined]
        log.info(
            "refused a connection's request: {status} {reason}",
            status=status.decode(),
            reason=printable(reason.decode("latin-1")),
            client=_peer_address(self.transport),
            outcome="refused",
        )
        self.loseConnection()
        self._abort = self.callLater(ABORT_AFTER, self._abort_connection)

    def _abort_connection(self) -> None:
        self._abort = None
        transport = self.transport
        if ITCPTransport.providedBy(transport) or hasattr(transport, "abortConnection"):
            transport.abortConnection()  # type: ignore[union-attr]

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_and_close(b"431 Request Header Fields Too Large", b"request line or header line too long")

    def _bad_request(self) -> None:
        self._refuse_and_close(b"400 Bad Request", b"malformed request or headers too large")


setattr(OtadChannel, TWISTED_BAD_REQUEST_HOOK, OtadChannel._bad_request)
