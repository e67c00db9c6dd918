"""Tests for logins at /enroll: throttling per address and per user (otad.logins), the bounded bcrypt queue,
and no passwords over plain HTTP."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from otad.errors import Kind, Refused
from otad.logins import LoginGuard, LoginPolicy
from otad.metrics import Metrics
from otad.pool import PoolFull, WorkerPool
from tests.helpers import InlineStoreThread, MemorySite

POLICY = LoginPolicy(failures_per_address=8, failures_per_user=3, window=600)


class CountingChecker(InMemoryUsernamePasswordDatabaseDontUse):
    """A checker that counts the passwords it was asked to check (each one a bcrypt in production)."""

    def __init__(self) -> None:
        super().__init__(alice=b"right", bob=b"right")
        self.checks = 0

    def requestAvatarId(self, credentials: Any) -> Deferred[Any]:
        self.checks += 1
        return super().requestAvatarId(credentials)  # type: ignore[no-any-return]


class LoginGuardTests(unittest.TestCase):
    def setUp(self) -> None:
        self.store = InlineStoreThread(Path(self.mktemp()))
        self.addCleanup(lambda: self.store.call(lambda store: store.close()))
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.checker = CountingChecker()
        self.guard = LoginGuard(self.checker, self.store, self.clock, POLICY, metrics=Metrics())

    def attempt(self, address: str, name: bytes, password: bytes) -> str | Refused:
        done = ensureDeferred(self.guard.login(address, name, password))
        results: list[Any] = []
        done.addCallbacks(results.append, lambda failure: results.append(failure.trap(Refused) and failure.value))
        return results[0]  # type: ignore[no-any-return]

    def test_user_throttled_per_address_without_checking(self) -> None:
        """After failures_per_user failures for alice from one address, even her right password from there gets
        THROTTLED with a Retry-After of the window's rest, and no password is checked."""
        for _ in range(3):
            refused = self.attempt("192.0.2.1", b"alice", b"wrong")
            assert isinstance(refused, Refused)
            self.assertEqual(refused.kind, Kind.UNAUTHENTICATED)
        checks = self.checker.checks
        self.clock.advance(100)
        refused = self.attempt("192.0.2.1", b"alice", b"right")
        assert isinstance(refused, Refused)
        self.assertEqual((refused.kind, refused.retry_after), (Kind.THROTTLED, 500))
        self.assertEqual(self.checker.checks, checks)

    def test_not_locked_out_by_another_address(self) -> None:
        """Failures for alice from one address do not stop alice from another address."""
        for _ in range(5):
            self.attempt("192.0.2.66", b"alice", b"wrong")
        self.assertEqual(self.attempt("198.51.100.7", b"alice", b"right"), "alice")

    def test_address_throttled_across_names(self) -> None:
        """failures_per_address failures spread over many names from one address throttle every name from it."""
        for number in range(8):
            self.attempt("192.0.2.9", b"user%d" % number, b"wrong")
        refused = self.attempt("192.0.2.9", b"bob", b"right")
        assert isinstance(refused, Refused)
        self.assertEqual(refused.kind, Kind.THROTTLED)
        self.assertEqual(self.attempt("192.0.2.10", b"bob", b"right"), "bob")

    def test_window_passes_and_success_clears(self) -> None:
        """Once the window has passed the user may try again; a right password clears that user's count there."""
        for _ in range(3):
            self.attempt("192.0.2.1", b"alice", b"wrong")
        self.clock.advance(601)
        self.assertEqual(self.attempt("192.0.2.1", b"alice", b"right"), "alice")
        for _ in range(2):
            self.attempt("192.0.2.1", b"alice", b"wrong")
        self.assertEqual(self.attempt("192.0.2.1", b"alice", b"right"), "alice")
        for _ in range(2):
            self.attempt("192.0.2.1", b"alice", b"wrong")
        self.assertEqual(self.attempt("192.0.2.1", b"alice", b"right"), "alice")

    def test_failures_are_events_with_the_name_and_address(self) -> None:
        """A failed login is a 'login refused' event naming the user tried (escaped) and the client address."""
        self.attempt("192.0.2.5", b"mallory\x00\n", b"wrong")
        [event] = self.successResultOf(self.store.call(lambda store: store.events()))
        self.assertEqual((event.kind, event.outcome, event.user), ("login", "refused", "mallory\\x00\\x0a"))
        self.assertIn("192.0.2.5", event.reason)

    def test_counts_survive_a_restart(self) -> None:
        """The counts are in the store: a new guard on the same database still throttles."""
        for _ in range(3):
            self.attempt("192.0.2.1", b"alice", b"wrong")
        self.guard = LoginGuard(CountingChecker(), self.store, self.clock, POLICY, metrics=Metrics())
        refused = self.attempt("192.0.2.1", b"alice", b"right")
        assert isinstance(refused, Refused)
        self.assertEqual(refused.kind, Kind.THROTTLED)


