"""EVAL numbers: Pass@1 with its interval, Pass@k, greedy accuracy, failure rates, the prior
baseline; the report table, JSON rows, by-answer breakdown and chart; metrics files."""

import importlib.util
import io
import json
import math
from itertools import combinations

import pytest

from tpt_jax.cli import main
from tpt_jax.config import EvalConfig
from tpt_jax.evaluate import prior_answer, summarize
from tpt_jax.metrics import MetricsWriter, Progress, format_seconds
from tpt_jax.report import by_answer, by_answer_table, plot, rounds, table
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


# 8 test problems, 3 of them ("p1", "p4", "p6") with the most common train answer "12".
TEST_ANSWERS = {
    "p1": "12", "p2": "5", "p3": "1,080", "p4": "12", "p5": "7", "p6": "12", "p7": "3", "p8": "5",
}  # fmt: skip
TRAIN_ANSWERS = ["12", "5", "12", "3", "12", "7", "5", "1,080"]


def test_prior_baseline_exact():
    sampled = [rec(pid, f"#### {a}" if pid in ("p1", "p2") else "#### 0") for pid, a in
               TEST_ANSWERS.items()]  # fmt: skip
    s = summarize(sampled, [], TEST_ANSWERS, EvalConfig(n=1), train_answers=TRAIN_ANSWERS)
    prior = s["prior_baseline"]
    assert prior["answer"] == "12" and prior["train_count"] == 3 and prior["train_problems"] == 8
    assert prior["pass_at_1"] == 0.375 and prior["correct"] == 3 and prior["problems"] == 8
    # The interval is Pass@1's: over per-problem outcomes (here 0/1), problems as the unit.
    assert prior["pass_at_1_ci95"] == pytest.approx(list(mean_ci([1, 0, 0, 1, 0, 1, 0, 0])[1:]))
    assert s["pass_at_1"] == 0.25  # the model itself: 2 of 8
    assert s["reference_answers"] == TEST_ANSWERS
    # Without train answers (an evaluation outside a run) there is no baseline to report.
    assert "prior_baseline" not in summarize(sampled, [], TEST_ANSWERS, EvalConfig(n=1))


def test_prior_answer_ties_and_grading_mode():
    # A tie goes to the smaller number, whatever order the data has; non-numbers come last.
    assert prior_answer(["9", "10", "10", "9", "x", "x"], "strict") == ("9", 2)
    assert prior_answer(["x", "x", "10", "10", "-3", "-3"], "strict") == ("-3", 2)
    assert prior_answer([], "strict") is None
    # Strict grading tells "1,080" from "1080"; the other modes count them as one answer, and
    # the baseline is graded in the evaluation's mode: "#### 1080" is right for "1,080" there.
    train = ["1,080", "1,080", "1080", "1080", "7", "7", "7"]
    assert prior_answer(train, "strict") == ("7", 3)
    assert prior_answer(train, "normalized") == ("1080", 4)
    test = {"a": "1,080", "b": "1080", "c": "7"}
    sampled = [rec(pid, "#### 0") for pid in test]
    strict = summarize(sampled, [], test, EvalConfig(n=1), train_answers=train)
    normal = summarize(
        sampled, [], test, EvalConfig(n=1, grading="normalized"), train_answers=train
    )
    assert strict["prior_baseline"]["pass_at_1"] == pytest.approx(1 / 3)
    assert normal["prior_baseline"]["pass_at_1"] == pytest.approx(2 / 3)


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


def write_eval(run, r, accuracy, prior=True):
    """A round manifest holding what EVAL writes for the 8 problems of TEST_ANSWERS."""
    d = run / f"round_{r}"
    d.mkdir(parents=True)
    pass1 = sum(accuracy.values()) / len(accuracy)
    ev = {
        "pass_at_1": pass1,
        "pass_at_1_ci95": [max(0.0, pass1 - 0.1), min(1.0, pass1 + 0.1)],
        "pass_at_k": {"1": pass1},
        "extraction_failure_rate": 0.0,
        "problems": len(accuracy),
        "grading": "strict",
        "per_problem_accuracy": accuracy,
    }
    if prior:  # what EVAL writes since it measures the prior baseline
        ev["reference_answers"] = TEST_ANSWERS
        ev["prior_baseline"] = {
            "answer": "12",
            "train_count": 3,
            "train_problems": 8,
            "problems": 8,
            "correct": 3,
            "pass_at_1": 0.375,
            "pass_at_1_ci95": [0.0369, 0.7131],
        }
    (d / "manifest.json").write_text(json.dumps({"round": r, "eval": ev}))


