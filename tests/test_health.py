"""Liveness and readiness on the operator's listener: /healthz answers while the reactor runs; /readyz says
whether to send this otad requests (starting, the store, stopping, draining), in memory and on the daemon, on
SQLite and on PostgreSQL (a server that stops, or turns read-only, and comes back)."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import psycopg
from twisted.internet import reactor, threads
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.trial import unittest

from otad import config
from otad.health import Readiness, ReadinessGauge
from otad.store import StoreThread, open_database
from otad.tap import OtadService
from tests import postgres
from tests.daemon import Daemon
from tests.helpers import MemorySite
from tests.stores import PostgreSQLStore


class HealthTests(unittest.TestCase):
    def setUp(self) -> None:
        self.memory = MemorySite(Path(self.mktemp()))
        self.addCleanup(self.memory.close)

    def get(self, path: str) -> tuple[int, bytes]:
        code, _, body = self.successResultOf(ensureDeferred(self.memory.fetch_operator(path)))
        return code, body

    def test_liveness(self) -> None:
        """/healthz is 200 "ok" whatever the readiness: it only shows that the reactor answers."""
        self.assertEqual(self.get("/healthz"), (200, b"ok\n"))
        self.memory.readiness.stopping()
        self.assertEqual(self.get("/healthz"), (200, b"ok\n"))

    def test_starting_then_ready(self) -> None:
        """Until the keys are loaded /readyz is 503 saying so; then 200 "ready"."""
        self.assertEqual(self.get("/readyz"), (503, b"not ready: starting: keys not loaded yet\n"))
        self.memory.readiness.ready()
        self.assertEqual(self.get("/readyz"), (200, b"ready\n"))

    def test_store_that_cannot_write(self) -> None:
        """A database that cannot take a write (read-only here) makes /readyz 503 with the database's reason in
        one line; once it can again, the process is ready again by itself."""
        self.memory.readiness.ready()
        self.successResultOf(self.memory.store.call(lambda store: store._db.execute("PRAGMA query_only = ON")))
        code, body = self.get("/readyz")
        self.assertEqual(code, 503)
        self.assertEqual(body, b"not ready: store: the state database is unavailable: attempt to write a readonly database\n")
        self.successResultOf(self.memory.store.call(lambda store: store._db.execute("PRAGMA query_only = OFF")))
        self.assertEqual(self.get("/readyz"), (200, b"ready\n"))

    def test_store_not_open(self) -> None:
        """A store that is not open (closed at shutdown) is not ready, in one line."""
        self.memory.readiness.ready()
        self.memory.store.stopService()
        # Open again for the cleanup, which closes it.
        self.addCleanup(self.memory.store.open)
        self.assertEqual(self.get("/readyz"), (503, b"not ready: store: the store is not open\n"))

    def test_stopping_and_draining(self) -> None:
        """Draining and stopping are 503 with their names; stopping wins over draining."""
        self.memory.readiness.ready()
        self.memory.readiness.draining()
        self.assertEqual(self.get("/readyz"), (503, b"not ready: draining\n"))
        self.memory.readiness.stopping()
        self.memory.readiness.draining()
        self.assertEqual(self.get("/readyz"), (503, b"not ready: stopping\n"))

    def test_only_get(self) -> None:
        """The operator's URLs take GET (and HEAD); others get 405, unknown paths 404."""
        code, _, _ = self.successResultOf(ensureDeferred(self.memory.fetch_operator("/nope")))
        self.assertEqual(code, 404)
        response = self.successResultOf(self.memory.operator_treq.request("POST", "http://127.0.0.1:9464/readyz"))
        self.assertEqual(response.code, 405)

    def test_ready_gauge(self) -> None:
        """otad_ready follows readiness every 15 s: 0 while starting, 1 once ready, 0 while the store cannot write."""
        metrics, clock = self.memory.metrics, self.memory.clock
        gauge = ReadinessGauge(self.memory.readiness, metrics, clock)
        gauge.startService()
        self.addCleanup(gauge.stopService)

        def ready() -> float:
            return metrics.ready._value.get()

        self.assertEqual(ready(), 0)
        self.memory.readiness.ready()
        self.assertEqual(ready(), 0)
        clock.advance(15)
        self.assertEqual(ready(), 1)
        self.successResultOf(self.memory.store.call(lambda store: store._db.execute("PRAGMA query_only = ON")))
        clock.advance(15)
        self.assertEqual(ready(), 0)
        self.successResultOf(self.memory.store.call(lambda store: store._db.execute("PRAGMA query_only = OFF")))
        clock.advance(15)
        self.assertEqual(ready(), 1)

    def test_service_stop_makes_it_not_ready(self) -> None:
        """The daemon's service says "stopping" as soon as its stop begins, before anything is closed."""
        settings = config.load(None, {"data_dir": self.mktemp(), "hostname": "otad.test"})
        service = OtadService(settings, reactor)
        service.readiness.ready()
        stopping = service.stopService()
        self.assertEqual(service.readiness.state, "stopping")
        return stopping


