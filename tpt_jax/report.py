"""`tpt report RUN_DIR`: one row per finished round (round 0 = the base model), as a table,
as JSON, and as a bar chart of Pass@1 (with its 95% interval) and Pass@k per round.

Pure Python over the run's manifests (layer 0); matplotlib is imported only to draw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tpt_jax.errors import TptError
from tpt_jax.stats import paired_difference


def rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """The report rows of every finished round (those with a manifest), in round order."""
    run_dir = Path(run_dir)
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
    finished = sorted((m for m in manifests if "eval" in m), key=lambda m: m["round"])
    base = finished[0]["eval"] if finished and finished[0]["round"] == 0 else None
    return [_row(m, base) for m in finished]


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
    head = ["round", "Pass@1 % [95% CI]", "vs base (paired) [95% CI]"]
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
        cells += [_pct(r["pass_at_k"].get(k)) for k in ks]
        cells += [_pct(r["greedy_accuracy"]), _pct(r["extraction_failure_rate"])]
        cells += [_int(r["n_train_examples"]), _pct(r["think_sample_accuracy"])]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
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
    ax.set_xticks(
        range(len(rows)), ["base" if r["round"] == 0 else f"round {r['round']}" for r in rows]
    )
    ax.set_ylabel("% of problems")
    ax.set_ylim(0, 105)
    ax.set_title(title or "Think-Prune-Train: accuracy per round")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _int(x: int | None) -> str:
    return "-" if x is None else str(x)
