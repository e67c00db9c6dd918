"""Scale-out end to end: three real otad instances on one PostgreSQL database behind a real haproxy, fake iPhones
enrolling through it concurrently, one instance SIGKILLed mid-load, then the database stopped for a few seconds."""

from __future__ import annotations

import functools
import signal
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from tests import postgres
from tests.fakeapple import FakeAppleHierarchy
from tests.scaleout import Fleet, Load, Tally, agreement, keys

STEADY, DURING_KILL, DURING_OUTAGE = 12, 18, 15
OUTAGE_SECONDS = 6


@functools.cache
def apple() -> FakeAppleHierarchy:
    return FakeAppleHierarchy.create()


class ScaleOutTests(unittest.TestCase):
    timeout = 600

    def test_three_instances_behind_haproxy(self) -> Deferred[None]:
        """Every enrollment completes, each device's steps spread over the instances; after SIGKILL of one instance
        haproxy marks it down and the other two carry on; with PostgreSQL stopped for 6 s the instances answer 503
        (never 500) and recover by themselves. At the end: no duplicate serial, no challenge used twice (replays of
        both kinds of challenge refused whichever instance got them), and the store holds exactly the certificates
        the devices received, each with the DER they got and bound to their UDID."""

        async def run() -> None:
            cluster = postgres.cluster()
            location = cluster.new_database()
            base = Path(self.mktemp()).absolute()
            base.mkdir(parents=True)
            fleet = Fleet(base, location, 3, apple(), password="correct horse battery", bcrypt_rounds=4)
            self.addCleanup(lambda: ensureDeferred(fleet.stop()))
            total = STEADY + DURING_KILL + DURING_OUTAGE
            made = await keys(total * 2)
            devices = [(f"00008101-{index:016X}", made[2 * index], made[2 * index + 1]) for index in range(total)]
            await fleet.start()
            tally = Tally()
            load = Load(fleet, tally, replay_every=5)

            # Steady: all three instances.
            await load.run(devices[:STEADY], concurrency=6)
            self.assertEqual(tally.failures, [])
            self.assertEqual(len(tally.enrolled), STEADY)
            per_instance = [instance.output.count(b"POST /profile 200") for instance in fleet.instances]
            self.assertTrue(all(per_instance), f"every instance answers phase 2 or 3 of some device: {per_instance}")

            # SIGKILL of one instance in the middle of a burst.
            victim = fleet.instances[1]
            kills: list[Deferred[int | None]] = []

            def kill(count: int) -> None:
                if count == STEADY + 4 and not kills:
                    kills.append(victim.stop(signal.SIGKILL))

            load.on_enrolled = kill
            await load.run(devices[STEADY : STEADY + DURING_KILL], concurrency=6, first=STEADY)
            await kills[0]
            self.assertIsNone(victim.exit_code, "the instance must have died by the signal")
            assert fleet.balancer is not None
            self.assertTrue(any("otad2 is DOWN" in line for _, line in fleet.balancer.changes), fleet.balancer.output)
            self.assertEqual(tally.failures, [])
            self.assertEqual(len(tally.enrolled), STEADY + DURING_KILL)

            # PostgreSQL stopped for a few seconds while devices enroll.
            outages: list[Deferred[None]] = []

            async def take_the_database_away() -> None:
                await deferToThread(cluster.stop)
                await deferLater(reactor, OUTAGE_SECONDS)
                await deferToThread(cluster.start)

            def outage(count: int) -> None:
                if count == STEADY + DURING_KILL + 2 and not outages:
                    outages.append(ensureDeferred(take_the_database_away()))

            load.on_enrolled = outage
            await load.run(devices[STEADY + DURING_KILL :], concurrency=6, first=STEADY + DURING_KILL)
            await outages[0]
            self.assertEqual(tally.failures, [])
            self.assertEqual(len(tally.enrolled), total)
            self.assertGreater(tally.codes[503], 0, "the outage must have been seen as 503")
            self.assertEqual(tally.codes[500], 0)
            self.assertEqual(fleet.server_errors(), [])
            self.assertGreater(fleet.server_codes()[503], 0)

            found = await deferToThread(agreement, location, tally)
            self.assertEqual((found.missing, found.different, found.wrong_device, found.not_received), ([], [], [], []))
            self.assertEqual((found.received, found.distinct_serials, found.stored), (total, total, total))
            self.assertEqual(found.challenges_used_twice, 0)
            self.assertGreater(tally.replays, 0)
            self.assertEqual(tally.replays_refused, tally.replays)

        return ensureDeferred(run())
