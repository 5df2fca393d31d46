"""EVAL: Pass@1 / Pass@k with confidence intervals, greedy accuracy, extraction failures.

Pass@1 is the mean per-sample accuracy; Pass@k is the unbiased estimator
1 − C(n−c, k)/C(n, k) averaged over problems. The 95% interval of Pass@1 treats problems as the
unit of sampling (samples of one problem are correlated): mean ± 1.96 · sd(per-problem
accuracy) / √P. Greedy accuracy gets a Wilson interval.

The prior baseline is what a model that knows nothing about the question scores: always answer
the reference answer most common in the TRAIN split (as the grading mode tells answers apart),
graded on the same test problems in the same mode, with its interval in the same style as
Pass@1's. A Pass@1 near it means the model may have learnt the answer distribution, not the
arithmetic.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tpt_jax import storage
from tpt_jax.api import ModelHandle
from tpt_jax.config import EvalConfig
from tpt_jax.distributed import is_primary
from tpt_jax.engine import SamplingParams
from tpt_jax.grading import MODES, is_correct, mean_pass_at_k
from tpt_jax.report import answer_key, answer_order
from tpt_jax.stats import mean_ci, wilson
from tpt_jax.tasks.answers import answer_verifier
from tpt_jax.think import EncodedPrompts, sample_to_file

# ((text, problem id) pairs, grading mode) -> their verdicts, in order (Plugin.verify_all)
Verifier = Callable[[Sequence[tuple[str, str]], str], Sequence[Any]]


def grade(
    records: Sequence[Mapping[str, Any]],
    answers: Mapping[str, str],
    mode: str,
    verify: Verifier | None = None,
) -> dict:
    """Per-problem (n, c) counts and the failure tallies of one set of samples; `verify` (the
    task's verify_all) judges them, by default by their answers under `mode`."""
    counts: dict[str, list[int]] = {}
    unextracted = cut = tokens = 0
    verify = verify or answer_verifier(answers)
    verdicts = verify([(r["text"], r["problem_id"]) for r in records], mode)
    for r, verdict in zip(records, verdicts, strict=True):
        n_c = counts.setdefault(r["problem_id"], [0, 0])
        n_c[0] += 1
        n_c[1] += verdict.correct
        unextracted += verdict.unanswered
        cut += r["finish_reason"] == "length"
        tokens += r["n_tokens"]
    total = max(len(records), 1)
    return {
        "counts": {pid: tuple(nc) for pid, nc in counts.items()},
        "extraction_failure_rate": unextracted / total,
        "cut_rate": cut / total,
        "mean_tokens": tokens / total,
    }


def _mean_accuracy(graded: dict) -> float:
    counts = list(graded["counts"].values())
    return statistics.fmean(c / n for n, c in counts) if counts else 0.0


def prior_answer(train_answers: Iterable[str], mode: str) -> tuple[str, int] | None:
    """The most common train reference answer under `mode`'s notion of equal answers, and how
    many train problems have it; ties go to the smallest number, then the smallest string, so
    the same data always gives the same answer. None for no train answers."""
    counts = Counter(answer_key(a, mode) for a in train_answers)
    if not counts:
        return None
    best = min(counts.items(), key=lambda kv: (-kv[1], answer_order(kv[0])))
    return best[0], best[1]


def prior_baseline(
    train_answers: Sequence[str], answers: Mapping[str, str], problem_ids: Iterable[str], mode: str
) -> dict[str, Any] | None:
    """Pass@1 of always answering the prior answer on `problem_ids`, graded as a model's output
    `#### <answer>` would be (so exactly like the samples), with Pass@1's style of interval."""
    prior = prior_answer(train_answers, mode)
    if prior is None:
        return None
    answer, train_count = prior
    outcomes = [float(is_correct(f"#### {answer}", answers[p], mode)) for p in problem_ids]
    pass1, low, high = mean_ci(outcomes) if outcomes else (0.0, 0.0, 0.0)
    return {
        "answer": answer,
        "train_count": train_count,  # train problems with this answer
        "train_problems": len(train_answers),
        "problems": len(outcomes),
        "correct": int(sum(outcomes)),
        "pass_at_1": pass1,
        "pass_at_1_ci95": [low, high],
    }


def summarize(
    sampled: Sequence[Mapping[str, Any]],
    greedy: Sequence[Mapping[str, Any]],
    answers: Mapping[str, str],
    config: EvalConfig,
    *,
    train_answers: Sequence[str] | None = None,
    verify: Verifier | None = None,
    modes: Sequence[str] = MODES,
) -> dict[str, Any]:
    """The numbers of one evaluation (what `summary.json` and `tpt report` show). With
    `train_answers` (the train split's reference answers) it adds `prior_baseline`; `modes`
    are the grading modes the task's verifier knows (none: no `pass_at_1_by_mode`)."""
    graded = grade(sampled, answers, config.grading, verify)
    counts = list(graded["counts"].values())
    accuracy = [c / n for n, c in counts]
    pass1, low, high = mean_ci(accuracy) if counts else (0.0, 0.0, 0.0)
    out: dict[str, Any] = {
        "problems": len(counts),
        "samples_per_problem": config.n,
        "temperature": config.temperature,
        "grading": config.grading,
        "pass_at_1": pass1,
        "pass_at_1_ci95": [low, high],
        "pass_at_k": {str(k): mean_pass_at_k(counts, k) for k in config.ks if counts},
        "extraction_failure_rate": graded["extraction_failure_rate"],
        # Per-problem accuracy, so rounds can be compared problem by problem (paired).
        "per_problem_accuracy": {pid: c / n for pid, (n, c) in graded["counts"].items()},
        # Each problem's reference answer, so `tpt report --by-answer` can tell whether a gain
        # is spread over the problems or concentrated on one answer.
        "reference_answers": {pid: answers[pid] for pid in graded["counts"]},
        "cut_rate": graded["cut_rate"],
        "mean_tokens": graded["mean_tokens"],
    }
    if modes:  # the same samples under every grading mode: how much of a change is format
        by_mode = {mode: _mean_accuracy(grade(sampled, answers, mode, verify)) for mode in modes}
        out["pass_at_1_by_mode"] = by_mode
    if train_answers:
        out["prior_baseline"] = prior_baseline(
            train_answers, answers, graded["counts"], config.grading
        )
    if greedy:
        g = grade(greedy, answers, config.grading, verify)
        right = sum(c for _, c in g["counts"].values())
        total = sum(n for n, _ in g["counts"].values())
        out["greedy_accuracy"] = right / total if total else 0.0
        out["greedy_ci95"] = list(wilson(right, total))
        out["greedy_extraction_failure_rate"] = g["extraction_failure_rate"]
    return out


def evaluate(
    handle: ModelHandle,
    prompts: EncodedPrompts,
    config: EvalConfig,
    out_dir: Path,
    *,
    seed: int,
    label: str = "eval",
    train_answers: Sequence[str] | None = None,
    verify: Verifier | None = None,
    modes: Sequence[str] = MODES,
    on_records: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, Any]:
    """Sample, grade and summarize; samples go to `out_dir` (resumable), the summary too.
    `train_answers`: the train split's reference answers, for the prior baseline; `verify`,
    `modes`: the task's verifier and the grading modes it knows (as `summarize` takes them);
    `on_records`: as `sample_to_file`'s (a task plug-in verifying while sampling goes on)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = {p.id: p.answer for p in prompts.problems}
    params = SamplingParams(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        n=config.n,
        seed=seed,
    )
    sampled = sample_to_file(
        handle, prompts, params, out_dir / "samples.jsonl", label=f"{label} sampled",
        on_records=on_records,
    )  # fmt: skip
    greedy = []
    if config.greedy:
        params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.0, n=1)
        greedy = sample_to_file(
            handle, prompts, params, out_dir / "greedy.jsonl", label=f"{label} greedy",
            on_records=on_records,
        )  # fmt: skip
    summary = summarize(
        sampled, greedy, answers, config, train_answers=train_answers, verify=verify, modes=modes
    )
    summary["skipped_too_long"] = prompts.skipped_too_long
    if is_primary():
        storage.write_json(out_dir / "summary.json", summary)
    return summary
