"""Measures the latency of one store write transaction (a challenge plus an event), as otad commits it.

Run: .venv/bin/python bench/store_write.py [N]. It compares synchronous=FULL (otad's choice)
with NORMAL, and prints p50/p99/max in milliseconds, to show why writes go to a thread.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from otad import tokens  # noqa: E402
from otad.store import Store  # noqa: E402


def measure(synchronous: str, count: int) -> list[float]:
    directory = Path(tempfile.mkdtemp(prefix="otad-bench-"))
    store = Store.open(directory / "otad.sqlite")
    store._db.execute(f"PRAGMA synchronous={synchronous}")
    samples = []
    for index in range(count):
        _, digest = tokens.mint()
        started = time.perf_counter()
        with store.transaction():
            store.add_challenge(digest, "enroll", "bench", now=float(index), ttl=900)
            store.record_event(now=float(index), kind="enroll", outcome="challenge issued", user="bench")
        samples.append((time.perf_counter() - started) * 1000)
    store.close()
    return samples


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    for mode in ("FULL", "NORMAL"):
        samples = sorted(measure(mode, count))
        p50 = statistics.median(samples)
        p99 = samples[int(len(samples) * 0.99) - 1]
        print(f"synchronous={mode:6} n={count} p50={p50:.3f}ms p99={p99:.3f}ms max={samples[-1]:.3f}ms")


if __name__ == "__main__":
    main()