class HangingStoreTests(unittest.TestCase):
    def test_store_that_does_not_answer(self) -> None:
        """A store thread stuck on a long call makes /readyz not ready after the timeout, and probes meanwhile
        wait for the one outstanding check instead of queueing more work behind it."""
        store = StoreThread(reactor, lambda: open_database(Path(self.mktemp())))
        store.startService()
        self.addCleanup(store.stopService)
        readiness = Readiness(store, reactor, timeout=0.3)
        readiness.ready()
        release = threading.Event()
        self.addCleanup(release.set)

        async def run() -> None:
            await store.open()
            self.assertIsNone(await readiness.problem())
            stuck = store.call(lambda db: release.wait(30))
            first = ensureDeferred(readiness.problem())
            second = ensureDeferred(readiness.problem())
            # The stuck call and one check: the second probe queued nothing.
            self.assertEqual(store.in_flight, 2)
            self.assertEqual(await first, "store: the database has not answered for 0.3s")
            self.assertEqual(await second, "store: the database has not answered for 0.3s")
            # Still stuck: a new probe waits on the same check and gives up at once.
            self.assertEqual(store.in_flight, 2)
            self.assertEqual(await readiness.problem(), "store: the database has not answered for 0.3s")
            release.set()
            await stuck
            await deferLater(reactor, 0.05, lambda: None)
            self.assertIsNone(await readiness.problem())

        return ensureDeferred(run())


class ReadinessDaemonTests(unittest.TestCase):
    timeout = 180

    def test_starting_then_ready(self) -> None:
        """The real daemon opens its metrics listener before it makes its keys: while it does, /healthz is 200 and
        /readyz 503 "starting"; once it listens for devices /readyz is 200."""

        async def run() -> None:
            data_dir = Path(self.mktemp()).absolute()
            data_dir.mkdir()
            # A 4096-bit CA key takes seconds to make: the window in which the daemon is alive but not ready.
            (data_dir / "otad.conf").write_text("[metrics]\nlisten = tcp:0:interface=127.0.0.1\n[ca]\nkey_size = 4096\n")
            daemon = Daemon(data_dir, ("--config", str(data_dir / "otad.conf")))
            self.addCleanup(daemon.stop)
            started = daemon.start()
            await daemon.metrics_listening()
            client = daemon.operator_client()
            alive = await client.get(daemon.metrics_url("/healthz"))
            self.assertEqual((alive.code, await alive.content()), (200, b"ok\n"))
            starting = await client.get(daemon.metrics_url("/readyz"))
            self.assertEqual((starting.code, await starting.content()), (503, b"not ready: starting: keys not loaded yet\n"))
            self.assertFalse(started.called)
            await started
            ready = await client.get(daemon.metrics_url("/readyz"))
            self.assertEqual((ready.code, await ready.content()), (200, b"ready\n"))

        return ensureDeferred(run())


