"""`tpt report RUN_DIR`: one row per finished round (round 0 = the base model), as a table,
as JSON, and as a bar chart of Pass@1 (with its 95% interval) and Pass@k per round, with the
prior baseline (always the most common train answer) beside it; `by_answer` breaks Pass@1 down
by reference answer.

Pure Python over the run's manifests (layer 0); matplotlib is imported only to draw.
"""

from __future__ import annotations

import json
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tpt_jax import storage
from tpt_jax.errors import TptError
from tpt_jax.grading import extract_answer
from tpt_jax.stats import paired_difference


# The answer keys live here, at layer 0, so that EVAL (which picks the prior answer) and the
# by-answer report group answers the same way.
def answer_key(answer: str, mode: str) -> str:
    """A reference answer as grading in `mode` tells answers apart: in strict mode the string
    as the data writes it ("1,080" and "1080" differ, as they do for the grader), otherwise the
    canonical number ("1,080" -> "1080"). A reference the grader cannot read stays as written."""
    if mode == "strict":
        return answer.strip()
    return extract_answer(f"#### {answer.strip()}", mode) or answer.strip()


def answer_order(key: str) -> tuple[int, Decimal, str]:
    """Sort key of answers: numbers by value first, then anything else by string (the
    deterministic tie-break of the prior answer, and the order of equal-count report rows)."""
    try:
        value = Decimal(key.replace(",", ""))
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():  # "NaN" would make the comparison raise
        return (1, Decimal(0), key)
    return (0, value, key)


def _finished(run_dir: str | Path) -> list[dict[str, Any]]:
    """The manifests of every finished round, in round order."""
    run_dir = storage.run_path(run_dir)
    if not run_dir.is_dir():
        raise TptError(f"{run_dir}: no such run directory")
    manifests = []
    for path in run_dir.glob("round_*/manifest.json"):
        try:
            manifests.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as e:
            raise TptError(f"{path}: unreadable manifest ({e})") from None
    if not manifests:
        raise TptError(f"{run_dir}: no finished round yet (no round_*/manifest.json)")
    return sorted((m for m in manifests if "eval" in m), key=lambda m: m["round"])


def rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """The report rows of every finished round (those with a manifest), in round order. A row's
    `carried_from` is, for a round whose PRUNE kept nothing under `on_empty_round: carry`, the
    round whose model it evaluates again (else None)."""
    finished = _finished(run_dir)
    base = finished[0]["eval"] if finished and finished[0]["round"] == 0 else None
    rows = [_row(m, base) for m in finished]
    carried: dict[int, int] = {}
    for manifest, row in zip(finished, rows, strict=True):
        if manifest.get("train", {}).get("carried"):
            carried[row["round"]] = carried.get(row["round"] - 1, row["round"] - 1)
        row["carried_from"] = carried.get(row["round"])
    return rows


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """What a reader of the table must know: the rounds that carried a model forward."""
    return [
        f"round {r['round']}: PRUNE kept no training examples, so this is round "
        f"{r['carried_from']}'s model carried forward (on_empty_round: carry)"
        for r in rows
        if r.get("carried_from") is not None
    ]


