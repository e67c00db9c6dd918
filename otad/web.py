"""HTTP plumbing shared by every resource: body caps, prompt refusals, async rendering and request logs.

Resources answer with a ``Reply`` or raise ``Refusal`` (an HTTP status of their own); the
services below them raise ``otad.errors.Refused``, whose kind is mapped to a status here and
nowhere else. ``render_async`` turns any of them into a response, logs anything unexpected as a
500 without showing a traceback to the client, and never writes after the client has gone.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from otad.channel import ConnectionCounter, Limits, OpenChannels, OtadChannel
from otad.errors import Kind, Refused, one_line, printable
from otad.forwarded import HOST, ForwardedError, Origin, TrustedProxies
from otad.metrics import Metrics

log = Logger()

# Apple's content type for configuration profiles, signed or not.
ASPEN_CONFIG = b"application/x-apple-aspen-config"

# The one mapping from the services' refusal kinds to HTTP.
STATUS_FOR_KIND = {
    Kind.MALFORMED: 400,
    Kind.UNAUTHENTICATED: 401,
    Kind.FORBIDDEN: 403,
    Kind.THROTTLED: 429,
    Kind.BROKEN: 500,
    Kind.UNAVAILABLE: 503,
}


@dataclass
class Reply:
    """A successful answer."""

    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    code: int = 200
    headers: Mapping[bytes, bytes] = field(default_factory=dict)
    outcome: str = "ok"


class Refusal(Exception):
    """A client error: ``code`` (4xx) and a one-line ``reason`` that is shown to the client and logged."""

    def __init__(self, code: int, reason: str, headers: Mapping[bytes, bytes] | None = None) -> None:
        safe = one_line(reason) if reason else http.RESPONSES.get(code, b"").decode()
        super().__init__(safe)
        self.code = code
        self.reason = safe
        self.headers = dict(headers or {})


def as_refusal(refused: Refused) -> Refusal:
    """The HTTP answer to a service's refusal: its kind's status, its reason, and Retry-After when it has one."""
    headers = {b"retry-after": str(refused.retry_after).encode()} if refused.retry_after is not None else {}
    return Refusal(STATUS_FOR_KIND[refused.kind], refused.reason, headers)


def _plain(request: Request, code: int, text: str, headers: Mapping[bytes, bytes] = {}) -> bytes:
    body = (text + "\n").encode("utf-8")
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    for name, value in headers.items():
        request.setHeader(name, value)
    return body


def refuse(request: Request, refusal: Refusal | Refused) -> bytes:
    """Write a refusal's status and headers, note it for the request log, and return its body."""
    if isinstance(refusal, Refused):
        refusal = as_refusal(refusal)
    request.otad_outcome = "error" if refusal.code >= 500 else "refused"  # type: ignore[attr-defined]
    request.otad_reason = refusal.reason  # type: ignore[attr-defined]
    return _plain(request, refusal.code, refusal.reason, refusal.headers)


def _apply(request: Request, reply: Reply) -> bytes:
    request.setResponseCode(reply.code)
    request.setHeader(b"content-type", reply.content_type)
    # A length rather than chunked encoding: SCEP and OCSP clients are not all full HTTP/1.1 clients.
    request.setHeader(b"content-length", str(len(reply.body)).encode("ascii"))
    for name, value in reply.headers.items():
        request.setHeader(name, value)
    request.otad_outcome = reply.outcome  # type: ignore[attr-defined]
    return reply.body