class PostgreSQLHealthTests(PostgreSQLStore, unittest.TestCase):
    """Readiness over a PostgreSQL store, in memory: the same ping (a transaction that reads the schema version and
    rolls back) tells a stopped or read-only server apart from one that could take a write."""

    timeout = 120

    def setUp(self) -> None:
        directory = Path(self.mktemp())
        self.memory = MemorySite(directory, store=self.store_location(directory))
        self.addCleanup(self.memory.close)
        self.memory.readiness.ready()

    def get(self, path: str) -> tuple[int, bytes]:
        code, _, body = self.successResultOf(ensureDeferred(self.memory.fetch_operator(path)))
        return code, body

    def test_server_stopped_then_back(self) -> None:
        """With the PostgreSQL server stopped /readyz is 503 with the store's reason in one line (once the store
        has given up retrying); after the server restarts the same process is ready again by itself."""
        self.assertEqual(self.get("/readyz"), (200, b"ready\n"))
        cluster = postgres.cluster()
        cluster.stop()
        try:
            code, body = self.get("/readyz")
        finally:
            cluster.start()
        self.assertEqual(code, 503)
        self.assertTrue(body.startswith(b"not ready: store: the state database is unavailable: "), body)
        self.assertEqual(body.count(b"\n"), 1)
        self.assertEqual(self.get("/readyz"), (200, b"ready\n"))

    def test_read_only_server(self) -> None:
        """A server whose transactions are read-only (default_transaction_read_only, as on a standby) answers the
        ping's read but could take no write: /readyz is 503 saying so, and a device's login (which writes its
        challenge) gets 503 too, not 500; once it can write again, 200 for both."""
        admin = psycopg.connect(postgres.cluster().url(), autocommit=True)
        self.addCleanup(admin.close)

        def read_only(on: bool) -> None:
            admin.execute(f"ALTER SYSTEM {'SET default_transaction_read_only = on' if on else 'RESET default_transaction_read_only'}")
            admin.execute("SELECT pg_reload_conf()")
            # Every backend takes the reloaded setting before its next command.
            time.sleep(0.3)

        self.addCleanup(read_only, False)
        self.assertEqual(self.get("/readyz"), (200, b"ready\n"))
        read_only(True)
        code, body = self.get("/readyz")
        self.assertEqual(code, 503)
        self.assertTrue(body.startswith(b"not ready: store: the state database is unavailable: "), body)
        self.assertTrue(body.endswith(b" is read-only (transaction_read_only is on)\n"), body)
        login = {b"authorization": [b"Basic " + base64.b64encode(b"alice:correct horse")]}
        code, _, body = self.successResultOf(ensureDeferred(self.memory.fetch("GET", "/enroll", headers=login)))
        self.assertEqual((code, body.count(b"\n")), (503, 1), body)
        self.assertIn(b"cannot take writes now", body)
        read_only(False)
        self.assertEqual(self.get("/readyz"), (200, b"ready\n"))
        code, _, body = self.successResultOf(ensureDeferred(self.memory.fetch("GET", "/enroll", headers=login)))
        self.assertEqual(code, 200, body)


class PostgreSQLReadinessDaemonTests(PostgreSQLStore, unittest.TestCase):
    timeout = 180

    def test_server_stopped_then_back(self) -> None:
        """The real daemon on a PostgreSQL store is ready; with the server stopped its /readyz turns 503 naming the
        store, and once the server is back it is ready again by itself, without a restart."""

        async def readyz(daemon: Daemon) -> tuple[int, bytes]:
            response = await daemon.operator_client().get(daemon.metrics_url("/readyz"))
            return response.code, await response.content()

        async def until(daemon: Daemon, wanted: int) -> tuple[int, bytes]:
            deadline = time.monotonic() + 30
            while True:
                code, body = await readyz(daemon)
                if code == wanted or time.monotonic() > deadline:
                    return code, body
                await deferLater(reactor, 0.2, lambda: None)

        async def run() -> None:
            data_dir = Path(self.mktemp()).absolute()
            data_dir.mkdir()
            (data_dir / "otad.conf").write_text(self.store_config(data_dir) + "[metrics]\nlisten = tcp:0:interface=127.0.0.1\n")
            daemon = Daemon(data_dir, ("--config", str(data_dir / "otad.conf")))
            self.addCleanup(daemon.stop)
            await daemon.start()
            self.assertEqual(await readyz(daemon), (200, b"ready\n"))
            cluster = postgres.cluster()
            await threads.deferToThread(cluster.stop)
            try:
                code, body = await until(daemon, 503)
            finally:
                await threads.deferToThread(cluster.start)
            self.assertEqual(code, 503)
            self.assertTrue(body.startswith(b"not ready: store: "), body)
            self.assertEqual(await until(daemon, 200), (200, b"ready\n"))
            self.assertIsNone(daemon.exit_code)

        return ensureDeferred(run())
