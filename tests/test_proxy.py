"""End to end behind a real nginx (Debian's): TLS ends at nginx with a throwaway public CA's certificate, otad
listens on plain HTTP on 127.0.0.1 and trusts that proxy, and the fake device enrolls through it.

nginx runs the shipped example, etc/nginx/otad.conf, with its ports and certificate paths swapped.
The fake device connects from 127.0.0.2 and nginx from 127.0.0.1, so otad's logs can tell them apart.
"""

from __future__ import annotations

import functools
import plistlib
import shutil
import socket
import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests.daemon import ROOT, Daemon
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice, unwrap_signed
from tests.publicca import PublicCA

EXAMPLE = ROOT / "etc" / "nginx" / "otad.conf"
DEVICE_ADDRESS = "127.0.0.2"
STRANGER_ADDRESS = "127.0.0.3"


@functools.cache
def apple() -> FakeAppleHierarchy:
    return FakeAppleHierarchy.create()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (nginx cannot report an ephemeral port it bound)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise AssertionError(f"etc/nginx/otad.conf no longer has exactly one {old!r}: update tests/test_proxy.py with it")
    return text.replace(old, new)


class Nginx(ProcessProtocol):
    """A throwaway nginx in ``directory`` (its config, pid, logs and temp files all inside), in the foreground."""

    def __init__(self, directory: Path, site: str) -> None:
        binary = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
        if binary is None:
            raise AssertionError("nginx is not installed: apt-get install nginx (.ci/run does)")
        self.binary = binary
        self.directory = directory
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.running = False
        (directory / "site.conf").write_text(site)
        # user: workers drop root to nobody when the suite runs as root (CI does); ignored otherwise.
        (directory / "nginx.conf").write_text(
            f"""user nobody nogroup;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {directory}/client_body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    include {directory}/site.conf;
}}
"""
        )

    async def start(self, port: int) -> None:
        command = [self.binary, "-p", str(self.directory), "-c", "nginx.conf", "-e", "stderr", "-g", "daemon off;"]
        reactor.spawnProcess(self, command[0], command, env={"PATH": "/usr/sbin:/usr/bin:/bin"}, path=str(self.directory))
        self.running = True
        deadline = time.monotonic() + 15
        while True:
            if self.ended.called:
                raise AssertionError(f"nginx exited: {self.output.decode(errors='replace')}")
            try:
                connection = await TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1).connect(Factory.forProtocol(Protocol))
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not listen on {port}: {self.output.decode(errors='replace')}") from None
                await deferLater(reactor, 0.1, lambda: None)
                continue
            connection.transport.loseConnection()
            return

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        reason.trap(ProcessDone, ProcessTerminated)
        self.ended.callback(None)

    def stop(self) -> Deferred[None]:
        if self.running:
            self.transport.signalProcess("TERM")
        return self.ended


