"""Several real otad instances on one PostgreSQL database behind a real haproxy, and fake devices enrolling through it.

Shared by tests/test_scaleout.py and bench/scaleout.py. ``Fleet`` starts the instances
(``twistd otad`` through tests/daemon.py, each with its own data directory and the same users
file) and an haproxy from Debian in TCP mode (TLS passes through to the instances), round-robin,
with HTTPS health checks; ``Load`` enrolls fake iPhones (tests/fakedevice.py, a new connection
for every request, so one device's steps land on different instances) and retries a step the
way a device would when the connection breaks or the answer is 503. What every enrollment got,
and every status code seen, is kept for the checks.
"""

from __future__ import annotations

import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from otad import users
from otad.ca import serial_hex
from otad.store import CertificateRecord, Store
from tests.daemon import Daemon
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice, FakeDeviceError, SCEPRefused, UnexpectedResponse

HAPROXY = Path("/usr/sbin/haproxy")
USER = "apple"
_REQUEST_LOG = re.compile(r"\] (GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH) (\S+) (\d{3}) ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def haproxy_config(port: int, servers: Sequence[tuple[str, int]]) -> str:
    """TCP mode (TLS passes through to otad), round-robin, HTTPS health checks of GET /; a connection refused by a
    dead instance is retried on another one (redispatch)."""
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    retries 3",
        "    option redispatch",
        "frontend devices",
        f"    bind 127.0.0.1:{port}",
        "    default_backend otad",
        "backend otad",
        "    balance roundrobin",
        "    option httpchk",
        "    http-check send meth GET uri / ver HTTP/1.1 hdr Host localhost",
        "    http-check expect status 200",
        "    default-server check check-ssl verify none inter 300ms fall 2 rise 2",
    ]
    lines += [f"    server {name} 127.0.0.1:{server_port}" for name, server_port in servers]
    return "\n".join(lines) + "\n"


