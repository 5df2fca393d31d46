"""The loop's Python API (`tpt_jax.Run`), `tpt config` and `tpt --version`: the CLI is a thin
layer over the same objects, so both must give the same answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import tpt_jax
from tpt_jax.cli import main
from tpt_jax.config import load_config, to_dict
from tpt_jax.errors import TptError

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def test_a_round_from_python(tmp_path: Path, capsys) -> None:
    # conftest gives 8 CPU devices: 4 decode slots split over data 4 (tensor 2)
    run = tpt_jax.Run(SMOKE, tmp_path / "run", overrides=["rounds=1", "model.mesh=[1,4,2]"])
    assert run.config.rounds == 1 and run.dir == tmp_path / "run"
    manifests = run.run()
    assert [m["round"] for m in manifests] == [0, 1]
    rows = run.report()
    assert [r["round"] for r in rows] == [0, 1] and rows[1]["carried_from"] is None
    capsys.readouterr()
    assert main(["report", str(run.dir), "--json"]) == 0  # the CLI reads the same rows
    assert json.loads(capsys.readouterr().out)["rounds"] == json.loads(json.dumps(rows))
    done = json.loads((run.dir / "round_1" / "think" / "DONE.json").read_text())
    assert run.stage("think", 1) == done  # finished: returned, not redone
    handle = run.model(1)
    assert handle.source == str(run.dir / "round_1" / "model")
    samples = handle.generate([[1, 2, 3]], max_new_tokens=4, temperature=0.0)
    assert len(samples[0]) == 1 and 1 <= len(samples[0][0].tokens) <= 4
    with pytest.raises(TptError, match="no stage 'think' in round 0"):
        run.stage("think", 0)
    with pytest.raises(TptError, match="no stage 'thonk'"):
        run.stage("thonk", 1)


def test_run_takes_a_mapping_or_a_config(tmp_path: Path) -> None:
    config = load_config(SMOKE)
    from_mapping = tpt_jax.Run(to_dict(config), tmp_path / "a")
    assert from_mapping.config == config
    assert tpt_jax.Run(config, tmp_path / "b").config == config
    with pytest.raises(TptError, match="give run_dir"):
        tpt_jax.Run(config)
    with pytest.raises(TptError, match="overrides apply to a config file"):
        tpt_jax.Run(config, tmp_path / "c", overrides=["rounds=3"])
    with pytest.raises(TptError, match=r"Run\(config=...\).*trian"):
        tpt_jax.Run({"trian": {}}, tmp_path / "d")


def test_tpt_config_prints_the_resolved_config(tmp_path: Path, capsys) -> None:
    ablation = ROOT / "configs" / "ablations" / "demo_no_pruning.yaml"
    source = ablation if ablation.exists() else ROOT / "configs" / "demo.yaml"
    assert main(["config", str(source), "--set", "train.lr=2e-5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == to_dict(load_config(source, ["train.lr=2e-5"]))  # bases merged
    assert printed["train"]["lr"] == 2e-5 and "base" not in printed
    run_dir = tmp_path / "run"
    tpt_jax.Run(SMOKE, run_dir)  # claims the directory: writes config.json
    assert main(["config", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == to_dict(load_config(SMOKE))
    assert main(["config", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"tpt_jax {tpt_jax.__version__}, jax ") and "\n" not in line
