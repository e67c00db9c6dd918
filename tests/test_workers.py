"""``[server] workers``: the real daemon as a supervisor and worker processes sharing its sockets.

The burst and SIGKILL tests run against two workers in tests.test_scep_load; these check the
process tree itself: every worker serves, a dead worker is replaced, SIGTERM drains a request
that is under way (with one process and with workers), SIGHUP reaches the workers, and workers
do not outlive a killed supervisor.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from tests.daemon import Daemon

LISTEN = "tcp:0:interface=127.0.0.1"


class RawClient(Protocol):
    """One plain-HTTP connection that sends what it is told, when it is told, and keeps what comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(self.received)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class WorkersTests(unittest.TestCase):
    timeout = 120

    def daemon(self, workers: int) -> Daemon:
        folder = Path(self.mktemp()).absolute()
        folder.mkdir(parents=True)
        config = folder / "otad.conf"
        config.write_text(f"[server]\nworkers = {workers}\ndrain_timeout = 10s\n")
        daemon = Daemon(folder / "data", ["--config", str(config)], listen=LISTEN)
        self.addCleanup(daemon.stop)
        return daemon

    async def connect(self, port: int) -> RawClient:
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        return client

    async def get(self, port: int, path: str = "/") -> bytes:
        client = await self.connect(port)
        client.send(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        return await client.closed

    def test_every_worker_serves(self) -> None:
        """With workers = 2, the supervisor serves nothing itself and both workers answer requests on the shared port."""

        async def run() -> None:
            daemon = self.daemon(2)
            port = await daemon.start()
            self.assertEqual(sorted(daemon.worker_pids), [0, 1])
            for _ in range(10):
                answers = await gatherResults([ensureDeferred(self.get(port)) for _ in range(8)])
                self.assertTrue(all(answer.startswith(b"HTTP/1.1 200") for answer in answers))
                served = set(re.findall(rb"\[worker (\d) otad\.web#info\] GET / 200", daemon.output))
                if served == {b"0", b"1"}:
                    break
            self.assertEqual(served, {b"0", b"1"})
            self.assertNotRegex(daemon.output, rb"\[otad\.web#info\] GET")

        return ensureDeferred(run())

    def test_dead_worker_is_replaced(self) -> None:
        """A worker killed by SIGKILL is logged and started again; the other goes on serving meanwhile."""

        async def run() -> None:
            daemon = self.daemon(2)
            port = await daemon.start()
            victim = daemon.worker_pids[0]
            replaced = daemon.wait_for(rb"started worker 0 \(pid (\d+)\)")
            os.kill(victim, signal.SIGKILL)
            self.assertTrue((await self.get(port)).startswith(b"HTTP/1.1 200"))
            match = await replaced
            self.assertNotEqual(int(match.group(1)), victim)
            self.assertIn(b"worker 0 was killed by SIGKILL; starting another in 0 s", daemon.output)
            await daemon.wait_for(rb"\[worker 0 [^]]*\] Starting factory", match.start())
            self.assertTrue((await self.get(port)).startswith(b"HTTP/1.1 200"))

        return ensureDeferred(run())

    def check_drain(self, workers: int) -> None:
        async def run() -> None:
            daemon = self.daemon(workers)
            port = await daemon.start()
            client = await self.connect(port)
            body = b"x" * 100
            head = b"POST /scep?operation=PKIOperation HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n"
            client.send(head + body[:50])
            await deferLater(reactor, 0.5, lambda: None)
            idle = await self.connect(port)
            stopped = daemon.stop()
            # The daemon now stops accepting and waits; the request under way is still read and answered.
            await deferLater(reactor, 1, lambda: None)
            client.send(body[50:])
            answer = await client.closed
            self.assertRegex(answer, rb"^HTTP/1.1 400 ")
            self.assertIn(b"connection: close", answer.lower())
            # An idle connection is closed without an answer, rather than held until the timeout.
            self.assertEqual(await idle.closed, b"")
            await stopped

        return ensureDeferred(run())

    def test_sigterm_drains_one_process(self) -> None:
        """SIGTERM with one process: a request whose body is still arriving is answered, an idle connection closed."""
        return self.check_drain(1)

    def test_sigterm_drains_workers(self) -> None:
        """SIGTERM with workers: the supervisor stops them and each answers the request it is reading before it exits."""
        return self.check_drain(2)

    def test_sighup_reaches_workers(self) -> None:
        """SIGHUP makes the supervisor check its certificates and then every worker re-read them."""

        async def run() -> None:
            daemon = self.daemon(2)
            await daemon.start()
            start = len(daemon.output)
            reloaded = gatherResults(
                [daemon.wait_for(rb"\[worker %d otad\.tap#info\] reloading certificates" % index, start) for index in (0, 1)]
            )
            daemon.signal("HUP")
            await reloaded
            self.assertRegex(daemon.output[start:], rb"\[otad\.tap#info\] reloading certificates")

        return ensureDeferred(run())

    def test_workers_end_with_a_killed_supervisor(self) -> None:
        """A supervisor killed by SIGKILL leaves no worker behind: each sees its pipe close and stops."""

        async def run() -> None:
            daemon = self.daemon(2)
            await daemon.start()
            pids = list(daemon.worker_pids.values())
            daemon.transport.signalProcess("KILL")
            await daemon.exited()
            deadline = time.monotonic() + 15
            while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
                await deferLater(reactor, 0.2, lambda: None)
            self.assertEqual([pid for pid in pids if alive(pid)], [])

        return ensureDeferred(run())

    def test_metrics_from_every_worker(self) -> None:
        """With workers, [metrics] listen is served by the workers from all their metrics: the request count is the sum."""

        async def run() -> None:
            folder = Path(self.mktemp()).absolute()
            folder.mkdir(parents=True)
            config = folder / "otad.conf"
            config.write_text("[server]\nworkers = 2\n[metrics]\nlisten = tcp:0:interface=127.0.0.1\n")
            daemon = Daemon(folder / "data", ["--config", str(config)], listen=LISTEN)
            self.addCleanup(daemon.stop)
            port = await daemon.start()
            for _ in range(10):
                await gatherResults([ensureDeferred(self.get(port)) for _ in range(8)])
                served = set(re.findall(rb"\[worker (\d) otad\.web#info\] GET / 200", daemon.output))
                if served == {b"0", b"1"}:
                    break
            self.assertEqual(served, {b"0", b"1"})
            answered = len(re.findall(rb"\] GET / 200", daemon.output))
            scrape = await self.get(daemon.metrics_port, "/metrics")
            self.assertTrue(scrape.startswith(b"HTTP/1.1 200"), scrape[:200])
            counted = re.search(rb'otad_http_requests_total\{outcome="ok",route="/",status="200"\} ([0-9.]+)', scrape)
            assert counted is not None, scrape
            self.assertEqual(float(counted.group(1)), answered)
            ready = await self.get(daemon.metrics_port, "/readyz")
            self.assertTrue(ready.startswith(b"HTTP/1.1 200"), ready)

        return ensureDeferred(run())
