"""Run a command and report the peak memory of its whole process tree (all descendants).

    python scripts/peak_memory.py [--every 0.5] -- COMMAND ARGS...

Samples every process's proportional set size (PSS, /proc/PID/smaps_rollup: shared pages split
among their users, so the sum is not inflated) and prints the peak of the sum, with the command
line of the largest process at that moment, to stderr. Linux only. Exits with COMMAND's code.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(name))
    return tree


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    proc = subprocess.Popen(command)
    peak, peak_top = 0, ""
    while proc.poll() is None:
        tree, todo, total, top = _children(), [proc.pid], 0, (0, 0)
        while todo:
            pid = todo.pop()
            pss = _pss_kib(pid)
            total += pss
            top = max(top, (pss, pid))
            todo += tree.get(pid, [])
        if total > peak:
            peak, peak_top = total, f"{top[0] / 2**20:.2f} GiB in {_cmdline(top[1])}"
        time.sleep(args.every)
    print(
        f"peak memory of the process tree: {peak / 2**20:.2f} GiB (largest: {peak_top})",
        file=sys.stderr,
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
