"""Fault injection for the resume tests: `TPT_KILL_AT=think.chunk:2` makes the process kill
itself with SIGKILL (no cleanup, like a preempted VM) the 2nd time it reaches that point.

Pure Python (layer 0). Without the variable, `reached()` is a dictionary lookup and returns.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_seen: Counter[str] = Counter()


def reached(point: str) -> None:
    """Mark a named point (e.g. "think.chunk", "train.step"); dies there if told to."""
    target = os.environ.get("TPT_KILL_AT")
    if not target:
        return
    name, _, count = target.partition(":")
    if name != point:
        return
    _seen[point] += 1
    if _seen[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
