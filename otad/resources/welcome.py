"""``GET /``: the welcome page that sends people to ``/CA`` and then ``/enroll``."""

from __future__ import annotations

from html import escape

from twisted.web.server import Request

from otad.web import MethodResource

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 2em; font-family: -apple-system, Helvetica, sans-serif; line-height: 1.4; }}
a.button {{ display: inline-block; padding: .6em 1.2em; border-radius: .4em; background: #0a64d8; color: #fff; text-decoration: none; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>This service enrolls your iPhone, iPad or Mac with {organization}.</p>
<h2>1. Trust the certificate authority</h2>
<p>If your browser warned you about this site's certificate, first download the
<a href="/CA">root certificate</a>, install it, and turn on full trust for it
(Settings &gt; General &gt; About &gt; Certificate Trust Settings on iOS).
The certificate enrollment step needs it, and later updates are checked against it.</p>
<h2>2. Enroll</h2>
<p>Then <a class="button" href="/enroll">enroll this device</a>. You will be asked for your
user name and password, and then to install a profile.</p>
</body>
</html>
"""


class WelcomePage(MethodResource):
    """A static page; the organisation's name is the only variable part, and it is HTML-escaped."""

    def __init__(self, organization: str, title: str) -> None:
        super().__init__()
        self._body = _PAGE.format(title=escape(title), organization=escape(organization)).encode("utf-8")

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'")
        return self._body
