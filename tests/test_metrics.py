"""otad's Prometheus metrics: what each step, refusal, pool and certificate does to them, in memory, in
several processes sharing one directory, and on the real daemon's metrics listener after an enrollment; the
store's calls and purges on SQLite and on PostgreSQL (where a call retried after a lost connection is one call)."""

from __future__ import annotations

import base64
import functools
import os
import plistlib
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from asn1crypto import cms as asn1_cms
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from otad.metrics import ROLES, Metrics, MetricsError, ReactorLag, process_ended
from otad.pool import WorkerPool
from otad.store import Store, StoreUnavailable
from otad.tap import purge
from tests import postgres
from tests.daemon import ROOT, Daemon
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice
from tests.helpers import InlineStoreThread, MemorySite
from tests.stores import PostgreSQLStore, SQLiteStore

UDID = "0000FAKE-00AA11BB22CC33DD"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@functools.cache
def apple() -> FakeAppleHierarchy:
    return FakeAppleHierarchy.create()


def parse(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels (parsed by prometheus_client's own parser)."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _basic(user: bytes = b"alice", password: bytes = b"correct horse") -> dict[bytes, list[bytes]]:
    return {b"authorization": [b"Basic " + base64.b64encode(user + b":" + password)]}


def _content(signed: bytes) -> Any:
    return plistlib.loads(asn1_cms.ContentInfo.load(signed)["content"]["encap_content_info"]["content"].native)


class MetricsTests(unittest.TestCase):
    def memory(self, **settings: Any) -> MemorySite:
        memory = MemorySite(Path(self.mktemp()), anchors=(apple().root,), **settings)
        self.addCleanup(memory.close)
        return memory

    def scrape(self, memory: MemorySite) -> Samples:
        code, headers, body = self.successResultOf(ensureDeferred(memory.fetch_operator("/metrics")))
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"content-type"][0].startswith(b"text/plain"))
        return parse(body.decode())

    def fetch(self, memory: MemorySite, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        code, _, body = self.successResultOf(ensureDeferred(memory.fetch(method, path, **kwargs)))
        return code, body

    def test_pkcs12_enrollment_moves_each_counter_once(self) -> None:
        """Phase 1, phase 2 (PKCS#12) and phase 3 in memory: each step's histogram, the requests by route, the
        challenge minted and used, the certificate issued and the completed enrollment move by exactly one; asking
        again in phase 3 counts a request and a step but no second completed enrollment."""
        memory = self.memory(identity="pkcs12")
        before = self.scrape(memory)
        device = FakeDevice(None, "https://otad.test", None, apple(), UDID)
        code, body = self.fetch(memory, "GET", "/enroll", headers=_basic())
        self.assertEqual(code, 200)
        challenge = str(_content(body)["PayloadContent"]["Challenge"])
        code, body = self.fetch(memory, "POST", "/profile", data=device.phase2_body(challenge))
        self.assertEqual(code, 200)
        device.install_pkcs12(_content(body)["PayloadContent"][0])
        code, _ = self.fetch(memory, "POST", "/profile", data=device.phase3_body())
        self.assertEqual(code, 200)
        after = self.scrape(memory)

        self.assertEqual(delta(before, after, "otad_http_requests_total", route="/enroll", status="200", outcome="ok"), 1)
        self.assertEqual(delta(before, after, "otad_http_requests_total", route="/profile", status="200", outcome="ok"), 2)
        for step in ("login", "phase1", "phase2", "phase3"):
            self.assertEqual(delta(before, after, "otad_step_duration_seconds_count", step=step, outcome="ok"), 1, step)
            self.assertEqual(delta(before, after, "otad_step_duration_seconds_bucket", step=step, outcome="ok", le="+Inf"), 1, step)
        self.assertEqual(delta(before, after, "otad_challenges_minted_total", kind="enroll"), 1)
        self.assertEqual(delta(before, after, "otad_challenges_used_total", kind="enroll"), 1)
        self.assertEqual(delta(before, after, "otad_certificates_issued_total", method="pkcs12"), 1)
        self.assertEqual(delta(before, after, "otad_certificates_issued_total", method="scep"), 0)
        self.assertEqual(delta(before, after, "otad_enrollments_completed_total"), 1)
        # The shipped template has a SCEP payload of its own, so phase 3 minted a SCEP challenge.
        self.assertEqual(delta(before, after, "otad_challenges_minted_total", kind="scep"), 1)

        code, _ = self.fetch(memory, "POST", "/profile", data=device.phase3_body())
        self.assertEqual(code, 200)
        again = self.scrape(memory)
        self.assertEqual(delta(after, again, "otad_step_duration_seconds_count", step="phase3", outcome="ok"), 1)
        self.assertEqual(delta(after, again, "otad_enrollments_completed_total"), 0)
        # Store calls were measured, reads and writes apart.
        self.assertGreater(value(again, "otad_store_operation_duration_seconds_count", operation="write"), 0)
        self.assertGreater(value(again, "otad_store_operation_duration_seconds_count", operation="read"), 0)

    def test_refusals_are_counted_by_reason(self) -> None:
        """A wrong password, a malformed Authorization header, a replayed phase-1 challenge and an unknown path each
        land in their own series; the raw path never becomes a label."""
        memory = self.memory()
        before = self.scrape(memory)
        code, _ = self.fetch(memory, "GET", "/enroll", headers=_basic(password=b"wrong"))
        self.assertEqual(code, 401)
        code, _ = self.fetch(memory, "GET", "/enroll", headers={b"authorization": [b"Basic !!!"]})
        self.assertEqual(code, 401)
        code, body = self.fetch(memory, "GET", "/enroll", headers=_basic())
        challenge = str(_content(body)["PayloadContent"]["Challenge"])
        device = FakeDevice(None, "https://otad.test", None, apple(), UDID)
        self.assertEqual(self.fetch(memory, "POST", "/profile", data=device.phase2_body(challenge))[0], 200)
        self.assertEqual(self.fetch(memory, "POST", "/profile", data=device.phase2_body(challenge))[0], 403)
        self.assertEqual(self.fetch(memory, "GET", "/no-such-thing-4711")[0], 404)
        after = self.scrape(memory)

        self.assertEqual(delta(before, after, "otad_login_failures_total", reason="bad_credentials"), 1)
        self.assertEqual(delta(before, after, "otad_login_failures_total", reason="malformed"), 1)
        self.assertEqual(delta(before, after, "otad_http_requests_total", route="/enroll", status="401", outcome="refused"), 2)
        self.assertEqual(delta(before, after, "otad_step_duration_seconds_count", step="login", outcome="refused"), 1)
        self.assertEqual(delta(before, after, "otad_challenges_refused_total", step="phase2", reason="used"), 1)
        self.assertEqual(delta(before, after, "otad_step_duration_seconds_count", step="phase2", outcome="refused"), 1)
        self.assertEqual(delta(before, after, "otad_http_requests_total", route="other", status="404", outcome="refused"), 1)
        labels = {label for name, labels in after for label in labels}
        self.assertNotIn(("route", "/no-such-thing-4711"), labels)
        self.assertFalse([label for label in labels if label[0] in ("user", "udid", "serial", "path")])

    def test_throttled_logins_are_counted(self) -> None:
        """Past failures_per_user, a login is throttled (429) and counted as such, without a password check."""
        memory = self.memory(failures_per_user=1)
        self.assertEqual(self.fetch(memory, "GET", "/enroll", headers=_basic(password=b"wrong"))[0], 401)
        before = self.scrape(memory)
        self.assertEqual(self.fetch(memory, "GET", "/enroll", headers=_basic())[0], 429)
        after = self.scrape(memory)
        self.assertEqual(delta(before, after, "otad_login_failures_total", reason="throttled"), 1)
        self.assertEqual(delta(before, after, "otad_login_failures_total", reason="bad_credentials"), 0)
        self.assertEqual(delta(before, after, "otad_http_requests_total", route="/enroll", status="429", outcome="refused"), 1)

    def test_store_down_counts_errors(self) -> None:
        """A write the database refuses is measured as a write and counted as a store error; the step it
        belonged to is an error, and the request a 503 error."""
        memory = self.memory()
        before = self.scrape(memory)
        self.successResultOf(memory.store.call(lambda store: store._db.execute("PRAGMA query_only = ON")))
        self.assertEqual(self.fetch(memory, "GET", "/enroll", headers=_basic())[0], 503)
        self.successResultOf(memory.store.call(lambda store: store._db.execute("PRAGMA query_only = OFF")))
        after = self.scrape(memory)
        self.assertEqual(delta(before, after, "otad_store_errors_total", operation="write"), 1)
        # The first write of /enroll is the login's (clearing its failure count), so that step fails.
        self.assertEqual(delta(before, after, "otad_step_duration_seconds_count", step="login", outcome="error"), 1)
        self.assertEqual(delta(before, after, "otad_login_failures_total", reason="unavailable"), 1)
        self.assertEqual(delta(before, after, "otad_http_requests_total", route="/enroll", status="503", outcome="error"), 1)

    def test_revocations_are_counted_once_from_the_store(self) -> None:
        """The CRL check counts revocations made by anyone (here straight in the store, as otad-admin does) that are
        new since the last check, by reason; the first check only notes what is there; the CRL gauges follow."""
        memory = self.memory()
        now = memory.clock.seconds()

        def add(serial: str) -> None:
            def record(store: Any) -> None:
                store.add_certificate(
                    serial=serial, udid=UDID, subject="", der=b"\x30\x00", not_before=now, not_after=now + 86400,
                    csr=None, challenge_id=None, transaction_id=None, now=now,
                )  # fmt: skip

            self.successResultOf(memory.store.call(record))

        def revoke(serial: str, reason: str) -> None:
            self.successResultOf(memory.store.call(lambda store: store.revoke(serial, reason=reason, now=now)))

        for serial in ("aa01", "aa02", "aa03"):
            add(serial)
        revoke("aa01", "keyCompromise")
        self.successResultOf(ensureDeferred(memory.crls.check()))
        first = self.scrape(memory)
        self.assertEqual(value(first, "otad_certificates_revoked_total", reason="keyCompromise"), 0)
        self.assertEqual(value(first, "otad_crl_entries"), 1)
        revoke("aa02", "keyCompromise")
        revoke("aa03", "superseded")
        self.successResultOf(ensureDeferred(memory.crls.check()))
        self.successResultOf(ensureDeferred(memory.crls.check()))
        second = self.scrape(memory)
        self.assertEqual(value(second, "otad_certificates_revoked_total", reason="keyCompromise"), 1)
        self.assertEqual(value(second, "otad_certificates_revoked_total", reason="superseded"), 1)
        self.assertEqual(value(second, "otad_crl_entries"), 3)
        record = memory.crls.record
        assert record is not None
        self.assertEqual(value(second, "otad_crl_next_update_timestamp_seconds"), record.next_update)

    def test_pool_gauges_follow_running_and_waiting_calls(self) -> None:
        """A one-thread pool with three calls in it reports one running and two waiting; a fourth past its queue is
        refused and counted; once they finish both gauges are back at zero."""
        metrics = Metrics()
        pool = WorkerPool(reactor, "otad-auth", 1, queue=2, metrics=metrics)
        pool.startService()
        self.addCleanup(pool.stopService)
        release = threading.Event()
        calls = [pool.run(release.wait, 10) for _ in range(3)]
        refused = pool.run(release.wait, 10)
        self.failureResultOf(refused)
        samples = parse(metrics.render()[0].decode())
        self.assertEqual(value(samples, "otad_pool_running_calls", pool="auth"), 1)
        self.assertEqual(value(samples, "otad_pool_waiting_calls", pool="auth"), 2)
        self.assertEqual(value(samples, "otad_pool_refused_calls_total", pool="auth"), 1)
        release.set()

        async def finished() -> None:
            for call in calls:
                await call
            samples = parse(metrics.render()[0].decode())
            self.assertEqual(value(samples, "otad_pool_running_calls", pool="auth"), 0)
            self.assertEqual(value(samples, "otad_pool_waiting_calls", pool="auth"), 0)

        return ensureDeferred(finished())

    def test_reactor_lag(self) -> None:
        """The lag is how much later than asked the reactor ran the once-a-second check."""
        metrics = Metrics()
        clock = Clock()
        lag = ReactorLag(metrics, clock)
        lag.startService()
        self.addCleanup(lag.stopService)
        clock.advance(1)
        self.assertEqual(value(parse(metrics.render()[0].decode()), "otad_reactor_lag_seconds"), 0)
        # The reactor was busy for 2.5 s past the next check.
        clock.advance(3.5)
        self.assertEqual(value(parse(metrics.render()[0].decode()), "otad_reactor_lag_seconds"), 2.5)

    def test_openmetrics_when_asked(self) -> None:
        """A scraper that accepts OpenMetrics gets it (prometheus_client chooses by the Accept header)."""
        memory = self.memory()
        code, headers, body = self.successResultOf(
            ensureDeferred(memory.fetch_operator("/metrics", headers={b"accept": [b"application/openmetrics-text; version=1.0.0"]}))
        )
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"content-type"][0].startswith(b"application/openmetrics-text"))
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_multiprocess_environment_set_too_late(self) -> None:
        """PROMETHEUS_MULTIPROC_DIR set after prometheus_client was imported (as in this process) stops the start
        with one line, rather than rendering only the other processes' values."""
        directory = Path(self.mktemp())
        directory.mkdir()
        self.patch(os, "environ", {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)})
        error = self.assertRaises(MetricsError, Metrics)
        self.assertIn("set it before otad starts", str(error))


