"""Prices the password check: bcrypt checks per second on one core at each cost, as otad's checker runs them.

Run: .venv/bin/python bench/logins.py [--costs 10 11 12 13 14] [--seconds 3]

Each cost gets a hash made by ``otad.users.hash_password`` (what ``[auth] bcrypt_rounds`` writes)
and is checked with ``otad.users.check_password`` (what /enroll runs on its auth threads) in a
loop for about ``--seconds``; the figure is checks per CPU second of this process, so one auth
thread on an idle core does about that many logins per second.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otad import users  # noqa: E402


def checks_per_cpu_second(cost: int, seconds: float) -> tuple[float, int]:
    hashed = users.hash_password(b"a password of ordinary length", cost)
    count = 0
    started = time.process_time()
    while time.process_time() - started < seconds or count < 3:
        if not users.check_password(b"a password of ordinary length", hashed):
            raise RuntimeError("the check refused the right password")
        count += 1
    return count / (time.process_time() - started), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--costs", type=int, nargs="+", default=[4, 10, 11, 12, 13, 14])
    parser.add_argument("--seconds", type=float, default=3.0)
    arguments = parser.parse_args()
    print(f"{'cost':>4} {'ms per check':>13} {'logins/s per core':>18}  (checks timed)")
    for cost in arguments.costs:
        rate, count = checks_per_cpu_second(cost, arguments.seconds)
        print(f"{cost:>4} {1000 / rate:13.1f} {rate:18.1f}  ({count})")


if __name__ == "__main__":
    main()
