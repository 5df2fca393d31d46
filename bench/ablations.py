"""The paper's ablations in miniature: TPT, no pruning and restart-from-base, 3 rounds each, on
SmolLM2-135M-Instruct and the built-in task (configs/ablations/smollm2_arith_*.yaml).

    PYTHONPATH=. python bench/ablations.py run       # every run, resumable (kill it, run again)
    PYTHONPATH=. python bench/ablations.py report    # table, JSON and figure of what finished

`run` goes through the runs in an order that lets later ones adopt the stages they share with
earlier ones (`tpt run --reuse`: equal inputs, so equal outputs): TPT seed 0 shares rounds 0 and
1 with the demo (runs/demo, if it has run); no pruning shares round 0 and
round 1's THINK with TPT of the same seed; restart-from-base shares all of round 1. `report`
reads each run's manifests (what `tpt report --json` shows) and writes
`bench/results/ablations.{json,md,png}`: Pass@1 per round with its 95% interval, the paired
change against round 0, the prior baseline (always the most common train answer), and the
examples PRUNE kept per round. Nothing is tuned here: the configs are the demo's settings with
3 rounds, and whatever the numbers say is the result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "ablations"
RUNS = ROOT / "runs" / "ablations"
OUT = ROOT / "bench" / "results"

# (run name, config, method label, seed, runs it may adopt stages from), in running order.
PLAN = [
    ("tpt_s0", "smollm2_arith_tpt", "TPT", 0, ("../demo",)),  # `tpt run configs/demo.yaml`
    ("no_pruning_s0", "smollm2_arith_no_pruning", "no pruning", 0, ("tpt_s0",)),
    ("restart_s0", "smollm2_arith_restart_from_base", "restart from base", 0, ("tpt_s0",)),
    ("tpt_s1", "smollm2_arith_tpt_seed1", "TPT", 1, ()),
    ("no_pruning_s1", "smollm2_arith_no_pruning_seed1", "no pruning", 1, ("tpt_s1",)),
]


def run_all(only: list[str]) -> None:
    for name, config, _, _, reuse in PLAN:
        if only and name not in only:
            continue
        cmd = [sys.executable, "-m", "tpt_jax.cli", "run", str(CONFIGS / f"{config}.yaml")]
        cmd += ["--run-dir", str(RUNS / name)]
        for other in reuse:
            path = Path(os.path.normpath(RUNS / other))  # "../demo" before runs/ablations exists
            if path.is_dir():
                cmd += ["--reuse", str(path)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


def collect() -> list[dict]:
    from tpt_jax import report

    rows = []
    for name, config, method, seed, _ in PLAN:
        if not (RUNS / name).is_dir():
            continue
        try:
            rounds = report.rounds(RUNS / name)
        except Exception as e:  # noqa: BLE001 - a run not started yet is reported as missing
            print(f"{name}: {e}", file=sys.stderr)
            continue
        for row in rounds:
            prior = row.get("prior_baseline") or {}
            rows.append(
                {
                    "run": name,
                    "config": f"configs/ablations/{config}.yaml",
                    "method": method,
                    "seed": seed,
                    "round": row["round"],
                    "pass_at_1": row["pass_at_1"],
                    "pass_at_1_ci95": row["pass_at_1_ci95"],
                    "change_vs_base": row["change_vs_base"],
                    "prior_baseline": prior.get("pass_at_1"),
                    "prior_answer": prior.get("answer"),
                    "kept_train": row["n_train_examples"],
                    "think_sample_accuracy": row["think_sample_accuracy"],
                    "eval_problems": row["eval_problems"],
                }
            )
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    lines = [
        "| method | seed | round | Pass@1 % [95% CI] | vs round 0 (paired) [95% CI] | "
        "prior baseline % | kept train | THINK accuracy % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        low, high = r["pass_at_1_ci95"]
        change = "-"
        if r["change_vs_base"]:
            d, lo, hi = r["change_vs_base"]
            change = f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['round']} | {pct(r['pass_at_1'])} "
            f"[{pct(low)}, {pct(high)}] | {change} | {pct(r['prior_baseline'])} "
            f"({r['prior_answer']}) | {r['kept_train'] if r['kept_train'] is not None else '-'} "
            f"| {pct(r['think_sample_accuracy'])} |"
        )
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> Path | None:
    """Pass@1 against round per method and seed (the paper's Figure 2, as lines), 95% bars,
    and the prior baseline as a dashed line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    colors = {"TPT": "tab:blue", "no pruning": "tab:red", "restart from base": "tab:green"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for (method, seed), group in _groups(rows).items():
        xs = [r["round"] + (seed - 0.5) * 0.06 for r in group]  # seeds side by side
        ys = [100 * r["pass_at_1"] for r in group]
        err = [
            [100 * (r["pass_at_1"] - r["pass_at_1_ci95"][0]) for r in group],
            [100 * (r["pass_at_1_ci95"][1] - r["pass_at_1"]) for r in group],
        ]
        style = {"marker": "o", "capsize": 3, "linestyle": "-" if seed == 0 else "--"}
        ax.errorbar(xs, ys, yerr=err, color=colors.get(method), label=f"{method}, seed {seed}",
                    **style)  # fmt: skip
    priors = {r["prior_baseline"] for r in rows if r["prior_baseline"] is not None}
    for i, prior in enumerate(sorted(priors)):
        label = "prior baseline (most common train answer)" if i == 0 else None
        ax.axhline(100 * prior, color="gray", linestyle=":", linewidth=1, label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("Pass@1 % (test, 95% CI)")
    ax.set_xticks(sorted({r["round"] for r in rows}))
    ax.set_title("SmolLM2-135M-Instruct, built-in task: TPT vs its ablations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _groups(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    out: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        out.setdefault((r["method"], r["seed"]), []).append(r)
    return out


def write_report() -> None:
    import jax

    rows = collect()
    if not rows:
        sys.exit("no finished rounds yet: run `python bench/ablations.py run` first")
    meta = {
        "date": datetime.date.today().isoformat(),
        "command": "PYTHONPATH=. python bench/ablations.py run && ... report",
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}",
        "python": platform.python_version(),
        "jax": jax.__version__,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ablations.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    table = markdown(rows)
    (OUT / "ablations.md").write_text(table + "\n")
    png = figure(rows, OUT / "ablations.png")
    print(table)
    print(f"wrote {OUT / 'ablations.json'}, {OUT / 'ablations.md'}" + (f", {png}" if png else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("run", "report"))
    parser.add_argument("--only", action="append", default=[], help="run names (see PLAN)")
    args = parser.parse_args()
    if args.what == "run":
        run_all(args.only)
    write_report()


if __name__ == "__main__":
    main()