# Run in a child process with PROMETHEUS_MULTIPROC_DIR set: what one otad process records.
_WRITER = """
import os
import sys
from otad.metrics import Metrics
metrics = Metrics()
requests, lag, expiry = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
for _ in range(requests):
    metrics.request("/scep", 200, "PKIOperation")
    with metrics.step("scep_PKCSReq"):
        pass
metrics.pool("crypto", requests, 2)
metrics.reactor_lag.set(lag)
metrics.own_certificates({"tls": expiry})
print(os.getpid())
"""
_READER = """
import sys
from otad.metrics import Metrics
sys.stdout.write(Metrics().render()[0].decode())
"""


class StoreMetricsContract:
    """What the store's calls and the hourly purge do to the metrics, on every engine; mixed into a TestCase with an
    engine mixin (``tests.stores``)."""

    # TestCase's and the engine mixin's, provided by the class this is mixed into.
    assertEqual: Any
    addCleanup: Any
    mktemp: Any
    successResultOf: Any
    store_location: Any

    def store(self, metrics: Metrics | None = None) -> InlineStoreThread:
        directory = Path(self.mktemp())
        directory.mkdir()
        store = InlineStoreThread(self.store_location(directory), metrics=metrics)
        self.addCleanup(store.close)
        return store

    def samples(self, metrics: Metrics) -> Samples:
        return parse(metrics.render()[0].decode())

    def test_purge_counts_challenges_that_expired_unused(self) -> None:
        """The hourly purge counts challenges that expired since the last purge with uses left, by kind; used ones,
        revoked ones and ones counted by an earlier purge are not counted."""
        metrics = Metrics()
        store = self.store()

        def setup(db: Any) -> None:
            db.add_challenge(b"1" * 32, "enroll", "alice", now=0, ttl=100)
            db.add_challenge(b"2" * 32, "scep", UDID, now=0, ttl=200)
            db.add_challenge(b"3" * 32, "scep", UDID, now=0, ttl=200)
            db.consume_challenge(b"3" * 32, ("scep",), now=10)
            revoked = db.add_challenge(b"4" * 32, "static", None, now=0, ttl=200)
            db.revoke_challenge(revoked, now=10)
            db.add_challenge(b"5" * 32, "static", None, now=0, ttl=5000)

        self.successResultOf(store.call(setup))
        self.successResultOf(purge(store, metrics, since=50, now=3600, window=900))
        self.successResultOf(purge(store, metrics, since=3600, now=7200, window=900))
        samples = parse(metrics.render()[0].decode())
        self.assertEqual(value(samples, "otad_challenges_expired_total", kind="enroll"), 1)
        self.assertEqual(value(samples, "otad_challenges_expired_total", kind="scep"), 1)
        self.assertEqual(value(samples, "otad_challenges_expired_total", kind="static"), 1)

    def test_calls_measured_as_reads_and_writes(self) -> None:
        """A call that began a transaction is measured as one write, one that only read as one read, and the
        readiness ping (a transaction it rolls back, taking no write) as a read; none of them is an error."""
        metrics = Metrics()
        store = self.store(metrics)
        self.successResultOf(store.call(lambda db: db.add_challenge(b"1" * 32, "static", None, now=0, ttl=100)))
        self.successResultOf(store.call(lambda db: db.challenges()))
        self.successResultOf(store.call(Store.ping))
        samples = self.samples(metrics)
        self.assertEqual(value(samples, "otad_store_operation_duration_seconds_count", operation="write"), 1)
        self.assertEqual(value(samples, "otad_store_operation_duration_seconds_count", operation="read"), 2)
        self.assertEqual(value(samples, "otad_store_errors_total", operation="write"), 0)
        self.assertEqual(value(samples, "otad_store_errors_total", operation="read"), 0)