BASE = dict.fromkeys(TEST_ANSWERS, 0.0) | {"p2": 0.5, "p3": 1.0}
# Round 1 gains only on the problems whose answer is "12": the prior answer.
ROUND_1 = BASE | {"p1": 1.0, "p4": 1.0, "p6": 0.5}


def column(text: str, header: str) -> list[str]:
    """The cells under `header` in a fixed-width table (spans from the dashed line)."""
    lines = text.splitlines()
    spans, pos = [], 0
    for dashes in lines[1].split("  "):
        spans.append((pos, pos + len(dashes)))
        pos += len(dashes) + 2
    a, b = spans[[lines[0][a:b].strip() for a, b in spans].index(header)]
    return [line[a:b].strip() for line in lines[2:]]


def test_report_prior_baseline_column_and_old_manifests(tmp_path):
    write_eval(tmp_path, 0, BASE, prior=False)  # written before EVAL measured the baseline
    write_eval(tmp_path, 1, ROUND_1)
    rows = rounds(tmp_path)
    assert rows[0]["prior_baseline"] is None
    assert rows[1]["prior_baseline"]["answer"] == "12"
    assert rows[1]["prior_baseline"]["pass_at_1"] == 0.375
    assert column(table(rows), "prior % (answer)") == ["-", "37.5 (12)"]
    assert column(table(rows), "round") == ["0", "1"]
    if importlib.util.find_spec("matplotlib"):  # a segment over round 1 only: drawn, no error
        assert plot(rows, tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_report_by_answer(tmp_path):
    write_eval(tmp_path, 0, BASE)
    write_eval(tmp_path, 1, ROUND_1)
    data = by_answer(tmp_path)
    assert data["rounds"] == [0, 1] and data["prior_answer"] == "12" and data["problems"] == 8
    got = {a["answer"]: a for a in data["answers"]}
    # Most problems first, equal counts by numeric value: "1,080" (1080) after "7".
    assert [a["answer"] for a in data["answers"]] == ["12", "5", "3", "7", "1,080"]
    assert got["12"]["problems"] == 3 and got["5"]["problems"] == 2
    assert got["12"]["pass_at_1"] == {"0": 0.0, "1": pytest.approx(2.5 / 3)}
    assert got["5"]["pass_at_1"] == {"0": 0.25, "1": 0.25}
    assert got["1,080"]["pass_at_1"] == {"0": 1.0, "1": 1.0}
    # The whole gain (+2.5 correct of 8 problems) comes from answer "12".
    assert got["12"]["contribution_vs_base"] == {"1": pytest.approx(2.5 / 8)}
    assert all(a["contribution_vs_base"] == {"1": 0.0} for a in data["answers"][1:])
    change = rounds(tmp_path)[1]["change_vs_base"][0]
    assert sum(a["contribution_vs_base"]["1"] for a in data["answers"]) == pytest.approx(change)
    text = by_answer_table(data, top=2)
    lines = text.splitlines()
    assert lines[2].split() == ["12", "*", "3", "0.0", "83.3", "+31.2"]
    assert lines[3].split() == ["5", "2", "25.0", "25.0", "+0.0"]
    # The 3 other answers in one line: 3 problems, 1 right at base and in round 1.
    assert lines[4].split() == ["(3", "other", "answers)", "3", "33.3", "33.3", "+0.0"]
    assert lines[5].split() == ["all", "8", "18.8", "50.0", "+31.2"]
    assert "* = the prior answer" in text
    assert len(by_answer_table(data, top=0).splitlines()) == 2 + 5 + 1 + 1


def test_report_by_answer_needs_recorded_answers(tmp_path):
    write_eval(tmp_path, 0, BASE, prior=False)
    with pytest.raises(Exception, match="reference answers"):
        by_answer(tmp_path)
    # An older round borrows the answers a newer round of the same run recorded.
    write_eval(tmp_path, 1, ROUND_1)
    assert by_answer(tmp_path)["answers"][0]["pass_at_1"]["0"] == 0.0


def test_report_cli_by_answer_and_chart(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    write_eval(tmp_path, 0, BASE)
    write_eval(tmp_path, 1, ROUND_1)
    png = tmp_path / "chart.png"
    assert main(["report", str(tmp_path), "--by-answer", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "prior % (answer)" in out and "Pass@1 by reference answer" in out
    assert "12 *" in out and f"chart: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert main(["report", str(tmp_path), "--json", "--by-answer"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rounds"][1]["prior_baseline"]["pass_at_1"] == 0.375
    assert data["by_answer"]["answers"][0]["answer"] == "12"
    assert main(["report", str(tmp_path), "--json"]) == 0
    assert "by_answer" not in json.loads(capsys.readouterr().out)


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
