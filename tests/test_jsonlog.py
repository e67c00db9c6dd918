"""``[server] json_log``: one JSON object per line with time, level, message, logger and the event's own fields
from an allow-list, no Twisted internals and no secrets; and failed logins logged and recorded as refusals."""

from __future__ import annotations

import base64
import datetime
import functools
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest

from otad.jsonlog import JSONLinesObserver, as_json
from tests.daemon import Daemon
from tests.fakeapple import FakeAppleHierarchy
from tests.fakedevice import FakeDevice
from tests.helpers import MemorySite

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UDID = "00008030-00C0FFEE00C0FFEE"


@functools.cache
def apple() -> FakeAppleHierarchy:
    return FakeAppleHierarchy.create()


def _events() -> tuple[Logger, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    return Logger(namespace="otad.test", observer=seen.append), seen


class JSONLineTests(unittest.TestCase):
    def test_shape(self) -> None:
        """A line has time (ISO 8601 UTC, milliseconds, Z), level, message (the formatted text) and logger, then the
        event's allowed fields; values JSON cannot hold become strings."""
        log, seen = _events()
        log.info("{method} {path} {status}", method="GET", path=Path("/enroll"), status=401, ms=1.5, serial=b"\x01\x02", client="::1")
        seen[0]["log_time"] = datetime.datetime(2026, 11, 24, 12, 0, 1, 234567, tzinfo=datetime.UTC).timestamp()
        line = as_json(seen[0])
        self.assertNotIn("\n", line)
        record = json.loads(line)
        self.assertEqual(
            record,
            {
                "time": "2026-11-24T12:00:01.234Z",
                "level": "info",
                "message": "GET /enroll 401",
                "logger": "otad.test",
                "method": "GET",
                "path": "/enroll",
                "status": 401,
                "ms": 1.5,
                "serial": "b'\\x01\\x02'",
                "client": "::1",
            },
        )

    def test_allow_list(self) -> None:
        """Fields that are not on the allow-list (a password, a challenge, a key, any new field) and Twisted's
        log_* internals never reach the line, even when the message itself is harmless."""
        log, seen = _events()
        log.warn(
            "login for {user}",
            user="alice",
            password="hunter2-secret",
            challenge="CHALLENGE-TOKEN-123",
            key="-----BEGIN PRIVATE KEY-----",
            first_password="first-secret",
            anything_new="x",
        )
        record = json.loads(as_json(seen[0]))
        self.assertEqual(set(record), {"time", "level", "message", "logger", "user"})
        self.assertEqual(record["level"], "warn")
        line = as_json(seen[0])
        for secret in ("hunter2-secret", "CHALLENGE-TOKEN-123", "PRIVATE KEY", "first-secret", "log_", "__class_uuid__"):
            self.assertNotIn(secret, line)

    def test_failures(self) -> None:
        """log.failure adds the error in one line and the traceback; Twisted's legacy "Unhandled Error" events too,
        with the connection they name as system."""
        log, seen = _events()
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.failure("unexpected error in {path}", path="/scep")
        record = json.loads(as_json(seen[0]))
        self.assertEqual((record["level"], record["message"], record["path"]), ("critical", "unexpected error in /scep", "/scep"))
        self.assertEqual(record["error"], "ValueError: bad\\x0athing")
        self.assertIn("Traceback", record["traceback"])
        self.assertIn('raise ValueError("bad\\nthing")', record["traceback"])
        legacy = {
            "failure": Failure(RuntimeError("boom")),
            "isError": 1,
            "log_format": "{log_text}",
            "log_text": "Unhandled Error",
            "log_system": "OtadChannel (TLS),2,127.0.0.1",
            "log_namespace": "log_legacy",
            "log_level": LogLevel.critical,
            "log_time": 0.0,
        }
        record = json.loads(as_json(legacy))
        self.assertEqual(
            (record["system"], record["error"], record["time"]),
            ("OtadChannel (TLS),2,127.0.0.1", "RuntimeError: boom", "1970-01-01T00:00:00.000Z"),
        )
        self.assertNotIn("isError", record)

    def test_failed_login_is_a_refusal_with_name_and_address(self) -> None:
        """A wrong password at /enroll is logged as outcome refused with the name tried (escaped) and the client
        address, both by the login check and in the request's own line, and is recorded in the event log."""
        memory = MemorySite(Path(self.mktemp()))
        self.addCleanup(memory.close)
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        name = b"\x1b[31mmallory"
        auth = {b"authorization": [b"Basic " + base64.b64encode(name + b":guess-Pa55word")]}
        code, _, _ = self.successResultOf(ensureDeferred(memory.fetch("GET", "/enroll", headers=auth)))
        self.assertEqual(code, 401)
        records = [json.loads(line) for line in stream.getvalue().splitlines()]
        [check] = [record for record in records if record["message"].startswith("failed login")]
        self.assertEqual(check["message"], "failed login for \\x1b[31mmallory from 127.0.0.1: bad password or unknown user")
        self.assertEqual((check["outcome"], check["user"], check["client"]), ("refused", "\\x1b[31mmallory", "127.0.0.1"))
        [request] = [record for record in records if record.get("path") == "/enroll"]
        self.assertEqual(
            {key: request[key] for key in ("method", "status", "outcome", "reason", "user", "client", "logger")},
            {
                "method": "GET",
                "status": 401,
                "outcome": "refused",
                "reason": "unknown user or wrong password",
                "user": "\\x1b[31mmallory",
                "client": "127.0.0.1",
                "logger": "otad.web",
            },
        )
        self.assertEqual(
            request["message"],
            "GET /enroll 401 refused (unknown user or wrong password) user=\\x1b[31mmallory from 127.0.0.1 " + f"{request['ms']}ms",
        )
        self.assertNotIn("guess-Pa55word", stream.getvalue())
        self.assertNotIn("\x1b", stream.getvalue())
        [event] = [event for event in memory.events() if event.kind == "login"]
        self.assertEqual((event.outcome, event.user), ("refused", "\\x1b[31mmallory"))
        self.assertIn("from 127.0.0.1", event.reason)

    def test_throttled_login_is_logged_not_recorded(self) -> None:
        """A login refused by throttling is logged as refused with the name and the address, but writes no event."""
        memory = MemorySite(Path(self.mktemp()), failures_per_user=1)
        self.addCleanup(memory.close)
        auth = {b"authorization": [b"Basic " + base64.b64encode(b"alice:wrong")]}
        code, _, _ = self.successResultOf(ensureDeferred(memory.fetch("GET", "/enroll", headers=auth)))
        self.assertEqual(code, 401)
        stream = io.StringIO()
        observer = JSONLinesObserver(stream)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        code, _, _ = self.successResultOf(ensureDeferred(memory.fetch("GET", "/enroll", headers=auth)))
        self.assertEqual(code, 429)
        records = [json.loads(line) for line in stream.getvalue().splitlines()]
        [throttled] = [record for record in records if record.get("reason") == "throttled"]
        self.assertEqual((throttled["outcome"], throttled["user"], throttled["client"]), ("refused", "alice", "127.0.0.1"))
        self.assertEqual(len([event for event in memory.events() if event.kind == "login"]), 1)


class JSONLogDaemonTests(unittest.TestCase):
    timeout = 180

    def test_enrollment_log(self) -> None:
        """The real daemon with json_log, through a wrong password and a whole SCEP enrollment: every line parses
        with json.loads and has the four common keys and no Twisted internals; the requests, the phases and the
        issued certificate are there with their fields; neither the password, nor the phase-1 challenge, nor either
        SCEP challenge appears anywhere in the file; and `otad-admin events` shows the failed login."""

        async def run() -> None:
            data_dir = Path(self.mktemp()).absolute()
            data_dir.mkdir()
            (data_dir / "anchors.pem").write_bytes(apple().anchors_pem())
            log_file = data_dir / "otad.jsonl"
            (data_dir / "otad.conf").write_text(f"[server]\njson_log = {log_file}\n")
            daemon = Daemon(data_dir, ("--device-ca", str(data_dir / "anchors.pem"), "--config", str(data_dir / "otad.conf")))
            self.addCleanup(daemon.stop)
            await daemon.start()
            password = daemon.first_password
            assert password is not None
            device = FakeDevice(reactor, daemon.url("/"), (data_dir / "certs" / "ca.pem").read_bytes(), apple(), UDID)
            self.addCleanup(lambda: ensureDeferred(device.close()))
            wrong = await daemon.client().get(daemon.url("/enroll"), auth=("eve", "not-" + password))
            self.assertEqual(wrong.code, 401)
            await wrong.content()
            service = await device.enroll("apple", password)
            challenge = service["PayloadContent"]["Challenge"]
            profile = await device.phase2(challenge)
            scep_challenge = profile["PayloadContent"][0]["PayloadContent"]["Challenge"]
            cert = await device.scep_enroll(profile["PayloadContent"][0])
            _, payloads = await device.phase3()
            template_challenge = payloads[1]["PayloadContent"]["Challenge"]
            await daemon.stop()

            text = log_file.read_text()
            records = [json.loads(line) for line in text.splitlines()]
            self.assertGreater(len(records), 10)
            for record in records:
                self.assertTrue({"time", "level", "message", "logger"} <= set(record), record)
                self.assertRegex(record["time"], TIME)
                self.assertIn(record["level"], ("debug", "info", "warn", "error", "critical"))
                self.assertFalse([key for key in record if key.startswith(("log_", "__"))], record)
            for secret in (password, challenge, scep_challenge, template_challenge):
                self.assertGreaterEqual(len(secret), 16)
                self.assertNotIn(secret, text)
            self.assertNotIn("PRIVATE KEY", text)

            requests = [record for record in records if record["logger"] == "otad.web" and "status" in record]
            by_path = [(record["method"], record["path"], record["status"]) for record in requests]
            self.assertIn(("GET", "/enroll", 401), by_path)
            self.assertIn(("GET", "/enroll", 200), by_path)
            self.assertEqual(by_path.count(("POST", "/profile", 200)), 2)
            self.assertIn(("POST", "/scep", 200), by_path)
            for record in requests:
                self.assertEqual(record["client"], "127.0.0.1")
                self.assertIsInstance(record["ms"], float)
                self.assertIn(
                    record["outcome"],
                    ("ok", "refused", "error", "profile service sent", "profile sent", "GetCACaps", "GetCACert", "PKIOperation"),
                )
            [refused] = [record for record in requests if record["status"] == 401]
            self.assertEqual((refused["outcome"], refused["user"]), ("refused", "eve"))
            [ok] = [record for record in requests if (record["path"], record["status"]) == ("/enroll", 200)]
            self.assertEqual(ok["user"], "apple")
            phases = {record.get("phase") for record in records if record.get("udid") == UDID}
            self.assertTrue(phases >= {2, 3}, phases)
            serial = format(cert.serial_number, "x")
            self.assertTrue([record for record in records if record.get("serial") == serial and record.get("outcome") == "issued"])

            admin = Path(sys.executable).parent / "otad-admin"
            out, err, code = await getProcessOutputAndValue(str(admin), ["events", "--json", "--data-dir", str(data_dir)], reactor=reactor)
            self.assertEqual(code, 0, err)
            logins = [event for event in json.loads(out) if event["kind"] == "login"]
            self.assertEqual([(event["outcome"], event["user"]) for event in logins], [("refused", "eve")])
            self.assertIn("from 127.0.0.1", logins[0]["reason"])

        return ensureDeferred(run())
