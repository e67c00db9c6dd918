"""Fuzzes the real otad daemon over TLS with structure-aware mutations of valid enrollment messages.

Run: .venv/bin/python bench/fuzz.py [--per-endpoint 2000] [--seed 1] [--concurrency 16] [--timeout 5] [--data-dir DIR]

It starts its own ``twistd otad`` (tests/daemon.py) on 127.0.0.1 with ``--device-ca`` set to a fake Apple
hierarchy (tests/fakeapple.py), enrolls fake devices (tests/fakedevice.py) to get VALID seeds (a phase-2
body, a phase-3 body after a full enrollment, SCEP PKCSReq and GetCertInitial PKIMessages, a good Basic auth
header), then sends N mutations per endpoint over raw TLS sockets: byte flips, truncation, extension,
insertion; ASN.1-aware mutations (lengths, tags, duplicated, removed or deeply nested elements); plist-aware
mutations re-signed with the fake device's keys (malformed <date>, deep nesting, self-referencing binary
plists, huge strings, wrong types, control characters, CHALLENGE and UDID variants); SCEP messages
re-enveloped and re-signed; HTTP framing (bare LF, bad or missing Content-Length, chunked errors, Expect:
100-continue without a body, control bytes in headers, overlong lines, slow senders); /scep query strings;
Authorization headers for /enroll. The mutation engine is tests/fuzzing.py, shared with tests/test_fuzz.py.

For each endpoint it counts inputs, responses by status, 5xx, connections closed without a response, requests
unanswered within --timeout (and slow senders still connected after --slow-seconds), tracebacks in the
daemon's output, and the daemon's VmRSS before and after. Each connection comes from its own 127.x.y.z
address, which the daemon's JSON log records, so every traceback is tied to the input that caused it. At the
end it prints the table and, for each distinct failure (grouped by the function that raised), the smallest
input that showed it, replayed alone to confirm it; full inputs are kept in DATA_DIR/reproducers/. The exit
status is 1 when any 5xx, unanswered request, connection closed without a response or traceback was seen.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402

from tests.fuzzing import ENDPOINTS, FuzzOptions, FuzzReport, run_fuzz  # noqa: E402


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--per-endpoint", type=int, default=2000, metavar="N", help="inputs per endpoint (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="random seed: the same seed makes the same mutations (default 1)")
    parser.add_argument("--concurrency", type=int, default=16, metavar="C", help="connections in flight at once (default 16)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="how long to wait for an answer (default 5)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="empty directory for the daemon's state, its log and the reproducers (default: a new temporary directory, kept)",
    )
    parser.add_argument(
        "--slow-seconds", type=float, default=30.0, help="how long a slow sender trickles before it counts as held (default 30)"
    )
    parser.add_argument("--slow-interval", type=float, default=4.0, help="seconds between a slow sender's pieces (default 4)")
    parser.add_argument(
        "--endpoints",
        nargs="+",
        choices=ENDPOINTS,
        default=list(ENDPOINTS),
        metavar="ENDPOINT",
        help=f"which endpoints to fuzz (default all: {', '.join(repr(e) for e in ENDPOINTS)})",
    )
    parser.add_argument("--no-replay", action="store_true", help="do not replay each failure's reproducer alone at the end")
    parser.add_argument("--bytes", type=int, default=600, help="how many bytes of each reproducer to print (default 600)")
    return parser.parse_args(argv)


def progress(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def print_report(report: FuzzReport, byte_limit: int) -> None:
    options = report.options
    print(f"\ncommand: {report.command}")
    print(
        f"seed {options.seed}, {options.per_endpoint} inputs per endpoint, concurrency {options.concurrency}, "
        f"timeout {options.timeout:g} s, "
        f"slow senders {options.slow_seconds:g} s; {report.seconds:.0f} s in all; data directory {report.data_dir}"
    )
    print("seeds accepted as they are: " + "; ".join(f"{name}: {result}" for name, result in report.seed_checks.items()))
    print()
    print(report.table())
    if report.probes:
        print("\nstate checks after the phase-3 inputs, in this order:")
        for case, outcome in report.probes:
            print(f"  {case.description}: {outcome.summary()}")
    if report.daemon_note:
        print(f"\nTHE DAEMON DIED DURING THE RUN: {report.daemon_note}")
    if report.unowned_tracebacks:
        print(f"\n{report.unowned_tracebacks} traceback(s) were logged outside the endpoints' runs (see the findings)")
    if report.attribution_note:
        print(f"\nnote: {report.attribution_note}")
    print(f"\ndistinct failures ({len(report.findings)}):\n")
    print(report.findings_text(byte_limit))
    verdict = "FAIL" if report.failed else "PASS"
    print(f"\n{verdict}: {report.five_xx} 5xx, {report.unanswered} unanswered or closed without a response, {report.tracebacks} tracebacks")


def main(argv: list[str] | None = None) -> None:
    """Run, print the report and exit: 1 if anything failed (or the run itself broke), 0 if not."""
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    options = FuzzOptions(
        per_endpoint=arguments.per_endpoint,
        seed=arguments.seed,
        concurrency=arguments.concurrency,
        timeout=arguments.timeout,
        slow_seconds=arguments.slow_seconds,
        slow_interval=arguments.slow_interval,
        data_dir=arguments.data_dir,
        endpoints=tuple(arguments.endpoints),
        replay=not arguments.no_replay,
        progress=progress,
    )

    async def run(reactor: Any) -> None:
        report = await run_fuzz(reactor, options)
        report.command = shlex.join([sys.executable, *sys.argv])
        print_report(report, arguments.bytes)
        # task.react exits the process itself; SystemExit is how to give it the status.
        raise SystemExit(1 if report.failed else 0)

    task.react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
