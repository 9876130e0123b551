"""Summarise a py-spy raw (collapsed-stack) profile: where the samples go.

    .venv/bin/python -m bench.profile_summary PROFILE.txt [--top 25]

Prints the share of samples per thread, the top functions by self time (the leaf
frame) and by inclusive time (anywhere on the stack), idle frames excluded.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# Leaves where a thread waits (py-spy --nonblocking cannot tell idle threads apart):
# dropped with --active so the shares are of the work done.
IDLE_LEAVES = (
    "Condition.wait (threading.py)",
    "EpollSelector.select (selectors.py)",
    "_worker (thread.py)",
    "_serve (_server.py)",
    "Event.wait (threading.py)",
    "sleep (tasks.py)",
)


def frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`."""
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    return f"{match.group(1)} ({Path(match.group(2)).name})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--active", action="store_true", help="drop samples of waiting threads")
    args = p.parse_args(argv)
    threads: Counter[str] = Counter()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        head = frames[0].split(": ", 1)[-1] if frames else "?"
        thread = re.sub(r"_\d+$", "_N", head)
        names = [frame_name(f) for f in frames[1:]] or ["?"]
        if args.active and names[-1] in IDLE_LEAVES:
            continue
        total += count
        threads[thread] += count
        self_t[names[-1]] += count
        for name in set(names):
            incl[name] += count
    print(f"samples: {total}")
    print("\nby thread:")
    for name, n in threads.most_common(8):
        print(f"  {n / total:6.1%}  {name}")
    print("\nself time:")
    for name, n in self_t.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")
    print("\ninclusive time:")
    for name, n in incl.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
