"""A shipped config shrunk to the smoke config's tiny random model and sizes, so its task
section (what the tests check) runs end to end in about a minute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def tiny_config(shipped: str, path: Path, task: dict[str, Any]) -> Path:
    """Write `path`: `base: configs/<shipped>`, then the smoke config's sections but the task
    (one round), then `task` merged over the shipped task section."""
    smoke = yaml.safe_load(SMOKE.read_text())
    smoke.pop("task")
    raw = {"base": str(ROOT / "configs" / shipped), **smoke, "rounds": 1, "task": task}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_tiny(shipped: str, tmp_path: Path, task: dict[str, Any]) -> Path:
    """`tpt run` (a subprocess, as a user runs it) of `tiny_config(shipped, ..., task)`; the run
    directory, after checking the run succeeded."""
    import os
    import subprocess
    import sys

    config = tiny_config(shipped, tmp_path / "tiny.yaml", task)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "tpt_jax.cli", "run", str(config), "--run-dir", str(run_dir)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir
