"""
A small seeded fuzzing run against the real daemon over TLS, through the engine bench/fuzz.py uses (tests/fuzzing.py).

The run (200 inputs per endpoint, seed 20240611, 16 connections at once) happens once, in whichever test
comes first, and every test judges the same report. A failing test's message holds the result table and,
for each distinct failure, the function that raised and a reproducer; the daemon's log and the full inputs
are kept under the first test's temporary directory (``reproducers/``). For the full run, see bench/fuzz.py.
"""

from __future__ import annotations

import dataclasses
import json
import plistlib
import random
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.trial import unittest

from tests.fakeapple import self_signed_identity
from tests.fakedevice import sign_cms, to_ber_indefinite
from tests.fuzzing import (
    ENDPOINTS,
    BinaryPlist,
    FuzzOptions,
    FuzzReport,
    _ResponseReader,
    json_failures,
    mutate_asn1,
    parse_asn1,
    parse_tracebacks,
    run_fuzz,
)

OPTIONS = FuzzOptions(
    per_endpoint=200,
    seed=20240611,
    concurrency=16,
    timeout=5.0,
    # A slow sender sends one piece every 4 s; after 12 s still unanswered and connected, it counts as held.
    slow_seconds=12.0,
    slow_interval=4.0,
    # Replaying (and shrinking) every reproducer alone would double the run; bench/fuzz.py does it.
    replay=False,
)

_run: FuzzReport | Exception | None = None


class FuzzTests(unittest.TestCase):
    timeout = 300

    async def report(self) -> FuzzReport:
        """The shared run's report; the first test to ask runs it (about 50 s)."""
        global _run
        if _run is None:
            options = dataclasses.replace(OPTIONS, data_dir=Path(self.mktemp()).absolute())
            try:
                _run = await run_fuzz(reactor, options)
            except Exception as error:  # noqa: BLE001 - every test reports the same broken run
                _run = error
        if isinstance(_run, Exception):
            raise _run
        return _run

    @staticmethod
    def explain(report: FuzzReport, kinds: tuple[str, ...]) -> str:
        selected = dataclasses.replace(report, findings=[finding for finding in report.findings if finding.kind in kinds])
        return f"\n{report.table()}\n\ndaemon log and full inputs: {report.data_dir}\n\n{selected.findings_text(300)}\n{report.daemon_note}"

    async def test_every_endpoint_fuzzed(self) -> None:
        """Each of the seven endpoints (/, /CA, /enroll, /profile phases 2 and 3, /scep by GET and POST) got its 200 inputs (phase 3
        also the four state checks that follow them), and the daemon stayed up to the end."""
        report = await self.report()
        expected = [(endpoint, 204 if endpoint == "/profile phase 3" else 200) for endpoint in ENDPOINTS]
        self.assertEqual([(result.endpoint, result.inputs) for result in report.results], expected)
        self.assertEqual(report.daemon_note, "")

    async def test_seeds_accepted(self) -> None:
        """Before any mutation, the five seeds are each answered 200 as they are: the Basic auth header at /enroll, the phase-2 body, the
        phase-3 body after a full enrollment, a SCEP PKCSReq and a GetCertInitial (CertPoll)."""
        report = await self.report()
        self.assertEqual(len(report.seed_checks), 5, report.seed_checks)
        self.assertTrue(all(result.startswith("200") for result in report.seed_checks.values()), report.seed_checks)

    async def test_no_server_errors(self) -> None:
        """No fuzzed request to any endpoint is answered with a 5xx status."""
        report = await self.report()
        self.assertEqual(report.five_xx, 0, self.explain(report, ("traceback", "5xx")))

    async def test_no_tracebacks(self) -> None:
        """The daemon's output holds no "Traceback" and no "Unhandled Error" block, from any fuzzed request or from making the seeds."""
        report = await self.report()
        self.assertEqual(report.tracebacks, 0, self.explain(report, ("traceback",)))

    async def test_every_request_answered(self) -> None:
        """Every fuzzed request gets a response within 5 s: none is closed without one, none waits 5 s in vain, and no slow sender (one
        header line, body byte or request-line byte every 4 s) is still connected and unanswered after 12 s."""
        report = await self.report()
        self.assertEqual(report.unanswered, 0, self.explain(report, ("traceback", "closed", "unanswered")))


