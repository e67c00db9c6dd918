"""otad's Prometheus metrics: one ``Metrics`` object per process, handed to the services and the site.

Every metric is defined here, with fixed label values (route names, steps, reasons, roles), so
no device, user or raw path can become a label. With ``PROMETHEUS_MULTIPROC_DIR`` set in the
environment (several otad processes on one machine), the values live in that directory's files
and any process renders all of them together; gauges say how processes combine.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.values import ValueClass
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from otad import __version__
from otad.errors import Kind, Refused

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. An enrollment step is a few RSA operations and store writes (milliseconds), a login one
# bcrypt check (about 0.2 s), either of them plus a wait for a pool thread under load.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A store call is one small transaction: well under a millisecond to an fsync or a lock wait (on
# PostgreSQL, plus a network round trip per statement).
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

# The label values that exist, so that every series is there (at 0) from the first scrape and
# an alert on rate() sees the first event.
STEPS = (
    "login",
    "phase1",
    "phase2",
    "phase3",
    "scep_GetCACaps",
    "scep_GetCACert",
    "scep_PKCSReq",
    "scep_RenewalReq",
    "scep_CertPoll",
    "scep_GetCert",
    "scep_GetCRL",
    "scep_other",
)
SCEP_MESSAGE_TYPES = ("PKCSReq", "RenewalReq", "CertPoll", "GetCert", "GetCRL")
LOGIN_FAILURES = ("bad_credentials", "throttled", "malformed", "plain_http", "unavailable")
CHALLENGE_KINDS = ("enroll", "scep", "static")
CHALLENGE_REFUSALS = ("unknown", "expired", "used", "revoked")
ROLES = ("root", "tls", "signing", "ra", "ra-encrypt", "ra-sign", "ocsp")
POOLS = ("crypto", "auth", "store")
# RFC 5280's reason names, as otad-admin certs revoke takes them.
REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
)


class MetricsError(RuntimeError):
    """The metrics cannot be set up as the environment asks; str() is one line saying why."""


def multiprocess_directory() -> Path | None:
    """The directory shared by otad's processes, when ``PROMETHEUS_MULTIPROC_DIR`` is set."""
    value = os.environ.get(MULTIPROCESS_VARIABLE)
    return Path(value) if value else None


def outcome_of(kind: Kind) -> str:
    """``error`` for what otad or a dependency got wrong (5xx), ``refused`` for what the client did."""
    return "error" if kind in (Kind.BROKEN, Kind.UNAVAILABLE) else "refused"


@dataclass
class Step:
    """One timed step; its ``name`` and ``outcome`` may change while it runs (phase 2 turns out to be phase 3)."""

    name: str
    outcome: str = "ok"


def route_status_outcome(outcome: str) -> str:
    """The ``outcome`` label of a request from its log outcome: ``refused``, ``error``, or ``ok`` for every answer."""
    return outcome if outcome in ("refused", "error") else "ok"


