"""EVAL numbers: Pass@1 with its interval, Pass@k, greedy accuracy, failure rates; the report
table, JSON rows and chart; metrics files."""

import io
import json
import math
from itertools import combinations

import pytest

from tpt_jax.config import EvalConfig
from tpt_jax.evaluate import summarize
from tpt_jax.metrics import MetricsWriter, Progress, format_seconds
from tpt_jax.report import plot, rounds, table
from tpt_jax.stats import mean_ci, paired_difference, wilson

ANSWERS = {"a": "4", "b": "10", "c": "3"}


def rec(pid, text, finish="stop", n_tokens=20):
    return {"problem_id": pid, "text": text, "finish_reason": finish, "n_tokens": n_tokens}


SAMPLED = [
    rec("a", "2+2=4\n#### 4"), rec("a", "#### 4"), rec("a", "#### 5"), rec("a", "The answer is 4"),
    rec("b", "#### 10"), rec("b", "#### 10.0"), rec("b", "#### 1", "length"), rec("b", "#### 9"),
    rec("c", "no idea", "length"), rec("c", "#### 2"), rec("c", "#### 2"), rec("c", "#### 2"),
]  # fmt: skip
GREEDY = [rec("a", "#### 4"), rec("b", "#### 11"), rec("c", "#### 3")]


def brute_pass_at_k(outcomes, k):
    subsets = list(combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_summary_numbers():
    cfg = EvalConfig(n=4, k=(1, 2, 4), grading="strict")
    s = summarize(SAMPLED, GREEDY, ANSWERS, cfg)
    per_problem = [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]  # "#### 10.0" is wrong in strict
    assert s["pass_at_1"] == pytest.approx(3 / 12)
    for k in (1, 2, 4):
        want = sum(brute_pass_at_k(o, k) for o in per_problem) / 3
        assert s["pass_at_k"][str(k)] == pytest.approx(want)
    accs = [0.5, 0.25, 0.0]
    half = 1.959963984540054 * (sum((a - 0.25) ** 2 for a in accs) / 2) ** 0.5 / 3**0.5
    assert s["pass_at_1_ci95"] == pytest.approx([max(0, 0.25 - half), 0.25 + half])
    assert s["extraction_failure_rate"] == pytest.approx(2 / 12)
    assert s["cut_rate"] == pytest.approx(2 / 12)
    assert s["greedy_accuracy"] == pytest.approx(2 / 3)
    normalized = summarize(SAMPLED, GREEDY, ANSWERS, EvalConfig(n=4, grading="normalized"))
    assert normalized["pass_at_1"] == pytest.approx(4 / 12)
    assert s["pass_at_1_by_mode"] == pytest.approx(
        {"strict": 3 / 12, "normalized": 4 / 12, "lenient": 5 / 12}
    )
    assert s["per_problem_accuracy"] == {"a": 0.5, "b": 0.25, "c": 0.0}
    assert "8" not in normalized["pass_at_k"]  # only k <= n are reported


def test_intervals():
    assert mean_ci([0.5]) == (0.5, 0.5, 0.5)
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # standard Wilson 95% values
    mean, low, high = paired_difference({"a": 1.0, "b": 0.5, "x": 1.0}, {"a": 0.5, "b": 0.5})
    assert mean == pytest.approx(0.25) and low < 0.25 < high  # only shared problems count
    assert paired_difference({"a": 1.0}, {"b": 0.0}) is None
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)


def write_manifest(run, r, pass1, kept=None):
    d = run / f"round_{r}"
    d.mkdir(parents=True)
    m = {
        "round": r,
        "eval": {
            "pass_at_1": pass1,
            "pass_at_1_ci95": [pass1 - 0.05, pass1 + 0.05],
            "pass_at_k": {"1": pass1, "4": min(1.0, 2 * pass1)},
            "greedy_accuracy": pass1,
            "extraction_failure_rate": 0.1,
            "problems": 50,
            "per_problem_accuracy": {"a": pass1, "b": pass1 / 2, "c": 0.0},
        },
    }
    if kept is not None:
        m["prune"] = {"kept_train": kept, "kept_val": 5, "sample_accuracy": pass1}
        m["think"] = {"samples": 400}
        m["train"] = {"best_val_loss": 0.7}
    (d / "manifest.json").write_text(json.dumps(m))


def test_report_rows_table_and_chart(tmp_path):
    write_manifest(tmp_path, 0, 0.2)
    write_manifest(tmp_path, 1, 0.35, kept=64)
    (tmp_path / "round_2").mkdir()  # unfinished round: no manifest, not reported
    rows = rounds(tmp_path)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[0]["n_train_examples"] is None and rows[1]["n_train_examples"] == 64
    assert rows[0]["change_vs_base"] is None
    mean, low, high = rows[1]["change_vs_base"]  # per problem: +0.15, +0.075, 0
    assert mean == pytest.approx(0.075) and low < mean < high
    text = table(rows)
    assert "20.0 [15.0, 25.0]" in text and "35.0 [30.0, 40.0]" in text and "Pass@4 %" in text
    png = plot(rows, tmp_path / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_report_errors(tmp_path):
    with pytest.raises(Exception, match="no such run directory"):
        rounds(tmp_path / "missing")
    with pytest.raises(Exception, match="no finished round"):
        rounds(tmp_path)


def test_metrics_jsonl_and_tensorboard(tmp_path):
    w = MetricsWriter(tmp_path / "m.jsonl", tmp_path / "tb")
    w.write("eval", 0, pass_at_1=0.25, note="x", nan=math.nan)
    w.write("eval", 1, pass_at_1=0.5)
    w.close()
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(x["tag"], x["step"], x["pass_at_1"]) for x in lines] == [
        ("eval", 0, 0.25),
        ("eval", 1, 0.5),
    ]
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 50


def test_progress_line():
    out = io.StringIO()
    p = Progress("think", 10, "samples", stream=out, every_s=0)
    p.update(5, "120 tok/s")
    p.update(5)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("think: 5/10 samples [") and "ETA" in lines[0]
    assert "120 tok/s" in lines[0] and lines[-1].startswith("think: 10/10") and "done" in lines[-1]
    assert len(lines) == 2  # close() does not repeat the final line
    assert format_seconds(3725) == "1:02:05" and format_seconds(65) == "1:05"
