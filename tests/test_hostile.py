"""End-to-end tests of hostile input against the real daemon: TLS without legacy ciphers (checked with openssl
s_client), no passwords over plain HTTP, and prompt answers to slow or malformed requests over real TLS."""

from __future__ import annotations

import base64
import socket
import ssl
import time
from pathlib import Path

from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.daemon import Daemon


class HostileTests(unittest.TestCase):
    timeout = 120

    async def start(self, *extra: str, listen: str = "ssl:0:interface=127.0.0.1") -> Daemon:
        data_dir = Path(self.mktemp()).absolute()
        data_dir.mkdir(parents=True)
        daemon = Daemon(data_dir, extra, listen=listen)
        self.addCleanup(daemon.stop)
        await daemon.start()
        return daemon

    async def s_client(self, daemon: Daemon, *options: str) -> tuple[int, bytes]:
        """openssl s_client's exit status and output for one handshake with the given options."""
        args = ["s_client", "-connect", f"127.0.0.1:{daemon.port}", "-CAfile", str(daemon.data_dir / "certs" / "ca.pem"), *options]
        out, err, code = await getProcessOutputAndValue("openssl", args, env={"PATH": "/usr/bin:/bin"}, reactor=reactor, path="/")
        return code, out + err

    def test_only_forward_secret_aead_suites(self) -> None:
        """openssl s_client, against the default ECDSA TLS key and against [tls] key_type = rsa: a static-RSA suite and
        CBC suites are refused over TLS 1.2, as is TLS 1.1; ECDHE with AES-GCM or ChaCha20-Poly1305 over TLS 1.2 (the
        suites of the key's type), and TLS 1.3, are accepted."""

        async def run() -> None:
            for key_type, signature in (("ecdsa", "ECDSA"), ("rsa", "RSA")):
                config = Path(self.mktemp()).absolute()
                config.write_text(f"[tls]\nkey_type = {key_type}\n")
                daemon = await self.start("--config", str(config))
                refused = ("AES128-GCM-SHA256", "AES256-SHA", f"ECDHE-{signature}-AES128-SHA", f"ECDHE-{signature}-AES256-SHA384")
                for cipher in refused:
                    code, output = await self.s_client(daemon, "-tls1_2", "-cipher", cipher)
                    self.assertNotEqual(code, 0, f"{cipher} was accepted with an {key_type} key: {output[-300:]!r}")
                code, output = await self.s_client(daemon, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
                self.assertNotEqual(code, 0, output[-300:])
                for suite in ("AES128-GCM-SHA256", "AES256-GCM-SHA384", "CHACHA20-POLY1305"):
                    cipher = f"ECDHE-{signature}-{suite}"
                    code, output = await self.s_client(daemon, "-tls1_2", "-cipher", cipher)
                    self.assertEqual(code, 0, output[-300:])
                    self.assertIn(f"Cipher is {cipher}".encode(), output)
                code, output = await self.s_client(daemon, "-tls1_3")
                self.assertEqual(code, 0, output[-300:])
                self.assertIn(b"TLSv1.3", output)
                await daemon.stop()

        return ensureDeferred(run())

    def test_no_passwords_over_plain_http(self) -> None:
        """On a tcp: listener /enroll refuses Basic credentials with 403 'use https', while SCEP still answers there,
        and the first-start line does not advertise an http:// enrollment URL."""

        async def run() -> None:
            daemon = await self.start(listen="tcp:0:interface=127.0.0.1")
            password = (daemon.data_dir / "first-password").read_text().strip()

            def get(path: str, headers: str = "") -> bytes:
                with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw:
                    raw.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n".encode())
                    return b"".join(iter(lambda: raw.recv(65536), b""))

            auth = "Authorization: Basic " + base64.b64encode(f"apple:{password}".encode()).decode() + "\r\n"
            answer = await threads.deferToThread(get, "/enroll", auth)
            self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer[:100])
            self.assertIn(b"use https", answer)
            caps = await threads.deferToThread(get, "/scep?operation=GetCACaps")
            self.assertTrue(caps.startswith(b"HTTP/1.1 200 "))
            self.assertNotIn(b"enroll at http://", daemon.output)

        return ensureDeferred(run())

    def test_slow_and_malformed_requests_are_answered_promptly(self) -> None:
        """Over real TLS: a request with bare-LF lines and one with a control byte in a header get 400 at once, a
        Content-Length of 100000 gets 413 at once, and a silent client is answered 408 after head_timeout (2 s)."""

        async def run() -> None:
            folder = Path(self.mktemp()).absolute()
            folder.mkdir()
            config = folder / "otad.conf"
            config.write_text("[limits]\nhead_timeout = 2s\n")
            daemon = await self.start("--config", str(config))
            context = ssl.create_default_context(cafile=str(daemon.data_dir / "certs" / "ca.pem"))

            def exchange(request: bytes) -> tuple[bytes, float]:
                started = time.monotonic()
                with socket.create_connection(("127.0.0.1", daemon.port), timeout=20) as raw:
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(request)
                        answer = b"".join(iter(lambda: tls.recv(65536), b""))
                return answer, time.monotonic() - started

            for request, status in (
                (b"GET / HTTP/1.1\nHost: localhost\n\n", b"400"),
                (b"POST /profile HTTP/1.1\r\nHost: localhost\r\nContent-Type: a\x0bb\r\nContent-Length: 1\r\n\r\nx", b"400"),
                (b"POST /profile HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n", b"413"),
                (b"", b"408"),
            ):
                answer, seconds = await threads.deferToThread(exchange, request)
                self.assertTrue(answer.startswith(b"HTTP/1.1 " + status), (request, answer[:100]))
                self.assertLess(seconds, 10, request)
            self.assertNotIn(b"Traceback", daemon.output)
            self.assertNotIn(b"Unhandled Error", daemon.output)

        return ensureDeferred(run())
