"""The real daemon under many concurrent SCEP enrollments, and killed in the middle of a burst.

Every certificate a client received must be in the store, with the same DER.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, gatherResults
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from otad import tokens
from otad.ca import serial_hex
from otad.store import ChallengeRefused, Store
from tests.daemon import Daemon
from tests.fakeapple import self_signed_identity
from tests.fakedevice import (
    CONTENT_TYPE_PKI_MESSAGE,
    PKIRequest,
    SCEPRefused,
    build_pkcs_req,
    envelope,
    parse_cert_rep,
    select_scep_certs,
    sign_cms,
)
from tests.stores import PostgreSQLStore, SQLiteStore, raw

LISTEN = "tcp:0:interface=127.0.0.1"
SUBJECT = [[["O", "Load Test"]], [["CN", "load"]]]
# 2048-bit keys are slow to make; requests reuse a few (the server doesn't mind duplicate public keys).
KEY_COUNT = 10
_identities: list[tuple[x509.Certificate, rsa.RSAPrivateKey]] = []


async def identities() -> list[tuple[x509.Certificate, rsa.RSAPrivateKey]]:
    """KEY_COUNT client keys with their self-signed SCEP signers, made on threads once per run."""
    if not _identities:

        def make(index: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
            return self_signed_identity(f"SCEP SIGNER {index}", key=rsa.generate_private_key(65537, 2048))

        made = await gatherResults([deferToThread(make, index) for index in range(KEY_COUNT)])
        _identities[:] = made
    return list(_identities)


class SCEPClient:
    """Plain-HTTP SCEP against one daemon, with a connection pool sized for the burst."""

    def __init__(self, port: int, concurrency: int) -> None:
        self.url = f"http://127.0.0.1:{port}/scep"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = concurrency
        self.http = HTTPClient(Agent(reactor, pool=self.pool))

    async def close(self) -> None:
        await self.pool.closeCachedConnections()

    async def get(self, operation: str) -> tuple[int, bytes, bytes]:
        response = await self.http.get(f"{self.url}?operation={operation}", timeout=60)
        body = await response.content()
        return response.code, (response.headers.getRawHeaders(b"content-type") or [b""])[0], body

    async def ra(self) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """GetCACert, read as a device reads it: (recipient, every certificate)."""
        code, content_type, body = await self.get("GetCACert")
        assert code == 200, body
        return select_scep_certs(content_type, body)

    async def pki_operation(self, der: bytes) -> bytes:
        response = await self.http.post(
            f"{self.url}?operation=PKIOperation", data=der, headers=Headers({b"content-type": [CONTENT_TYPE_PKI_MESSAGE]}), timeout=60
        )
        body = await response.content()
        if response.code != 200:
            raise RuntimeError(f"PKIOperation answered {response.code}: {body[:200]!r}")
        return body


def static_challenge(location: Path | str, uses: int) -> tuple[str, int]:
    """A static challenge written straight into the running daemon's store (a second connection, as otad-admin's)."""
    token, digest = tokens.mint()
    store = Store.open_existing(location)
    try:
        return token, store.add_challenge(digest, "static", None, now=time.time(), ttl=3600, uses=uses)
    finally:
        store.close()


async def build_requests(
    count: int, recipient: x509.Certificate, challenge: str, prefix: str
) -> list[tuple[PKIRequest, rsa.RSAPrivateKey]]:
    """count PKCSReqs, each with its own transactionID, built on a thread."""
    keys = await identities()

    def build() -> list[tuple[PKIRequest, rsa.RSAPrivateKey]]:
        built = []
        for index in range(count):
            cert, key = keys[index % len(keys)]
            request = build_pkcs_req(key, cert, recipient, subject=SUBJECT, challenge=challenge, transaction_id=f"{prefix}-{index:05d}")
            built.append((request, key))
        return built

    return await deferToThread(build)


async def burst(
    requests: list[tuple[PKIRequest, rsa.RSAPrivateKey]],
    send: Callable[[bytes], Awaitable[bytes]],
    concurrency: int,
    on_reply: Callable[[int], None] = lambda count: None,
) -> tuple[list[tuple[PKIRequest, rsa.RSAPrivateKey, bytes]], list[Exception]]:
    """Send every request with at most ``concurrency`` in flight; returns (replies, transport errors)."""
    semaphore = DeferredSemaphore(concurrency)
    replies: list[tuple[PKIRequest, rsa.RSAPrivateKey, bytes]] = []
    errors: list[Exception] = []

    async def one(request: PKIRequest, key: rsa.RSAPrivateKey) -> None:
        try:
            body = await send(request.der)
        except Exception as error:  # a killed daemon shows as any of several connection errors
            errors.append(error)
            return
        replies.append((request, key, body))
        on_reply(len(replies))

    def run(request: PKIRequest, key: rsa.RSAPrivateKey) -> Any:
        return ensureDeferred(one(request, key))

    await gatherResults([semaphore.run(run, request, key) for request, key in requests])
    return replies, errors


def read_replies(
    replies: list[tuple[PKIRequest, rsa.RSAPrivateKey, bytes]], ca_certs: list[x509.Certificate]
) -> tuple[list[x509.Certificate], list[int]]:
    """The certificates of SUCCESS CertReps and the failInfos of FAILURE ones, read by the fake device."""
    issued, refused = [], []
    for request, key, body in replies:
        try:
            issued.append(parse_cert_rep(body, ca_certs=ca_certs, request=request, key=key))
        except SCEPRefused as refusal:
            refused.append(refusal.fail_info)
    return issued, refused


def cert_poll(request: PKIRequest, key: rsa.RSAPrivateKey, issuer: x509.Name) -> PKIRequest:
    """A CertPoll (messageType 20) for request's transaction, signed like request: how a client that lost its CertRep asks again."""
    issuer_and_subject = asn1_core.Sequence(
        contents=asn1_x509.Name.load(issuer.public_bytes()).dump() + asn1_x509.Name.load(request.csr.subject.public_bytes()).dump()
    ).dump()
    nonce = bytes(reversed(request.sender_nonce))
    poll = sign_cms(
        envelope(issuer_and_subject, request.recipient),
        request.signer_cert,
        key,
        signed_attributes=[
            ("2.16.840.1.113733.1.9.2", asn1_core.PrintableString("20").dump()),
            ("2.16.840.1.113733.1.9.7", asn1_core.PrintableString(request.transaction_id).dump()),
            ("2.16.840.1.113733.1.9.5", asn1_core.OctetString(nonce).dump()),
        ],
    )
    return PKIRequest(
        der=poll,
        csr=request.csr,
        transaction_id=request.transaction_id,
        sender_nonce=nonce,
        signer_cert=request.signer_cert,
        recipient=request.recipient,
        aes=True,
        digest="sha256",
    )


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class SCEPLoadTests(SQLiteStore, unittest.TestCase):
    """On the SQLite store; PostgreSQLSCEPLoadTests runs every test again on PostgreSQL."""

    timeout = 180

    def new_daemon(self, data_dir: Path) -> Daemon:
        (data_dir / "otad.conf").write_text(self.store_config(data_dir))
        daemon = Daemon(data_dir, ("--config", str(data_dir / "otad.conf")), listen=LISTEN)
        self.addCleanup(daemon.stop)
        return daemon

    async def check_after_crash(self, location: Path | str) -> None:
        """The database a killed daemon was writing to is sound: SQLite's own integrity check passes."""
        self.assertEqual(raw(location, "PRAGMA integrity_check"), [("ok",)])

    def new_client(self, port: int, concurrency: int) -> SCEPClient:
        client = SCEPClient(port, concurrency)
        self.addCleanup(lambda: ensureDeferred(client.close()))
        return client

    def data_dir(self) -> Path:
        path = Path(self.mktemp()).absolute()
        path.mkdir(parents=True)
        return path

    def test_concurrent_enrollments(self) -> Deferred[None]:
        """200 PKCSReqs, 50 in flight, on a 200-use static challenge get 200 distinct certificates, the store's; the 201st is refused."""

        async def run() -> None:
            data_dir = self.data_dir()
            daemon = self.new_daemon(data_dir)
            port = await daemon.start()
            client = self.new_client(port, 50)
            recipient, ca_certs = await client.ra()
            location = self.store_location(data_dir)
            token, challenge_id = static_challenge(location, 200)
            requests = await build_requests(201, recipient, token, "LOAD")

            replies, errors = await burst(requests[:200], client.pki_operation, 50)
            self.assertEqual(errors, [])
            issued, refused = await deferToThread(read_replies, replies, ca_certs)
            self.assertEqual(refused, [])
            self.assertEqual(len(issued), 200)
            serials = {serial_hex(cert.serial_number): der(cert) for cert in issued}
            self.assertEqual(len(serials), 200)

            store = Store.open_existing(location)
            self.addCleanup(store.close)
            records = store.certificates()
            self.assertEqual({record.serial: record.der for record in records}, serials)
            self.assertEqual({record.challenge_id for record in records}, {challenge_id})
            self.assertEqual(
                sorted(record.transaction_id or "" for record in records), [request.transaction_id for request, _ in requests[:200]]
            )
            with self.assertRaises(ChallengeRefused):
                store.find_challenge(tokens.digest(token), ("static",), now=time.time())

            replies, errors = await burst(requests[200:], client.pki_operation, 1)
            issued, refused = read_replies(replies, ca_certs)
            self.assertEqual((errors, issued, refused), ([], [], [2]))  # badRequest
            self.assertEqual(len(store.certificates()), 200)

        return ensureDeferred(run())

    def test_killed_during_burst(self) -> Deferred[None]:
        """SIGKILL mid-burst: every certificate sent is stored, uses match certificates, every recorded certificate
        (those whose replies the kill swallowed, and some answered ones) can be fetched by polling, a restart issues."""

        async def run() -> None:
            data_dir = self.data_dir()
            database = self.store_location(data_dir)
            daemon = self.new_daemon(data_dir)
            port = await daemon.start()
            client = self.new_client(port, 20)
            recipient, ca_certs = await client.ra()
            token, challenge_id = static_challenge(database, 1000)
            requests = await build_requests(300, recipient, token, "KILL")
            kills: list[Deferred[int]] = []

            def kill_in_the_middle(count: int) -> None:
                if count == 40 and not kills:
                    kills.append(daemon.stop(signal.SIGKILL))

            replies, errors = await burst(requests, client.pki_operation, 20, kill_in_the_middle)
            self.assertEqual(len(kills), 1)
            await kills[0]
            self.assertIsNone(daemon.exit_code, "the daemon must have died by the signal")
            self.assertNotEqual(errors, [], "the kill must interrupt requests")
            self.assertGreaterEqual(len(replies), 40)
            issued, refused = await deferToThread(read_replies, replies, ca_certs)
            self.assertEqual(refused, [])
            self.assertEqual(len(issued), len(replies))

            # The crashed daemon's database is sound, opens, and holds every certificate a client got.
            await self.check_after_crash(database)
            store = Store.open_existing(database)
            records = {record.serial: record for record in store.certificates()}
            for cert in issued:
                record = records.get(serial_hex(cert.serial_number))
                self.assertIsNotNone(record, f"certificate {serial_hex(cert.serial_number)} was sent but not recorded")
                assert record is not None
                self.assertEqual(record.der, der(cert))
            self.assertLess(len(records), len(requests))
            # Using the challenge and recording the certificate commit together.
            uses_left = store.find_challenge(tokens.digest(token), ("static",), now=time.time()).uses_left
            self.assertEqual(1000 - uses_left, len(records))
            self.assertEqual({record.challenge_id for record in records.values()}, {challenge_id})
            store.close()

            restarted = self.new_daemon(data_dir)
            port = await restarted.start()
            client = self.new_client(port, 1)
            code, content_type, body = await client.get("GetCACaps")
            self.assertEqual((code, content_type), (200, b"text/plain"))
            self.assertIn(b"POSTPKIOperation", body)
            again_recipient, again_ca_certs = await client.ra()
            self.assertEqual(again_recipient, recipient)
            # A client whose CertRep the kill swallowed gets the recorded certificate by polling its transaction.
            received = {request.transaction_id for request, _, _ in replies}
            by_transaction = {request.transaction_id: (request, key) for request, key in requests}
            lost = [record for record in records.values() if record.transaction_id not in received]
            # The lost ones (there may be none if the kill fell between requests), and a few answered ones,
            # so that the loop always checks something.
            answered = [record for record in records.values() if record.transaction_id in received][:5]
            self.assertGreater(len(answered), 0)
            for record in lost + answered:
                request, key = by_transaction[record.transaction_id or ""]
                poll = cert_poll(request, key, again_recipient.issuer)  # the RA's issuer is the CA
                polled = parse_cert_rep(await client.pki_operation(poll.der), ca_certs=again_ca_certs, request=poll, key=key)
                self.assertEqual(der(polled), record.der)
            request, key = (await build_requests(1, again_recipient, token, "AFTER"))[0]
            cert = parse_cert_rep(await client.pki_operation(request.der), ca_certs=again_ca_certs, request=request, key=key)
            store = Store.open_existing(database)
            self.addCleanup(store.close)
            record = store.certificate(serial_hex(cert.serial_number))
            assert record is not None
            self.assertEqual((record.der, record.transaction_id), (der(cert), "AFTER-00000"))
            self.assertEqual(len(store.certificates()), len(records) + 1)

        return ensureDeferred(run())


