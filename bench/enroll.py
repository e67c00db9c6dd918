"""Measures complete over-the-air enrollments: enrollments per second, per-step latency and server memory.

Run: .venv/bin/python bench/enroll.py [--requests 50] [--concurrency 4] [--identity scep|pkcs12]

By default it starts its own ``twistd otad`` (tests/daemon.py) over TLS on a temporary data directory,
with ``--device-ca`` set to a fake Apple hierarchy's root so the fake devices are trusted (and, for
``--identity pkcs12``, a config file with ``[enrollment] identity = pkcs12``). Every fake iPhone
(tests/fakedevice.py) runs the whole flow: GET /enroll (phase 1, Basic auth, bcrypt on the server),
POST /profile (phase 2), SCEP enrollment or PKCS#12 import, POST /profile (phase 3). All client keys
(the RSA-1024 Apple identities and the RSA-2048 SCEP keys) are generated before the clock starts.
C workers pull devices from one queue. After the run it prints a table of p50/p99/max per step, the
server's VmRSS and VmHWM (from /proc/PID/status of the daemon child), its CPU time split between the
main (reactor) thread and the worker threads, the latency of a GET / probe sent every 100 ms during
the run (a stalled server reactor shows there), and one summary line. A failed
enrollment is counted, the first error is printed, and the exit code is 1; so is a run that exceeds
--timeout. The client shares the machine with the server: its own CPU time and reactor lag are
printed too, because the fake device does its CMS work on the client's reactor thread.

Against an otad that is already running (TLS, its own CA), give --url, --ca and --password, plus
--apple-dir DIR: the fake Apple hierarchy is kept there (created on first use) and the server must
have been started with ``--device-ca DIR/anchors.pem``. Add --pid to report that server's memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from twisted.internet import reactor as global_reactor  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from bench.measure import openssl_speed, percentile, process_status, setting, tree_rss_kilobytes, tree_thread_cpu_seconds  # noqa: E402
from otad import users  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.fakeapple import FakeAppleHierarchy  # noqa: E402
from tests.fakedevice import FakeDevice  # noqa: E402

STEPS = ("enroll", "phase2", "identity", "phase3", "total")


# ------------------------------------------------------------------ measurements


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LagMonitor:
    """How late this process's reactor runs a 20 ms timer: the client-side stall while devices do CMS work."""

    interval = 0.02

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._loop = task.LoopingCall(self._tick)
        self._last = 0.0

    def start(self) -> None:
        self._last = time.perf_counter()
        self._loop.start(self.interval, now=False)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.samples.append(max(0.0, now - self._last - self.interval))
        self._last = now

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()


class Probe:
    """GET / (the welcome page: no crypto, no store) every 100 ms on one kept-alive connection.

    Its latency shows stalls of the server's reactor thread (plus this client's own reactor lag).
    """

    def __init__(self, device: FakeDevice) -> None:
        self.device = device
        self.samples: list[float] = []
        self.errors = 0
        self._running = False
        self._done: Deferred[None] | None = None

    def start(self) -> None:
        self._running = True
        self._done = ensureDeferred(self._loop())

    async def _loop(self) -> None:
        while self._running:
            started = time.perf_counter()
            try:
                response = await self.device.request(b"GET", "/")
                if response.code == 200:
                    self.samples.append(time.perf_counter() - started)
                else:
                    self.errors += 1
            except Exception:  # noqa: BLE001 - counted
                self.errors += 1
            await task.deferLater(global_reactor, 0.1)

    async def stop(self) -> None:
        self._running = False
        if self._done is not None:
            await self._done
        await self.device.close()


# ------------------------------------------------------------------ the fake Apple hierarchy on disk


_APPLE_FILES = ("root", "intermediate", "device_ca")


