"""Tests for otad behind reverse proxies (otad.forwarded): whose forwarding headers count, how the client is
found, and what the production site does with it, driven in memory through OtadSite and OtadChannel."""

from __future__ import annotations

import base64
import ipaddress
import plistlib
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.http_headers import Headers

from otad import config
from otad.forwarded import ForwardedError, Origin, TrustedProxies
from tests.fakedevice import unwrap_signed
from tests.helpers import MemorySite

PROXIES = TrustedProxies([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:1::/48")])


def _headers(**values: str | list[str]) -> Headers:
    headers = Headers()
    for name, value in values.items():
        headers.setRawHeaders(name.replace("_", "-"), [value] if isinstance(value, str) else value)
    return headers


class TrustedProxiesTests(unittest.TestCase):
    def test_untrusted_peer_is_the_client(self) -> None:
        """From a peer outside trusted_proxies every forwarding header is ignored: the peer is the client, on its own scheme."""
        headers = _headers(x_forwarded_for="203.0.113.7", x_forwarded_proto="https", x_forwarded_host="evil.example")
        self.assertEqual(PROXIES.origin("192.0.2.9", False, headers), Origin("192.0.2.9", False))
        self.assertEqual(TrustedProxies().origin("10.0.0.2", True, headers), Origin("10.0.0.2", True))

    def test_rightmost_untrusted_hop_is_the_client(self) -> None:
        """X-Forwarded-For is walked from the right past trusted proxies; what the client wrote left of itself is not read."""
        headers = _headers(x_forwarded_for="not an address, 1.1.1.1, 203.0.113.7, 10.0.0.5")
        self.assertEqual(PROXIES.origin("10.0.0.2", False, headers), Origin("203.0.113.7", False, None, "10.0.0.2"))

    def test_several_lines_and_all_trusted(self) -> None:
        """Several X-Forwarded-For lines form one list in order; when every hop is trusted the leftmost one is the client."""
        headers = _headers(x_forwarded_for=["10.1.1.1, 10.2.2.2", "10.3.3.3"])
        self.assertEqual(PROXIES.origin("10.0.0.2", False, headers).client, "10.1.1.1")
        headers = _headers(x_forwarded_for=["198.51.100.1", "10.3.3.3"])
        self.assertEqual(PROXIES.origin("10.0.0.2", False, headers).client, "198.51.100.1")

    def test_ipv6_ports_and_mapped_peers(self) -> None:
        """IPv6 hops (bare or bracketed, with ports) and IPv4 hops with ports are read; an IPv4 peer seen by a dual-stack
        listener as ::ffff:a.b.c.d is trusted and logged as IPv4."""
        headers = _headers(x_forwarded_for="[2001:db8:cafe::17]:4711, 2001:db8:1::5")
        self.assertEqual(PROXIES.origin("2001:db8:1::9", False, headers), Origin("2001:db8:cafe::17", False, None, "2001:db8:1::9"))
        headers = _headers(x_forwarded_for="203.0.113.7:51234")
        self.assertEqual(PROXIES.origin("::ffff:10.0.0.2", False, headers), Origin("203.0.113.7", False, None, "10.0.0.2"))
        self.assertTrue(PROXIES.trusts("::ffff:10.9.9.9"))
        self.assertFalse(PROXIES.trusts("local"))

    def test_proto_and_host(self) -> None:
        """A trusted proxy's X-Forwarded-Proto says whether the client used HTTPS, and X-Forwarded-Host which host it asked for."""
        headers = _headers(x_forwarded_for="203.0.113.7", x_forwarded_proto="HTTPS", x_forwarded_host="otad.example.com:8443")
        self.assertEqual(PROXIES.origin("10.0.0.2", False, headers), Origin("203.0.113.7", True, "otad.example.com:8443", "10.0.0.2"))
        self.assertEqual(PROXIES.origin("10.0.0.2", True, _headers(x_forwarded_proto="http")), Origin("10.0.0.2", False, None, "10.0.0.2"))

    def test_malformed_from_a_trusted_proxy(self) -> None:
        """What a trusted proxy vouches for must be readable: each malformed value raises ForwardedError with a one-line reason."""
        cases = [
            (_headers(x_forwarded_for="203.0.113.7, 10.0.0.5, bogus"), "not an IP address"),
            (_headers(x_forwarded_for="[203.0.113.7]"), "not an IP address"),
            (_headers(x_forwarded_for=" , "), "is empty"),
            (_headers(x_forwarded_proto="ftp"), "must be http or https"),
            (_headers(x_forwarded_proto="https, http"), "one value"),
            (_headers(x_forwarded_proto=["https", "https"]), "one value"),
            (_headers(x_forwarded_host="otad.example.com/evil"), "not a host name"),
        ]
        for headers, reason in cases:
            with self.assertRaises(ForwardedError) as raised:
                PROXIES.origin("10.0.0.2", False, headers)
            self.assertIn(reason, str(raised.exception))
            self.assertNotIn("\n", str(raised.exception))

    def test_rfc7239_forwarded(self) -> None:
        """With proxy_headers = forwarded, RFC 7239's elements are walked the same way; proto and host come from the
        client's own element (the one its first proxy wrote); quoted values, IPv6 nodes, unknown and obfuscated nodes are read."""
        forwarded = TrustedProxies(PROXIES.networks, "forwarded")
        headers = _headers(forwarded='for=1.1.1.1, for=198.51.100.4;proto=https;host="otad.example.com", for=10.0.0.5;proto=http')
        self.assertEqual(forwarded.origin("10.0.0.2", False, headers), Origin("198.51.100.4", True, "otad.example.com", "10.0.0.2"))
        headers = _headers(forwarded=['For="[2001:db8:cafe::17]:4711";PROTO=https', 'for="10.0.0.5:80";host=x'])
        self.assertEqual(forwarded.origin("10.0.0.2", False, headers), Origin("2001:db8:cafe::17", True, None, "10.0.0.2"))
        self.assertEqual(forwarded.origin("10.0.0.2", False, _headers(forwarded="for=unknown")).client, "unknown")
        self.assertEqual(forwarded.origin("10.0.0.2", False, _headers(forwarded='for="_hidden";by=_me')).client, "_hidden")
        escaped = _headers(forwarded='for=198.51.100.4;host="otad.example.com";ext="a \\"quoted\\" ;,value"')
        self.assertEqual(forwarded.origin("10.0.0.2", False, escaped).host, "otad.example.com")

    def test_rfc7239_malformed(self) -> None:
        """Unreadable Forwarded headers from a trusted proxy raise ForwardedError: a lone token, an empty or unterminated
        value, a repeated parameter, an element without for=, a quoted string that would run into the next line."""
        forwarded = TrustedProxies(PROXIES.networks, "forwarded")
        for value, reason in [
            ("for", "malformed Forwarded"),
            ("for=", "malformed Forwarded"),
            ('for="203.0.113.7', "malformed Forwarded"),
            ("for=203.0.113.7;for=198.51.100.4", "twice"),
            ("proto=https", "no for="),
            ("for=203.0.113.7 x", "malformed Forwarded"),
            ("for=[2001:db8::1]", "malformed Forwarded"),
            ("for=203.0.113.7;proto=gopher", "must be http or https"),
        ]:
            with self.assertRaises(ForwardedError) as raised:
                forwarded.origin("10.0.0.2", False, _headers(forwarded=value))
            self.assertIn(reason, str(raised.exception), value)
        with self.assertRaises(ForwardedError):
            forwarded.origin("10.0.0.2", False, _headers(forwarded=['for="203.0.113.7', 'x", for=10.0.0.5']))

    def test_one_family_only(self) -> None:
        """Only the configured family counts: a client could send whichever one its proxy does not overwrite."""
        both = _headers(forwarded="for=198.51.100.4;proto=https", x_forwarded_for="203.0.113.7", x_forwarded_proto="http")
        self.assertEqual(PROXIES.origin("10.0.0.2", True, both), Origin("203.0.113.7", False, None, "10.0.0.2"))
        forwarded = TrustedProxies(PROXIES.networks, "forwarded")
        self.assertEqual(forwarded.origin("10.0.0.2", False, both), Origin("198.51.100.4", True, None, "10.0.0.2"))

    def test_configuration(self) -> None:
        """trusted_proxies takes addresses and networks, IPv4 and IPv6, and names a bad one (host bits, a host name) in one line."""
        path = Path(self.mktemp())
        path.write_text("[server]\ntrusted_proxies = 127.0.0.1 ::1, 10.0.0.0/8 fd00::/8\nproxy_headers = forwarded\n")
        settings = config.load(path)
        self.assertEqual([str(network) for network in settings.trusted_proxies], ["127.0.0.1/32", "::1/128", "10.0.0.0/8", "fd00::/8"])
        self.assertEqual(settings.proxy_headers, "forwarded")
        for value, reason in [("10.0.0.1/8", "host bits"), ("localhost", "not an IP address or network")]:
            path.write_text(f"[server]\ntrusted_proxies = {value}\n")
            with self.assertRaises(config.ConfigError) as raised:
                config.load(path)
            self.assertIn("[server] trusted_proxies", str(raised.exception))
            self.assertIn(reason, str(raised.exception))


def _get(path: str, *lines: str, user: bytes | None = None, password: bytes = b"") -> bytes:
    head = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:8080", *lines]
    if user is not None:
        head.append("Authorization: Basic " + base64.b64encode(user + b":" + password).decode())
    return ("\r\n".join(head) + "\r\n\r\n").encode()


class BehindProxySiteTests(unittest.TestCase):
    """The production site on a plain-HTTP listener, behind a trusted proxy at 127.0.0.1."""

    def setUp(self) -> None:
        self.memory = MemorySite(
            Path(self.mktemp()),
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
            failures_per_address=2,
            failures_per_user=100,
            max_connections_per_address=2,
        )
        self.addCleanup(self.memory.close)
        self.logged: list[LogEvent] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def request_log(self, path: str) -> list[LogEvent]:
        return [event for event in self.logged if event.get("path") == path and "status" in event]

    def test_proxy_that_says_https_gets_the_password_through(self) -> None:
        """Over plain HTTP /enroll refuses a password unless a trusted proxy says the client used HTTPS; then the Profile
        Service points at the public scheme and host the proxy forwarded. The same headers from an untrusted client do nothing."""
        forwarded = ("X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https", "X-Forwarded-Host: otad.example.com")
        code, _, body = self.memory.exchange(
            _get("/enroll", "X-Forwarded-For: 203.0.113.7", user=b"alice", password=b"correct horse"), "127.0.0.1"
        )
        self.assertEqual((code, body), (403, b"use https: otad accepts passwords only over TLS\n"))
        code, _, body = self.memory.exchange(_get("/enroll", *forwarded, user=b"alice", password=b"correct horse"), "192.0.2.50")
        self.assertEqual(code, 403)
        code, headers, body = self.memory.exchange(_get("/enroll", *forwarded, user=b"alice", password=b"correct horse"), "127.0.0.1")
        self.assertEqual(code, 200, body)
        content, _ = unwrap_signed(body, [self.memory.authority.root.cert])
        self.assertEqual(plistlib.loads(content)["PayloadContent"]["URL"], "https://otad.example.com/profile")
        served = self.request_log("/enroll")[-1]
        self.assertEqual((served["client"], served["proxy"], served["status"]), ("203.0.113.7", "127.0.0.1", 200))
        self.assertIn("from 203.0.113.7", served["log_format"].format(**served))

    def test_log_events_and_throttle_use_the_forwarded_client(self) -> None:
        """Failed logins through the proxy are logged, recorded and throttled per forwarded client address: one client's
        failures do not lock out another behind the same proxy, and a direct client cannot dodge its count with a forged header."""
        for _ in range(2):
            code, _, _ = self.memory.exchange(
                _get("/enroll", "X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https", user=b"alice"), "127.0.0.1"
            )
            self.assertEqual(code, 401)
        code, headers, _ = self.memory.exchange(
            _get("/enroll", "X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https", user=b"alice"), "127.0.0.1"
        )
        self.assertEqual(code, 429)
        self.assertIn(b"retry-after", headers)
        code, _, _ = self.memory.exchange(
            _get("/enroll", "X-Forwarded-For: 198.51.100.4", "X-Forwarded-Proto: https", user=b"alice", password=b"correct horse"),
            "127.0.0.1",
        )
        self.assertEqual(code, 200)
        refused = [event.reason for event in self.memory.events() if event.kind == "login"]
        self.assertEqual(refused, ["bad password or unknown user from 203.0.113.7"] * 2)
        self.assertEqual([event["client"] for event in self.request_log("/enroll")], ["203.0.113.7"] * 3 + ["198.51.100.4"])
        # An untrusted client's own address is what counts, whatever it forwards (plain HTTP allowed here, to reach the check).
        direct = MemorySite(
            Path(self.mktemp()),
            trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),),
            failures_per_address=2,
            failures_per_user=100,
            allow_plain_http_login=True,
        )
        self.addCleanup(direct.close)
        codes = [
            direct.exchange(_get("/enroll", f"X-Forwarded-For: {forged}", user=b"alice"), "192.0.2.50")[0]
            for forged in ("203.0.113.1", "203.0.113.2", "203.0.113.3")
        ]
        self.assertEqual(codes, [401, 401, 429])

    def test_malformed_headers_from_the_proxy_get_400(self) -> None:
        """A trusted proxy's unreadable forwarding header is answered 400 with a one-line reason (logged as the proxy's
        request); an untrusted client's is ignored."""
        code, _, body = self.memory.exchange(_get("/", "X-Forwarded-For: 203.0.113.7, junk"), "127.0.0.1")
        self.assertEqual(code, 400)
        self.assertEqual(body, b"X-Forwarded-For holds 'junk', which is not an IP address\n")
        self.assertEqual(self.request_log("/")[-1]["client"], "127.0.0.1")
        code, _, _ = self.memory.exchange(_get("/", "X-Forwarded-For: 203.0.113.7, junk"), "192.0.2.50")
        self.assertEqual(code, 200)
        self.assertEqual(self.request_log("/")[-1]["client"], "192.0.2.50")

    def test_per_address_cap_exempts_trusted_proxies(self) -> None:
        """max_connections_per_address (2 here) does not count a trusted proxy as one abusive address; others still get 503."""

        def connect(peer: str) -> Any:
            address = IPv4Address("TCP", peer, 40000)
            channel = self.memory.site.buildProtocol(address)
            transport = StringTransport(peerAddress=address)
            channel.makeConnection(transport)
            self.addCleanup(channel.connectionLost, Failure(ConnectionDone()))
            return transport

        proxied = [connect("127.0.0.1") for _ in range(4)]
        self.assertEqual([transport.value() for transport in proxied], [b""] * 4)
        direct = [connect("192.0.2.50") for _ in range(3)]
        self.assertEqual([transport.value() for transport in direct[:2]], [b""] * 2)
        self.assertTrue(direct[2].value().startswith(b"HTTP/1.1 503 "))