def render_async(request: Request, handler: Callable[[], Awaitable[Reply] | Reply]) -> object:
    """Render ``handler()`` (a coroutine, Deferred or plain Reply) into ``request``.

    Returns NOT_DONE_YET; the response is written when the handler finishes, unless the client
    has disconnected, in which case the handler's Deferred is cancelled.
    """
    try:
        result = handler()
    except (Refusal, Refused) as refusal:
        return refuse(request, refusal)
    except Exception:
        log.failure("unexpected error in {path}", path=_path(request))
        request.otad_outcome = "error"  # type: ignore[attr-defined]
        return _plain(request, 500, "internal error")
    if isinstance(result, Reply):
        return _apply(request, result)
    work: Deferred[Reply] = ensureDeferred(result)  # type: ignore[arg-type]
    # A request whose connection went while it waited its turn behind a pipelined one is already
    # disconnected (Twisted then clears its channel), and notifyFinish would never fire for it.
    gone = request.channel is None

    def client_gone(_: object) -> None:
        nonlocal gone
        gone = True
        work.cancel()

    if gone:
        work.cancel()
    else:
        request.notifyFinish().addErrback(client_gone)

    def done(reply: Reply) -> None:
        if not gone:
            request.write(_apply(request, reply))
            request.finish()

    def failed(failure: Failure) -> None:
        if gone and failure.check(CancelledError):
            return
        if failure.check(Refusal, Refused):
            body = refuse(request, failure.value)
        else:
            log.failure("unexpected error in {path}", failure=failure, path=_path(request))
            request.otad_outcome = "error"  # type: ignore[attr-defined]
            body = _plain(request, 500, "internal error")
        if not gone:
            request.write(body)
            request.finish()

    work.addCallbacks(done, failed).addErrback(lambda failure: log.failure("while answering", failure=failure))
    return NOT_DONE_YET


def _path(request: Request) -> str:
    return request.path.decode("ascii", "replace")


class MethodResource(Resource):
    """A leaf resource that answers 405 with an Allow header for methods it doesn't implement."""

    isLeaf = True

    def render(self, request: Request) -> object:
        method = request.method.decode("ascii", "replace")
        if method == "HEAD":
            method = "GET"  # Resource.render answers HEAD with render_GET, minus the body
        if not hasattr(self, "render_" + method):
            allowed = sorted(name[len("render_") :] for name in dir(self) if name.startswith("render_"))
            return refuse(request, Refusal(405, f"method {method} not allowed here", {b"allow": ", ".join(allowed).encode()}))
        return super().render(request)


class NotFound(Resource):
    """Every unknown path: 404 with a one-line reason."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return refuse(request, Refusal(404, f"no such resource: {_path(request)}"))


class OtadRequest(Request):
    """A Request whose body is capped as it arrives: past ``max_body`` bytes it is thrown away and answered 413."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_body: int = getattr(getattr(self.channel, "site", None), "max_body", 65536)
        self.otad_started = time.monotonic()
        self.otad_user: str | None = None
        self.otad_outcome = "ok"
        # Set once the headers are in (process): the client and URL as the trusted proxies tell them.
        self.otad_origin: Origin | None = None
        self.otad_reason: str | None = None
        self._body_size = 0
        self._too_large = False

    def gotLength(self, length: int | None) -> None:
        # Bodies are capped at max_body, so memory is the right place for them.
        self._body = BytesIO()
        self.content = self._body  # type: ignore[assignment]
        self._too_large = length is not None and length > self.max_body

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(data)
        if self._body_size > self.max_body:
            # Throw away what was kept; the rest is ignored as it arrives and answered 413.
            self._too_large = True
            self._body.seek(0)
            self._body.truncate()
            return
        self._body.write(data)

    def process(self) -> None:
        proxies: TrustedProxies = getattr(getattr(self.channel, "site", None), "proxies", None) or TrustedProxies()
        peer = str(getattr(self.getClientAddress(), "host", None) or "local")
        forwarded_error = None
        try:
            self.otad_origin = proxies.origin(peer, self.isSecure(), self.requestHeaders)
        except ForwardedError as error:
            forwarded_error = str(error)
        if self._too_large:
            # The rest of an oversized body may still be in flight: close rather than parse it.
            self.channel.persistent = False
            self.setHeader(b"connection", b"close")
            self.write(refuse(self, Refusal(413, f"request body larger than {self.max_body} bytes")))
            self.finish()
            return
        if self.channel is not None and getattr(self.channel, "draining", False):
            # The daemon is stopping: this answer is the connection's last.
            self.channel.persistent = False
            self.setHeader(b"connection", b"close")
        if forwarded_error is not None:
            self.write(refuse(self, Refusal(400, forwarded_error)))
            self.finish()
            return
        super().process()


