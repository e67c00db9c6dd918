"""The operator's listener: ``/metrics`` (Prometheus), ``/healthz`` (liveness) and ``/readyz`` (readiness).

Devices never reach it (``[metrics] listen``, loopback by default). ``/healthz`` answers from
the reactor thread, so an answer proves the reactor runs; ``/readyz`` asks ``Readiness``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from otad.health import Readiness
from otad.metrics import Metrics
from otad.web import MethodResource, Reply, render_async


class MetricsPage(MethodResource):
    """The exposition, in the format the scraper's Accept asks for, rendered by ``run`` (a pool: in
    multiprocess mode rendering reads every process's files)."""

    def __init__(self, metrics: Metrics, run: Callable[..., Deferred[Any]]) -> None:
        super().__init__()
        self._metrics = metrics
        self._run = run

    def render_GET(self, request: Request) -> object:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")

        async def answer() -> Reply:
            body, content_type = await self._run(self._metrics.render, accept)
            return Reply(body, content_type.encode("ascii"), outcome="metrics")

        return render_async(request, answer)


class Liveness(MethodResource):
    def render_GET(self, request: Request) -> object:
        return render_async(request, lambda: Reply(b"ok\n", outcome="alive"))


class ReadinessPage(MethodResource):
    """200 ``ready``, or 503 with the one-line reason (starting, stopping, draining, the store)."""

    def __init__(self, readiness: Readiness) -> None:
        super().__init__()
        self._readiness = readiness

    def render_GET(self, request: Request) -> object:
        async def answer() -> Reply:
            problem = await self._readiness.problem()
            if problem is None:
                return Reply(b"ready\n", outcome="ready")
            return Reply(f"not ready: {problem}\n".encode(), code=503, outcome="not ready")

        return render_async(request, answer)
