"""Several JAX processes on this machine (`launch/local.sh`, jax.distributed over CPU with gloo
collectives), as on a pod slice or a GPU cluster: the engine's samples equal one process's, and
the launcher stops every process when one fails."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest
from hf_tiny import make_hf_model
from mp_generate import samples

ROOT = Path(__file__).parents[1]
LOCAL = ROOT / "launch" / "local.sh"


def local(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # This process's XLA_FLAGS (8 devices) and JAX_PLATFORMS pass through: the launcher sets
    # its own device count and platform over them.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run(
        ["bash", str(LOCAL), *args], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_llama")
    make_hf_model("llama_tied").save_pretrained(path)
    return path


@pytest.mark.parametrize("mesh", ["1,4,1", "2,1,2"], ids=["fsdp-over-processes", "data-tensor"])
def test_engine_samples_across_two_processes_equal_one_device(tiny, mesh: str) -> None:
    """2 processes x 2 devices: prompts and slot state built per process from the same host
    data, tokens gathered back to every process; the samples are one device's, token for
    token."""
    proc = local(
        "2", "--devices", "2", "--", sys.executable, "tests/mp_generate.py", str(tiny), mesh
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["processes"] == 2
    assert out["samples"] == samples(str(tiny), [1, 1, 1], jax.devices()[:1])


def test_local_launcher_stops_every_process_when_one_fails(tmp_path: Path) -> None:
    script = (
        "import os, sys, time; "
        "time.sleep(120 if os.environ['TPT_PROCESS_ID'] == '0' else 0); sys.exit(3)"
    )
    began = time.monotonic()
    proc = local("2", "--logs", str(tmp_path), "--", sys.executable, "-c", script)
    assert proc.returncode == 3
    assert time.monotonic() - began < 60  # process 0 was stopped, not waited for
    assert "process 1 exited with 3" in proc.stderr and (tmp_path / "process-1.log").exists()


@pytest.mark.parametrize(
    "args", [[], ["2"], ["0", "--", "true"], ["2", "--devices", "x", "--", "true"]]
)
def test_local_launcher_usage(args: list[str]) -> None:
    proc = local(*args)
    assert proc.returncode == 2 and "usage:" in proc.stderr
