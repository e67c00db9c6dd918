"""Test fakes that implement otad's real interfaces, and cached slow fixtures (RSA keys, a bootstrapped CA)."""

from __future__ import annotations

import datetime
import functools
import tempfile
from pathlib import Path
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred

from otad.ca import Authority, bootstrap
from otad.pool import WorkerPool
from otad.store import Store, StoreThread

T = TypeVar("T")
NOW = datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.timezone.utc)


class InlinePool(WorkerPool):
    """A WorkerPool that runs each call at once on the calling thread, so in-memory tests need no threads."""

    def run(self, call: Callable[..., T], *args: Any) -> Deferred[T]:
        return maybeDeferred(call, *args)


class InlineStoreThread(StoreThread):
    """A StoreThread whose calls run inline, over a real SQLite store in a temporary file."""

    run = InlinePool.run  # type: ignore[assignment]

    def __init__(self, path: Path) -> None:
        super().__init__(None, lambda: Store(path))  # type: ignore[arg-type]
        self.open()


@functools.lru_cache(maxsize=None)
def authority() -> Authority:
    """One bootstrapped CA for the whole test run (RSA key generation is slow)."""
    directory = Path(tempfile.mkdtemp(prefix="otad-test-ca-"))
    return bootstrap(
        directory / "certs",
        hostname="localhost",
        organization="Test Org",
        common_name="Test Org otad Root CA",
        ca_key_size=3072,
        now=datetime.datetime.now(datetime.timezone.utc),
        report=lambda line: None,
    )
