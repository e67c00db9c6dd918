"""``GET /enroll``: HTTP Basic authentication through twisted.cred, then the signed Profile Service payload."""

from __future__ import annotations

from typing import Any

from twisted.cred.portal import IRealm, Portal
from twisted.web.guard import BasicCredentialFactory, HTTPAuthSessionWrapper
from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

from otad.enrollment import Enrollment
from otad.users import HtpasswdChecker
from otad.web import ASPEN_CONFIG, MethodResource, Reply, base_url, render_async


class EnrollPage(MethodResource):
    """What an authenticated user gets: a fresh Profile Service payload with a one-time challenge."""

    def __init__(self, user: str, enrollment: Enrollment, public_url: str) -> None:
        super().__init__()
        self._user = user
        self._enrollment = enrollment
        self._public_url = public_url

    def render_GET(self, request: Request) -> object:
        request.otad_user = self._user  # type: ignore[attr-defined]

        async def answer() -> Reply:
            url = base_url(request, self._public_url)
            body = await self._enrollment.profile_service(self._user, url)
            return Reply(
                body,
                ASPEN_CONFIG,
                headers={b"content-disposition": b'attachment; filename="enroll.mobileconfig"'},
                outcome="profile service sent",
            )

        return render_async(request, answer)


@implementer(IRealm)
class EnrollRealm:
    """Gives each authenticated user their own EnrollPage."""

    def __init__(self, enrollment: Enrollment, public_url: str) -> None:
        self._enrollment = enrollment
        self._public_url = public_url

    def requestAvatar(self, avatarId: bytes | tuple[()], mind: Any, *interfaces: Any) -> tuple[Any, Any, Any]:
        if IResource not in interfaces or not isinstance(avatarId, bytes):
            raise NotImplementedError("otad only hands out web resources to named users")
        user = avatarId.decode("utf-8", "replace")
        return IResource, EnrollPage(user, self._enrollment, self._public_url), lambda: None


def enroll_resource(enrollment: Enrollment, checker: HtpasswdChecker, realm: str, public_url: str) -> IResource:
    """The guarded ``/enroll``: 401 with ``WWW-Authenticate: Basic realm=...`` until the credentials check out."""
    portal = Portal(EnrollRealm(enrollment, public_url), [checker])
    return HTTPAuthSessionWrapper(portal, [BasicCredentialFactory(realm)])