class SQLiteStoreMetricsTests(SQLiteStore, StoreMetricsContract, unittest.TestCase):
    pass


class PostgreSQLStoreMetricsTests(PostgreSQLStore, StoreMetricsContract, unittest.TestCase):
    timeout = 120

    def test_retried_call_is_measured_once(self) -> None:
        """A write whose connection the server drops before COMMIT runs again on a new connection: that is one
        write in the metrics, not two, and no error."""
        metrics = Metrics()
        store = self.store(metrics)
        attempts: list[int] = []

        def write(db: Store) -> None:
            attempts.append(1)
            with db.transaction():
                db.record_event(now=0.0, kind="retried", outcome="ok")
                if len(attempts) == 1:
                    db._db.execute("SELECT pg_terminate_backend(pg_backend_pid())")

        self.successResultOf(store.call(write))
        self.assertEqual(len(attempts), 2)
        samples = self.samples(metrics)
        self.assertEqual(value(samples, "otad_store_operation_duration_seconds_count", operation="write"), 1)
        self.assertEqual(value(samples, "otad_store_operation_duration_seconds_count", operation="read"), 0)
        self.assertEqual(value(samples, "otad_store_errors_total", operation="write"), 0)

    def test_unavailable_call_is_one_error(self) -> None:
        """With the server stopped a read retries for its few seconds and then fails: one read, measured over all
        its retries, and one store error."""
        metrics = Metrics()
        store = self.store(metrics)
        cluster = postgres.cluster()
        cluster.stop()
        try:
            self.failureResultOf(store.call(lambda db: db.events()), StoreUnavailable)
        finally:
            cluster.start()
        samples = self.samples(metrics)
        self.assertEqual(value(samples, "otad_store_operation_duration_seconds_count", operation="read"), 1)
        self.assertGreater(value(samples, "otad_store_operation_duration_seconds_sum", operation="read"), 2.0)
        self.assertEqual(value(samples, "otad_store_errors_total", operation="read"), 1)
        self.assertEqual(value(samples, "otad_store_operation_duration_seconds_count", operation="write"), 0)


