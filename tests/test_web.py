"""Tests for otad.web at the HTTP-channel level: body caps, over-long lines, refusals, async rendering."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Request

from otad.channel import Limits
from otad.metrics import Metrics
from otad.web import MethodResource, OtadSite, Refusal, Reply, render_async


class Echo(MethodResource):
    """Answers a POST with the size of its body; the async variant waits for ``pending``."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: Deferred[Reply] | None = None
        self.cancelled = 0

    def render_POST(self, request: Request) -> object:
        size = len(request.content.read())
        return render_async(request, lambda: Reply(f"{size}".encode()))

    def render_GET(self, request: Request) -> object:
        def cancel(_: Deferred[Reply]) -> None:
            self.cancelled += 1

        self.pending = Deferred(cancel)
        pending = self.pending
        return render_async(request, lambda: pending)


class WebTests(unittest.TestCase):
    def setUp(self) -> None:
        root = Resource()
        self.echo = Echo()
        root.putChild(b"echo", self.echo)
        self.site = OtadSite(root, Limits(max_body=100), metrics=Metrics(), reactor=Clock())

    def connect(self) -> tuple[object, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_body_within_cap(self) -> None:
        """A body at the cap is delivered whole."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 100)
        self.assertIn(b"200 OK", transport.value())
        self.assertTrue(transport.value().endswith(b"100"))

    def test_declared_body_over_cap(self) -> None:
        """A Content-Length over the cap gets 413 with a reason, and the connection closes."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"a" * 101)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertIn(b"request body larger than 100 bytes", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_chunked_body_over_cap(self) -> None:
        """A chunked body that grows past the cap as it arrives gets 413, and the request's buffer is emptied."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            channel.dataReceived(b"32\r\n" + b"b" * 50 + b"\r\n")
        # What the request holds of its body once past the cap, before the end arrives.
        kept = channel.requests[-1]._body.getvalue()
        channel.dataReceived(b"0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(kept, b"")

    def test_long_header_line(self) -> None:
        """A 20 KB header line gets a prompt 431 and the connection is closed, not left hanging."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertTrue(transport.disconnecting)

    def test_too_many_header_bytes(self) -> None:
        """Headers whose total passes Twisted's limit get a 400 with a body saying why, then a close."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(6)))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertIn(b"Content-Length", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_client_gone_cancels(self) -> None:
        """When the client disconnects before an async answer, the work is cancelled and nothing is written."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        channel.connectionLost(Exception("gone"))
        self.assertEqual(self.echo.cancelled, 1)
        self.assertEqual(transport.value(), b"")

    def test_async_refusal_and_error(self) -> None:
        """A Refusal from async work becomes its 4xx; any other exception a bare 500 with no traceback."""
        for outcome, expected in ((Refusal(403, "wrong signer\nsecond line"), b"403"), (ValueError("secret detail"), b"500")):
            channel, transport = self.connect()
            channel.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            assert self.echo.pending is not None
            self.echo.pending.errback(outcome)
            response = transport.value()
            self.assertIn(b"HTTP/1.1 " + expected, response)
            self.assertNotIn(b"second line", response)
            self.assertNotIn(b"secret detail", response)
            self.assertNotIn(b"Traceback", response)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)


class TwistedHookTests(unittest.TestCase):
    def setUp(self) -> None:
        self.site = OtadSite(Resource(), Limits(max_body=100), metrics=Metrics(), reactor=Clock())

    def test_bad_request_hook_still_exists_and_is_used(self) -> None:
        """Twisted's HTTPChannel still defines the private hook otad overrides and still calls it for a bad request
        line: if a Twisted upgrade renames or bypasses it, this fails instead of clients silently getting bare 400s."""
        import inspect

        from twisted.web import http

        from otad import channel

        self.assertTrue(hasattr(http.HTTPChannel, channel.TWISTED_BAD_REQUEST_HOOK))
        self.assertIn(f"self.{channel.TWISTED_BAD_REQUEST_HOOK}()", inspect.getsource(http.HTTPChannel.lineReceived))
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"NOT A REQUEST LINE\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertIn(b"malformed request", transport.value())
        self.assertTrue(transport.disconnecting)


class LostConnectionTests(unittest.TestCase):
    def test_render_after_the_connection_went(self) -> None:
        """Rendering into a request whose connection is already gone (its channel cleared) cancels the handler and
        writes nothing, instead of Twisted's 'finish called after connection lost' error."""
        root = Resource()
        echo = Echo()
        root.putChild(b"echo", echo)
        site = OtadSite(root, Limits(max_body=100), metrics=Metrics(), reactor=Clock())
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        [request] = channel.requests
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(request.channel)
        cancelled: list[object] = []
        pending: Deferred[Reply] = Deferred(cancelled.append)
        render_async(request, lambda: pending)
        self.assertEqual(len(cancelled), 1)
        self.assertFalse(request.finished)
