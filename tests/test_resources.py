"""In-memory tests of each resource through the real site (treq's StubTreq, no sockets)."""

from __future__ import annotations

import base64
import plistlib
from pathlib import Path
from typing import Any

from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import ensureDeferred
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from otad import tokens, users
from tests.helpers import MemorySite


def _basic(user: bytes, password: bytes) -> dict[bytes, list[bytes]]:
    return {b"authorization": [b"Basic " + base64.b64encode(user + b":" + password)]}


class ResourceTests(unittest.TestCase):
    def setUp(self) -> None:
        self.memory = MemorySite(Path(self.mktemp()), organization="<Evil & Co>")
        self.addCleanup(self.memory.close)
        self.settings, self.store, self.clock, self.authority = (
            self.memory.settings,
            self.memory.store,
            self.memory.clock,
            self.memory.authority,
        )
        self.fetch = lambda method, url, **kwargs: self.memory.fetch(method, url.replace("https://otad.test", ""), **kwargs)

    def test_welcome_page_is_escaped(self) -> None:
        """/ is HTML naming the organisation, escaped, with links to /CA and /enroll."""
        code, headers, body = self.successResultOf(ensureDeferred(self.fetch("GET", "https://otad.test/")))
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"content-type"][0].startswith(b"text/html"))
        self.assertIn(b"&lt;Evil &amp; Co&gt;", body)
        self.assertNotIn(b"<Evil", body)
        self.assertIn(b'href="/CA"', body)
        self.assertIn(b'href="/enroll"', body)

    def test_root_certificate(self) -> None:
        """/CA is the root certificate in DER with the type Safari installs."""
        code, headers, body = self.successResultOf(ensureDeferred(self.fetch("GET", "https://otad.test/CA")))
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"content-type"], [b"application/x-x509-ca-cert"])
        self.assertEqual(body, self.authority.root.cert.public_bytes(serialization.Encoding.DER))

    def test_unknown_path_and_wrong_method(self) -> None:
        """Unknown paths get 404 and wrong methods 405 with an Allow header, each with a one-line reason."""
        code, _, body = self.successResultOf(ensureDeferred(self.fetch("GET", "https://otad.test/nope")))
        self.assertEqual((code, body), (404, b"no such resource: /nope\n"))
        code, headers, body = self.successResultOf(ensureDeferred(self.fetch("DELETE", "https://otad.test/CA")))
        self.assertEqual(code, 405)
        self.assertIn(b"GET", headers[b"allow"][0])
        self.assertEqual(body.count(b"\n"), 1)

    def test_enroll_without_credentials(self) -> None:
        """/enroll without credentials answers 401 with a Basic challenge naming the realm."""
        code, headers, _ = self.successResultOf(ensureDeferred(self.fetch("GET", "https://otad.test/enroll")))
        self.assertEqual(code, 401)
        self.assertEqual(headers[b"www-authenticate"], [b'Basic realm="otad"'])

    def test_enroll_bad_credentials(self) -> None:
        """Wrong passwords, unknown users, non-UTF-8 names and malformed headers all get 401, never 500."""
        for headers in (
            _basic(b"alice", b"wrong"),
            _basic(b"mallory", b"correct horse"),
            _basic(b"\xff\xfe", b"x"),
            {b"authorization": [b"Basic !!!not-base64"]},
            {b"authorization": [b"Basic " + base64.b64encode(b"no-colon")]},
            {b"authorization": [b"Bearer abc"]},
            {b"authorization": [b"Basic"]},
        ):
            code, _, _ = self.successResultOf(ensureDeferred(self.fetch("GET", "https://otad.test/enroll", headers=headers)))
            self.assertEqual(code, 401, headers)

    def test_enroll_with_credentials(self) -> None:
        """Valid credentials get a signed Profile Service payload whose challenge was stored hashed, bound to the user."""
        code, headers, body = self.successResultOf(
            ensureDeferred(self.fetch("GET", "https://otad.test/enroll", headers=_basic(b"alice", b"correct horse")))
        )
        self.assertEqual(code, 200)
        self.assertEqual(headers[b"content-type"], [b"application/x-apple-aspen-config"])
        signed = asn1_cms.ContentInfo.load(body)["content"]
        profile = plistlib.loads(signed["encap_content_info"]["content"].native)
        self.assertEqual(profile["PayloadType"], "Profile Service")
        self.assertEqual(profile["PayloadContent"]["URL"], "https://otad.test/profile")
        challenge = profile["PayloadContent"]["Challenge"]
        found = self.successResultOf(
            self.store.call(lambda store: store.consume_challenge(tokens.digest(challenge), ("enroll",), now=self.clock.seconds()))
        )
        self.assertEqual(found.bound_to, "alice")
        self.assertEqual(found.expires - found.created, 900)

    def test_users_file_changes_are_picked_up(self) -> None:
        """A user added to the file after start can enroll at once; a removed one can't."""
        users.set_password(self.settings.htpasswd, b"bob", b"pw-bob", rounds=4)
        users.remove_user(self.settings.htpasswd, b"alice")
        code, _, _ = self.successResultOf(ensureDeferred(self.fetch("GET", "https://otad.test/enroll", headers=_basic(b"bob", b"pw-bob"))))
        self.assertEqual(code, 200)
        code, _, _ = self.successResultOf(
            ensureDeferred(self.fetch("GET", "https://otad.test/enroll", headers=_basic(b"alice", b"correct horse")))
        )
        self.assertEqual(code, 401)

    def test_missing_users_file(self) -> None:
        """With the users file gone, logins are refused with 401, not a 500, and an error naming the file is logged."""
        self.settings.htpasswd.unlink()
        seen: list[Any] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        code, _, _ = self.successResultOf(
            ensureDeferred(self.fetch("GET", "https://otad.test/enroll", headers=_basic(b"alice", b"correct horse")))
        )
        self.assertEqual(code, 401)
        errors = [event for event in seen if event.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn(str(self.settings.htpasswd), formatEvent(errors[0]))
        self.flushLoggedErrors()

    def test_malformed_host(self) -> None:
        """A Host header that could inject into payload URLs is refused with 400."""
        code, _, body = self.successResultOf(
            ensureDeferred(
                self.fetch(
                    "GET", "https://otad.test/enroll", headers={**_basic(b"alice", b"correct horse"), b"host": [b"evil.example/<x>"]}
                )
            )
        )
        self.assertEqual(code, 400)
        self.assertIn(b"Host", body)

    def test_store_unavailable_is_503(self) -> None:
        """When the database cannot take a write, /enroll answers 503 with Retry-After and a one-line reason, not a 500;
        once it can, the next request succeeds."""
        self.successResultOf(self.store.call(lambda store: store._db.execute("PRAGMA query_only = ON")))
        code, headers, body = self.successResultOf(
            ensureDeferred(self.fetch("GET", "https://otad.test/enroll", headers=_basic(b"alice", b"correct horse")))
        )
        self.assertEqual(code, 503)
        self.assertEqual(headers[b"retry-after"], [b"5"])
        self.assertEqual(body.count(b"\n"), 1)
        self.assertIn(b"the state database is unavailable", body)
        self.successResultOf(self.store.call(lambda store: store._db.execute("PRAGMA query_only = OFF")))
        code, _, _ = self.successResultOf(
            ensureDeferred(self.fetch("GET", "https://otad.test/enroll", headers=_basic(b"alice", b"correct horse")))
        )
        self.assertEqual(code, 200)