class OtadSite(Site):
    """The site: OtadChannels under ``limits``, OtadRequests with the body cap, and a structured event
    and a count per request.

    Twisted's own idle timeout is off (``timeout=None``): each line a slow client sends would
    restart it; OtadChannel's limits replace it. Form bodies are never parsed: otad reads no forms.
    Requests are counted by route: the first path segment when the root has a child of that name
    (``/enroll``, ``/scep``...), else ``other``, so no client can invent a label.
    """

    requestFactory = OtadRequest
    protocol = OtadChannel  # type: ignore[assignment]

    def __init__(
        self, resource: Resource, limits: Limits | None = None, proxies: TrustedProxies | None = None, *, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(resource, timeout=None, parsePOSTFormSubmission=False, **kwargs)
        self.limits = limits or Limits()
        self.max_body = self.limits.max_body
        self.proxies = proxies or TrustedProxies()
        # A trusted proxy carries many clients on its connections: it is not one abusive address.
        self.connections = ConnectionCounter(self.limits, exempt=self.proxies.trusts)
        self.open_channels = OpenChannels()
        self.displayTracebacks = False
        self.metrics = metrics
        self._routes = {name: "/" + name.decode("ascii") for name in getattr(resource, "children", {})}

    def route(self, request: http.Request) -> str:
        segments = request.path.split(b"/", 2)
        return self._routes.get(segments[1] if len(segments) > 1 else b"", "other")

    def log(self, request: http.Request) -> None:
        user = getattr(request, "otad_user", None)
        outcome = getattr(request, "otad_outcome", "ok")
        reason = getattr(request, "otad_reason", None)
        self.metrics.request(self.route(request), request.code, outcome)
        log.info(
            "{method} {path} {status} {outcome}{because} user={user} from {client} {ms}ms",
            method=printable(request.method.decode("latin-1"), 16),
            path=printable(request.path.decode("latin-1"), 200),
            status=request.code,
            outcome=printable(outcome),
            because=f" ({reason})" if reason else "",
            reason=reason,
            user=printable(user, 64) if user is not None else None,
            ms=round((time.monotonic() - getattr(request, "otad_started", time.monotonic())) * 1000, 1),
            client=client_address(request),
            proxy=origin(request).proxy,
        )


def origin(request: http.Request) -> Origin:
    """Where the request came from: what a trusted proxy said (OtadRequest), else the connection itself."""
    found = getattr(request, "otad_origin", None)
    if found is not None:
        return found
    return Origin(str(getattr(request.getClientAddress(), "host", None) or "local"), request.isSecure())


class OperatorSite(OtadSite):
    """The operator's listener (metrics and health): its requests are not device traffic, so they are
    not counted, and only those that fail are logged (a scrape every few seconds would drown the log)."""

    def log(self, request: http.Request) -> None:
        if request.code >= 400:
            log.info(
                "{method} {path} {status} {outcome} from {client}",
                method=printable(request.method.decode("latin-1"), 16),
                path=printable(request.path.decode("latin-1"), 200),
                status=request.code,
                outcome=printable(getattr(request, "otad_outcome", "ok")),
                reason=getattr(request, "otad_reason", None),
                client=client_address(request),
            )


def client_address(request: http.Request) -> str:
    """The client's address (``local`` for a Unix socket): behind a trusted proxy, the one it forwarded for."""
    return origin(request).client


def is_secure(request: http.Request) -> bool:
    """Whether the client used HTTPS: to otad itself, or to a trusted proxy that said so."""
    return origin(request).secure


def base_url(request: Request, public_url: str) -> str:
    """The URL prefix for payload URLs: ``public_url`` when configured, else the scheme and Host the client used.

    Apple's sample server also builds URLs from the Host header; we validate it first so a
    forged header cannot inject anything into a signed profile. Behind a trusted proxy the
    scheme and host are the ones it forwarded (X-Forwarded-Proto/-Host or Forwarded).
    """
    if public_url:
        return public_url
    source = origin(request)
    host = source.host or (request.getHeader(b"host") or b"").decode("latin-1")
    if not HOST.match(host):
        raise Refusal(400, "missing or malformed Host header")
    return f"{'https' if source.secure else 'http'}://{host}"
