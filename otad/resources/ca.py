"""``GET /CA``: the root certificate, DER, so that Safari offers to install it."""

from __future__ import annotations

from twisted.web.server import Request

from otad.web import MethodResource


class RootCertificate(MethodResource):
    def __init__(self, der: bytes) -> None:
        super().__init__()
        self._der = der

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/x-x509-ca-cert")
        request.setHeader(b"content-disposition", b'attachment; filename="ca.der"')
        return self._der
