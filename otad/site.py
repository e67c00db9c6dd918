"""The production resource tree: every URL, and the services behind it, built in one place.

The daemon (``otad.tap``) and the in-memory tests build the site here, so the tests drive the
same tree, resources and services that devices reach.
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
from otad.issued import IssuedCertificates
from otad.logins import LoginGuard, LoginPolicy
from otad.ocsp import OCSPResponder
from otad.pool import WorkerPool
from otad.resources.ca import RootCertificate
from otad.resources.enroll import EnrollResource
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
from otad.web import OtadSite


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
) -> OtadSite:
    """``/``, ``/CA``, ``/enroll``, ``/profile``, ``/scep``, ``/crl`` and ``/ocsp`` over the given store, pools and clock.

    ``network`` is the reactor that connects to the LDAP directory (``[auth] backend = ldap``);
    by default ``clock``, which in the daemon is the reactor.
    """
    issued = IssuedCertificates(authority, store)
    enrollment = Enrollment(settings, authority, store, crypto, clock, device_trust, profile_templates, issued)
    checker = password_checker(settings, run_auth, network or clock)
    policy = LoginPolicy(settings.failures_per_address, settings.failures_per_user, settings.failure_window)
    guard = LoginGuard(checker, store, clock, policy)
    root = Root(
        {
            b"": WelcomePage(settings.organization, settings.display_name),
            b"CA": RootCertificate(authority.root.cert.public_bytes(serialization.Encoding.DER)),
            b"enroll": EnrollResource(enrollment, guard, settings.realm, settings.public_url, settings.allow_plain_http_login),
            b"profile": ProfileRequest(enrollment, settings.public_url),
            b"scep": SCEPResource(SCEPResponder(settings, authority, store, crypto, clock, issued, crls)),
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
    return OtadSite(root, limits, TrustedProxies(settings.trusted_proxies, settings.proxy_headers), reactor=clock)
