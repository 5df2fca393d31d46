"""Fault injection for the reliability tests.

`TPT_KILL_AT=think.chunk:2` makes the process kill itself with SIGKILL (no cleanup, like a
preempted VM) the 2nd time it reaches that point. Points: "think.chunk", "train.step",
"checkpoint.write" (inside a checkpoint or train-state save: the step written, not yet
committed by Orbax's rename), "checkpoint.commit" (committed, the previous step not yet
deleted). With
`TPT_KILL_PROCESS=I` only process I of a multi-process run (`TPT_PROCESS_ID`, as
`launch/local.sh` sets it) dies: one host of a slice lost.

`TPT_NAN_AT=7,9` makes training's optimizer steps 7 and 9 (1-based, as logged) produce a NaN
loss and NaN gradients, as a numerical blow-up would.

Pure Python (layer 0). Without the variables, `reached()` is a dictionary lookup and returns.
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
    only = os.environ.get("TPT_KILL_PROCESS")
    if only is not None and only != os.environ.get("TPT_PROCESS_ID", "0"):
        return
    _seen[point] += 1
    if _seen[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def nan_steps() -> frozenset[int]:
    """The optimizer steps that `TPT_NAN_AT` poisons (empty without the variable)."""
    value = os.environ.get("TPT_NAN_AT", "").strip()
    try:
        return frozenset(int(s) for s in value.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"TPT_NAN_AT={value!r}: expected comma-separated step numbers") from None
