"""Logins at /enroll that a flood cannot drown: throttled per address and per user, counted in the store.

Before any password is checked, the failures counted in the store decide: past
``failures_per_address`` from one address, or ``failures_per_user`` for one name from one
address, within ``failure_window``, the answer is THROTTLED (429) with the wait, and no bcrypt
is spent. A user is never locked out by someone else's failures from another address. The counts
live in the store, so they survive a restart and are shared by every otad on the same database.
Nothing is kept in memory: a failure counts once its password check has failed, so attempts
checked at the same moment can pass the limit by at most the checks in flight (``[auth]``
threads plus queue, per instance) before every instance throttles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from otad.errors import Kind, Refused, printable
from otad.metrics import Metrics
from otad.store import Store, StoreThread

log = Logger()


class NotPermitted(UnauthorizedLogin):
    """The password is right but the user may not enroll (outside the directory group).

    The client gets the same 401 as for a wrong password, so a guesser learns nothing about
    directory passwords; the event log says which it was.
    """


@dataclass(frozen=True)
class LoginPolicy:
    failures_per_address: int = 20
    failures_per_user: int = 5
    window: float = 900


class LoginGuard:
    """Checks a name and password for /enroll, counting failures; raises Refused (UNAUTHENTICATED or THROTTLED)."""

    def __init__(
        self, checker: ICredentialsChecker, store: StoreThread, clock: IReactorTime, policy: LoginPolicy, *, metrics: Metrics
    ) -> None:
        self._metrics = metrics
        self._checker = checker
        self._store = store
        self._clock = clock
        self._policy = policy

    async def login(self, address: str, name: bytes, password: bytes) -> str:
        """The user name, once the password checks out; refusals are logged, counted and (wrong
        passwords) recorded as events. Throttled attempts are logged but not written to the store:
        a flood of them must cost no writes."""
        with self._metrics.step("login") as step:
            try:
                return await self._login(address, name, password)
            except Refused as refused:
                reason = {Kind.UNAUTHENTICATED: "bad_credentials", Kind.THROTTLED: "throttled"}.get(refused.kind, "unavailable")
                self._metrics.login_failures.labels(reason=reason).inc()
                step.outcome = "refused" if refused.kind in (Kind.UNAUTHENTICATED, Kind.THROTTLED) else "error"
                raise

    async def _login(self, address: str, name: bytes, password: bytes) -> str:
        policy = self._policy
        user = name.decode("utf-8", "replace")
        shown = printable(user, 64)
        now = self._clock.seconds()
        wait = await self._store.call(
            lambda store: store.login_wait(
                address, user, now=now, window=policy.window, per_address=policy.failures_per_address, per_user=policy.failures_per_user
            )
        )
        if wait > 0:
            log.info(
                "login for {user} from {client} throttled: too many failures",
                user=shown,
                client=address,
                outcome="refused",
                reason="throttled",
            )
            raise Refused(Kind.THROTTLED, "too many failed logins; try again later", retry_after=math.ceil(wait))
        try:
            await self._checker.requestAvatarId(UsernamePassword(name, password))
        except UnauthorizedLogin as refused:
            why = printable(str(refused)) if isinstance(refused, NotPermitted) else "bad password or unknown user"
            log.info("failed login for {user} from {client}: {reason}", user=shown, client=address, reason=why, outcome="refused")

            def count(store: Store) -> None:
                with store.transaction():
                    store.record_login_failure(address, user, now=now, window=policy.window)
                    store.record_event(now=now, kind="login", outcome="refused", user=shown, reason=f"{why} from {address}")

            await self._store.call(count)
            raise Refused(Kind.UNAUTHENTICATED, "unknown user or wrong password") from None
        await self._store.call(lambda store: store.clear_login_failures(address, user))
        return user
