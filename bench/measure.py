"""What the benchmarks read about a process from /proc, and how they summarise latencies."""

from __future__ import annotations

import math
import os
from pathlib import Path


def process_status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status (VmRSS, VmHWM, Threads, ...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def _stat_seconds(stat_text: str) -> float:
    after_name = stat_text.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (all its threads)."""
    return _stat_seconds(Path(f"/proc/{pid}/stat").read_text())


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds: otad's main thread is its reactor thread."""
    main, others = 0.0, 0.0
    for task_dir in Path(f"/proc/{pid}/task").iterdir():
        seconds = _stat_seconds((task_dir / "stat").read_text())
        if task_dir.name == str(pid):
            main = seconds
        else:
            others += seconds
    return main, others


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of fewer than 100 samples is the maximum)."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]