class Balancer(ProcessProtocol):
    """``haproxy -db`` in the foreground; its server state changes (``... is DOWN``) are kept with their times."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.output = b""
        self.changes: list[tuple[float, str]] = []
        self._ended: Deferred[None] = Deferred()

    async def start(self) -> None:
        if not HAPROXY.exists():
            raise AssertionError("haproxy is not installed: install the Debian package 'haproxy' (.ci/run does)")
        command = [str(HAPROXY), "-db", "-f", str(self.config)]
        reactor.spawnProcess(self, command[0], command, env={"PATH": "/usr/sbin:/usr/bin:/bin"})  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while True:
            try:
                await deferToThread(socket.create_connection(("127.0.0.1", self.port), timeout=1).close)
                return
            except OSError:
                if self._ended.called or time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not start: {self.output.decode(errors='replace')}") from None
                await deferLater(reactor, 0.05)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for line in data.decode(errors="replace").splitlines():
            if " is DOWN" in line or " is UP" in line:
                self.changes.append((time.monotonic(), line.strip()))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self._ended.callback(None)

    def stop(self) -> Deferred[None]:
        if not self._ended.called:
            self.transport.signalProcess("TERM")  # type: ignore[union-attr]
        return self._ended


@dataclass
class Fleet:
    """``count`` otad instances on the database ``location`` behind one haproxy on 127.0.0.1."""

    base: Path
    location: str
    count: int
    apple: FakeAppleHierarchy
    password: str
    bcrypt_rounds: int = 12
    extra_config: str = ""
    instances: list[Daemon] = field(default_factory=list)
    balancer: Balancer | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self.port = free_port()
        anchors = self.base / "apple-anchors.pem"
        anchors.write_bytes(self.apple.anchors_pem())
        for index in range(self.count):
            data_dir = self.base / f"otad{index + 1}"
            data_dir.mkdir(parents=True)
            # The same users file on every instance (otad's first-start user would differ on each).
            users.set_password(data_dir / "htpasswd", USER.encode(), self.password.encode(), rounds=self.bcrypt_rounds)
            (data_dir / "otad.conf").write_text(
                f"[server]\npublic_url = https://localhost:{self.port}\n{self.extra_config}[store]\nurl = {self.location}\n"
            )
            self.instances.append(Daemon(data_dir, ("--config", str(data_dir / "otad.conf"), "--device-ca", str(anchors))))

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return (self.instances[0].data_dir / "certs" / "ca.pem").read_bytes()

    async def start(self) -> None:
        """Every instance at once (one creates the CA), then haproxy in front of them."""
        await gatherResults([instance.start() for instance in self.instances])
        config = self.base / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, [(f"otad{index + 1}", daemon.port) for index, daemon in enumerate(self.instances)]))
        self.balancer = Balancer(config, self.port)
        await self.balancer.start()

    async def stop(self) -> None:
        if self.balancer is not None:
            await self.balancer.stop()
        for instance in self.instances:
            await instance.stop()

    def server_codes(self, instances: Sequence[Daemon] | None = None) -> Counter[int]:
        """Status codes in the request logs of every instance (or of ``instances``; the killed one's up to its end)."""
        codes: Counter[int] = Counter()
        for instance in self.instances if instances is None else instances:
            for match in _REQUEST_LOG.finditer(instance.output.decode(errors="replace")):
                codes[int(match.group(3))] += 1
        return codes

    def server_errors(self) -> list[str]:
        """Lines of any instance's log that tell of an unexpected error (a 500 or a traceback)."""
        bad = []
        for instance in self.instances:
            for line in instance.output.decode(errors="replace").splitlines():
                match = _REQUEST_LOG.search(line)
                if (match and match.group(3) == "500") or "Traceback" in line or "unexpected error" in line:
                    bad.append(f"{instance.data_dir.name}: {line.strip()}")
        return bad


@dataclass
class Enrolled:
    udid: str
    certificate: x509.Certificate
    seconds: float


@dataclass
class Tally:
    """What the devices saw."""

    enrolled: list[Enrolled] = field(default_factory=list)
    # Non-200 answers by status code, and broken connections, per step.
    codes: Counter[int] = field(default_factory=Counter)
    broken: Counter[str] = field(default_factory=Counter)
    # Phase 2 redone from phase 1 because its challenge had been used by an answer that never arrived.
    restarts: int = 0
    replays: int = 0
    replays_refused: int = 0
    failures: list[str] = field(default_factory=list)
    # (monotonic time, step) of every 503 and every success, to see when an outage began and ended.
    unavailable_at: list[float] = field(default_factory=list)
    succeeded_at: list[float] = field(default_factory=list)


class StepFailed(Exception):
    pass


class Load:
    """Fake devices enrolling through the fleet's balancer; ``on_enrolled(count)`` is called after each success."""

    def __init__(self, fleet: Fleet, tally: Tally, *, replay_every: int = 0, tries: int = 60) -> None:
        self.fleet = fleet
        self.tally = tally
        self.replay_every = replay_every
        self.tries = tries
        self.on_enrolled: Callable[[int], object] = lambda count: None

    async def step(self, name: str, call: Callable[[], Any], retried: list[int] | None = None) -> Any:
        """``call()``, again after a broken connection or a 503 (waiting as Retry-After says, at most a second);
        ``retried`` counts the retries of this one step."""
        for attempt in range(self.tries):
            if attempt and retried is not None:
                retried[0] += 1
            try:
                result = await call()
            except UnexpectedResponse as error:
                code = error.response.code
                self.tally.codes[code] += 1
                if code != 503:
                    raise
                self.tally.unavailable_at.append(time.monotonic())
                retry_after = float((error.response.headers.getRawHeaders(b"retry-after") or [b"1"])[0])
                await deferLater(reactor, min(retry_after, 1.0))
                continue
            except FakeDeviceError:
                raise
            except Exception as error:  # a connection the kill (or haproxy) broke: any of Twisted's transport errors
                self.tally.broken[f"{name}: {type(error).__name__}"] += 1
                await deferLater(reactor, 0.2)
                continue
            self.tally.succeeded_at.append(time.monotonic())
            return result
        raise StepFailed(f"{name} failed {self.tries} times")

    async def enroll(self, udid: str, key: rsa.RSAPrivateKey, spare: rsa.RSAPrivateKey, index: int) -> None:
        started = time.monotonic()
        device = FakeDevice(reactor, self.fleet.url, self.fleet.ca_pem, self.fleet.apple, udid, scep_key=key, persistent=False)
        try:
            await self.step("CA", device.fetch_ca)
            payload = None
            while payload is None:
                service = await self.step("enroll", lambda: device.enroll(USER, self.fleet.password))
                challenge = service["PayloadContent"]["Challenge"]
                retried = [0]
                try:
                    payload = (await self.step("phase 2", lambda challenge=challenge: device.phase2(challenge), retried))["PayloadContent"][
                        0
                    ]
                except UnexpectedResponse as error:
                    if error.response.code == 403 and b"already used" in error.response.body and retried[0]:
                        # An earlier try used the challenge and its answer was lost: start again, as a device would.
                        self.tally.restarts += 1
                        continue
                    raise
            replay = self.replay_every and index % self.replay_every == 0
            if replay:
                await self.replay_phase2(device, challenge)
            certificate = await self.step("SCEP", lambda: device.scep_enroll(payload))
            if replay:
                await self.replay_scep(udid, payload, spare)
            await self.step("phase 3", device.phase3)
            self.tally.enrolled.append(Enrolled(udid, certificate, time.monotonic() - started))
            self.on_enrolled(len(self.tally.enrolled))
        except Exception as error:  # recorded; the checks fail on it
            self.tally.failures.append(f"{udid}: {type(error).__name__}: {error}")
        finally:
            await device.close()

    async def replay_phase2(self, device: FakeDevice, challenge: str) -> None:
        """Use the phase-1 challenge again: refused (403) by whichever instance the balancer picks."""
        self.tally.replays += 1

        async def phase2_again() -> Any:
            answer = await device.post_profile(device.phase2_body(challenge))
            if answer.code == 503:
                raise UnexpectedResponse("503", answer)
            return answer

        again = await self.step("phase 2 replay", phase2_again)
        if again.code == 403:
            self.tally.replays_refused += 1

    async def replay_scep(self, udid: str, payload: dict[str, Any], spare: rsa.RSAPrivateKey) -> None:
        """Use the device's (used) SCEP challenge again with another key, a new transaction: refused."""
        self.tally.replays += 1
        other = FakeDevice(reactor, self.fleet.url, self.fleet.ca_pem, self.fleet.apple, udid, scep_key=spare, persistent=False)
        try:
            await self.step("SCEP replay", lambda: other.scep_enroll(payload))
        except SCEPRefused:
            self.tally.replays_refused += 1
        finally:
            await other.close()

    async def run(self, devices: Sequence[tuple[str, rsa.RSAPrivateKey, rsa.RSAPrivateKey]], concurrency: int, first: int = 0) -> None:
        semaphore = DeferredSemaphore(concurrency)
        await gatherResults(
            [
                semaphore.run(lambda udid=udid, key=key, spare=spare, index=index: ensureDeferred(self.enroll(udid, key, spare, index)))
                for index, (udid, key, spare) in enumerate(devices, start=first)
            ]
        )


async def keys(count: int) -> list[rsa.RSAPrivateKey]:
    """``count`` distinct RSA-2048 keys, made on threads (a device's SCEP key decides its transaction ID)."""
    return list(await gatherResults([deferToThread(rsa.generate_private_key, 65537, 2048) for _ in range(count)]))


@dataclass
class Agreement:
    """The store checked against what the devices received."""

    received: int
    distinct_serials: int
    stored: int
    missing: list[str]
    different: list[str]
    wrong_device: list[str]
    not_received: list[str]
    challenges_used_twice: int


def agreement(location: str, tally: Tally) -> Agreement:
    """Read the store (blocking) and compare: every received certificate stored with the same DER and device."""
    store = Store.open_existing(location)
    try:
        records: dict[str, CertificateRecord] = {record.serial: record for record in store.certificates()}
    finally:
        store.close()
    received = {serial_hex(item.certificate.serial_number): item for item in tally.enrolled}
    der = serialization.Encoding.DER
    missing = [serial for serial in received if serial not in records]
    different = [
        serial for serial, item in received.items() if serial in records and records[serial].der != item.certificate.public_bytes(der)
    ]
    wrong = [serial for serial, item in received.items() if serial in records and records[serial].udid != item.udid]
    by_challenge = Counter(record.challenge_id for record in records.values() if record.challenge_id is not None)
    return Agreement(
        received=len(tally.enrolled),
        distinct_serials=len(received),
        stored=len(records),
        missing=missing,
        different=different,
        wrong_device=wrong,
        not_received=sorted(set(records) - set(received)),
        challenges_used_twice=sum(1 for uses in by_challenge.values() if uses > 1),
    )