class MultiprocessTests(unittest.TestCase):
    def run_python(self, code: str, directory: Path, *args: str) -> Deferred[tuple[bytes, bytes, int]]:
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
        return getProcessOutputAndValue(sys.executable, ["-c", code, *args], env=environment, path=str(ROOT), reactor=reactor)

    def test_two_processes_are_rendered_together(self) -> None:
        """Two processes writing into one PROMETHEUS_MULTIPROC_DIR, rendered by a third: counters and histograms
        add up, pool gauges add up, the reactor lag is the worst, a certificate's expiry is the latest written, and
        otad_build_info is one series."""

        async def run() -> None:
            directory = Path(self.mktemp()).absolute()
            directory.mkdir()
            for requests, lag, expiry in (("2", "0.5", "1000"), ("3", "0.25", "2000")):
                out, err, code = await self.run_python(_WRITER, directory, requests, lag, expiry)
                self.assertEqual(code, 0, err)
            self.assertEqual(len(list(directory.glob("counter_*.db"))), 2)
            out, err, code = await self.run_python(_READER, directory)
            self.assertEqual(code, 0, err)
            samples = parse(out.decode())
            self.assertEqual(value(samples, "otad_http_requests_total", route="/scep", status="200", outcome="ok"), 5)
            self.assertEqual(value(samples, "otad_step_duration_seconds_count", step="scep_PKCSReq", outcome="ok"), 5)
            self.assertEqual(value(samples, "otad_step_duration_seconds_bucket", step="scep_PKCSReq", outcome="ok", le="+Inf"), 5)
            self.assertEqual(value(samples, "otad_pool_running_calls", pool="crypto"), 4)
            self.assertEqual(value(samples, "otad_pool_waiting_calls", pool="crypto"), 1)
            self.assertEqual(value(samples, "otad_reactor_lag_seconds"), 0.5)
            self.assertEqual(value(samples, "otad_certificate_not_after_timestamp_seconds", role="tls"), 2000)
            self.assertEqual([key for key in samples if key[0] == "otad_build_info"], [("otad_build_info", (("version", _version()),))])

        return ensureDeferred(run())

    def test_ended_process_leaves_the_live_gauges(self) -> None:
        """Once its parent reports an otad process ended, its pool and lag gauges drop out of the sums; its counts stay."""

        async def run() -> None:
            directory = Path(self.mktemp()).absolute()
            directory.mkdir()
            pids = []
            for requests, lag in (("2", "0.5"), ("3", "0.25")):
                out, err, code = await self.run_python(_WRITER, directory, requests, lag, "1000")
                self.assertEqual(code, 0, err)
                pids.append(int(out))
            process_ended(pids[0], directory)
            out, err, code = await self.run_python(_READER, directory)
            self.assertEqual(code, 0, err)
            samples = parse(out.decode())
            self.assertEqual(value(samples, "otad_pool_running_calls", pool="crypto"), 2)
            self.assertEqual(value(samples, "otad_pool_waiting_calls", pool="crypto"), 1)
            self.assertEqual(value(samples, "otad_reactor_lag_seconds"), 0.25)
            self.assertEqual(value(samples, "otad_http_requests_total", route="/scep", status="200", outcome="ok"), 5)

        return ensureDeferred(run())