def save_apple(apple: FakeAppleHierarchy, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in _APPLE_FILES:
        cert: x509.Certificate = getattr(apple, name)
        key: rsa.RSAPrivateKey = getattr(apple, f"{name}_key")
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = folder / f"{name}_key.pem"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        key_path.chmod(0o600)
    (folder / "anchors.pem").write_bytes(apple.anchors_pem())


def load_apple(folder: Path) -> FakeAppleHierarchy:
    values: dict[str, Any] = {}
    for name in _APPLE_FILES:
        values[name] = x509.load_pem_x509_certificate((folder / f"{name}.pem").read_bytes())
        values[f"{name}_key"] = serialization.load_pem_private_key((folder / f"{name}_key.pem").read_bytes(), None)
    return FakeAppleHierarchy(**values)


# ------------------------------------------------------------------ one enrollment


@dataclass
class Outcome:
    udid: str
    steps: dict[str, float] = field(default_factory=dict)
    failed_step: str | None = None
    error: str | None = None


async def enroll_one(device: FakeDevice, user: str, password: str, identity: str) -> Outcome:
    """The whole flow for one device, timing each step; any exception is recorded, not raised."""
    outcome = Outcome(device.udid)
    step = "enroll"
    started = mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        outcome.steps[name] = now - mark
        mark = now

    try:
        service = await device.enroll(user, password)
        lap("enroll")
        step = "phase2"
        enrollment = await device.phase2(service["PayloadContent"]["Challenge"])
        lap("phase2")
        step = "identity"
        payload = enrollment["PayloadContent"][0]
        kind = payload["PayloadType"].rsplit(".", 1)[1]
        if kind != identity:
            raise RuntimeError(f"phase 2 sent a {payload['PayloadType']} payload, but the run is --identity {identity}")
        if kind == "scep":
            await device.scep_enroll(payload)
        else:
            device.install_pkcs12(payload)
        lap("identity")
        step = "phase3"
        _outer, payloads = await device.phase3()
        if not payloads:
            raise RuntimeError("phase 3 delivered no payloads")
        lap("phase3")
        outcome.steps["total"] = time.perf_counter() - started
    except CancelledError:
        outcome.failed_step, outcome.error = step, "cancelled: the run exceeded --timeout"
    except Exception as e:  # noqa: BLE001 - a benchmark counts failures and goes on
        outcome.failed_step, outcome.error = step, f"{type(e).__name__}: {e}"
    finally:
        try:
            await device.close()
        except Exception:  # noqa: BLE001, S110 - closing pooled connections is best effort
            pass
    return outcome


# ------------------------------------------------------------------ staged: server CPU per step


async def bounded(concurrency: int, jobs: list[Any]) -> list[Any]:
    """Run coroutine factories with at most ``concurrency`` at once; returns their results in order."""
    results: list[Any] = [None] * len(jobs)
    queue = iter(enumerate(jobs))

    async def worker() -> None:
        for index, job in queue:
            results[index] = await job()

    await gatherResults([ensureDeferred(worker()) for _ in range(min(concurrency, len(jobs)))], consumeErrors=True)
    return results


@dataclass
class StageCost:
    name: str
    requests: int
    reactor: float
    other: float

    @property
    def total(self) -> float:
        return self.reactor + self.other


def server_tls_key(base_url: str) -> Any:
    """The public key of the TLS certificate the server presents, which prices the handshake signature in the crypto floor."""
    where = urlsplit(base_url)
    pem = ssl.get_server_certificate((where.hostname or "localhost", where.port or 443))
    return x509.load_pem_x509_certificate(pem.encode("ascii")).public_key()


async def run_staged(devices: list[FakeDevice], concurrency: int, user: str, password: str, pid: int, daemon: Daemon | None) -> int:
    """Every device does phase 1, then every device phase 2, and so on, so that each step's server CPU is measured alone.

    Before the steps, each device makes as many bare requests (GET /) as it will make in the
    flow, on the same kind of connections, which prices TLS and HTTP framing per request. Log
    lines are counted in the daemon's output, and one line's cost is measured by formatting
    the same events through Twisted's text observer here.
    """
    count = len(devices)
    costs: list[StageCost] = []
    state: dict[str, Any] = {}

    async def stage(name: str, requests_each: int, job: Any) -> None:
        before = tree_thread_cpu_seconds(pid)
        results = await bounded(concurrency, [lambda device=device: job(device) for device in devices])
        after = tree_thread_cpu_seconds(pid)
        for device, result in zip(devices, results, strict=True):
            state.setdefault(device.udid, {})[name] = result
        costs.append(StageCost(name, requests_each, (after[0] - before[0]) / count, (after[1] - before[1]) / count))

    async def bare(device: FakeDevice) -> None:
        for _ in range(REQUESTS_PER_ENROLLMENT):
            response = await device.request(b"GET", "/")
            if response.code != 200:
                raise RuntimeError(f"GET / answered {response.code}")

    async def phase1(device: FakeDevice) -> Any:
        return await device.enroll(user, password)

    async def phase2(device: FakeDevice) -> Any:
        return await device.phase2(state[device.udid]["enroll"]["PayloadContent"]["Challenge"])

    async def scep(device: FakeDevice) -> Any:
        return await device.scep_enroll(state[device.udid]["phase2"]["PayloadContent"][0])

    async def phase3(device: FakeDevice) -> Any:
        return await device.phase3()

    log_start = len(daemon.output) if daemon is not None else 0
    await stage("bare GET /", REQUESTS_PER_ENROLLMENT, bare)
    log_flow = len(daemon.output) if daemon is not None else 0
    await stage("enroll", 2, phase1)
    await stage("phase2", 1, phase2)
    await stage("scep", 3, scep)
    await stage("phase3", 1, phase3)
    for device in devices:
        await device.close()
    lines = daemon.output[log_flow:].count(b"\n") / count if daemon is not None else 0.0
    bare_lines = daemon.output[log_start:log_flow].count(b"\n") / count if daemon is not None else 0.0
    line_ms = log_line_cost() * 1000
    per_request = costs[0].total / REQUESTS_PER_ENROLLMENT
    floor = openssl_speed("rsa2048", "rsa3072", "ecdhx25519", "ecdsap256")
    tls_public_key = await deferToThread(server_tls_key, devices[0].base_url)
    tls_key = "ecdsanistp256" if isinstance(tls_public_key, ec.EllipticCurvePublicKey) else "rsa2048"

    print(f"server CPU per enrollment, step by step ({count} devices, {concurrency} at a time; ms)")
    print(f"{'step':<12} {'requests':>8} {'reactor':>8} {'other':>8} {'total':>8}  {'of which requests':>18}")
    flow = costs[1:]
    for cost in costs:
        share = f"{cost.requests * per_request * 1000:18.1f}" if cost is not costs[0] else ""
        print(f"{cost.name:<12} {cost.requests:8d} {cost.reactor * 1000:8.1f} {cost.other * 1000:8.1f} {cost.total * 1000:8.1f}  {share}")
    total = sum(cost.total for cost in flow)
    reactor_ms, other_ms = sum(c.reactor for c in flow) * 1000, sum(c.other for c in flow) * 1000
    requests_ms = REQUESTS_PER_ENROLLMENT * per_request * 1000
    print(f"{'enrollment':<12} {REQUESTS_PER_ENROLLMENT:8d} {reactor_ms:8.1f} {other_ms:8.1f} {total * 1000:8.1f}  {requests_ms:18.1f}")
    print(
        f"a request with nothing behind it (TLS and HTTP framing, request log): {per_request * 1000:.2f} ms; "
        f"log lines per enrollment {lines:.1f} (per bare request {bare_lines / REQUESTS_PER_ENROLLMENT:.1f}), "
        f"{line_ms:.3f} ms each here: {lines * line_ms:.1f} ms per enrollment"
    )
    handshakes = REQUESTS_PER_ENROLLMENT if not devices[0].persistent else 1
    crypto_floor = handshakes * (floor[tls_key] + floor["ecdhx25519"]) + 5 * floor["rsa2048"] + floor["rsa3072"]
    print(
        f"crypto floor from openssl speed on this machine: {handshakes} TLS handshakes ({tls_key} {floor[tls_key]:.3f} ms + "
        f"X25519 {floor['ecdhx25519']:.3f} ms), 5 RSA-2048 private operations ({floor['rsa2048']:.3f} ms), one RSA-3072 CA "
        f"signature ({floor['rsa3072']:.3f} ms) = {crypto_floor:.1f} ms; otad spends {total * 1000 / crypto_floor:.1f}x that"
    )
    print(f"STAGED server CPU {total * 1000:.1f} ms per enrollment")
    return 0


# Phase 1 twice (401, then with credentials), phase 2, GetCACaps + GetCACert + PKIOperation, phase 3.
REQUESTS_PER_ENROLLMENT = 7


def log_line_cost(samples: int = 5000) -> float:
    """Seconds to format and write one request log event through Twisted's text observer (to /dev/null)."""
    from twisted.logger import Logger, LogPublisher, textFileLogObserver

    publisher = LogPublisher()
    with open(os.devnull, "w") as sink:
        publisher.addObserver(textFileLogObserver(sink))
        logger = Logger(namespace="otad.web", observer=publisher)
        started = time.process_time()
        for _ in range(samples):
            logger.info(
                "{method} {path} {code} {outcome} user={user} {ms}ms",
                method="POST", path="/scep", code=200, outcome="ok", user=None, ms=1.2, client="127.0.0.1",
            )  # fmt: skip
        return (time.process_time() - started) / samples


# ------------------------------------------------------------------ the run


async def make_devices(
    count: int, apple: FakeAppleHierarchy, base_url: str, ca_pem: bytes, identity: str, prefix: str, persistent: bool = True
) -> list[FakeDevice]:
    """Devices with every key made up front (on the reactor's thread pool), so no client keygen is timed."""

    def keys(index: int) -> tuple[str, tuple[x509.Certificate, rsa.RSAPrivateKey], rsa.RSAPrivateKey | None]:
        udid = f"{prefix}{index:06X}"
        apple_identity = apple.issue_device_identity(udid)
        scep_key = rsa.generate_private_key(65537, 2048) if identity == "scep" else None
        return udid, apple_identity, scep_key

    made = await gatherResults([deferToThread(keys, index) for index in range(count)])
    return [
        FakeDevice(global_reactor, base_url, ca_pem, apple, udid, scep_key=scep_key, identity=apple_identity, persistent=persistent)
        for udid, apple_identity, scep_key in made
    ]


async def run_all(
    devices: list[FakeDevice],
    concurrency: int,
    user: str,
    password: str,
    identity: str,
    timeout: float,
    outcomes: list[Outcome] | None = None,
) -> tuple[list[Outcome], float, bool]:
    """C workers pulling from one queue; returns the outcomes (appended to ``outcomes`` as they finish, for
    progress), the wall time and whether the timeout hit."""
    queue = iter(devices)
    if outcomes is None:
        outcomes = []
    in_flight: set[Deferred[Outcome]] = set()
    timed_out = False

    async def worker() -> None:
        for device in queue:
            if timed_out:
                outcomes.append(Outcome(device.udid, failed_step="start", error="not started: the run exceeded --timeout"))
                continue
            running = ensureDeferred(enroll_one(device, user, password, identity))
            in_flight.add(running)
            try:
                outcome = await running
                if timed_out and outcome.error is not None and not outcome.error.startswith("cancelled"):
                    outcome.error = f"cancelled: the run exceeded --timeout ({outcome.error})"
                outcomes.append(outcome)
            finally:
                in_flight.discard(running)

    def expire() -> None:
        nonlocal timed_out
        timed_out = True
        for running in list(in_flight):
            running.cancel()

    started = time.perf_counter()
    alarm = global_reactor.callLater(timeout, expire)
    try:
        await gatherResults([ensureDeferred(worker()) for _ in range(min(concurrency, len(devices)))], consumeErrors=True)
    finally:
        if alarm.active():
            alarm.cancel()
    return outcomes, time.perf_counter() - started, timed_out


async def run(arguments: argparse.Namespace) -> int:
    identity = arguments.identity
    external = arguments.url is not None
    daemon: Daemon | None = None
    temp: Path | None = None
    try:
        # ---- the server and the fake Apple hierarchy (untimed)
        if external:
            apple_dir = Path(arguments.apple_dir)
            if (apple_dir / "root.pem").exists():
                apple = load_apple(apple_dir)
            else:
                apple = await deferToThread(FakeAppleHierarchy.create)
                save_apple(apple, apple_dir)
                print(f"created a fake Apple hierarchy in {apple_dir}; the server needs --device-ca {apple_dir / 'anchors.pem'}")
            base_url = arguments.url
            ca_pem = Path(arguments.ca).read_bytes()
            password = arguments.password
            pid = arguments.pid
        else:
            apple = await deferToThread(FakeAppleHierarchy.create)
            temp = Path(tempfile.mkdtemp(prefix="otad-bench-enroll-"))
            data_dir = temp / "data"
            data_dir.mkdir()
            (temp / "anchors.pem").write_bytes(apple.anchors_pem())
            extra = ["--device-ca", str(temp / "anchors.pem")]
            settings: dict[str, dict[str, str]] = {}
            if identity == "pkcs12":
                settings.setdefault("enrollment", {})["identity"] = "pkcs12"
            for setting in arguments.set:
                section, key, value = setting
                settings.setdefault(section, {})[key] = value
            if settings:
                (temp / "otad.conf").write_text(
                    "".join(
                        f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())
                        for section, keys in settings.items()
                    )
                )
                extra += ["--config", str(temp / "otad.conf")]
            if arguments.bcrypt_cost is not None:
                # A user whose password check is cheap, so the figures are otad's own cost, not bcrypt's.
                users.set_password(data_dir / "htpasswd", arguments.user.encode(), b"bench password", rounds=arguments.bcrypt_cost)
            daemon = Daemon(data_dir, extra)
            await daemon.start()
            pid = daemon.transport.pid
            base_url = daemon.url("/")
            ca_pem = (data_dir / "certs" / "ca.pem").read_bytes()
            password = "bench password" if arguments.bcrypt_cost is not None else daemon.first_password
            if password is None:
                raise RuntimeError("the daemon logged no first-start password")

        # ---- every device and key, before the clock
        prefix = f"BENCH{os.getpid() % 0xFFFF:04X}{int(time.time()) % 0xFFFF:04X}"
        setup_started = time.perf_counter()
        devices = await make_devices(
            arguments.warmup + arguments.requests, apple, base_url, ca_pem, identity, prefix, persistent=not arguments.fresh_connections
        )
        setup = time.perf_counter() - setup_started
        warmup, timed = devices[: arguments.warmup], devices[arguments.warmup :]

        # ---- warm-up (untimed): first TLS contexts, template loading, lazy imports in the server
        warm, _, _ = await run_all(warmup, 1, arguments.user, password, identity, arguments.timeout)
        warm_failed = [o for o in warm if o.error]
        if warm_failed:
            print(f"warm-up enrollment failed at {warm_failed[0].failed_step}: {warm_failed[0].error}")
            return 1
        if arguments.staged:
            if pid is None or identity != "scep":
                raise RuntimeError("--staged needs the server's pid (own daemon or --pid) and --identity scep")
            return await run_staged(timed, arguments.concurrency, arguments.user, password, pid, daemon)

        # ---- the timed run
        status_before = process_status(pid) if pid else None
        client_cpu_before = own_cpu_seconds()
        threads_before = tree_thread_cpu_seconds(pid) if pid else (0.0, 0.0)
        rss_before = tree_rss_kilobytes(pid) if pid else 0
        load_before = os.getloadavg()[0]
        profiler = None
        if arguments.profile and pid:
            # py-spy samples every thread of the server while the timed run goes on (collapsed stacks).
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--threads", "--format", "raw", "--rate", "250",
                 "--output", arguments.profile, "--pid", str(pid), "--nonblocking", "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        lag = LagMonitor()
        lag.start()
        probe = Probe(FakeDevice(global_reactor, base_url, ca_pem, apple, f"{prefix}PROBE", identity=devices[0].identity))
        probe.start()
        progress: list[Outcome] = []
        memory: list[tuple[int, int]] = []
        sampler = task.LoopingCall(lambda: memory.append((len(progress), tree_rss_kilobytes(pid))) if pid else None)
        sampler.start(arguments.rss_interval)
        outcomes, elapsed, timed_out = await run_all(
            timed, arguments.concurrency, arguments.user, password, identity, arguments.timeout, progress
        )
        sampler.stop()
        lag.stop()
        await probe.stop()
        threads_after = tree_thread_cpu_seconds(pid) if pid else (0.0, 0.0)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=30)
            print(f"py-spy profile of the server's timed run: {arguments.profile} (collapsed stacks; bench/profile.py summarises)")
        client_cpu = own_cpu_seconds() - client_cpu_before
        server_cpu = sum(threads_after) - sum(threads_before) if pid else None
        status = process_status(pid) if pid else None
        rss_after = tree_rss_kilobytes(pid) if pid else 0

        # ---- report
        succeeded = [o for o in outcomes if o.error is None]
        failed = [o for o in outcomes if o.error is not None]
        step_label = {"identity": identity}
        print(
            f"otad {'at ' + base_url if external else f'pid {pid}, {base_url}'}; {len(devices)} devices "
            f"({arguments.warmup} warm-up) with pre-generated keys in {setup:.1f} s"
        )
        print(f"{'step':<8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}")
        for step in STEPS:
            samples = [o.steps[step] * 1000 for o in succeeded]
            if not samples:
                continue
            print(
                f"{step_label.get(step, step):<8} {statistics.median(samples):8.1f} {percentile(samples, 0.99):8.1f} "
                f"{max(samples):8.1f} {statistics.fmean(samples):8.1f}"
            )
        rate = len(succeeded) / elapsed if elapsed > 0 else 0.0
        print(f"wall {elapsed:.2f} s for {len(outcomes)} enrollments, {len(succeeded)} succeeded, {len(failed)} failed")
        if server_cpu is not None:
            print(
                f"server CPU {server_cpu:.2f} s ({server_cpu / elapsed * 100:.0f}% of one core, "
                f"{server_cpu / max(1, len(succeeded)) * 1000:.0f} ms per enrollment); client CPU {client_cpu:.2f} s "
                f"({client_cpu / elapsed * 100:.0f}% of one core)"
            )
            print(
                f"server CPU by thread: reactor threads {threads_after[0] - threads_before[0]:.2f} s, "
                f"other threads (crypto pool, store) {threads_after[1] - threads_before[1]:.2f} s"
            )
        else:
            print(f"client CPU {client_cpu:.2f} s ({client_cpu / elapsed * 100:.0f}% of one core)")
        if probe.samples:
            probe_ms = [sample * 1000 for sample in probe.samples]
            print(
                f"probe GET / every 100 ms ({len(probe_ms)} answers, {probe.errors} errors): p50 {statistics.median(probe_ms):.1f} ms, "
                f"p99 {percentile(probe_ms, 0.99):.1f} ms, max {max(probe_ms):.1f} ms"
            )
        print(
            f"machine: {os.cpu_count()} CPUs, 1-min load average {load_before:.2f} before the timed run, "
            f"{os.getloadavg()[0]:.2f} after (anything above what this run adds means other processes competed)"
        )
        if lag.samples:
            print(
                f"client reactor lag (20 ms timer): p50 {statistics.median(lag.samples) * 1000:.1f} ms, "
                f"p99 {percentile(lag.samples, 0.99) * 1000:.1f} ms, max {max(lag.samples) * 1000:.1f} ms"
            )
        if status is not None and status_before is not None:
            print(
                f"server VmRSS {status['VmRSS']} (before the timed run {status_before['VmRSS']}), "
                f"VmHWM {status['VmHWM']}, threads {status['Threads']}; with its workers {rss_after} kB (before {rss_before} kB)"
            )
        if len(memory) > 2:
            # Ten samples across the run: a server that keeps something per enrollment grows here.
            step = max(1, len(memory) // 10)
            series = [*memory[::step], memory[-1]] if memory[-1] not in memory[::step] else memory[::step]
            print("server RSS (with workers) by enrollments done: " + ", ".join(f"{done}: {kb / 1024:.0f} MB" for done, kb in series))
        if failed:
            first = failed[0]
            print(f"FAILED {len(failed)} of {len(outcomes)}; first error ({first.udid}, step {first.failed_step}): {first.error}")
            by_step: dict[str, int] = {}
            for o in failed:
                by_step[o.failed_step or "?"] = by_step.get(o.failed_step or "?", 0) + 1
            print("failures by step: " + ", ".join(f"{step_label.get(k, k)} {v}" for k, v in sorted(by_step.items())))
        if timed_out:
            print(f"TIMED OUT after {arguments.timeout:g} s")
        totals = [o.steps["total"] * 1000 for o in succeeded]
        summary = f"N={arguments.requests} C={arguments.concurrency} identity={identity}: {rate:.1f} enrollments/s"
        if totals:
            summary += f"; total p50 {statistics.median(totals):.0f} ms p99 {percentile(totals, 0.99):.0f} ms"
        if pid:
            summary += f"; server RSS {rss_after / 1024:.0f} MB (before {rss_before / 1024:.0f} MB)"
            if server_cpu is not None and succeeded:
                summary += f"; server CPU {server_cpu / len(succeeded) * 1000:.1f} ms per enrollment"
        if failed:
            summary += f"; {len(failed)} FAILED"
        print(summary)
        return 1 if failed or timed_out else 0
    finally:
        if daemon is not None:
            await daemon.stop()
            if daemon.exit_code not in (0, None):
                print(f"the daemon exited with {daemon.exit_code}")
        if temp is not None:
            if arguments.keep:
                print(f"data directory kept: {temp}")
            else:
                shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="timed enrollments (default 50)")
    parser.add_argument("--concurrency", type=int, default=4, help="enrollments in flight (default 4)")
    parser.add_argument("--identity", choices=("scep", "pkcs12"), default="scep", help="how devices get their identity")
    parser.add_argument("--warmup", type=int, default=2, help="untimed enrollments first, one at a time (default 2)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on the timed run after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory (own daemon only)")
    parser.add_argument(
        "--bcrypt-cost", type=int, help="own daemon only: enroll as --user with a password hashed at this bcrypt cost (4: no bcrypt)"
    )
    parser.add_argument("--profile", metavar="FILE", help="record a py-spy profile (--threads, raw) of the server during the timed run")
    parser.add_argument("--fresh-connections", action="store_true", help="a new TCP+TLS connection for every request (no keep-alive)")
    parser.add_argument("--rss-interval", type=float, default=5.0, help="seconds between samples of the server's RSS (default 5)")
    parser.add_argument(
        "--staged", action="store_true", help="server CPU per step: all devices do each step in turn (and bare requests first)"
    )
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config setting for the daemon this script starts, e.g. server.crypto_threads=4 (repeatable)",
    )
    external = parser.add_argument_group("an otad that is already running (all of --url, --ca, --password, --apple-dir)")
    external.add_argument("--url", help="its base URL, e.g. https://localhost:8443/")
    external.add_argument("--ca", help="PEM file of its root CA (DATA_DIR/certs/ca.pem)")
    external.add_argument("--user", default="apple", help="user for /enroll (default apple)")
    external.add_argument("--password", help="that user's password")
    external.add_argument(
        "--apple-dir",
        help="fake Apple hierarchy (certificates and keys); created if missing; the server must run with --device-ca APPLE_DIR/anchors.pem",
    )
    external.add_argument("--pid", type=int, help="the server's PID, to report its memory and CPU")
    arguments = parser.parse_args()
    if arguments.requests < 1 or arguments.concurrency < 1 or arguments.warmup < 0 or arguments.timeout <= 0:
        parser.error("--requests, --concurrency and --timeout must be positive, --warmup not negative")
    given = [arguments.url, arguments.ca, arguments.password, arguments.apple_dir]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        parser.error("an external otad needs all of --url, --ca, --password and --apple-dir")
    if arguments.set and arguments.url is not None:
        parser.error("--set configures the daemon this script starts, not an external one")
    if arguments.pid is not None and arguments.url is None:
        parser.error("--pid is only for an external otad (--url)")

    async def entry(_reactor: Any) -> None:
        code = await run(arguments)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: ensureDeferred(entry(reactor)))


if __name__ == "__main__":
    main()
