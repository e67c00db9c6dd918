"""Tests for otad.listeners: listen descriptions are checked with the configuration and turned into endpoints."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.endpoints import TCP4ServerEndpoint, UNIXServerEndpoint
from twisted.internet.task import Clock
from twisted.trial import unittest

from otad import config, listeners


class ListenerTests(unittest.TestCase):
    def test_ssl_and_tcp(self) -> None:
        """ssl:PORT becomes a TCP endpoint under otad's TLS; tcp:PORT plain HTTP; interface and backlog are kept."""
        secure = listeners.parse("ssl:8443:interface=127.0.0.1:backlog=64")
        self.assertEqual(
            (secure.tls, secure.plain, secure.scheme, secure.files), (True, "tcp:8443:interface=127.0.0.1:backlog=64", "https", {})
        )
        plain = listeners.parse("tcp:port=8080")
        self.assertEqual((plain.tls, plain.plain, plain.scheme), (False, "tcp:8080", "http"))
        self.assertIsInstance(secure.endpoint(Clock()), TCP4ServerEndpoint)

    def test_ipv6_interface_is_escaped(self) -> None:
        """An IPv6 interface (written with escaped colons) is passed on escaped again, so the endpoint gets it whole."""
        listener = listeners.parse("ssl:8443:interface=\\:\\:1")
        self.assertEqual(listener.plain, "tcp:8443:interface=\\:\\:1")
        self.assertIsInstance(listener.endpoint(Clock()), TCP4ServerEndpoint)

    def test_operator_files(self) -> None:
        """certKey=, privateKey= and extraCertChain= name the operator's TLS files, made absolute."""
        listener = listeners.parse("ssl:443:certKey=cert.pem:privateKey=key.pem:extraCertChain=chain.pem")
        expected = {"certKey": "cert.pem", "privateKey": "key.pem", "extraCertChain": "chain.pem"}
        self.assertEqual(listener.files, {name: Path(file).absolute() for name, file in expected.items()})
        self.assertEqual(listener.plain, "tcp:443")

    def test_unix(self) -> None:
        """unix:PATH serves plain HTTP on a socket file."""
        listener = listeners.parse("unix:/run/otad.sock:mode=660")
        self.assertFalse(listener.tls)
        self.assertIsInstance(listener.endpoint(Clock()), UNIXServerEndpoint)

    def test_refusals(self) -> None:
        """Each malformed description gets a ValueError that says what is wrong."""
        for description, words in (
            ("tcp:notaport", "port must be a number from 0 to 65535, not 'notaport'"),
            ("tcp:70000", "port must be a number"),
            ("foo:123", "unknown endpoint type 'foo'"),
            ("ssl:8443:interface=localhost", "interface must be an IP address, not 'localhost'"),
            ("ssl:8443:sslmethod=TLSv1_METHOD", "unknown option 'sslmethod'"),
            ("ssl:8443:privateKey=key.pem", "need certKey="),
            ("tcp:1:2", "unexpected field '2'"),
            ("tcp:interface=127.0.0.1", "needs a port"),
            ("tcp:1:backlog=0", "backlog must be a positive number"),
            ("tcp:8443\\", "lone backslash"),
            ("unix:", "unix: needs a path"),
        ):
            error = self.assertRaises(ValueError, listeners.parse, description)
            self.assertIn(words, str(error), description)

    def test_checked_with_the_configuration(self) -> None:
        """A bad --listen is a ConfigError that names the option and the value, raised while loading the configuration."""
        error = self.assertRaises(config.ConfigError, config.load, None, {"listen": ("ssl:8443", "tcp:notaport")})
        self.assertEqual(str(error), "bad value for --listen: 'tcp:notaport': port must be a number from 0 to 65535, not 'notaport'")
        path = Path(self.mktemp())
        path.write_text("[server]\nlisten = bogus:1\n")
        error = self.assertRaises(config.ConfigError, config.load, path)
        self.assertIn("bad value for [server] listen: 'bogus:1': unknown endpoint type", str(error))
