"""Summarises a py-spy raw (collapsed-stack) profile: where the samples go, by function, by otad module and by thread.

Run: .venv/bin/python bench/profile.py PROFILE.txt [--top 30]

Each line of the profile is ``frame;frame;...;frame COUNT``. A function's *total* is the samples in
which it is on the stack; its *self* is those in which it is the innermost frame. Idle threads
(waiting in epoll, a lock or a queue) are left out, so the shares are of work, not of wall time.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_IDLE = re.compile(
    r"\b(poll|doPoll|wait|_wait|get|select|acquire|sleep)\b.*(epollreactor|threading|queue|threadpool|_threadworker|selectors)"
)


def _function(frame: str) -> str:
    # py-spy frames look like "function (module/path.py:123)".
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{name} ({path.rsplit('site-packages/', 1)[-1]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    arguments = parser.parse_args()
    total: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    otad: Counter[str] = Counter()
    samples = 0
    for line in arguments.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if _IDLE.search(frames[-1]):
            continue
        count = int(count_text)
        samples += count
        threads[frames[0]] += count
        for function in {_function(frame) for frame in frames[1:]}:
            total[function] += count
        innermost[_function(frames[-1])] += count
        modules = {frame.split("(", 1)[1].split(":")[0] for frame in frames[1:] if re.search(r"[(/]otad/", frame)}
        for module in modules:
            otad[module.rsplit("otad/", 1)[1]] += count
    print(f"{samples} busy samples")
    print("\nby thread:")
    for thread, count in threads.most_common():
        print(f"  {count / samples:6.1%}  {thread}")
    print("\nby otad module on the stack:")
    for module, count in otad.most_common():
        print(f"  {count / samples:6.1%}  {module}")
    print(f"\ntop {arguments.top} functions by total (on the stack):")
    for function, count in total.most_common(arguments.top):
        print(f"  {count / samples:6.1%}  {function}")
    print(f"\ntop {arguments.top} functions by self (innermost):")
    for function, count in innermost.most_common(arguments.top):
        print(f"  {count / samples:6.1%}  {function}")


if __name__ == "__main__":
    main()