class WorkersSCEPLoadTests(SCEPLoadTests):
    """The same burst and the same kill against ``[server] workers = 2``: two processes, one store, one winner of every race.

    The kill takes the supervisor and both workers at once, as a power cut would.
    """

    def new_daemon(self, data_dir: Path) -> Daemon:
        config = data_dir.parent / f"{data_dir.name}-workers.conf"
        config.write_text("[server]\nworkers = 2\n" + self.store_config(data_dir))
        daemon = Daemon(data_dir, ["--config", str(config)], listen=LISTEN)
        self.addCleanup(daemon.stop)
        return daemon


class PostgreSQLCrashCheck:
    """After the kill, on PostgreSQL: the killed daemon's sessions end."""

    assertEqual: Any

    async def check_after_crash(self, location: Path | str) -> None:
        """The killed daemon's sessions end (the server saw the sockets close) and none is left holding a transaction
        open, so nothing it had not committed survives and nothing it locked stays locked."""
        deadline = time.monotonic() + 20
        while True:
            [(left,)] = raw(
                location,
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            if not left or time.monotonic() > deadline:
                break
            await deferLater(reactor, 0.1)
        self.assertEqual(left, 0)


class PostgreSQLSCEPLoadTests(PostgreSQLCrashCheck, PostgreSQLStore, SCEPLoadTests):
    """Every SCEPLoadTests test again, the daemon on a PostgreSQL store."""


class PostgreSQLWorkersSCEPLoadTests(PostgreSQLCrashCheck, PostgreSQLStore, WorkersSCEPLoadTests):
    """The workers' burst and kill on PostgreSQL: every worker has its own pool of connections to one database."""