def _version() -> str:
    from otad import __version__

    return __version__


def _not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


class MetricsDaemonTests(unittest.TestCase):
    timeout = 180

    async def daemon(self, environment: Mapping[str, str] | None = None) -> Daemon:
        data_dir = Path(self.mktemp()).absolute()
        data_dir.mkdir(parents=True)
        (data_dir / "anchors.pem").write_bytes(apple().anchors_pem())
        (data_dir / "otad.conf").write_text("[metrics]\nlisten = tcp:0:interface=127.0.0.1\n")
        daemon = Daemon(
            data_dir, ("--device-ca", str(data_dir / "anchors.pem"), "--config", str(data_dir / "otad.conf")), environment=environment
        )
        self.addCleanup(daemon.stop)
        await daemon.start()
        return daemon

    async def scrape(self, daemon: Daemon) -> Samples:
        response = await daemon.operator_client().get(daemon.metrics_url("/metrics"))
        self.assertEqual(response.code, 200)
        return parse((await response.content()).decode())

    def test_scrape_after_an_enrollment(self) -> None:
        """The fake iPhone enrolls over real TLS (phase 1, phase 2, SCEP, phase 3); the metrics listener, a separate
        plain-HTTP port on 127.0.0.1, then shows each step and counter moved by the right amount, the expiry of each
        of otad's own certificates as its certs/ file says, the version, and the pool and reactor gauges; the
        device port has no /metrics."""

        async def run() -> None:
            daemon = await self.daemon()
            self.assertNotEqual(daemon.metrics_port, daemon.port)
            before = await self.scrape(daemon)
            ca_pem = (daemon.data_dir / "certs" / "ca.pem").read_bytes()
            device = FakeDevice(reactor, daemon.url("/"), ca_pem, apple(), UDID)
            self.addCleanup(lambda: ensureDeferred(device.close()))
            service = await device.enroll("apple", daemon.first_password)
            profile = await device.phase2(service["PayloadContent"]["Challenge"])
            await device.scep_enroll(profile["PayloadContent"][0])
            await device.phase3()
            after = await self.scrape(daemon)

            for step in ("login", "phase1", "phase2", "phase3", "scep_PKCSReq"):
                self.assertEqual(delta(before, after, "otad_step_duration_seconds_count", step=step, outcome="ok"), 1, step)
                self.assertGreater(delta(before, after, "otad_step_duration_seconds_sum", step=step, outcome="ok"), 0, step)
            self.assertEqual(delta(before, after, "otad_step_duration_seconds_count", step="scep_GetCACert", outcome="ok"), 1)
            self.assertEqual(delta(before, after, "otad_http_requests_total", route="/enroll", status="200", outcome="ok"), 1)
            self.assertEqual(delta(before, after, "otad_http_requests_total", route="/profile", status="200", outcome="ok"), 2)
            self.assertGreaterEqual(delta(before, after, "otad_http_requests_total", route="/scep", status="200", outcome="ok"), 2)
            self.assertEqual(delta(before, after, "otad_challenges_minted_total", kind="enroll"), 1)
            self.assertEqual(delta(before, after, "otad_challenges_used_total", kind="enroll"), 1)
            self.assertEqual(delta(before, after, "otad_challenges_used_total", kind="scep"), 1)
            # Phase 2's SCEP challenge, and the one phase 3's template carries.
            self.assertEqual(delta(before, after, "otad_challenges_minted_total", kind="scep"), 2)
            self.assertEqual(delta(before, after, "otad_certificates_issued_total", method="scep"), 1)
            self.assertEqual(delta(before, after, "otad_certificates_renewed_total"), 0)
            self.assertEqual(delta(before, after, "otad_enrollments_completed_total"), 1)
            self.assertGreater(delta(before, after, "otad_store_operation_duration_seconds_count", operation="write"), 0)
            self.assertEqual(value(after, "otad_build_info", version=_version()), 1)
            certs = daemon.data_dir / "certs"
            files = {"root": "ca.pem", **{role: f"{role}.pem" for role in ROLES if role != "root"}}
            for role in ROLES:
                self.assertEqual(
                    value(after, "otad_certificate_not_after_timestamp_seconds", role=role), _not_after(certs / files[role]), role
                )
            for pool in ("crypto", "auth", "store"):
                self.assertIn(("otad_pool_waiting_calls", (("pool", pool),)), after)
            self.assertIn(("otad_reactor_lag_seconds", ()), after)
            self.assertGreater(value(after, "process_resident_memory_bytes"), 0)
            on_device_port = await daemon.client().get(daemon.url("/metrics"))
            self.assertEqual(on_device_port.code, 404)
            await on_device_port.content()

        return ensureDeferred(run())

    def test_multiprocess_mode(self) -> None:
        """With PROMETHEUS_MULTIPROC_DIR set, the daemon keeps its values in that directory and renders them from there."""

        async def run() -> None:
            directory = Path(self.mktemp()).absolute()
            directory.mkdir()
            daemon = await self.daemon({"PROMETHEUS_MULTIPROC_DIR": str(directory)})
            response = await daemon.client().get(daemon.url("/CA"))
            await response.content()
            samples = await self.scrape(daemon)
            self.assertEqual(value(samples, "otad_http_requests_total", route="/CA", status="200", outcome="ok"), 1)
            self.assertTrue(list(directory.glob("counter_*.db")))
            self.assertGreater(value(samples, "otad_certificate_not_after_timestamp_seconds", role="tls"), 0)

        return ensureDeferred(run())
