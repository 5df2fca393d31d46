"""PRUNE: choose the training examples among a round's traces, by ground truth only.

Pure Python (layer 0). A trace is a dict with at least `problem_id`, `sample` (its index among
the problem's samples), `text` and `n_tokens`. The strategies:

``correct`` (TPT)
    Grade each trace against the problem's reference answer; keep correct ones, drop exact
    duplicate texts of a problem (optional) and traces longer than `max_tokens` (optional), then
    keep at most `max_per_problem` per problem, the first ones in sample order.
``none`` (the no-pruning ablation)
    Every trace is a candidate, correct or not; the duplicate, length and per-problem rules
    still apply.

Problems with candidates are shuffled with the run's seed; whole problems then fill the
training budget (D examples) and, after it, the validation budget (V), so no problem is in
both sets.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tpt_jax.config import PruneConfig
from tpt_jax.tasks.answers import answer_verifier

__all__ = ["PruneResult", "prune"]

# ((text, problem id) pairs, grading mode) -> their verdicts, in order (Plugin.verify_all)
VerifyAll = Callable[[Sequence[tuple[str, str]], str], Sequence[Any]]


@dataclass
class PruneResult:
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    per_problem: list[dict[str, Any]] = field(default_factory=list)


def prune(
    traces: Iterable[Mapping[str, Any]],
    answers: Mapping[str, str],
    config: PruneConfig,
    seed: int,
    *,
    verify: VerifyAll | None = None,
) -> PruneResult:
    """Select training and validation examples from `traces`; `answers` maps problem id to
    reference answer. Returned examples are the trace dicts plus a `correct` flag. `verify`, the
    task's `verify_all([(text, problem_id), ...], config.grading)` (verdicts with `.correct` and
    `.unanswered`), says which traces are right; by default, their answers under the grading
    mode."""
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for trace in traces:
        if trace["problem_id"] not in answers:
            raise KeyError(f"trace for unknown problem {trace['problem_id']!r}")
        by_problem[trace["problem_id"]].append(dict(trace))

    verify = verify or answer_verifier(answers)
    pairs = [(t["text"], pid) for pid, group in by_problem.items() for t in group]
    verdicts = dict(zip(pairs, verify(pairs, config.grading), strict=True))  # all at once: a
    # task may verify in parallel
    dropped: Counter[str] = Counter()
    candidates: dict[str, list[dict[str, Any]]] = {}
    per_problem = []
    n_traces = n_correct = n_unextracted = 0
    for problem_id, group in by_problem.items():
        group.sort(key=lambda t: t["sample"])
        chosen: list[dict[str, Any]] = []
        seen: set[str] = set()
        correct_here = 0
        for trace in group:
            verdict = verdicts[trace["text"], problem_id]
            trace["correct"], unextracted = verdict.correct, verdict.unanswered
            n_traces += 1
            correct_here += trace["correct"]
            n_unextracted += unextracted
            reason = _drop_reason(trace, config, seen, len(chosen))
            if reason:
                dropped[reason] += 1
                continue
            seen.add(trace["text"])
            chosen.append(trace)
        n_correct += correct_here
        per_problem.append(
            {"problem_id": problem_id, "samples": len(group), "correct": correct_here}
        )
        if chosen:
            candidates[problem_id] = chosen

    order = sorted(candidates)  # independent of trace-file order, then shuffled by the seed
    random.Random(seed).shuffle(order)
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    train_full = False  # once a problem does not fit, later ones go to validation
    for problem_id in order:
        group = candidates[problem_id]
        if not train_full and len(train) + len(group) <= config.train_budget:
            train.extend(group)
            continue
        train_full = True
        if len(val) + len(group) <= config.val_budget:
            val.extend(group)
        else:
            dropped["over_budget"] += len(group)

    solved = sum(1 for p in per_problem if p["correct"] > 0)
    stats = {
        "strategy": config.strategy,
        "grading": config.grading,
        "problems": len(per_problem),
        "traces": n_traces,
        "correct": n_correct,
        "sample_accuracy": n_correct / n_traces if n_traces else 0.0,
        "problems_solved": solved,
        "extraction_failures": n_unextracted,
        "kept_train": len(train),
        "kept_val": len(val),
        "dropped": dict(sorted(dropped.items())),
    }
    return PruneResult(train, val, stats, per_problem)


def _drop_reason(
    trace: Mapping[str, Any], config: PruneConfig, seen: set[str], kept: int
) -> str | None:
    """Why this trace is not a candidate, or None; checked in this order."""
    if config.strategy == "correct" and not trace["correct"]:
        return "incorrect"
    if config.max_tokens is not None and trace["n_tokens"] > config.max_tokens:
        return "too_long"
    if config.dedupe and trace["text"] in seen:
        return "duplicate"
    if kept >= config.max_per_problem:
        return "over_k"
    return None


def pass_rates(per_problem: Sequence[Mapping[str, Any]]) -> list[float]:
    return [p["correct"] / p["samples"] for p in per_problem if p["samples"]]
