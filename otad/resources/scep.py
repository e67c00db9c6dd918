"""``/scep`` (and ``/scep/``): the SCEP operations over HTTP, GET and POST, as RFC 8894 describes them."""

from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote_to_bytes

from twisted.web.server import Request

from otad.scep_responder import SCEPResponder
from otad.web import MethodResource, Refusal, Reply, render_async

PKI_MESSAGE = b"application/x-pki-message"
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=]")


def query_parameter(request: Request, name: bytes) -> bytes | None:
    """A raw query parameter, percent-decoded but with ``+`` kept as ``+``.

    Base64 uses ``+``; clients that forget to escape it would otherwise have it turned into
    a space by form decoding.
    """
    query = request.uri.partition(b"?")[2]
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key) == name:
            return unquote_to_bytes(value)
    return None


def decode_message(text: bytes) -> bytes:
    """The base64 ``message=`` of a GET PKIOperation, tolerating line breaks, spaces and missing padding."""
    compact = re.sub(rb"\s", b"", text)
    if _NOT_BASE64.search(compact):
        raise Refusal(400, "message is not base64")
    try:
        return base64.b64decode(compact + b"=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(400, "message is not valid base64") from None


class SCEPResource(MethodResource):
    def __init__(self, responder: SCEPResponder) -> None:
        super().__init__()
        self._responder = responder

    def _operation(self, request: Request) -> str:
        operation = query_parameter(request, b"operation")
        if not operation:
            raise Refusal(400, "missing operation parameter")
        # Refusals quote it, escaped (printable) and cut short.
        return operation.decode("latin-1")

    def render_GET(self, request: Request) -> object:
        def answer() -> Reply:
            operation = self._operation(request)
            if operation == "GetCACaps":
                return Reply(self._responder.capabilities(), b"text/plain", outcome="GetCACaps")
            if operation == "GetCACert":
                content_type, body = self._responder.ca_certificates()
                return Reply(body, content_type, outcome="GetCACert")
            if operation == "PKIOperation":
                message = query_parameter(request, b"message")
                if not message:
                    raise Refusal(400, "PKIOperation by GET needs a message parameter")
                return self._pki(decode_message(message), "GET")  # type: ignore[return-value]
            raise Refusal(400, f"unsupported SCEP operation: {operation[:40]}")

        return render_async(request, answer)

    def render_POST(self, request: Request) -> object:
        assert request.content is not None
        body = request.content.read()

        def answer() -> object:
            operation = self._operation(request)
            if operation != "PKIOperation":
                raise Refusal(400, f"unsupported SCEP operation by POST: {operation[:40]}")
            if not body:
                raise Refusal(400, "empty PKIOperation body")
            return self._pki(body, "POST")

        return render_async(request, answer)

    async def _pki(self, message: bytes, transport: str) -> Reply:
        cert_rep = await self._responder.pki_operation(message, transport)
        return Reply(cert_rep, PKI_MESSAGE, outcome="PKIOperation")
