"""Tests for otad.channel: framing refused at once, time limits a slow client cannot stretch, connection limits.

Each drives an OtadChannel in memory (a StringTransport per connection, a fake clock).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from twisted.web.resource import Resource
from twisted.web.server import Request

from otad.channel import ABORT_AFTER, Limits
from otad.metrics import Metrics
from otad.web import MethodResource, OtadSite, Reply, render_async

LIMITS = Limits(
    max_body=1000, head_timeout=10, idle_timeout=30, body_rate=100, body_idle=3, max_connections=5, max_connections_per_address=3
)


class Echo(MethodResource):
    def render_GET(self, request: Request) -> object:
        return render_async(request, lambda: Reply(b"hello"))

    def render_POST(self, request: Request) -> object:
        assert request.content is not None
        size = len(request.content.read())
        return render_async(request, lambda: Reply(str(size).encode()))


class ChannelTests(unittest.TestCase):
    def setUp(self) -> None:
        root = Resource()
        root.putChild(b"echo", Echo())
        self.clock = Clock()
        self.site = OtadSite(root, LIMITS, metrics=Metrics(), reactor=self.clock)

    def connect(self, host: str = "192.0.2.1") -> tuple[object, StringTransport]:
        channel = self.site.buildProtocol(IPv4Address("TCP", host, 1234))
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 1234))
        channel.makeConnection(transport)
        return channel, transport

    def assertRefused(self, transport: StringTransport, status: bytes, words: bytes) -> None:
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 " + status), answer)
        self.assertIn(words, answer)
        self.assertTrue(transport.disconnecting)

    def test_bare_lf_is_refused_at_once(self) -> None:
        """A request whose lines end in a bare LF gets 400 at once instead of waiting for a CRLF that never comes."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\nHost: x\n\n")
        self.assertRefused(transport, b"400 ", b"must end with CRLF")

    def test_crlf_requests_still_work_and_keep_alive(self) -> None:
        """Two pipelined CRLF requests on one connection are both answered, in order."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertFalse(transport.disconnecting)

    def test_control_bytes_in_a_header_value(self) -> None:
        """A header value holding \\x0b, \\x1c, \\x1e or NUL gets 400 with a reason, not a dropped connection."""
        for number, byte in enumerate((b"\x0b", b"\x1c", b"\x1e", b"\x00")):
            channel, transport = self.connect(f"192.0.2.{10 + number}")
            channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/" + byte + b"plain\r\nContent-Length: 2\r\n\r\nab")
            self.assertRefused(transport, b"400 ", b"control characters")

    def test_declared_body_over_cap_refused_before_reading_it(self) -> None:
        """A Content-Length over the cap gets 413 as soon as the headers end, with no 100 Continue, before any body."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
        self.assertRefused(transport, b"413 ", b"larger than 1000 bytes")
        self.assertNotIn(b"100 Continue", transport.value())

    def test_short_body_times_out(self) -> None:
        """A body shorter than its Content-Length gets 408 once it has paused for body_idle."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\nonly this")
        self.clock.advance(2.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.2)
        self.assertRefused(transport, b"408 ", b"did not arrive in time")

    def test_trickled_body_hits_the_rate_deadline(self) -> None:
        """A body trickled a byte every 2 s (never pausing body_idle) still gets 408 at head_timeout plus
        length / body_rate: the rate cannot be stretched either."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n")
        for _ in range(7):
            self.clock.advance(2)
            channel.dataReceived(b"x")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(10 + 500 / 100 - 14 + 0.1)
        self.assertRefused(transport, b"408 ", b"did not arrive in time")

    def test_expect_continue_without_a_body(self) -> None:
        """Expect: 100-continue followed by no body gets 100 Continue, then 408 once the body has paused body_idle."""
        channel, transport = self.connect()
        channel.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n")
        self.assertIn(b"100 Continue", transport.value())
        self.clock.advance(3.1)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_trickled_headers_cannot_stretch_the_deadline(self) -> None:
        """One header line every 2 s: the connection still gets 408 at head_timeout (10 s), not never."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\n")
        for number in range(4):
            self.clock.advance(2)
            channel.dataReceived(b"X-Slow-%d: y\r\n" % number)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(2.1)
        self.assertRefused(transport, b"408 ", b"did not arrive in time")

    def test_half_sent_request_line(self) -> None:
        """A request line that never ends gets 408 at head_timeout, counted from the connection."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /ec")
        self.clock.advance(10.1)
        self.assertRefused(transport, b"408 ", b"did not arrive in time")

    def test_silent_connection_and_idle_keep_alive(self) -> None:
        """A connection that sends nothing is answered 408 at head_timeout; one that finished a request and stays
        silent is closed (with no answer, none being owed) after idle_timeout."""
        channel, transport = self.connect()
        self.clock.advance(10.1)
        self.assertRefused(transport, b"408 ", b"did not arrive in time")
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = transport.value()
        self.assertIn(b"200 OK", answered)
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), answered)

    def test_next_request_gets_its_own_head_deadline(self) -> None:
        """On a kept-alive connection, the next request's first byte starts a new head_timeout."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(25)
        channel.dataReceived(b"GET /echo HT")
        self.clock.advance(9.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())

    def test_connection_limits(self) -> None:
        """Past max_connections_per_address from one address, and past max_connections in all, new connections
        get 503 with Retry-After; a closed connection frees its place."""
        kept = [self.connect("192.0.2.1") for _ in range(3)]
        _, transport = self.connect("192.0.2.1")
        self.assertRefused(transport, b"503 ", b"from your address")
        self.assertIn(b"Retry-After: 5\r\n", transport.value())
        kept += [self.connect("192.0.2.2") for _ in range(2)]
        _, transport = self.connect("192.0.2.3")
        self.assertRefused(transport, b"503 ", b"too many connections to this server")
        kept[0][0].connectionLost(None)  # type: ignore[attr-defined, arg-type]
        _, transport = self.connect("192.0.2.3")
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)

    def test_refused_peer_that_does_not_read_is_aborted(self) -> None:
        """After a refusal the connection is closed; if the peer still holds it ABORT_AFTER later, it is aborted."""
        channel, transport = self.connect()
        aborted: list[bool] = []
        transport.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
        channel.dataReceived(b"GET /echo HTTP/1.1\nHost: x\n\n")
        self.clock.advance(ABORT_AFTER + 1)
        self.assertEqual(aborted, [True])


class DrainTests(unittest.TestCase):
    """``OpenChannels.drain``, as a stopping daemon uses it."""

    setUp = ChannelTests.setUp
    connect = ChannelTests.connect

    def test_idle_closed_busy_answered_then_closed(self) -> None:
        """An idle kept-alive connection closes at once; one mid-body is answered with Connection: close, then closed."""
        idle, idle_transport = self.connect("192.0.2.20")
        idle.dataReceived(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertFalse(idle_transport.disconnecting)
        busy, busy_transport = self.connect("192.0.2.21")
        busy.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
        drained = self.site.open_channels.drain(self.clock, 10)
        self.assertTrue(idle_transport.disconnecting)
        self.assertFalse(busy_transport.disconnecting)
        busy.dataReceived(b"cd")
        answer = busy_transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 OK"), answer)
        self.assertIn(b"connection: close", answer.lower())
        self.assertTrue(busy_transport.disconnecting)
        for channel in (idle, busy):
            channel.connectionLost()
        self.assertEqual(self.successResultOf(drained), 0)

    def test_drain_gives_up_at_the_timeout(self) -> None:
        """A request that never completes is cut off at the timeout, and the drain says how many were."""
        stuck, transport = self.connect("192.0.2.22")
        stuck.dataReceived(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\na")
        drained = self.site.open_channels.drain(self.clock, 10)
        self.clock.advance(9)
        self.assertNoResult(drained)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(drained), 1)
        self.assertTrue(transport.disconnected or transport.disconnecting)
