"""The verifier of the answer-graded tasks (arithmetic, gsm8k): a completion is right when the
number it answers equals the problem's reference answer under a grading mode (`grading.MODES`:
strict, the authors' rule; normalized; lenient). Pure Python.

It is the task plug-in protocol's `verify` with the optional third argument: a plug-in that
declares `GRADING_MODES` gets the configured mode (`prune.grading`, `eval.grading`), and EVAL
reports Pass@1 under each mode and the prior baseline (always the most common train answer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tpt_jax.grading import MODES, extract_answer, is_correct
from tpt_jax.tasks.base import Verdict

__all__ = ["GRADING_MODES", "answer_verifier", "verify"]

GRADING_MODES = MODES


def verify(text: str, problem: Mapping[str, Any], mode: str = "strict") -> Verdict:
    """`correct`, `wrong`, or `no_answer` (no answer found under `mode`)."""
    if extract_answer(text, mode) is None:
        return Verdict(False, "no_answer")
    right = is_correct(text, str(problem["answer"]), mode)
    return Verdict(right, "correct" if right else "wrong")


def answer_verifier(
    answers: Mapping[str, str],
) -> Callable[[Sequence[tuple[str, str]], str], list[Verdict]]:
    """A `verify_all(pairs, mode)` over reference answers by problem id: what PRUNE and EVAL
    use when no task is given (library calls on bare answers)."""

    def verify_all(pairs: Sequence[tuple[str, str]], mode: str) -> list[Verdict]:
        return [verify(text, {"answer": answers[pid]}, mode) for text, pid in pairs]

    return verify_all
