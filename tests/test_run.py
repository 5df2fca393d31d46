"""The whole loop on configs/smoke.yaml (a tiny random model): every stage, every file, the
report, refusal of a changed config, and resume after `kill -9` during THINK and TRAIN."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpt_jax.checkpoint import checkpoint_config

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def tpt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `tpt` command in a fresh process on one CPU device (as a user runs it)."""
    full = {k: v for k, v in os.environ.items() if k != "TPT_KILL_AT"}
    full.update({"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "tpt_jax.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        cwd=ROOT,
        timeout=600,
    )


def results(run_dir: Path) -> dict:
    """Everything that must be identical between an uninterrupted and a resumed run."""
    out = {}
    for pattern in ("round_*/*/*.jsonl", "round_*/*/stats.json", "round_*/*/summary.json"):
        for path in sorted(run_dir.glob(pattern)):
            out[str(path.relative_to(run_dir))] = path.read_text()
    report = json.loads(tpt("report", str(run_dir), "--json").stdout)
    for row in report["rounds"]:
        row.pop("wall_seconds"), row.pop("model")
    out["report"] = report
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    proc = tpt("run", str(SMOKE), "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_smoke_run_writes_every_stage(finished):
    for r in (1, 2):
        d = finished / f"round_{r}"
        for stage in ("think", "prune", "train", "eval"):
            assert (d / stage / "DONE.json").exists(), (r, stage)
        traces = (d / "think" / "traces.jsonl").read_text().splitlines()
        assert len(traces) == 12 * 2  # train_size x think.n
        assert checkpoint_config(d / "model")["tpt_jax_format"] == 2
        assert not (d / "train" / "state").exists()  # resume scratch goes once TRAIN is done
    manifest = json.loads((finished / "round_2" / "manifest.json").read_text())
    for key in ("seed", "config_hash", "data_hash", "versions", "devices", "wall_seconds"):
        assert key in manifest
    assert (finished / "report.png").read_bytes()[:4] == b"\x89PNG"
    tags = {json.loads(x)["tag"] for x in (finished / "metrics.jsonl").read_text().splitlines()}
    assert {"eval", "think", "prune", "train/round_1", "train/round_2"} <= tags
    assert list((finished / "tb").glob("events.out.tfevents.*"))


def test_report_json_and_table(finished):
    rows = json.loads(tpt("report", str(finished), "--json").stdout)["rounds"]
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[0]["n_train_examples"] is None and rows[1]["n_train_examples"] == 16
    assert all(0 <= r["pass_at_1"] <= 1 for r in rows)
    table = tpt("report", str(finished)).stdout
    assert "Pass@1 % [95% CI]" in table and len(table.splitlines()) >= 5


def test_rerun_changes_nothing_and_other_config_is_refused(finished):
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    proc = tpt("run", str(SMOKE), "--run-dir", str(finished))
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    changed = [p.name for p in before if after.get(p) != before[p]]
    assert set(changed) <= {"report.png", "config.json", ".lock"}, changed
    proc = tpt("run", str(SMOKE), "--run-dir", str(finished), "--set", "think.n=3")
    assert proc.returncode == 2
    assert "different config (think.n: 2 then, 3 now)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_force_redoes_only_what_a_changed_key_reaches(finished, tmp_path):
    """--force with a new THINK temperature: round 0's evaluation is kept as it was, every
    stage from round 1's THINK on is discarded and redone."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    kept = {p: p.read_bytes() for p in (run_dir / "round_0").rglob("*") if p.is_file()}
    proc = tpt("run", str(SMOKE), "--run-dir", str(run_dir), "--force",
               "--set", "think.temperature=0.5")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "discarding round 1 think, round 1 prune, round 1 train, round 1 eval, round 2 " in (
        proc.stderr
    )
    assert {p: p.read_bytes() for p in kept} == kept
    old = (finished / "round_1" / "think" / "traces.jsonl").read_text()
    assert (run_dir / "round_1" / "think" / "traces.jsonl").read_text() != old
    inputs = json.loads((run_dir / "round_1" / "think" / "INPUTS.json").read_text())
    assert inputs["think"]["temperature"] == 0.5
    assert (run_dir / "round_2" / "manifest.json").exists()


def test_resume_after_two_kill_9s_equals_uninterrupted(finished, tmp_path):
    """Killed in round 1's THINK (chunk 4: its 2nd chunk, round 0's eval makes two), then the
    resumed process killed in round 1's TRAIN (its step 3 lies after the train state saved at
    step 2, on a background thread: written or not, resuming must give the same numbers); a
    third process finishes with exactly the uninterrupted run's results."""
    run_dir = tmp_path / "run"
    for point in ("think.chunk:4", "train.step:3"):
        killed = tpt("run", str(SMOKE), "--run-dir", str(run_dir), env={"TPT_KILL_AT": point})
        assert killed.returncode == -9, killed.stderr[-2000:]
        assert not (run_dir / "round_1" / "train" / "DONE.json").exists()
    assert (run_dir / "round_1" / "prune" / "DONE.json").exists()  # the 2nd kill: in TRAIN
    resumed = tpt("run", str(SMOKE), "--run-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert results(run_dir) == results(finished)


def test_stages_run_alone_in_order(tmp_path):
    run_dir = str(tmp_path / "run")
    early = tpt("prune", str(SMOKE), "--run-dir", run_dir, "--round", "1")
    assert early.returncode == 2 and "stage prune needs think first" in early.stderr
    for stage, r in (("eval", "0"), ("think", "1"), ("prune", "1")):
        proc = tpt(stage, str(SMOKE), "--run-dir", run_dir, "--round", r)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "round_0" / "manifest.json").exists()
    assert (tmp_path / "run" / "round_1" / "prune" / "selected.jsonl").exists()
    assert not (tmp_path / "run" / "round_1" / "train").exists()


def test_cross_model_traces_and_export(finished, tmp_path):
    """think.traces_from copies another run's traces (the cross-model ablation); export
    writes the chosen round as a Hugging Face directory."""
    run_dir = tmp_path / "cross"
    sets = ["--set", f"think.traces_from={finished}", "--set", "rounds=1", "--set", "export=final"]
    proc = tpt("run", str(SMOKE), "--run-dir", str(run_dir), *sets)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mine = (run_dir / "round_1" / "think" / "traces.jsonl").read_text()
    assert mine == (finished / "round_1" / "think" / "traces.jsonl").read_text()
    export = run_dir / "export"
    assert (export / "config.json").exists() and (export / "ROUND").read_text().strip() == "1"
    assert list(export.glob("*.safetensors")) and (export / "tokenizer.json").exists()
