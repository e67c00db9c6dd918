"""``GET /enroll``: HTTP Basic authentication (throttled, and only over TLS), then the signed Profile Service payload."""

from __future__ import annotations

from twisted.cred.error import LoginFailed
from twisted.web.guard import BasicCredentialFactory
from twisted.web.server import Request

from otad.enrollment import Enrollment
from otad.errors import Kind, Refused, printable
from otad.logins import LoginGuard
from otad.metrics import Metrics
from otad.web import ASPEN_CONFIG, MethodResource, Refusal, Reply, base_url, client_address, is_secure, render_async


class EnrollResource(MethodResource):
    """401 with ``WWW-Authenticate: Basic realm=...`` until the credentials check out; then a fresh Profile Service payload.

    Over a plain-HTTP listener it refuses credentials (403), unless ``allow_plain_http`` or a trusted
    proxy says the client used HTTPS to reach it: a password must never cross the network in clear text.
    """

    def __init__(
        self, enrollment: Enrollment, guard: LoginGuard, realm: str, public_url: str, allow_plain_http: bool, *, metrics: Metrics
    ) -> None:
        super().__init__()
        self._metrics = metrics
        self._enrollment = enrollment
        self._guard = guard
        self._credentials = BasicCredentialFactory(realm.encode("ascii"))
        self._challenge = {b"www-authenticate": b'Basic realm="' + realm.encode("ascii") + b'"'}
        self._public_url = public_url
        self._allow_plain_http = allow_plain_http

    def _decode(self, request: Request) -> tuple[bytes, bytes] | None:
        header = request.getHeader(b"authorization")
        if not header:
            return None
        scheme, _, response = header.partition(b" ")
        if scheme.lower() != b"basic":
            self._metrics.login_failures.labels(reason="malformed").inc()
            raise Refusal(401, "only HTTP Basic authentication is accepted", self._challenge)
        try:
            credentials = self._credentials.decode(response.strip(), request)
        except LoginFailed:
            self._metrics.login_failures.labels(reason="malformed").inc()
            raise Refusal(401, "malformed Basic credentials", self._challenge) from None
        return credentials.username, credentials.password

    def render_GET(self, request: Request) -> object:
        async def answer() -> Reply:
            if not is_secure(request) and not self._allow_plain_http:
                if request.getHeader(b"authorization"):
                    self._metrics.login_failures.labels(reason="plain_http").inc()
                raise Refusal(403, "use https: otad accepts passwords only over TLS")
            credentials = self._decode(request)
            if credentials is None:
                raise Refusal(401, "log in to enroll", self._challenge)
            name, password = credentials
            request.otad_user = printable(name.decode("utf-8", "replace"), 64)  # type: ignore[attr-defined]
            try:
                user = await self._guard.login(client_address(request), name, password)
            except Refused as refused:
                if refused.kind is Kind.UNAUTHENTICATED:
                    raise Refusal(401, refused.reason, self._challenge) from None
                raise
            body = await self._enrollment.profile_service(user, base_url(request, self._public_url))
            return Reply(
                body,
                ASPEN_CONFIG,
                headers={b"content-disposition": b'attachment; filename="enroll.mobileconfig"'},
                outcome="profile service sent",
            )

        return render_async(request, answer)
