"""A throwaway PostgreSQL server for the tests: Debian's ``initdb`` and ``postgres`` in a temporary directory.

One cluster per test process (``cluster()``), started on first use and stopped when the process
exits; each test gets a database of its own (``new_database``). The server listens on a Unix
socket in its directory only, runs as ``nobody`` when the tests run as root (PostgreSQL refuses
root), and dies with the test process even if that is killed (setpriv's parent-death signal, which
follows the thread that started the server: one thread of the cluster's own starts it every time,
since a pool thread that ends, as trial ends the reactor's after each test, would take it along).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PACKAGE = "postgresql"
NOBODY = 65534
_numbers = itertools.count(1)


class PostgreSQLMissing(AssertionError):
    """The server binaries are not installed: the test fails (never skips) and says what to install."""


def _binaries() -> Path:
    configured = os.environ.get("OTAD_TEST_PG_BIN")
    candidates = [Path(configured)] if configured else sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if (directory / "postgres").exists() and (directory / "initdb").exists():
            return directory
    raise PostgreSQLMissing(f"no PostgreSQL server binaries (initdb, postgres): install the Debian package {PACKAGE!r} (.ci/run does)")


class Cluster:
    """One initdb'd cluster; ``stop`` and ``start`` let a test take the server away and bring it back."""

    def __init__(self, *, fsync: bool = False) -> None:
        """``fsync``: off for the tests (durability against power loss is not what they check; a fast shutdown,
        as in the outage tests, still writes everything), on for benches that measure commits."""
        self.fsync = fsync
        self.bin = _binaries()
        self.directory = Path(tempfile.mkdtemp(prefix="otad-pg-"))
        self.data = self.directory / "data"
        self._as_owner: list[str] = []
        if os.getuid() == 0:
            os.chown(self.directory, NOBODY, NOBODY)
            self._as_owner = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        subprocess.run(
            [*self._as_owner, str(self.bin / "initdb"), "-D", str(self.data), "-U", "otad", "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=self.directory,
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._parent = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="otad-test-postgres")
        self.start()
        atexit.register(self.destroy)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://otad@/{database}?host={self.directory}"

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        assert self.process is None
        log = open(self.directory / "server.log", "ab")
        spawning = self._parent.submit(
            subprocess.Popen,
            [
                *self._as_owner,
                # The server goes when the test process goes, however it ends (immediate shutdown).
                *(["--pdeathsig=QUIT"] if self._as_owner else []),
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-k",
                str(self.directory),
                "-c",
                "listen_addresses=",
                "-c",
                f"fsync={'on' if self.fsync else 'off'}",
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=log,
            cwd=self.directory,
        )
        self.process = spawning.result()
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {(self.directory / 'server.log').read_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, everything committed is written."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        self.process = None

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"otad_{os.getpid()}_{next(_numbers)}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@functools.cache
def cluster() -> Cluster:
    """The test process's one cluster."""
    return Cluster()


def new_database() -> str:
    """A fresh database on the shared cluster: what a PostgreSQL test's ``[store] url`` is."""
    return cluster().new_database()
