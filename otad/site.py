"""The production resource trees, built in one place: every URL devices reach and the services
behind it (``build_site``), and the operator's metrics and health checks (``build_operator_site``).

The daemon (``otad.tap``) and the in-memory tests build the sites here, so the tests drive the
same tree, resources and services that devices and operators reach. Either function may be
served by any otad process (each process has its own ``Metrics`` and ``Readiness``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from otad.ca import Authority
from otad.channel import Limits
from otad.config import Config
from otad.device_trust import DeviceTrust
from otad.directory import DirectoryChecker
from otad.enrollment import Enrollment
from otad.forwarded import TrustedProxies
from otad.health import Readiness
from otad.issued import IssuedCertificates
from otad.logins import LoginGuard, LoginPolicy
from otad.metrics import Metrics
from otad.ocsp import OCSPResponder
from otad.pool import WorkerPool
from otad.resources.ca import RootCertificate
from otad.resources.enroll import EnrollResource
from otad.resources.operator import Liveness, MetricsPage, ReadinessPage
from otad.resources.profile import ProfileRequest
from otad.resources.revocation import CRLResource, OCSPResource
from otad.resources.root import Root
from otad.resources.scep import SCEPResource
from otad.resources.welcome import WelcomePage
from otad.revocation import CRLPublisher
from otad.scep_responder import SCEPResponder
from otad.store import StoreThread
from otad.templates import Template
from otad.users import HtpasswdChecker
from otad.web import OperatorSite, OtadSite


def password_checker(settings: Config, run_auth: Callable[..., Deferred[Any]], reactor: Any) -> ICredentialsChecker:
    """The checker ``[auth] backend`` names: the htpasswd users file (bcrypt on the auth pool), or the LDAP directory."""
    if settings.auth_backend == "ldap":
        return DirectoryChecker(settings, run_auth, reactor, queue=settings.auth_queue)
    return HtpasswdChecker(settings.htpasswd, run_auth, settings.first_password_file, settings.bcrypt_rounds)


def build_site(
    settings: Config,
    authority: Authority,
    store: StoreThread,
    crypto: WorkerPool,
    run_auth: Callable[..., Deferred[Any]],
    clock: IReactorTime,
    device_trust: DeviceTrust,
    profile_templates: Sequence[Template],
    crls: CRLPublisher,
    network: Any = None,
    *,
    metrics: Metrics,
) -> OtadSite:
    """``/``, ``/CA``, ``/enroll``, ``/profile``, ``/scep``, ``/crl`` and ``/ocsp`` over the given store, pools and clock.

    ``network`` is the reactor that connects to the LDAP directory (``[auth] backend = ldap``);
    by default ``clock``, which in the daemon is the reactor.
    """
    issued = IssuedCertificates(authority, store)
    enrollment = Enrollment(settings, authority, store, crypto, clock, device_trust, profile_templates, issued, metrics=metrics)
    checker = password_checker(settings, run_auth, network or clock)
    policy = LoginPolicy(settings.failures_per_address, settings.failures_per_user, settings.failure_window)
    guard = LoginGuard(checker, store, clock, policy, metrics=metrics)
    root = Root(
        {
            b"": WelcomePage(settings.organization, settings.display_name),
            b"CA": RootCertificate(authority.root.cert.public_bytes(serialization.Encoding.DER)),
            b"enroll": EnrollResource(
                enrollment, guard, settings.realm, settings.public_url, settings.allow_plain_http_login, metrics=metrics
            ),
            b"profile": ProfileRequest(enrollment, settings.public_url),
            b"scep": SCEPResource(SCEPResponder(settings, authority, store, crypto, clock, issued, crls, metrics=metrics)),
            b"crl": CRLResource(crls),
            b"ocsp": OCSPResource(OCSPResponder(authority, store, crypto, clock)),
        }
    )
    limits = Limits(
        max_body=settings.max_body,
        head_timeout=settings.head_timeout,
        idle_timeout=settings.idle_timeout,
        body_rate=settings.body_rate,
        body_idle=settings.body_idle,
        max_connections=settings.max_connections,
        max_connections_per_address=settings.max_connections_per_address,
    )
    return OtadSite(root, limits, TrustedProxies(settings.trusted_proxies, settings.proxy_headers), metrics=metrics, reactor=clock)


# The operator's listener serves small answers to a few scrapers and probes.
OPERATOR_LIMITS = Limits(max_body=1024, max_connections=64, max_connections_per_address=16)


def build_operator_site(metrics: Metrics, readiness: Readiness, run_render: Callable[..., Deferred[Any]], clock: IReactorTime) -> OtadSite:
    """``/metrics``, ``/healthz`` and ``/readyz``; ``run_render`` runs the exposition off the reactor thread."""
    root = Root(
        {
            b"metrics": MetricsPage(metrics, run_render),
            b"healthz": Liveness(),
            b"readyz": ReadinessPage(readiness),
        }
    )
    return OperatorSite(root, OPERATOR_LIMITS, metrics=metrics, reactor=clock)
