"""Where numbers go: a JSONL metrics file, TensorBoard events, and progress lines on stderr.

Pure Python (layer 0); TensorBoard is written through `tensorboardX` when it is installed, and
Weights & Biases through `wandb` when a run asks for it (`report_to: [wandb]`).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tpt_jax import storage


class MetricsWriter:
    """Appends one JSON object per record to `path` and mirrors scalars to TensorBoard and, with
    `wandb` (keyword arguments for `wandb.init`), to Weights & Biases.

    Each record carries a `tag` ("eval", "train", …) and a `step`; numeric fields become
    scalars named `tag/field`. In W&B each tag has its own x axis, `tag/step` (a round for
    eval, an optimizer step for train), since one global step cannot order both. `enabled=False`
    (every process of a multi-process run but the first, which writes for all) drops every
    record.
    """

    def __init__(
        self,
        path: str | Path,
        tensorboard_dir: str | Path | None = None,
        *,
        enabled: bool = True,
        wandb: dict[str, Any] | None = None,
    ):
        self.path = storage.run_path(path)  # a local file or a gs:// object
        self.enabled = enabled
        self._tb = None
        self._wandb: Any = None
        self._wandb_tags: set[str] = set()
        if not enabled:
            return
        if wandb is not None:
            import wandb as wandb_lib  # Run checks it is installed before any work

            self._wandb = wandb_lib.init(**wandb)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._appender = storage.Appender(self.path)
        if tensorboard_dir is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional: the JSONL file has everything
                pass
            else:
                self._tb = SummaryWriter(str(tensorboard_dir), flush_secs=10)

    def write(self, tag: str, step: int, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"tag": tag, "step": step, "time": round(time.time(), 3), **fields}
        self._appender.append(json.dumps(record, default=_plain) + "\n")
        scalars = {
            f"{tag}/{key}": value
            for key, value in fields.items()
            if isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        }
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(name, value, step)
        if self._wandb is not None and scalars:
            if tag not in self._wandb_tags:
                self._wandb.define_metric(f"{tag}/step")
                self._wandb.define_metric(f"{tag}/*", step_metric=f"{tag}/step")
                self._wandb_tags.add(tag)
            self._wandb.log({f"{tag}/step": step, **scalars})

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class Progress:
    """A progress line for long work: done/total, a rate and an ETA.

    On a terminal the line redraws in place; in a log file (CI, a pod's stdout) it prints at
    most every `every_s` seconds, so logs stay readable.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "it",
        stream: TextIO | None = None,
        every_s: float = 10.0,
        initial: int = 0,
    ):
        self.label, self.total, self.unit = label, max(int(total), 0), unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() and os.environ.get("TERM") != "dumb"
        self.every_s = 0.2 if self.tty else every_s
        self.start = time.perf_counter()
        self.done = self.initial = initial  # work done before this process (a resumed run)
        self.extra = ""
        self._last = 0.0
        self._drawn: tuple[int, str] | None = None

    def update(self, advance: int = 1, extra: str = "") -> None:
        self.done += advance
        self.extra = extra or self.extra
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self._draw(now, final=False)

    def close(self, extra: str = "") -> None:
        self.extra = extra or self.extra
        self._draw(time.perf_counter(), final=True)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f"ETA {format_seconds(left)}" if self.done < self.total else "done"
        text = (
            f"{self.label}: {self.done}/{self.total} {self.unit} "
            f"[{format_seconds(elapsed)}, {rate:.2f} {self.unit}/s, {eta}]"
        )
        return f"{text} {self.extra}".rstrip()

    def _draw(self, now: float, final: bool) -> None:
        if final and not self.tty and self._drawn == (self.done, self.extra):
            return  # the last line printed already says everything
        self._drawn = (self.done, self.extra)
        text = self.line(now)
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