def _basic(user: bytes, password: bytes) -> dict[bytes, list[bytes]]:
    return {b"authorization": [b"Basic " + base64.b64encode(user + b":" + password)]}


class EnrollLoginTests(unittest.TestCase):
    def fetch(self, memory: MemorySite, url: str, **kwargs: Any) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        async def go() -> tuple[int, dict[bytes, list[bytes]], bytes]:
            response = await memory.treq.request("GET", url, **kwargs)
            body = await response.content()
            return response.code, {name.lower(): values for name, values in response.headers.getAllRawHeaders()}, body

        return self.successResultOf(ensureDeferred(go()))

    def test_throttled_is_429_with_retry_after(self) -> None:
        """Over HTTP: after failures_per_user bad passwords, /enroll answers 429 with Retry-After and a reason."""
        memory = MemorySite(Path(self.mktemp()), failures_per_user=2)
        self.addCleanup(memory.close)
        for _ in range(2):
            code, headers, _ = self.fetch(memory, "https://otad.test/enroll", headers=_basic(b"alice", b"wrong"))
            self.assertEqual(code, 401)
            self.assertEqual(headers[b"www-authenticate"], [b'Basic realm="otad"'])
        code, headers, body = self.fetch(memory, "https://otad.test/enroll", headers=_basic(b"alice", b"correct horse"))
        self.assertEqual(code, 429)
        self.assertEqual(headers[b"retry-after"], [b"900"])
        self.assertIn(b"too many failed logins", body)

    def test_plain_http_login_is_refused(self) -> None:
        """Over plain HTTP, /enroll refuses credentials with 403 'use https'; allow_plain_http lets them through."""
        memory = MemorySite(Path(self.mktemp()))
        self.addCleanup(memory.close)
        code, _, body = self.fetch(memory, "http://otad.test/enroll", headers=_basic(b"alice", b"correct horse"))
        self.assertEqual(code, 403)
        self.assertIn(b"use https", body)
        allowed = MemorySite(Path(self.mktemp()), allow_plain_http_login=True)
        self.addCleanup(allowed.close)
        code, _, _ = self.fetch(allowed, "http://otad.test/enroll", headers=_basic(b"alice", b"correct horse"))
        self.assertEqual(code, 200)

    def test_full_password_queue_is_503(self) -> None:
        """When the bcrypt queue is full, /enroll answers 503 with Retry-After at once instead of queueing."""

        def full(call: Any, *args: Any) -> Deferred[Any]:
            raise PoolFull("too many password checks are waiting; try again in a moment", retry_after=1)

        memory = MemorySite(Path(self.mktemp()), run_auth=full)
        self.addCleanup(memory.close)
        code, headers, body = self.fetch(memory, "https://otad.test/enroll", headers=_basic(b"alice", b"correct horse"))
        self.assertEqual(code, 503)
        self.assertEqual(headers[b"retry-after"], [b"1"])
        self.assertIn(b"password checks are waiting", body)

    def test_malformed_authorization(self) -> None:
        """A Basic header that is not base64 of name:password, or another scheme, is a 401 with the challenge."""
        memory = MemorySite(Path(self.mktemp()))
        self.addCleanup(memory.close)
        for header in (b"Basic !!!", b"Basic " + base64.b64encode(b"no colon"), b"Digest abc", b"Basic"):
            code, headers, _ = self.fetch(memory, "https://otad.test/enroll", headers={b"authorization": [header]})
            self.assertEqual(code, 401, header)
            self.assertEqual(headers[b"www-authenticate"], [b'Basic realm="otad"'])


class BoundedPoolTests(unittest.TestCase):
    def test_calls_past_threads_plus_queue_fail_at_once(self) -> None:
        """A pool with 1 thread and a queue of 1 runs one call, queues one, and fails a third with PoolFull at once;
        when the calls finish there is room again."""
        pool = WorkerPool(reactor, "test-bounded", threads=1, queue=1)
        pool.startService()
        self.addCleanup(pool.stopService)
        release = threading.Event()
        first = pool.run(release.wait, 10)
        second = pool.run(lambda: "queued")
        self.failureResultOf(pool.run(lambda: "refused"), PoolFull)
        release.set()

        async def finish() -> None:
            self.assertTrue(await first)
            self.assertEqual(await second, "queued")
            self.assertEqual(await pool.run(lambda: "room again"), "room again")

        return ensureDeferred(finish())  # type: ignore[return-value]
