"""``GET /crl`` (otad's current CRL) and ``/ocsp`` (RFC 6960: POST, or GET with the base64 request in the path)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_to_bytes

from twisted.web.server import Request

from otad.ocsp import OCSPResponder
from otad.revocation import CRLPublisher
from otad.web import MethodResource, Refusal, Reply, render_async

PKIX_CRL = b"application/pkix-crl"
OCSP_RESPONSE = b"application/ocsp-response"


class CRLResource(MethodResource):
    """The newest CRL, DER, as the store holds it (signing happens when revocations change, not per request)."""

    def __init__(self, publisher: CRLPublisher) -> None:
        super().__init__()
        self._publisher = publisher

    def render_GET(self, request: Request) -> object:
        def answer() -> Reply:
            current = self._publisher.current
            if current is None:
                raise Refusal(503, "no CRL has been published yet; try again shortly", {b"retry-after": b"5"})
            return Reply(current, PKIX_CRL, headers={b"content-disposition": b'attachment; filename="otad.crl"'}, outcome="CRL")

        return render_async(request, answer)


class OCSPResource(MethodResource):
    """OCSP over HTTP (RFC 6960 appendix A): the request as a POST body, or base64 (and URL-encoded) after ``/ocsp/``."""

    def __init__(self, responder: OCSPResponder) -> None:
        super().__init__()
        self._responder = responder

    async def _answer(self, der: bytes) -> Reply:
        return Reply(await self._responder.respond(der), OCSP_RESPONSE, outcome="OCSP")

    def render_POST(self, request: Request) -> object:
        assert request.content is not None
        body = request.content.read()
        return render_async(request, lambda: self._answer(body))

    def render_GET(self, request: Request) -> object:
        async def answer() -> Reply:
            encoded = unquote_to_bytes(request.path.split(b"/ocsp", 1)[1].lstrip(b"/"))
            if not encoded:
                raise Refusal(400, "GET /ocsp needs the base64 request in the path: /ocsp/BASE64")
            try:
                der = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
            except (binascii.Error, ValueError):
                # Not even base64: answered as OCSP does, with malformedRequest.
                der = b""
            return await self._answer(der)

        return render_async(request, answer)