class Metrics:
    """Every metric otad exports, in a registry of its own (so that tests can make as many as they like).

    In multiprocess mode there must be one per process: the values are then kept in the shared
    directory's files, and two objects in one process would overwrite each other's counts.
    ``timer`` measures durations (monotonic seconds), separately from the wall clock.
    """

    def __init__(self, timer: Callable[[], float] = time.monotonic) -> None:
        directory = multiprocess_directory()
        multiprocess = bool(getattr(ValueClass, "_multiprocess", False))
        if directory is not None and not multiprocess:
            raise MetricsError(f"{MULTIPROCESS_VARIABLE} was set after prometheus_client was imported; set it before otad starts")
        if directory is not None and not directory.is_dir():
            raise MetricsError(f"{MULTIPROCESS_VARIABLE} is {directory}, which is not a directory")
        self.multiprocess_directory = directory
        self._timer = timer
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # Counters' *_created series mean nothing to otad's operators and double what a scrape holds.
        prometheus_client.disable_created_metrics()
        self.registry = registry = CollectorRegistry(auto_describe=True)
        if directory is None:
            # Memory, CPU and open files of this process (multiprocess mode has no per-process collector).
            ProcessCollector(registry=registry)

        self.build_info = Gauge(
            "otad_build_info", "Always 1; the label says which otad version runs.", ["version"], registry=registry, multiprocess_mode="max"
        )
        self.build_info.labels(version=__version__).set(1)

        self.http_requests = Counter(
            "otad_http_requests",
            "HTTP requests answered on the device listeners, by route (the URL's first segment, or other), status code and outcome.",
            ["route", "status", "outcome"],
            registry=registry,
        )
        self.http_connections_refused = Counter(
            "otad_http_connections_refused",
            "Connections answered and closed before a request was read (bad framing, too slow, too large, too many).",
            ["status"],
            registry=registry,
        )
        self.step_seconds = Histogram(
            "otad_step_duration_seconds",
            "Time otad spent on each enrollment step and SCEP message type, by outcome.",
            ["step", "outcome"],
            registry=registry,
            buckets=STEP_BUCKETS,
        )
        self.enrollments_completed = Counter(
            "otad_enrollments_completed", "Devices that received their first phase-3 configuration.", registry=registry
        )
        self.certificates_issued = Counter(
            "otad_certificates_issued",
            "Device certificates issued for new enrollments, by how the device got it (scep or pkcs12); renewals are counted apart.",
            ["method"],
            registry=registry,
        )
        self.certificates_renewed = Counter("otad_certificates_renewed", "Device certificates issued by SCEP renewal.", registry=registry)
        self.certificates_revoked = Counter(
            "otad_certificates_revoked",
            "Revocations otad picked up for its CRL (including otad-admin's), by RFC 5280 reason.",
            ["reason"],
            registry=registry,
        )
        self.challenges_minted = Counter(
            "otad_challenges_minted", "One-time challenges otad created, by kind (enroll: phase 1, scep).", ["kind"], registry=registry
        )
        self.challenges_used = Counter("otad_challenges_used", "Challenges used successfully, by kind.", ["kind"], registry=registry)
        self.challenges_expired = Counter(
            "otad_challenges_expired", "Challenges that expired unused (counted by the hourly purge), by kind.", ["kind"], registry=registry
        )
        self.challenges_refused = Counter(
            "otad_challenges_refused",
            "Challenges presented and refused, by the step (phase2, scep) and why (unknown, expired, used, revoked).",
            ["step", "reason"],
            registry=registry,
        )
        self.login_failures = Counter(
            "otad_login_failures", "Failed or refused logins at /enroll, by reason (never by user name).", ["reason"], registry=registry
        )
        self.store_seconds = Histogram(
            "otad_store_operation_duration_seconds",
            "Time each store call took on the store thread, by kind (read, or write when it opened a transaction).",
            ["operation"],
            registry=registry,
            buckets=STORE_BUCKETS,
        )
        self.store_errors = Counter(
            "otad_store_errors", "Store calls that failed because the database could not answer.", ["operation"], registry=registry
        )
        self.pool_waiting = Gauge(
            "otad_pool_waiting_calls",
            "Calls waiting for a thread of a worker pool (crypto, auth, store).",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_running = Gauge(
            "otad_pool_running_calls",
            "Calls running on a thread of a worker pool.",
            ["pool"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.pool_refused = Counter(
            "otad_pool_refused_calls", "Calls refused (503) because a pool's queue was full.", ["pool"], registry=registry
        )
        self.ready = Gauge(
            "otad_ready",
            "1 when /readyz would answer 200, else 0; checked every 15 s (the worst process in multiprocess mode).",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.reactor_lag = Gauge(
            "otad_reactor_lag_seconds",
            "How late the reactor ran a timer at the last check (once a second); high means something blocks it.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.certificate_not_after = Gauge(
            "otad_certificate_not_after_timestamp_seconds",
            "When each of otad's own certificates expires (Unix time), by role.",
            ["role"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.crl_next_update = Gauge(
            "otad_crl_next_update_timestamp_seconds",
            "The current CRL's nextUpdate (Unix time); relying parties refuse a CRL past it.",
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.crl_entries = Gauge(
            "otad_crl_entries", "Revoked certificates listed in the current CRL.", registry=registry, multiprocess_mode="mostrecent"
        )
        self._zeroes()

    def _zeroes(self) -> None:
        for step in STEPS:
            self.step_seconds.labels(step=step, outcome="ok")
        for method in ("scep", "pkcs12"):
            self.certificates_issued.labels(method=method)
        for reason in REVOCATION_REASONS:
            self.certificates_revoked.labels(reason=reason)
        for kind in CHALLENGE_KINDS:
            self.challenges_minted.labels(kind=kind)
            self.challenges_used.labels(kind=kind)
            self.challenges_expired.labels(kind=kind)
        for step in ("phase2", "scep"):
            for reason in CHALLENGE_REFUSALS:
                self.challenges_refused.labels(step=step, reason=reason)
        for reason in LOGIN_FAILURES:
            self.login_failures.labels(reason=reason)
        for operation in ("read", "write"):
            self.store_seconds.labels(operation=operation)
            self.store_errors.labels(operation=operation)
        for pool in POOLS:
            self.pool_refused.labels(pool=pool)

    # -- recording ---------------------------------------------------------------------------

    def now(self) -> float:
        """The duration timer's reading (monotonic seconds)."""
        return self._timer()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Time the ``with`` body as one step. A ``Refused`` leaving it sets the outcome by its kind; any
        other exception sets ``error`` unless the body chose another outcome than ``ok`` (and it may
        rename the step)."""
        step = Step(name)
        started = self._timer()
        try:
            yield step
        except Refused as refused:
            step.outcome = outcome_of(refused.kind)
            raise
        except Exception:
            if step.outcome == "ok":
                step.outcome = "error"
            raise
        finally:
            self._child(self.step_seconds, step.name, step.outcome).observe(max(0.0, self._timer() - started))

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, remembered: every request records several samples, and prometheus-client
        checks and looks the labels up anew on each call. The label values come from small fixed sets."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def request(self, route: str, status: int, outcome: str) -> None:
        self._child(self.http_requests, route, str(status), route_status_outcome(outcome)).inc()

    def challenge_refused(self, step: str, reason: str) -> None:
        """``reason`` is the store's refusal text (``challenge expired``...), reduced to one of CHALLENGE_REFUSALS."""
        label = next((word for word in ("expired", "used", "revoked") if word in reason), "unknown")
        self.challenges_refused.labels(step=step, reason=label).inc()

    def store_call(self, operation: str, seconds: float, failed: bool) -> None:
        self._child(self.store_seconds, operation).observe(max(0.0, seconds))
        if failed:
            self._child(self.store_errors, operation).inc()

    def pool(self, name: str, in_flight: int, threads: int) -> None:
        """A pool's calls changed: ``in_flight`` submitted and not finished, at most ``threads`` of them running."""
        self._child(self.pool_running, name).set(min(in_flight, threads))
        self._child(self.pool_waiting, name).set(max(0, in_flight - threads))

    def own_certificates(self, not_after: Mapping[str, float]) -> None:
        """The expiry (Unix time) of each of otad's own certificates, by role."""
        for role, timestamp in not_after.items():
            self.certificate_not_after.labels(role=role).set(timestamp)

    # -- rendering ---------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition (body, content type) for a scrape with this ``Accept`` header.

        In multiprocess mode it reads every process's files, so call it off the reactor thread.
        """
        registry = self.registry
        if self.multiprocess_directory is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(self.multiprocess_directory))
        encoder, content_type = choose_encoder(accept or "")
        return encoder(registry), content_type


def process_ended(pid: int, directory: Path | None = None) -> None:
    """Multiprocess mode: forget the ``live*`` gauges (pools, reactor lag, readiness) of an otad process that has
    exited; its parent calls it. Its counters stay: they are what it did. ``directory`` defaults to the environment's."""
    directory = directory or multiprocess_directory()
    if directory is not None:
        mark_process_dead(pid, str(directory))


class ReactorLag(Service):
    """Asks the reactor, every ``interval`` seconds, to run a check then; how much later it ran is the lag."""

    def __init__(self, metrics: Metrics, clock: IReactorTime, interval: float = 1.0) -> None:
        self._metrics = metrics
        self._clock = clock
        self._interval = interval
        self._due = 0.0
        self._call: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self._schedule()

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _schedule(self) -> None:
        self._due = self._clock.seconds() + self._interval
        self._call = self._clock.callLater(self._interval, self._check)

    def _check(self) -> None:
        self._metrics.reactor_lag.set(max(0.0, self._clock.seconds() - self._due))
        self._schedule()
