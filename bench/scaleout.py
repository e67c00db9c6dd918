"""Scale-out: several otad instances on one PostgreSQL behind haproxy, enrolling, then one SIGKILLed, then the database away.

Run: .venv/bin/python bench/scaleout.py [--instances 3] [--devices 30] [--concurrency 8] [--outage 5]

It starts a throwaway PostgreSQL cluster (tests/postgres.py, fsync on unless --no-fsync), the
instances (real ``twistd otad`` through tests/daemon.py, each with its own data directory, all
on one database, started at the same moment so one of them creates the shared CA) and an haproxy
from Debian in front of them (TCP mode passing TLS through, round-robin, HTTPS health checks
every 300 ms). Fake iPhones (tests/fakedevice.py, a new connection for every request) enroll
through haproxy in three rounds of --devices each: all instances up; one instance SIGKILLed
after a few enrollments of the round; PostgreSQL stopped for --outage seconds after a few
enrollments of the round. A step whose connection breaks or that gets 503 is retried the way a
device retries. Every fifth device also replays its phase-1 challenge and, with another key,
its SCEP challenge; both must be refused.

It prints the instances, the requests they logged (by status), enrollments per second per
round, the serials received, distinct and stored, what happened at the kill and during the
outage, and exits 1 if any enrollment failed, any answer was a 500, a replay was accepted, or
the store disagrees with a certificate a device received.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.defer import Deferred, ensureDeferred  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from bench.measure import percentile  # noqa: E402
from tests.fakeapple import FakeAppleHierarchy  # noqa: E402
from tests.postgres import Cluster  # noqa: E402
from tests.scaleout import HAPROXY, Fleet, Load, Tally, agreement, keys  # noqa: E402


def version(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


async def bench(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="otad-scaleout-"))
    cluster = Cluster(fsync=args.fsync)
    location = cluster.new_database()
    apple = FakeAppleHierarchy.create()
    fleet = Fleet(work, location, args.instances, apple, password="bench password", bcrypt_rounds=args.bcrypt_rounds)
    rounds = ("steady", "kill", "outage")
    total = args.devices * len(rounds)
    print(f"making {total * 2} RSA-2048 device keys ...", flush=True)
    made = await keys(total * 2)
    devices = [(f"00008101-{index:016X}", made[2 * index], made[2 * index + 1]) for index in range(total)]
    tally = Tally()
    load = Load(fleet, tally, replay_every=5)
    status = 0
    try:
        started = time.monotonic()
        await fleet.start()
        print(f"{args.instances} instances and haproxy up in {time.monotonic() - started:.1f} s", flush=True)
        results = []
        kill_at: list[float] = []
        outage: dict[str, float] = {}
        pending: list[Deferred[object]] = []
        victim = fleet.instances[1] if args.instances > 1 else fleet.instances[0]

        def kill(count: int) -> None:
            if count == args.devices + args.trigger and not kill_at:
                kill_at.append(time.monotonic())
                kill_at.append(count)
                pending.append(victim.stop(signal.SIGKILL))

        async def away() -> None:
            outage["stopped"] = time.monotonic()
            await deferToThread(cluster.stop)
            outage["down"] = time.monotonic()
            await task.deferLater(reactor, args.outage)
            await deferToThread(cluster.start)
            outage["back"] = time.monotonic()

        def take_the_database(count: int) -> None:
            if count == 2 * args.devices + args.trigger and not outage:
                pending.append(ensureDeferred(away()))

        for number, name in enumerate(rounds):
            load.on_enrolled = {"steady": lambda count: None, "kill": kill, "outage": take_the_database}[name]
            first = number * args.devices
            before = len(tally.enrolled)
            began = time.monotonic()
            await load.run(devices[first : first + args.devices], args.concurrency, first=first)
            seconds = time.monotonic() - began
            done = tally.enrolled[before:]
            durations = [item.seconds for item in done]
            results.append((name, len(done), seconds, durations))
            print(f"round {name}: {len(done)}/{args.devices} enrolled in {seconds:.1f} s", flush=True)
        for waiting in pending:
            await waiting

        codes = fleet.server_codes()
        found = await deferToThread(agreement, location, tally)
        per_instance = [sum(fleet.server_codes([instance]).values()) for instance in fleet.instances]
        print()
        print(f"instances: {args.instances} x twistd otad on {version([str(cluster.bin / 'postgres'), '--version'])}")
        print(f"           (fsync {'on' if args.fsync else 'off'}), behind {version([str(HAPROXY), '-v'])}")
        print(f"           TCP mode, TLS passed through, round-robin, HTTPS health checks every 300 ms; {args.concurrency} devices at once")
        print(
            f"requests:  {sum(codes.values())} logged by the instances ({' / '.join(map(str, per_instance))}); "
            + ", ".join(f"{code}: {count}" for code, count in sorted(codes.items()))
        )
        print(f"{'round':<8} {'enrolled':>8} {'seconds':>8} {'enroll/s':>9} {'p50 s':>7} {'p99 s':>7}")
        for name, count, seconds, durations in results:
            p50 = statistics.median(durations) if durations else 0.0
            p99 = percentile(durations, 0.99) if durations else 0.0
            print(f"{name:<8} {count:>8} {seconds:>8.1f} {count / seconds:>9.2f} {p50:>7.2f} {p99:>7.2f}")
        print(
            f"serials:   {found.received} received, {found.distinct_serials} distinct, {found.stored} in the store; "
            f"{len(found.missing)} missing, {len(found.different)} with other DER, {len(found.wrong_device)} bound elsewhere, "
            f"{len(found.not_received)} stored but never received; challenges used twice: {found.challenges_used_twice}; "
            f"replays refused: {tally.replays_refused}/{tally.replays}"
        )
        broken = sum(tally.broken.values())
        if kill_at:
            down = [at - kill_at[0] for at, line in fleet.balancer.changes if " is DOWN" in line] if fleet.balancer else []
            line = next((line for _, line in fleet.balancer.changes if " is DOWN" in line), "no DOWN line") if fleet.balancer else ""
            print(
                f"kill:      {victim.data_dir.name} SIGKILLed after {kill_at[1]:.0f} enrollments; haproxy marked it down "
                f"{down[0] * 1000:.0f} ms later" + (f' ("{line.split("] ")[-1][:110]}")' if down else "")
            )
            print(
                f"           {broken} requests whose connection broke were retried ("
                + ", ".join(f"{what} x{count}" for what, count in sorted(tally.broken.items()))
                + f"); phase 2 restarted from phase 1: {tally.restarts}; every enrollment of the round completed"
            )
        if outage:
            stopped, back = outage["stopped"], outage["back"]
            during = [at - stopped for at in tally.unavailable_at]
            after = [at - back for at in tally.succeeded_at if at > back]
            print(
                f"outage:    PostgreSQL stopped (fast shutdown) for {back - stopped:.1f} s; the devices got {tally.codes[503]} answers 503 "
                + (f"(from +{min(during):.1f} s to +{max(during):.1f} s after the stop)" if during else "")
                + f", the instances logged {codes.get(503, 0)}; 500s: {codes.get(500, 0)}"
            )
            print(
                "           first success after the restart: "
                + (f"+{min(after):.2f} s" if after else "none")
                + f"; unexpected errors in the instances' logs: {len(fleet.server_errors())}"
            )
        bad = (
            tally.failures
            or codes.get(500, 0)
            or tally.codes[500]
            or fleet.server_errors()
            or found.missing
            or found.different
            or found.wrong_device
            or found.not_received
            or found.challenges_used_twice
            or found.distinct_serials != found.received
            or tally.replays_refused != tally.replays
        )
        if bad:
            status = 1
            for failure in tally.failures[:5]:
                print(f"FAILED: {failure}")
            for error in fleet.server_errors()[:5]:
                print(f"SERVER: {error}")
    finally:
        await fleet.stop()
        cluster.destroy()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--devices", type=int, default=30, help="devices per round (three rounds)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--trigger", type=int, default=5, help="enrollments into a round before the kill / the outage")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds PostgreSQL stays stopped")
    parser.add_argument("--bcrypt-rounds", type=int, default=10)
    parser.add_argument("--no-fsync", dest="fsync", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep the instances' data directories")
    args = parser.parse_args()
    outcome: list[int] = []

    def run() -> Deferred[None]:
        done = ensureDeferred(bench(args))
        done.addCallback(outcome.append)
        done.addErrback(lambda failure: (failure.printTraceback(), outcome.append(2)))
        done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
        return done

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    sys.exit(outcome[0] if outcome else 2)


if __name__ == "__main__":
    main()
