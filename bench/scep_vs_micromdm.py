"""Compares SCEP issuance of otad and micromdm's scepserver side by side: certificates per second and their ratio.

Run: .venv/bin/python bench/scep_vs_micromdm.py [--rounds 3] [--requests 300] [--concurrency 4] [--keys 10]
     [--set SECTION.KEY=VALUE ...] [--scepserver /usr/bin/scepserver]

It starts ``twistd otad`` (tests/daemon.py) on plain HTTP on 127.0.0.1 with a fresh temporary data
directory and a config file with ``[ca] key_size = 3072`` (plus every --set, which overrides it), and
writes one static challenge into its store. It starts micromdm's ``scepserver`` (Debian package
``scep``) on a fresh depot made by ``scepserver ca -init -keySize 3072`` with ``-challenge SECRET
-allowrenew 0`` on a free port (scepserver listens on every interface: it has no bind address option).
Both servers get the same client: the fake iPhone's independent SCEP code (tests/fakedevice.py), every
PKCSReq built before the clock starts (2048-bit keys reused round-robin, a distinct CN and transactionID
per request, enveloped to the recipient from each server's GetCACert), posted with C in flight over a
persistent connection pool, and every CertRep checked after each round. Rounds alternate (otad 1,
micromdm 1, otad 2, ...) so machine noise hits both. Per round it prints certificates/s, p50/p99
latency and server CPU per certificate (/proc/PID/stat of the server and its children: otad's
workers); then the medians, the ratio otad/micromdm, failures and duplicate serials (warm-up
requests included; a duplicate is a certificate whose serial an earlier one
of the same server already had). The exit status is 1 if otad fails any request or repeats a serial,
130 after Ctrl-C/SIGTERM; micromdm's failures are only reported. The client runs on the same machine
and competes for its cores.

Two differences to know when reading the ratio. scepserver 2.1.0 envelopes every CertRep with single
DES (go.mozilla.org/pkcs7's default), which tests/fakedevice.py refuses; such replies (micromdm only)
are verified here by open_des_reply with the same checks and counted as "DES-enveloped". And otad
decrypts requests and signs CertReps with RSA-2048 RA keys (only the CA, which signs the certificate,
is RSA-3072), whereas scepserver does all three private-key operations with its RSA-3072 CA key.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asn1crypto import cms  # noqa: E402
from asn1crypto import parser as asn1_parser  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.exceptions import InvalidSignature  # noqa: E402
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES  # noqa: E402
from cryptography.hazmat.primitives import padding as sym_padding  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, modes  # noqa: E402
from cryptography.hazmat.primitives.serialization import pkcs7  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet import reactor as global_reactor  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, gatherResults  # noqa: E402
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated  # noqa: E402
from twisted.internet.protocol import ProcessProtocol  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web.client import Agent, HTTPConnectionPool  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from bench.measure import cpu_seconds, percentile, setting, tree_thread_cpu_seconds  # noqa: E402
from otad import tokens  # noqa: E402
from otad.store import Store  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.fakeapple import self_signed_identity  # noqa: E402
from tests.fakedevice import (  # noqa: E402
    CONTENT_TYPE_PKI_MESSAGE,
    SCEP_MESSAGE_CERT_REP,
    PKIRequest,
    SCEPError,
    SCEPRefused,
    build_pkcs_req,
    parse_cert_rep,
    read_cert_rep,
    select_scep_certs,
)

OTAD = "otad"
MICROMDM = "micromdm"
Identity = tuple[x509.Certificate, rsa.RSAPrivateKey]


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class Prepared:
    """A PKCSReq built before the clock starts, and the key that must open its CertRep."""

    request: PKIRequest
    key: rsa.RSAPrivateKey


@dataclass(frozen=True)
class Outcome:
    """What the server answered (or the transport error), and how long it took."""

    prepared: Prepared
    latency: float
    code: int = 0
    body: bytes = b""
    error: str = ""


@dataclass(frozen=True)
class RoundResult:
    server: str
    number: int  # 0 is the untimed warm-up
    requests: int
    issued: int
    failed: int
    duplicates: int
    elapsed: float
    latencies: list[float]
    server_cpu: float
    client_cpu: float

    @property
    def rate(self) -> float:
        return self.issued / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class Server:
    """One SCEP server under test and everything counted about it over the whole run."""

    name: str
    url: str
    pid: int
    challenge: str
    recipient: x509.Certificate
    ca_certs: list[x509.Certificate]
    # micromdm 2.1.0 envelopes every CertRep with single DES, which the fake device refuses: such
    # replies are checked by open_des_reply instead and counted in des_replies.
    accept_des: bool = False
    serials: Counter[int] = field(default_factory=Counter)
    des_replies: int = 0
    failures: int = 0
    duplicates: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    rounds: list[RoundResult] = field(default_factory=list)


# ------------------------------------------------------------------ micromdm's scepserver


class ScepServer(ProcessProtocol):
    """One ``scepserver`` child; its output is kept in memory (it is small: it logs failures and start-up)."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.exit_code: int | None = None
        self._exited: Deferred[int | None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.exit_code = reason.value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        self._exited.callback(self.exit_code)

    @property
    def running(self) -> bool:
        return not self._exited.called

    def exited(self) -> Deferred[int | None]:
        return self._exited


def free_port() -> int:
    """A TCP port nobody listens on now (scepserver binds every interface, so check the wildcard address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


async def run_tool(command: list[str]) -> tuple[int | None, str]:
    """Run a short command to completion; (exit code, its output)."""
    tool = ScepServer()
    global_reactor.spawnProcess(tool, command[0], command, env=dict(os.environ))
    code = await tool.exited()
    return code, tool.output.decode("utf-8", "replace")


async def signal_and_wait(transport: Any, exited: Deferred[Any], is_running: Callable[[], bool], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns once the child has been reaped."""
    for name, wait in (("TERM", grace), ("KILL", grace)):
        if not is_running():
            return
        try:
            transport.signalProcess(name)
        except ProcessExitedAlready:
            pass
        deadline = time.monotonic() + wait
        while is_running() and time.monotonic() < deadline:
            await task.deferLater(global_reactor, 0.05)
    if is_running():
        print(f"  warning: child {transport.pid} did not exit after SIGKILL", file=sys.stderr)
    else:
        await exited


# ------------------------------------------------------------------ the client


def build_requests(tag: str, identities: list[Identity], recipient: x509.Certificate, challenge: str, count: int) -> list[Prepared]:
    """``count`` PKCSReqs for one server, each with its own CN (so its own CSR) and transactionID."""
    built = []
    for index in range(count):
        cert, key = identities[index % len(identities)]
        subject = [[["O", "Bench"]], [["CN", f"bench-{tag}-{index:06d}"]]]
        request = build_pkcs_req(
            key, cert, recipient, subject=subject, challenge=challenge, transaction_id=f"BENCH-{tag.upper()}-{index:06d}"
        )
        built.append(Prepared(request, key))
    return built


async def fire(http: HTTPClient, url: str, batch: list[Prepared], concurrency: int, timeout: float) -> list[Outcome]:
    """POST every PKCSReq with ``concurrency`` in flight; transport errors become outcomes, never exceptions."""
    outcomes: list[Outcome] = []

    async def one(prepared: Prepared) -> None:
        started = time.perf_counter()
        try:
            answer = await http.post(
                f"{url}?operation=PKIOperation",
                data=prepared.request.der,
                headers=Headers({b"content-type": [CONTENT_TYPE_PKI_MESSAGE]}),
                timeout=timeout,
            )
            body = await answer.content()
        except Exception as error:  # noqa: BLE001 - counted as a failure of this request
            outcomes.append(Outcome(prepared, time.perf_counter() - started, error=f"transport: {type(error).__name__}: {error}"))
            return
        outcomes.append(Outcome(prepared, time.perf_counter() - started, code=answer.code, body=body))

    semaphore = DeferredSemaphore(concurrency)

    def start(prepared: Prepared) -> Any:
        return ensureDeferred(one(prepared))

    await gatherResults([semaphore.run(start, prepared) for prepared in batch], consumeErrors=True)
    return outcomes


def content_algorithm(server: Server, body: bytes) -> str:
    """The content encryption algorithm of a verified CertRep's EnvelopedData ('' if there is none)."""
    try:
        enveloped = cms.ContentInfo.load(read_cert_rep(body, server.ca_certs).content)["content"]
        return str(enveloped["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native)
    except Exception:  # noqa: BLE001 - unverifiable or not enveloped: not a DES reply
        return ""


def _elements(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(class, method, tag, contents) of each BER element in ``data``."""
    found = []
    while data:
        class_, method, tag, header, contents, trailer = asn1_parser.parse(data)
        found.append((class_, method, tag, contents))
        data = data[len(header) + len(contents) + len(trailer) :]
    return found


def _encrypted_content(encrypted_info: cms.EncryptedContentInfo) -> bytes:
    """encryptedContent [0]: primitive (as CMS says), or constructed around OCTET STRINGs (as Go's pkcs7 writes it)."""
    for class_, method, tag, contents in _elements(encrypted_info.contents):
        if class_ == 2 and tag == 0:
            if method == 0:
                return contents
            return b"".join(inner for inner_class, _, inner_tag, inner in _elements(contents) if inner_class == 0 and inner_tag == 4)
    raise SCEPError("EnvelopedData has no encryptedContent")


def open_des_reply(server: Server, outcome: Outcome) -> x509.Certificate:
    """
    The checks of parse_cert_rep for a CertRep whose content is DES-CBC (56-bit) enveloped.

    read_cert_rep verifies the signature (by a GetCACert certificate) and decodes the attributes;
    messageType, transactionID, recipientNonce and SUCCESS are checked as parse_cert_rep does; the
    content is opened with the request's key (DES is 3DES with K1 = K2 = K3; asn1crypto cannot read
    Go's constructed encryptedContent, so that is unwrapped by hand) and must hold a
    certificate for that key, issued by the CA.
    """
    request, key = outcome.prepared.request, outcome.prepared.key
    rep = read_cert_rep(outcome.body, server.ca_certs)
    if rep.message_type != SCEP_MESSAGE_CERT_REP:
        raise SCEPError(f"messageType is {rep.message_type}, expected 3")
    if rep.transaction_id != request.transaction_id:
        raise SCEPError("transactionID does not match the request")
    if rep.recipient_nonce != request.sender_nonce:
        raise SCEPError("recipientNonce does not match our senderNonce")
    if rep.pki_status != "0":
        raise SCEPError(f"pkiStatus {rep.pki_status!r}")
    enveloped = cms.ContentInfo.load(rep.content)["content"]
    encrypted_info = enveloped["encrypted_content_info"]
    algorithm = encrypted_info["content_encryption_algorithm"]
    if algorithm["algorithm"].native != "des":
        raise SCEPError(f"content encryption {algorithm['algorithm'].native}, expected des")
    (recipient,) = [info.chosen for info in enveloped["recipient_infos"] if info.name == "ktri"]
    content_key = key.decrypt(recipient["encrypted_key"].native, padding.PKCS1v15())
    decryptor = Cipher(TripleDES(content_key * 3), modes.CBC(algorithm["parameters"].native)).decryptor()
    padded = decryptor.update(_encrypted_content(encrypted_info)) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(64).unpadder()
    issued = pkcs7.load_der_pkcs7_certificates(unpadder.update(padded) + unpadder.finalize())
    ours = key.public_key().public_numbers()
    for cert in issued:
        public = cert.public_key()
        if isinstance(public, rsa.RSAPublicKey) and public.public_numbers() == ours:
            for ca in server.ca_certs:
                try:
                    cert.verify_directly_issued_by(ca)
                except (ValueError, TypeError, InvalidSignature):
                    continue
                return cert
            raise SCEPError("issued certificate is not signed by the CA")
    raise SCEPError("CertRep holds no certificate for our key")


def check(server: Server, outcomes: list[Outcome]) -> tuple[list[float], int, int]:
    """Verify every CertRep; (latencies of the issued ones, failures, duplicate serials). Updates ``server``'s totals."""
    latencies: list[float] = []
    failed = duplicates = 0
    for outcome in outcomes:
        problem = outcome.error
        if not problem and outcome.code != 200:
            problem = f"HTTP {outcome.code}: {outcome.body[:120]!r}"
        if not problem:
            try:
                cert = parse_cert_rep(outcome.body, ca_certs=server.ca_certs, request=outcome.prepared.request, key=outcome.prepared.key)
            except SCEPRefused as refused:
                problem = f"CertRep FAILURE failInfo {refused.fail_info}"
            except Exception as error:  # noqa: BLE001 - counted as a failure of this request
                problem = f"{type(error).__name__}: {error}"
                if server.accept_des and content_algorithm(server, outcome.body) == "des":
                    try:
                        cert = open_des_reply(server, outcome)
                    except Exception as des_error:  # noqa: BLE001 - counted as a failure of this request
                        problem = f"DES CertRep: {type(des_error).__name__}: {des_error}"
                    else:
                        problem = ""
                        server.des_replies += 1
            if not problem:
                if server.serials[cert.serial_number]:
                    duplicates += 1
                server.serials[cert.serial_number] += 1
                latencies.append(outcome.latency)
        if problem:
            failed += 1
            server.errors[problem[:200]] += 1
    server.failures += failed
    server.duplicates += duplicates
    return latencies, failed, duplicates


async def measure_round(http: HTTPClient, server: Server, number: int, batch: list[Prepared], arguments: argparse.Namespace) -> RoundResult:
    server_before = sum(tree_thread_cpu_seconds(server.pid))
    client_before = cpu_seconds(os.getpid())
    started = time.perf_counter()
    outcomes = await fire(http, server.url, batch, arguments.concurrency, arguments.timeout)
    elapsed = time.perf_counter() - started
    server_cpu = sum(tree_thread_cpu_seconds(server.pid)) - server_before
    client_cpu = cpu_seconds(os.getpid()) - client_before
    latencies, failed, duplicates = await deferToThread(check, server, outcomes)
    result = RoundResult(server.name, number, len(batch), len(latencies), failed, duplicates, elapsed, latencies, server_cpu, client_cpu)
    if number:
        server.rounds.append(result)
    return result


# ------------------------------------------------------------------ output


HEADER = (
    f"{'round':>5}  {'server':<9} {'issued':>6} {'failed':>6} {'dup':>4} {'wall s':>7} {'certs/s':>8}"
    f" {'p50 ms':>8} {'p99 ms':>8} {'srv ms/cert':>11} {'srv cores':>9} {'cli cores':>9}"
)


def row(result: RoundResult) -> str:
    label = str(result.number) if result.number else "warm"
    p50 = f"{statistics.median(result.latencies) * 1000:8.1f}" if result.latencies else f"{'-':>8}"
    p99 = f"{percentile(result.latencies, 0.99) * 1000:8.1f}" if result.latencies else f"{'-':>8}"
    per_cert = f"{result.server_cpu / result.issued * 1000:11.1f}" if result.issued else f"{'-':>11}"
    elapsed = max(result.elapsed, 1e-9)
    return (
        f"{label:>5}  {result.server:<9} {result.issued:>6} {result.failed:>6} {result.duplicates:>4}"
        f" {result.elapsed:7.2f} {result.rate:8.1f} {p50} {p99} {per_cert}"
        f" {result.server_cpu / elapsed:9.2f} {result.client_cpu / elapsed:9.2f}"
    )


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def summary_line(server: Server) -> str:
    rates = [result.rate for result in server.rounds]
    issued = sum(result.issued for result in server.rounds)
    cpu = sum(result.server_cpu for result in server.rounds)
    latencies = [latency for result in server.rounds for latency in result.latencies]
    p50 = f"{statistics.median(latencies) * 1000:.1f}" if latencies else "-"
    p99 = f"{percentile(latencies, 0.99) * 1000:.1f}" if latencies else "-"
    per_cert = f"{cpu / issued * 1000:.1f}" if issued else "-"
    return (
        f"  {server.name:<9} median {statistics.median(rates):7.1f} certificates/s  (rounds {' '.join(f'{rate:.1f}' for rate in rates)})"
        f"  p50 {p50} ms  p99 {p99} ms  server CPU {per_cert} ms/cert"
        f"  failures {server.failures}  duplicate serials {server.duplicates} ({len(server.serials)} distinct of {server.serials.total()})"
        + (f"  DES-enveloped CertReps {server.des_replies}" if server.accept_des else "")
    )


# ------------------------------------------------------------------ the run


class Cleanup:
    """Stops the servers and removes the temporary directory once, at the end, on an error or on Ctrl-C."""

    def __init__(self) -> None:
        self.steps: list[Callable[[], Awaitable[None]]] = []
        self._done: Deferred[None] | None = None

    def add(self, step: Callable[[], Awaitable[None]]) -> None:
        self.steps.append(step)

    def __call__(self) -> Deferred[None]:
        if self._done is None:
            self._done = ensureDeferred(self._run())
        return self._done

    async def _run(self) -> None:
        for step in reversed(self.steps):
            try:
                await step()
            except Exception as error:  # noqa: BLE001 - the other steps must still run
                print(f"  cleanup step failed: {error!r}", file=sys.stderr)


def config_text(settings: list[tuple[str, str, str]]) -> str:
    sections: dict[str, dict[str, str]] = {"ca": {"key_size": "3072"}}
    for section, key, value in settings:
        sections.setdefault(section, {})[key] = value
    return "".join(f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items()) for section, keys in sections.items())


async def get_ca(http: HTTPClient, url: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
    response = await http.get(f"{url}?operation=GetCACert", timeout=30)
    body = await response.content()
    if response.code != 200:
        raise RuntimeError(f"GetCACert at {url} answered {response.code}: {body[:200]!r}")
    return select_scep_certs((response.headers.getRawHeaders(b"content-type") or [b""])[0], body)


async def start_otad(http: HTTPClient, temp: Path, arguments: argparse.Namespace, uses: int, cleanup: Cleanup) -> Server:
    data_dir = temp / "otad-data"
    data_dir.mkdir()
    config = temp / "otad.conf"
    config.write_text(config_text(arguments.set))
    daemon = Daemon(data_dir, ["--config", str(config)], listen="tcp:0:interface=127.0.0.1")

    async def stop() -> None:
        if daemon.transport is not None:
            await signal_and_wait(daemon.transport, daemon.exited(), lambda: not daemon.exited().called)

    cleanup.add(stop)
    port = await daemon.start()
    assert daemon.transport is not None
    url = f"http://127.0.0.1:{port}/scep"
    recipient, ca_certs = await get_ca(http, url)
    token, digest = tokens.mint()
    store = Store.open_existing(data_dir / "otad.sqlite")
    try:
        store.add_challenge(digest, "static", None, now=time.time(), ttl=24 * 3600, uses=uses)
    finally:
        store.close()
    return Server(OTAD, url, daemon.transport.pid, token, recipient, ca_certs)


async def start_micromdm(http: HTTPClient, temp: Path, arguments: argparse.Namespace, cleanup: Cleanup) -> tuple[Server, ScepServer]:
    depot = temp / "micromdm-depot"
    init = [arguments.scepserver, "ca", "-init", "-depot", str(depot), "-keySize", "3072", "-organization", "Bench", "-years", "1"]
    code, output = await run_tool(init)
    if code != 0:
        raise RuntimeError(f"{shlex.join(init)} exited {code}: {output}")
    challenge = tokens.mint()[0]
    port = free_port()
    command = [arguments.scepserver, "-depot", str(depot), "-port", str(port), "-challenge", challenge, "-allowrenew", "0"]
    scep = ScepServer()
    transport = global_reactor.spawnProcess(scep, command[0], command, env=dict(os.environ), path=str(temp))

    async def stop() -> None:
        await signal_and_wait(transport, scep.exited(), lambda: scep.running)

    cleanup.add(stop)
    url = f"http://127.0.0.1:{port}/scep"
    deadline = time.monotonic() + 30
    while True:
        if not scep.running:
            raise RuntimeError(f"scepserver exited {scep.exit_code} before answering: {scep.output.decode('utf-8', 'replace')}")
        try:
            response = await http.get(f"{url}?operation=GetCACaps", timeout=2)
            caps = await response.content()
            if response.code == 200:
                break
        except Exception:  # noqa: BLE001 - not listening yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"scepserver did not answer GetCACaps within 30 s: {scep.output.decode('utf-8', 'replace')}")
        await task.deferLater(global_reactor, 0.1)
    if b"AES" not in caps.upper().split():
        print(f"  warning: scepserver's GetCACaps lacks AES: {caps!r}")
    recipient, ca_certs = await get_ca(http, url)
    return Server(MICROMDM, url, transport.pid, challenge, recipient, ca_certs, accept_des=True), scep


def key_bits(cert: x509.Certificate) -> str:
    public = cert.public_key()
    return f"RSA-{public.key_size}" if isinstance(public, rsa.RSAPublicKey) else type(public).__name__


def describe(server: Server) -> str:
    """'recipient RSA-2048 (CN=SCEP RA), also CA RSA-3072'."""
    others = [cert for cert in server.ca_certs if cert != server.recipient]
    text = f"recipient {key_bits(server.recipient)} ({server.recipient.subject.rfc4514_string()[:40]})"
    return text + "".join(f", also {key_bits(cert)} ({cert.subject.rfc4514_string()[:40]})" for cert in others)


async def run(arguments: argparse.Namespace, cleanup: Cleanup) -> int:
    temp = Path(tempfile.mkdtemp(prefix="otad-bench-vs-micromdm-"))

    async def remove_temp() -> None:
        if arguments.keep:
            print(f"  temporary directory kept: {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)

    cleanup.add(remove_temp)
    pool = HTTPConnectionPool(global_reactor, persistent=True)
    pool.maxPersistentPerHost = arguments.concurrency

    async def close_pool() -> None:
        await pool.closeCachedConnections()

    cleanup.add(close_pool)
    http = HTTPClient(Agent(global_reactor, pool=pool))
    per_server = arguments.warmup + arguments.rounds * arguments.requests
    load_start = loadavg()
    print(f"load average at start {load_start}; {os.cpu_count()} CPUs")

    _, version = await run_tool([arguments.scepserver, "-version"])
    otad_server = await start_otad(http, temp, arguments, per_server, cleanup)
    micromdm_server, scep = await start_micromdm(http, temp, arguments, cleanup)
    servers = (otad_server, micromdm_server)
    config = "; ".join(line for line in config_text(arguments.set).splitlines())
    print(f"otad      pid {otad_server.pid:>7}  {otad_server.url}  config: {config}")
    print(f"          {describe(otad_server)}")
    print(f"micromdm  pid {micromdm_server.pid:>7}  {micromdm_server.url}  scepserver {version.strip()}")
    print(f"          {describe(micromdm_server)}")

    setup_started = time.perf_counter()

    def make_key(index: int) -> Identity:
        return self_signed_identity(f"SCEP SIGNER {index}", key=rsa.generate_private_key(65537, 2048))

    identities: list[Identity] = await gatherResults([deferToThread(make_key, index) for index in range(arguments.keys)])
    built = [deferToThread(build_requests, server.name, identities, server.recipient, server.challenge, per_server) for server in servers]
    prepared: dict[str, list[Prepared]] = dict(zip((OTAD, MICROMDM), await gatherResults(built), strict=True))
    setup = time.perf_counter() - setup_started
    print(
        f"built {2 * per_server} PKCSReqs ({per_server} per server, {arguments.keys} 2048-bit keys) in {setup:.1f} s;"
        f" rounds={arguments.rounds} requests={arguments.requests} concurrency={arguments.concurrency} warmup={arguments.warmup}"
    )
    print()
    print(HEADER)
    for server in servers:
        if arguments.warmup:
            print(row(await measure_round(http, server, 0, prepared[server.name][: arguments.warmup], arguments)), flush=True)
    for number in range(1, arguments.rounds + 1):
        start = arguments.warmup + (number - 1) * arguments.requests
        for server in servers:
            batch = prepared[server.name][start : start + arguments.requests]
            print(row(await measure_round(http, server, number, batch, arguments)), flush=True)

    print()
    print(
        f"summary: {arguments.rounds} rounds of {arguments.requests} requests, concurrency {arguments.concurrency}, {arguments.keys} keys"
    )
    for server in servers:
        print(summary_line(server))
    otad_rate = statistics.median(result.rate for result in otad_server.rounds)
    micromdm_rate = statistics.median(result.rate for result in micromdm_server.rounds)
    ratio = f"{otad_rate / micromdm_rate:.2f}" if micromdm_rate > 0 else "inf (micromdm issued nothing)"
    print(f"  ratio otad/micromdm (median certificates/s): {ratio}")
    for server in servers:
        for problem, count in server.errors.most_common(5):
            print(f"  {server.name} error x{count}: {problem}")
    logged = Counter(
        match.group(1) for match in re.finditer(r'\berr="?((?:[^"\\]|\\.)*?)"?(?: \w+=|$)', scep.output.decode("utf-8", "replace"), re.M)
    )
    logged.pop("null", None)
    for message, count in logged.most_common(5):
        print(f"  scepserver logged x{count}: err={message[:200]}")
    print(f"  load average at start {load_start}, at end {loadavg()}")
    print(f"  command: {shlex.join(sys.orig_argv)}")
    if otad_server.failures or otad_server.duplicates:
        print(f"otad FAILED: {otad_server.failures} failed requests, {otad_server.duplicates} duplicate serials", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per server, alternating otad and micromdm (default 3)")
    parser.add_argument("--requests", type=int, default=300, help="PKCSReqs per round (default 300)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--keys", type=int, default=10, help="distinct 2048-bit client keys, reused round-robin (default 10)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests to each server first (default 8)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before one request counts as failed (default 120)")
    parser.add_argument("--scepserver", default=shutil.which("scepserver") or "/usr/bin/scepserver", help="micromdm's scepserver binary")
    parser.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a setting for otad's config file, e.g. server.crypto_threads=4 (repeatable; [ca] key_size = 3072 is always written first)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (otad data dir, micromdm depot)")
    arguments = parser.parse_args()
    if (
        min(arguments.rounds, arguments.requests, arguments.concurrency, arguments.keys) < 1
        or arguments.warmup < 0
        or arguments.timeout <= 0
    ):
        parser.error("--rounds, --requests, --concurrency, --keys and --timeout must be positive, --warmup not negative")

    cleanup = Cleanup()
    state = {"finished": False, "interrupted": False}

    async def body(_reactor: Any) -> None:
        try:
            code = await run(arguments, cleanup)
        finally:
            state["finished"] = True
            await cleanup()
        if code:
            raise SystemExit(code)

    def on_shutdown() -> Deferred[None]:
        # Ctrl-C (or SIGTERM) stops the reactor while run() is still waiting: stop the children here.
        if not state["finished"]:
            state["interrupted"] = True
            print("\ninterrupted: stopping the servers", file=sys.stderr)
        return cleanup()

    global_reactor.addSystemEventTrigger("before", "shutdown", on_shutdown)
    try:
        task.react(body)
    except SystemExit as exit_:
        if state["interrupted"]:
            sys.exit(128 + signal.SIGINT)
        raise exit_ from None


if __name__ == "__main__":
    main()
