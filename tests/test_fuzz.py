"""
A small seeded fuzzing run against the real daemon over TLS, through the engine bench/fuzz.py uses (tests/fuzzing.py).

The run (200 inputs per endpoint, seed 20240611, 32 connections at once) happens once, in whichever test
comes first, and every test judges the same report. A failing test's message holds the result table and,
for each distinct failure, the function that raised and a reproducer; the daemon's log and the full inputs
are kept under the first test's temporary directory (``reproducers/``). For the full run, see bench/fuzz.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from tests.fuzzing import ENDPOINTS, FuzzOptions, FuzzReport, run_fuzz

OPTIONS = FuzzOptions(
    per_endpoint=200,
    seed=20240611,
    concurrency=32,
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
        """Each of the seven endpoints (/, /CA, /enroll, /profile phases 2 and 3, /scep by GET and POST) got 200 inputs, and the daemon
        stayed up to the end."""
        report = await self.report()
        self.assertEqual([(result.endpoint, result.inputs) for result in report.results], [(endpoint, 200) for endpoint in ENDPOINTS])
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
