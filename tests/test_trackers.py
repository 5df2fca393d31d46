"""Where numbers go: TensorBoard and Weights & Biases beside metrics.jsonl (`report_to`)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from tpt_jax.config import load_config
from tpt_jax.errors import TptError
from tpt_jax.metrics import MetricsWriter

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


class FakeRun:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.calls.append(("define_metric", name, step_metric))

    def log(self, data: dict) -> None:
        self.calls.append(("log", data))

    def finish(self) -> None:
        self.calls.append(("finish",))


def test_wandb_gets_each_tag_on_its_own_axis(tmp_path: Path, monkeypatch) -> None:
    calls: list = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls.append(("init", kwargs)) or FakeRun(calls)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    writer = MetricsWriter(tmp_path / "m.jsonl", None, wandb={"project": "p", "id": "x"})
    writer.write("eval", 0, pass_at_1=0.25, grading="strict", ok=True, bad=float("nan"))
    writer.write("eval", 1, pass_at_1=0.5)
    writer.write("train/round_1", 3, loss=1.5)
    writer.close()
    assert calls == [
        ("init", {"project": "p", "id": "x"}),
        ("define_metric", "eval/step", None),
        ("define_metric", "eval/*", "eval/step"),
        ("log", {"eval/step": 0, "eval/pass_at_1": 0.25}),  # numbers only, finite only
        ("log", {"eval/step": 1, "eval/pass_at_1": 0.5}),
        ("define_metric", "train/round_1/step", None),
        ("define_metric", "train/round_1/*", "train/round_1/step"),
        ("log", {"train/round_1/step": 3, "train/round_1/loss": 1.5}),
        ("finish",),
    ]
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["tag"] for r in lines] == ["eval", "eval", "train/round_1"]  # the file has all
    assert lines[0]["grading"] == "strict"


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="the wandb extra")
def test_real_wandb_offline(tmp_path: Path, monkeypatch) -> None:
    """The real library, offline (WANDB_MODE=offline: nothing leaves the machine): the run is
    written under dir/wandb/offline-run-*/ with the id we gave, ready for `wandb sync`."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    options = {"project": "tpt_jax", "name": "t", "id": "tptabc123", "dir": str(tmp_path)}
    writer = MetricsWriter(tmp_path / "m.jsonl", None, wandb=options | {"resume": "allow"})
    writer.write("eval", 0, pass_at_1=0.25)
    writer.write("train/round_1", 1, loss=2.0)
    writer.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (runs[0] / "run-tptabc123.wandb").stat().st_size > 0


def test_report_to_is_checked_and_changes_no_result(tmp_path: Path, monkeypatch) -> None:
    from tpt_jax.round import Run

    config = tmp_path / "c.yaml"
    config.write_text(f"base: {SMOKE}\nreport_to: [wandb]\n")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails
    with pytest.raises(
        TptError, match=r"report_to: wandb needs the wandb package: pip install .tpt-jax\[wandb\]"
    ):
        Run(load_config(config), tmp_path / "run")
    config.write_text(f"base: {SMOKE}\nreport_to: [tensorbored]\n")
    with pytest.raises(TptError, match="report_to"):
        load_config(config)
    monkeypatch.undo()
    Run(load_config(SMOKE), tmp_path / "run2")  # claims the directory with tensorboard
    config.write_text(f"base: {SMOKE}\nreport_to: []\nwandb_project: elsewhere\n")
    Run(load_config(config), tmp_path / "run2")  # the same run: not "a different config"
