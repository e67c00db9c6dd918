"""Measures SCEP issuance by the real daemon: certificates per second, request latency and server memory.

Run: .venv/bin/python bench/scep_issue.py --requests 200 --concurrency 16 [--tls] [--keys 10]
It starts ``twistd otad`` on a temporary data directory (tests/daemon.py), writes one static
challenge into its store, builds every PKCSReq before the clock starts (with the fake iPhone's
independent SCEP code, reusing a few 2048-bit keys), fires them with C in flight, and checks
every CertRep afterwards. The client runs on the same machine and competes for its cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from treq.client import HTTPClient  # noqa: E402
from twisted.internet import reactor as global_reactor  # noqa: E402
from twisted.internet import task  # noqa: E402
from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults  # noqa: E402
from twisted.internet.ssl import Certificate  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool  # noqa: E402
from twisted.web.http_headers import Headers  # noqa: E402

from bench.measure import cpu_seconds, percentile, process_status  # noqa: E402
from otad import tokens  # noqa: E402
from otad.store import Store  # noqa: E402
from tests.daemon import Daemon  # noqa: E402
from tests.fakeapple import self_signed_identity  # noqa: E402
from tests.fakedevice import (  # noqa: E402
    CONTENT_TYPE_PKI_MESSAGE,
    PKIRequest,
    build_pkcs_req,
    parse_cert_rep,
    select_scep_certs,
)

SUBJECT = [[["O", "Bench"]], [["CN", "bench"]]]


async def run(arguments: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="otad-bench-scep-")) / "data"
    data_dir.mkdir()
    listen = "ssl:0:interface=127.0.0.1" if arguments.tls else "tcp:0:interface=127.0.0.1"
    daemon = Daemon(data_dir, listen=listen)
    pool = HTTPConnectionPool(global_reactor, persistent=True)
    pool.maxPersistentPerHost = arguments.concurrency
    try:
        port = await daemon.start()
        assert daemon.transport is not None
        pid = daemon.transport.pid
        if arguments.tls:
            trust = Certificate.loadPEM((data_dir / "certs" / "ca.pem").read_bytes())
            agent = Agent(global_reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust), pool=pool)
            url = f"https://localhost:{port}/scep"
        else:
            agent = Agent(global_reactor, pool=pool)
            url = f"http://127.0.0.1:{port}/scep"
        http = HTTPClient(agent)

        response = await http.get(f"{url}?operation=GetCACert")
        recipient, ca_certs = select_scep_certs((response.headers.getRawHeaders(b"content-type") or [b""])[0], await response.content())
        warmup = min(arguments.warmup, arguments.requests)
        total = warmup + arguments.requests
        token, digest = tokens.mint()
        store = Store.open_existing(data_dir / "otad.sqlite")
        store.add_challenge(digest, "static", None, now=time.time(), ttl=24 * 3600, uses=total)
        store.close()

        def make_key(index: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
            return self_signed_identity(f"SCEP SIGNER {index}", key=rsa.generate_private_key(65537, 2048))

        identities = await gatherResults([deferToThread(make_key, index) for index in range(arguments.keys)])

        def build() -> list[tuple[PKIRequest, rsa.RSAPrivateKey]]:
            built = []
            for index in range(total):
                cert, key = identities[index % len(identities)]
                request = build_pkcs_req(key, cert, recipient, subject=SUBJECT, challenge=token, transaction_id=f"BENCH-{index:06d}")
                built.append((request, key))
            return built

        requests = await deferToThread(build)
        latencies: list[float] = []
        replies: list[tuple[PKIRequest, rsa.RSAPrivateKey, bytes]] = []

        async def one(request: PKIRequest, key: rsa.RSAPrivateKey, record: bool) -> None:
            started = time.perf_counter()
            answer = await http.post(
                f"{url}?operation=PKIOperation",
                data=request.der,
                headers=Headers({b"content-type": [CONTENT_TYPE_PKI_MESSAGE]}),
                timeout=120,
            )
            body = await answer.content()
            if answer.code != 200:
                raise RuntimeError(f"PKIOperation answered {answer.code}: {body[:200]!r}")
            if record:
                latencies.append(time.perf_counter() - started)
            replies.append((request, key, body))

        async def fire(batch: list[tuple[PKIRequest, rsa.RSAPrivateKey]], record: bool) -> None:
            semaphore = DeferredSemaphore(arguments.concurrency)

            def start(request: PKIRequest, key: rsa.RSAPrivateKey) -> Any:
                return ensureDeferred(one(request, key, record))

            await gatherResults([semaphore.run(start, request, key) for request, key in batch], consumeErrors=True)

        await fire(requests[:warmup], record=False)
        rss_before = process_status(pid)["VmRSS"]
        cpu_before = cpu_seconds(pid)
        client_before = cpu_seconds(os.getpid())
        started = time.perf_counter()
        await fire(requests[warmup:], record=True)
        elapsed = time.perf_counter() - started
        server_cpu = cpu_seconds(pid) - cpu_before
        client_cpu = cpu_seconds(os.getpid()) - client_before
        status = process_status(pid)

        def check() -> int:
            serials = {parse_cert_rep(body, ca_certs=ca_certs, request=request, key=key).serial_number for request, key, body in replies}
            return len(serials)

        distinct = await deferToThread(check)
        if distinct != total:
            raise RuntimeError(f"expected {total} distinct certificates, got {distinct}")
        count = arguments.requests
        print(
            f"requests={count} concurrency={arguments.concurrency} transport={'tls' if arguments.tls else 'tcp'} "
            f"keys={arguments.keys} warmup={warmup}"
        )
        print(f"  certificates/s  {count / elapsed:8.1f}   ({count} in {elapsed:.2f} s, all SUCCESS, distinct serials)")
        print(
            f"  latency ms      p50 {statistics.median(latencies) * 1000:7.1f}   p99 {percentile(latencies, 0.99) * 1000:7.1f}"
            f"   max {max(latencies) * 1000:7.1f}"
        )
        print(
            f"  CPU             server {server_cpu / count * 1000:5.1f} ms per certificate ({server_cpu / elapsed:.2f} cores), "
            f"client {client_cpu / elapsed:.2f} cores"
        )
        print(
            f"  server memory   VmRSS {status['VmRSS']} (before the timed run {rss_before})   VmHWM {status['VmHWM']}"
            f"   threads {status['Threads']}"
        )
    finally:
        await pool.closeCachedConnections()
        await daemon.stop()
        if not arguments.keep:
            shutil.rmtree(data_dir.parent, ignore_errors=True)
        else:
            print(f"  data directory kept: {data_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed PKCSReqs (default 200)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument("--keys", type=int, default=10, help="distinct 2048-bit client keys, reused round-robin (default 10)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests first (default 8)")
    parser.add_argument("--tls", action="store_true", help="listen on ssl (otad's default) rather than plain tcp")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    arguments = parser.parse_args()
    if arguments.requests < 1 or arguments.concurrency < 1 or arguments.keys < 1 or arguments.warmup < 0:
        parser.error("--requests, --concurrency and --keys must be positive, --warmup not negative")
    task.react(lambda _reactor: ensureDeferred(run(arguments)))


if __name__ == "__main__":
    main()
