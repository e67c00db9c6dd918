"""What the benchmarks share: what they read about a process from /proc, how they summarise latencies, and the
``--set SECTION.KEY=VALUE`` option that writes a setting into the daemon's config."""

from __future__ import annotations

import argparse
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


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a supervisor and its workers), from /proc/PID/task/*/children."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task_dir in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending.extend(int(child) for child in (task_dir / "children").read_text().split())
            except FileNotFoundError:
                continue
    return found


def tree_thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(reactor threads, all other threads) CPU seconds over ``pid`` and its descendants: each process's main thread runs its reactor."""
    main, others = 0.0, 0.0
    for member in process_tree(pid):
        try:
            member_main, member_others = thread_cpu_seconds(member)
        except FileNotFoundError:
            continue
        main += member_main
        others += member_others
    return main, others


def tree_rss_kilobytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in kB (VmRSS summed)."""
    total = 0
    for member in process_tree(pid):
        try:
            total += int(process_status(member)["VmRSS"].split()[0])
        except (FileNotFoundError, KeyError):
            continue
    return total


def openssl_speed(*algorithms: str, seconds: int = 1) -> dict[str, float]:
    """Milliseconds per private-key operation on this machine, from ``openssl speed`` (``rsa2048`` sign, ``ecdhx25519`` ...)."""
    import subprocess

    output = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), *algorithms], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    costs: dict[str, float] = {}
    for line in output:
        words = line.split()
        if not words:
            continue
        # "rsa 2048 bits 0.000317s 0.000009s 3154.9 109234.6" and "253 bits ecdh (X25519) 0.0000s 21000.0"
        if words[0] == "rsa" and len(words) >= 5 and words[1].isdigit():
            costs[f"rsa{words[1]}"] = float(words[3].rstrip("s")) * 1000
        elif "ecdh" in words and words[-1].replace(".", "").isdigit():
            name = line[line.index("(") + 1 : line.index(")")].lower()
            costs[f"ecdh{name}"] = 1000 / float(words[-1])
        elif len(words) > 3 and "ecdsa" in words and words[-2].replace(".", "").isdigit():
            name = line[line.index("(") + 1 : line.index(")")].lower()
            costs[f"ecdsa{name}"] = 1000 / float(words[-2])
    return costs


def setting(text: str) -> tuple[str, str, str]:
    """'server.crypto_threads=4' -> ('server', 'crypto_threads', '4')."""
    name, equals, value = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not equals or not dot or not section or not key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    return section, key.strip(), value.strip()
