"""PRUNE: every strategy and rule, on hand-built traces with known verdicts."""

import pytest

from tpt_jax.config import PruneConfig
from tpt_jax.prune import prune

ANSWERS = {"p1": "12", "p2": "7", "p3": "30", "p4": "5"}


def trace(pid, sample, text, n_tokens=10):
    return {"problem_id": pid, "sample": sample, "text": text, "n_tokens": n_tokens}


TRACES = [
    trace("p1", 1, "6 + 6 = 12\n#### 12"),
    trace("p1", 0, "6 * 2 = 12\n#### 12"),  # sample order, not file order, decides "first"
    trace("p1", 2, "6 * 2 = 12\n#### 12"),  # duplicate of sample 0
    trace("p2", 0, "3 + 4 = 8\n#### 8"),
    trace("p2", 1, "The answer is 7"),  # right number, wrong format: strict has no answer
    trace("p3", 0, "10 * 3 = 30\n#### 30", n_tokens=500),
    trace("p3", 1, "#### 30.0"),  # normalized: 30, strict: "30.0" != "30"
    trace("p4", 0, "#### 5"),
    trace("p4", 1, "#### 5 apples"),
]


def test_correct_strategy_keeps_first_correct_per_problem():
    result = prune(TRACES, ANSWERS, PruneConfig(train_budget=10, val_budget=0), seed=0)
    kept = {(t["problem_id"], t["sample"]) for t in result.train}
    assert kept == {("p1", 0), ("p3", 0), ("p4", 0)}
    s = result.stats
    assert (s["traces"], s["correct"], s["problems_solved"]) == (9, 6, 3)
    assert s["extraction_failures"] == 1  # "The answer is 7"
    assert s["dropped"] == {"duplicate": 1, "incorrect": 3, "over_k": 2}
    assert s["kept_train"] + s["kept_val"] + sum(s["dropped"].values()) == s["traces"]
    rates = {p["problem_id"]: p["correct"] / p["samples"] for p in result.per_problem}
    assert rates == {"p1": 1.0, "p2": 0.0, "p3": 0.5, "p4": 1.0}


def test_grading_mode_changes_verdicts():
    strict = prune(TRACES, ANSWERS, PruneConfig(max_per_problem=5), seed=0)
    lenient = prune(TRACES, ANSWERS, PruneConfig(max_per_problem=5, grading="lenient"), seed=0)
    assert ("p3", 1) not in {(t["problem_id"], t["sample"]) for t in strict.train}
    got = {(t["problem_id"], t["sample"]) for t in lenient.train}
    assert {("p3", 1), ("p2", 1)} <= got


def test_k_dedupe_and_length_cap():
    cfg = PruneConfig(max_per_problem=3, dedupe=True, max_tokens=100)
    result = prune(TRACES, ANSWERS, cfg, seed=0)
    by_problem = {}
    for t in result.train:
        by_problem.setdefault(t["problem_id"], []).append(t["sample"])
    assert sorted(by_problem["p1"]) == [0, 1]  # sample 2 duplicates sample 0
    assert "p3" not in by_problem  # its only strict-correct trace is 500 tokens long
    assert result.stats["dropped"]["too_long"] == 1
    no_dedupe = prune(TRACES, ANSWERS, PruneConfig(max_per_problem=3, dedupe=False), seed=0)
    assert sum(t["problem_id"] == "p1" for t in no_dedupe.train) == 3


def test_none_strategy_trains_on_everything():
    cfg = PruneConfig(strategy="none", max_per_problem=10, dedupe=False, train_budget=100)
    result = prune(TRACES, ANSWERS, cfg, seed=0)
    assert len(result.train) == len(TRACES)
    assert sum(not t["correct"] for t in result.train) == 3


def test_budgets_split_whole_problems_and_shuffle_by_seed():
    answers = {f"q{i}": "1" for i in range(50)}
    traces = [trace(f"q{i}", j, f"#### 1 ({j})") for i in range(50) for j in range(2)]
    cfg = PruneConfig(max_per_problem=2, train_budget=20, val_budget=6)
    a = prune(traces, answers, cfg, seed=1)
    assert (len(a.train), len(a.val)) == (20, 6)
    assert not {t["problem_id"] for t in a.train} & {t["problem_id"] for t in a.val}
    assert a.stats["dropped"] == {"over_budget": 74}
    b = prune(list(reversed(traces)), answers, cfg, seed=1)
    assert [t["text"] for t in a.train] == [t["text"] for t in b.train]  # file order is irrelevant
    c = prune(traces, answers, cfg, seed=2)
    assert {t["problem_id"] for t in a.train} != {t["problem_id"] for t in c.train}


def test_unknown_problem_is_an_error():
    with pytest.raises(KeyError, match="unknown problem 'zz'"):
        prune([trace("zz", 0, "#### 1")], ANSWERS, PruneConfig(), seed=0)
