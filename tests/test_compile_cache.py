"""The persistent compilation cache `tpt` turns on: where it goes, that a second process
reuses what the first compiled (a resumed run, the next round), and how a user turns it off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
CHILD = """
import jax, jax.numpy as jnp
from tpt_jax import compile_cache
print(compile_cache.enable())
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
"""


def run_child(env: dict[str, str]) -> str:
    full = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    full |= {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(ROOT), **env}
    full["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # cache even this tiny program
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=full, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def entries(path: Path) -> set[str]:
    return {p.name for p in path.rglob("*") if p.is_file()} if path.exists() else set()


def test_on_by_default_under_the_user_cache_dir_and_reused(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path), "TPT_COMPILE_CACHE": ""}
    cache = tmp_path / "tpt_jax" / "xla"
    assert run_child(env) == str(cache)
    first = entries(cache)
    assert first  # the program was written
    run_child(env)
    assert entries(cache) == first  # the second process compiled nothing new: it loaded


def test_a_chosen_dir_or_off(tmp_path: Path) -> None:
    chosen = tmp_path / "mine"
    assert run_child({"TPT_COMPILE_CACHE": str(chosen)}) == str(chosen) and entries(chosen)
    home = tmp_path / "home"
    assert run_child({"TPT_COMPILE_CACHE": "off", "XDG_CACHE_HOME": str(home)}) == "None"
    assert not entries(home)
    theirs = tmp_path / "theirs"
    assert run_child({"JAX_COMPILATION_CACHE_DIR": str(theirs)}) == str(theirs)
    assert entries(theirs)  # JAX's own variable, respected
