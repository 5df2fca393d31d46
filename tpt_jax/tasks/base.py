"""The record every task's problems share, and the list a loader returns. Pure Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Problem", "ProblemList", "Verdict"]


@dataclass(frozen=True)
class Problem:
    """One problem with a known answer."""

    id: str  # stable and unique within a split: "gsm8k/train/42", "arith/test/L2/3f9c0a1b2d4e"
    question: str
    answer: str  # the reference answer as grading's strict mode compares it ("1080")
    solution: str  # worked solution, no <<...>> annotations, last line "#### <answer>"
    level: int | None = None  # arithmetic steps of a generated problem; None for GSM8K


@dataclass(frozen=True)
class Verdict:
    """What a task's verifier says of one completion."""

    correct: bool
    reason: str  # correct, wrong, no_answer, timeout, ... (the task's words)

    @property
    def unanswered(self) -> bool:
        """No answer to grade (no number, no program): counted as an extraction failure."""
        return self.reason in ("no_answer", "no_program")


class ProblemList(list):
    """A ``list`` of :class:`Problem` that also says how many bad rows a loader skipped."""

    skipped: int
    skip_reasons: list[str]
    source: dict[str, Any]  # what was read: {"path", "bytes", "sha256"} or {"hf", "split", ...}

    def __init__(
        self,
        problems: Sequence[Problem] = (),
        skip_reasons: Sequence[str] = (),
        source: dict[str, Any] | None = None,
    ):
        super().__init__(problems)
        self.skip_reasons = list(skip_reasons)
        self.skipped = len(self.skip_reasons)
        self.source = dict(source or {})