class FuzzEngineTests(unittest.TestCase):
    """The engine's own parsers and writers, without a daemon: if these are wrong, FuzzTests can pass for the wrong reason."""

    def test_response_reader_skips_interim_responses(self) -> None:
        """A 100 Continue is noted as interim and the 413 after it is the final status (its body is optional); non-HTTP is garbage."""
        reader = _ResponseReader()
        reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nab")
        self.assertEqual((reader.interim, reader.status, reader.done, reader.wants_body), ([100], 413, True, True))
        reader.feed(b"c")
        self.assertFalse(reader.wants_body)
        garbage = _ResponseReader()
        garbage.feed(b"\x15\x03\x03\x00\x02")
        self.assertTrue(garbage.garbage and garbage.done)

    def test_tracebacks_found_and_tied_to_clients(self) -> None:
        """Both twistd traceback shapes are found, with their raising function, and the JSON log ties each to its client address
        where it can: by the channel's log system, or by the 5xx request line that follows otad's "unexpected error"."""
        log = (
            "2026-01-01T00:00:00+0000 [otad.web#critical] unexpected error in /scep\n"
            "\tTraceback (most recent call last):\n"
            '\t  File "/x/otad/resources/scep.py", line 29, in query_parameter\n'
            '\t    return unquote(value.decode("latin-1")).encode("latin-1")\n'
            "\tbuiltins.UnicodeEncodeError: 'latin-1' codec can't encode character\n"
            "\t\n"
            "2026-01-01T00:00:00+0000 [otad.web#info] GET /scep 500 ok user=None 1.0ms\n"
            "2026-01-01T00:00:01+0000 [OtadChannel (BufferingTLSTransport),2,127.1.0.9] Unhandled Error\n"
            "\tTraceback (most recent call last):\n"
            '\t  File "/v/site-packages/twisted/web/http.py", line 302, in _parseContentType\n'
            '\t    msg["content-type"] = line.decode("charmap")\n'
            '\t  File "/p/lib/python3.11/email/policy.py", line 146, in header_store_parse\n'
            "\t    raise ValueError(\n"
            "\tbuiltins.ValueError: Header values may not contain linefeed or carriage return characters\n"
        )
        found = parse_tracebacks(log)
        self.assertEqual([traceback.exception_type for traceback in found], ["builtins.UnicodeEncodeError", "builtins.ValueError"])
        self.assertEqual(found[0].cause, "builtins.UnicodeEncodeError raised in otad/resources/scep.py query_parameter")
        self.assertEqual(found[1].project_frame, "twisted/web/http.py:302 _parseContentType")
        events = "\n".join(
            json.dumps(event)
            for event in (
                {"logger": "otad.web", "traceback": "T", "message": "unexpected error in /scep", "path": "/scep"},
                {"logger": "otad.web", "path": "/scep", "status": 500, "client": "127.1.0.7"},
                {"logger": "otad.web", "traceback": "T", "message": "while answering"},
                {"logger": "otad.web", "path": "/enroll", "status": 200, "client": "127.1.0.8"},
                {"logger": "log_legacy", "traceback": "T", "system": "OtadChannel (BufferingTLSTransport),2,127.1.0.9"},
            )
        )
        # "while answering" is not followed by its own request's log line, so it names nobody.
        self.assertEqual(json_failures(events), ["127.1.0.7", None, "127.1.0.9"])

    def test_binary_plist_writer(self) -> None:
        """The hand-made binary plist reads back with plistlib, including an array that contains itself."""
        plist = BinaryPlist()
        top = plist.reserve()
        loop = plist.reserve()
        plist.array([plist.text("x"), loop], at=loop)
        plist.strings_dict({"UDID": "00008030-00F0330000000001", "NAME": "\u2603"}, [("LOOP", loop)], at=top)
        value = plistlib.loads(plist.build(top))
        self.assertEqual((value["UDID"], value["NAME"]), ("00008030-00F0330000000001", "\u2603"))
        self.assertIs(value["LOOP"][1], value["LOOP"])

    def test_asn1_round_trip_and_mutations(self) -> None:
        """A BER SignedData (indefinite lengths) re-encodes to itself, and every ASN.1 mutation of it still yields bytes."""
        key = rsa.generate_private_key(65537, 1024)
        cert, _ = self_signed_identity("asn1", key=key)
        ber = to_ber_indefinite(sign_cms(b"<plist/>", cert, key, signed_attributes=None))
        self.assertEqual(b"".join(node.encode() for node in parse_asn1(ber)), ber)
        rng = random.Random(7)
        for _ in range(200):
            description, mutated = mutate_asn1(rng, ber)
            self.assertIsInstance(mutated, bytes, description)
