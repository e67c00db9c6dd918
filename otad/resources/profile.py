"""``POST /profile``: the device's signed attributes (phase 2) or its identity-signed request (phase 3)."""

from __future__ import annotations

from twisted.web.server import Request

from otad.enrollment import Enrollment, RepeatRedirect
from otad.web import ASPEN_CONFIG, MethodResource, Refusal, Reply, base_url, render_async


class ProfileRequest(MethodResource):
    def __init__(self, enrollment: Enrollment, public_url: str) -> None:
        super().__init__()
        self._enrollment = enrollment
        self._public_url = public_url

    def render_POST(self, request: Request) -> object:
        assert request.content is not None
        body = request.content.read()

        async def answer() -> Reply:
            if not body:
                raise Refusal(400, "empty request body: expected a CMS signed device-attributes plist")
            url = base_url(request, self._public_url)
            try:
                signed_profile = await self._enrollment.profile(body, url)
            except RepeatRedirect as redirect:
                # Apple's sample server answers a repeat this way; [enrollment] on_repeat chooses it.
                location = f"{url}{redirect}".encode("ascii")
                return Reply(b"already enrolled: start again at /enroll\n", code=301, headers={b"location": location}, outcome="redirected")
            return Reply(signed_profile, ASPEN_CONFIG, outcome="profile sent")

        return render_async(request, answer)