class BehindNginxTests(unittest.TestCase):
    timeout = 180

    async def setUpDaemonAndNginx(self) -> tuple[Daemon, int, bytes]:
        folder = Path(self.mktemp()).absolute()
        data_dir = folder / "data"
        data_dir.mkdir(parents=True)
        (folder / "anchors.pem").write_bytes(apple().anchors_pem())
        (folder / "otad.conf").write_text("[server]\ntrusted_proxies = 127.0.0.1\n")
        daemon = Daemon(
            data_dir,
            ("--config", str(folder / "otad.conf"), "--device-ca", str(folder / "anchors.pem")),
            listen="tcp:0:interface=127.0.0.1",
        )
        self.addCleanup(daemon.stop)
        await daemon.start()

        public = PublicCA.create()
        cert, key = public.issue(("localhost", "127.0.0.1"))
        nginx_dir = folder / "nginx"
        nginx_dir.mkdir()
        files = public.write_certbot_files(nginx_dir, cert, key)
        port = free_port()
        site = EXAMPLE.read_text()
        site = _replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
        site = _replace_once(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{daemon.port};")
        site = _replace_once(site, "/etc/letsencrypt/live/otad.example.com/fullchain.pem", str(files["fullchain"]))
        site = _replace_once(site, "/etc/letsencrypt/live/otad.example.com/privkey.pem", str(files["privkey"]))
        nginx = Nginx(nginx_dir, site)
        self.addCleanup(nginx.stop)
        await nginx.start(port)
        return daemon, port, public.root_pem()

    def device(self, port: int, trust: bytes, udid: str) -> FakeDevice:
        device = FakeDevice(reactor, f"https://localhost:{port}/", trust, apple(), udid, bind_address=DEVICE_ADDRESS)
        self.addCleanup(lambda: ensureDeferred(device.close()))
        return device

    def test_device_enrolls_through_nginx(self) -> None:
        """The fake device enrolls through nginx end to end (phase 1 over nginx's TLS, phase 2, SCEP, phase 3). otad logs the
        device's address with nginx as the proxy, builds every payload URL from the public scheme, host and port nginx
        forwarded, records a failed login under the device's address, and ignores headers the device forges through nginx."""

        async def run() -> None:
            daemon, port, public_root = await self.setUpDaemonAndNginx()
            otad_root = (daemon.data_dir / "certs" / "ca.pem").read_bytes()
            device = self.device(port, public_root + otad_root, "00008101-000A1B2C3D4E5F90")
            public_base = f"https://localhost:{port}"

            await device.fetch_ca()
            wrong = await device.request(b"GET", "/enroll", username="apple", password="not-the-password")
            self.assertEqual(wrong.code, 401)
            service = await device.enroll("apple", daemon.first_password)
            self.assertEqual(device.profile_url, f"{public_base}/profile")
            enrollment = await device.phase2(service["PayloadContent"]["Challenge"])
            scep = enrollment["PayloadContent"][0]
            self.assertEqual(scep["PayloadContent"]["URL"], f"{public_base}/scep")
            await device.scep_enroll(scep)
            outer, payloads = await device.phase3()
            self.assertEqual(outer["PayloadType"], "Configuration")
            self.assertEqual(payloads[1]["PayloadContent"]["URL"], f"{public_base}/scep")

            # Forged forwarding headers sent through nginx: it appends to X-Forwarded-For and replaces the others.
            forged = {
                b"x-forwarded-for": [b"203.0.113.9"],
                b"x-forwarded-proto": [b"http"],
                b"x-forwarded-host": [b"evil.example"],
                b"forwarded": [b"for=198.51.100.1;host=evil.example"],
            }
            tricked = await device.request(b"GET", "/enroll", headers=forged, username="apple", password=daemon.first_password)
            self.assertEqual(tricked.code, 200, tricked.body)
            content, _ = unwrap_signed(tricked.body, device.ca_certs)
            self.assertEqual(plistlib.loads(content)["PayloadContent"]["URL"], f"{public_base}/profile")

            log = daemon.output.decode("utf-8", "replace")
            for line in (
                "GET /CA 200 ok user=None from 127.0.0.2 ",
                "GET /enroll 401 refused (unknown user or wrong password) user=apple from 127.0.0.2 ",
                "GET /enroll 200 profile service sent user=apple from 127.0.0.2 ",
                "POST /profile 200 profile sent user=None from 127.0.0.2 ",
                "POST /scep 200 ",
            ):
                self.assertIn(line, log)
            self.assertNotIn("from 127.0.0.1 ", log)
            self.assertNotIn("from 203.0.113.9", log)
            self.assertIn("failed login for apple from 127.0.0.2", log)
            events, err, code = await getProcessOutputAndValue(
                str(Path(sys.executable).parent / "otad-admin"),
                ["--data-dir", str(daemon.data_dir), "events"],
                env={"PATH": "/usr/bin:/bin"},
            )
            self.assertEqual(code, 0, err)
            self.assertIn(b"login refused user=apple bad password or unknown user from 127.0.0.2", events)

        return ensureDeferred(run())

    def test_untrusted_client_headers_are_ignored(self) -> None:
        """The same forwarding headers sent straight to otad's plain-HTTP port by a client that is not a trusted proxy
        change nothing: its own address is logged, and X-Forwarded-Proto: https does not get a password accepted."""

        async def run() -> None:
            daemon, _, _ = await self.setUpDaemonAndNginx()
            agent = Agent(reactor, bindAddress=(STRANGER_ADDRESS, 0))
            headers = Headers(
                {
                    b"x-forwarded-for": [b"203.0.113.9"],
                    b"x-forwarded-proto": [b"https"],
                    b"x-forwarded-host": [b"evil.example"],
                    b"authorization": [b"Basic YXBwbGU6eA=="],
                }
            )
            response = await agent.request(b"GET", f"http://127.0.0.1:{daemon.port}/enroll".encode(), headers)
            body = await readBody(response)
            self.assertEqual((response.code, body), (403, b"use https: otad accepts passwords only over TLS\n"))
            response = await agent.request(b"GET", f"http://127.0.0.1:{daemon.port}/".encode(), headers)
            self.assertEqual(response.code, 200)
            await readBody(response)
            # The answer can arrive before the daemon's log line does.
            await daemon.wait_for(rb"GET / 200 ok user=None from 127\.0\.0\.3 ", 0)
            log = daemon.output.decode("utf-8", "replace")
            self.assertIn("GET /enroll 403 refused (use https: otad accepts passwords only over TLS) user=None from 127.0.0.3 ", log)
            self.assertNotIn("203.0.113.9", log)

        return ensureDeferred(run())