def _row(manifest: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    ev = manifest["eval"]
    change = None
    if base is not None and manifest["round"] > 0:
        change = paired_difference(
            ev.get("per_problem_accuracy", {}), base.get("per_problem_accuracy", {})
        )
    prune = manifest.get("prune")
    think = manifest.get("think")
    return {
        "round": manifest["round"],
        "pass_at_1": ev["pass_at_1"],
        "pass_at_1_ci95": ev["pass_at_1_ci95"],
        # Always the most common train answer: {answer, pass_at_1, pass_at_1_ci95, ...}; None
        # for an evaluation made before EVAL measured it.
        "prior_baseline": ev.get("prior_baseline"),
        "change_vs_base": list(change) if change else None,  # paired by problem, with 95% CI
        "pass_at_k": ev.get("pass_at_k", {}),
        "greedy_accuracy": ev.get("greedy_accuracy"),
        "extraction_failure_rate": ev["extraction_failure_rate"],
        "eval_problems": ev["problems"],
        "n_train_examples": prune["kept_train"] if prune else None,
        "n_val_examples": prune["kept_val"] if prune else None,
        "think_sample_accuracy": prune["sample_accuracy"] if prune else None,
        "think_samples": think.get("samples") if think else None,
        "best_val_loss": manifest.get("train", {}).get("best_val_loss"),
        "model": manifest.get("model"),
        "wall_seconds": manifest.get("wall_seconds", {}),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table: what `tpt report` and the end of `tpt run` print."""
    ks = sorted({k for r in rows for k in r["pass_at_k"] if k != "1"}, key=int)
    head = ["round", "Pass@1 % [95% CI]", "vs base (paired) [95% CI]", "prior % (answer)"]
    head += [f"Pass@{k} %" for k in ks]
    head += ["greedy %", "no answer %", "kept train", "think acc %"]
    lines = [head]
    for r in rows:
        low, high = r["pass_at_1_ci95"]
        cells = [str(r["round"]), f"{100 * r['pass_at_1']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"]
        change = r.get("change_vs_base")
        cells.append(
            "-"
            if change is None
            else "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * x for x in change))
        )
        prior = r.get("prior_baseline")
        cells.append("-" if not prior else f"{100 * prior['pass_at_1']:.1f} ({prior['answer']})")
        cells += [_pct(r["pass_at_k"].get(k)) for k in ks]
        cells += [_pct(r["greedy_accuracy"]), _pct(r["extraction_failure_rate"])]
        cells += [_int(r["n_train_examples"]), _pct(r["think_sample_accuracy"])]
        lines.append(cells)
    return _columns(lines)


def _columns(lines: list[list[str]]) -> str:
    """Right-aligned columns, the first line a header underlined with dashes."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def by_answer(run_dir: str | Path) -> dict[str, Any]:
    """Pass@1 per reference answer and round, from the per-problem accuracies the manifests
    hold: whether a gain is spread over the problems or concentrated on one answer (a model
    that learnt to say the prior answer gains only on its problems).

    Answers are grouped as the last round's grading mode tells them apart (see `answer_key`).
    Each answer's `contribution_vs_base[r]` is its problems' summed accuracy change from round 0
    over all problems both evaluated: the contributions add up to round r's paired change
    vs base, so a large share on one answer is visible at a glance."""
    finished = _finished(run_dir)
    if not finished:
        raise TptError(f"{run_dir}: no evaluated round yet")
    mode = finished[-1]["eval"].get("grading", "strict")
    references: dict[str, str] = {}
    for m in finished:  # the test split is the same in every round; any round may hold it
        references.update(m["eval"].get("reference_answers", {}))
    if not references:
        raise TptError(
            f"{run_dir}: no round recorded its problems' reference answers (evaluated before "
            "EVAL wrote reference_answers), so Pass@1 cannot be broken down by answer"
        )
    accuracy = {m["round"]: m["eval"].get("per_problem_accuracy", {}) for m in finished}
    groups: dict[str, set[str]] = defaultdict(set)
    unknown: set[str] = set()
    for acc in accuracy.values():
        for pid in acc:
            if pid in references:
                groups[answer_key(references[pid], mode)].add(pid)
            else:
                unknown.add(pid)
    base = accuracy.get(0)
    shared = {r: set(acc) & set(base) for r, acc in accuracy.items() if r > 0} if base else {}
    answers = []
    for key, pids in groups.items():
        pass1: dict[str, float | None] = {}
        for r, acc in accuracy.items():
            mine = [acc[p] for p in pids if p in acc]
            pass1[str(r)] = sum(mine) / len(mine) if mine else None
        contribution = {
            str(r): sum(accuracy[r][p] - base[p] for p in pids & both) / len(both)
            for r, both in shared.items()
            if both
        }
        answers.append(
            {
                "answer": key,
                "problems": len(pids),
                "pass_at_1": pass1,
                "contribution_vs_base": contribution,
            }
        )
    answers.sort(key=lambda a: (-a["problems"], answer_order(a["answer"])))
    priors = [m["eval"]["prior_baseline"] for m in finished if m["eval"].get("prior_baseline")]
    return {
        "grading": mode,
        "rounds": list(accuracy),
        "problems": sum(a["problems"] for a in answers),
        "problems_without_answer": len(unknown),
        "prior_answer": priors[-1]["answer"] if priors else None,
        "answers": answers,
    }


def by_answer_table(data: dict[str, Any], top: int = 20) -> str:
    """`by_answer` as text: the `top` answers with the most problems (0: all), the rest in one
    line, and for the last round its change vs base split by answer."""
    rounds_ = [str(r) for r in data["rounds"]]
    last = rounds_[-1]
    shares = any(last in a["contribution_vs_base"] for a in data["answers"])
    head = ["answer", "problems", *(f"r{r} Pass@1 %" for r in rounds_)]
    head += [f"r{last} vs base, pts of all"] if shares else []
    lines = [head]
    shown = data["answers"][:top] if top > 0 else data["answers"]
    rest = data["answers"][len(shown) :]

    def line(label: str, group: list[dict[str, Any]]) -> list[str]:
        cells = [label, str(sum(a["problems"] for a in group))]
        for r in rounds_:
            # Over several answers: their Pass@1s weighted by problem count (exact when every
            # round evaluated the same problems, as rounds of one run do).
            have = [a for a in group if a["pass_at_1"].get(r) is not None]
            weight = sum(a["problems"] for a in have)
            total = sum(a["pass_at_1"][r] * a["problems"] for a in have)
            cells.append(_pct(total / weight if weight else None))
        if shares:
            parts = [
                a["contribution_vs_base"][last] for a in group if last in a["contribution_vs_base"]
            ]
            cells.append(f"{100 * sum(parts):+.1f}" if parts else "-")
        return cells

    for a in shown:
        star = " *" if a["answer"] == data["prior_answer"] else ""
        lines.append(line(a["answer"] + star, [a]))
    if rest:
        lines.append(line(f"({len(rest)} other answers)", rest))
    lines.append(line("all", data["answers"]))
    out = [_columns(lines)]
    out.append(f"grading: {data['grading']}; {data['problems']} problems")
    prior = data["prior_answer"]
    if prior is not None:
        out[-1] += f"; * = the prior answer (most common train answer, {prior})"
        if all(a["answer"] != prior for a in data["answers"]):
            out[-1] += ", which no test problem has"
    if data["problems_without_answer"]:
        out.append(f"{data['problems_without_answer']} problems have no recorded answer")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """A bar chart like the paper's Figure 2: Pass@1 per round with 95% intervals, and Pass@k
    bars beside it when measured. Without matplotlib (an optional extra on a training node) it
    draws nothing and returns None: the table and JSON hold the same numbers."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted({"1"} | {k for r in rows for k in r["pass_at_k"]}, key=int)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows) * max(1, len(ks)) ** 0.5, 4))
    width = 0.8 / max(1, len(ks))
    for j, k in enumerate(ks):
        xs = [i + (j - (len(ks) - 1) / 2) * width for i in range(len(rows))]
        ys = [100 * (r["pass_at_1"] if k == "1" else r["pass_at_k"].get(k, 0.0)) for r in rows]
        err = None
        if k == "1":
            err = [
                [y - 100 * r["pass_at_1_ci95"][0] for y, r in zip(ys, rows, strict=True)],
                [100 * r["pass_at_1_ci95"][1] - y for y, r in zip(ys, rows, strict=True)],
            ]
        bars = ax.bar(xs, ys, width, yerr=err, capsize=3, label=f"Pass@{k}")
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    _plot_prior(ax, rows)
    ax.set_xticks(
        range(len(rows)), ["base" if r["round"] == 0 else f"round {r['round']}" for r in rows]
    )
    ax.set_ylabel("% of problems")
    ax.set_ylim(0, 105)
    ax.set_title(title or "Think-Prune-Train: accuracy per round")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = storage.run_path(path)
    with path.open("wb") as f:  # a local file or a gs:// object
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)
    return path


def _plot_prior(ax: Any, rows: list[dict[str, Any]]) -> None:
    """The prior baseline as a dashed line: one across the chart when every round has the same
    (the usual case: one train split, one test split), else a segment over each round's bars."""
    priors = [r.get("prior_baseline") for r in rows]
    known = [p for p in priors if p]
    if not known:  # evaluations made before EVAL measured it
        return
    answers = {p["answer"] for p in known}
    label = "prior baseline" + (
        f" (always answering {known[0]['answer']})" if len(answers) == 1 else ""
    )
    style = {"colors": "0.25", "linestyles": "--", "linewidth": 1.2, "zorder": 3}
    if len(known) == len(priors) and len({p["pass_at_1"] for p in known}) == 1:
        ax.hlines(100 * known[0]["pass_at_1"], -0.5, len(rows) - 0.5, label=label, **style)
        return
    for i, p in enumerate(priors):
        if p:
            ax.hlines(100 * p["pass_at_1"], i - 0.45, i + 0.45, label=label, **style)
            label = None  # one legend entry


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _int(x: int | None) -> str:
    return "-" if x is None else str(x)
