"""Several JAX processes on this machine (`launch/local.sh`, jax.distributed over CPU with gloo
collectives), as on a pod slice or a GPU cluster: the engine's samples equal one process's,
checkpoints move between process counts and meshes, and the launchers (local.sh, and
tpu_pod.sh against a stand-in gcloud) stop every process when one fails. `tpt run` across
processes is tested in tests/test_bad_input.py (beside the one-process run it must equal)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from hf_tiny import make_hf_model
from mp_generate import samples

from tpt_jax.checkpoint import load_checkpoint, save_checkpoint
from tpt_jax.hf_io import load_hf_dir
from tpt_jax.sharding import make_mesh

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


@pytest.fixture(scope="module")
def saved_here(tiny, tmp_path_factory) -> Path:
    """The tiny model as a tpt_jax checkpoint saved by this one process from mesh (1, 8, 1)."""
    model = load_hf_dir(tiny, mesh=make_mesh((1, 8, 1)))
    return save_checkpoint(model, tmp_path_factory.mktemp("saved") / "one_process")


@pytest.mark.parametrize(
    "mesh", ["1,4,1", "2,2,1/1,2,1"], ids=["fsdp-over-processes", "fsdp-over-dcn"]
)
def test_engine_samples_across_two_processes_equal_one_device(
    tiny, saved_here, tmp_path, mesh: str
) -> None:
    """2 processes x 2 devices: prompts and slot state built per process from the same host
    data, tokens gathered back to every process; the samples are one device's, token for
    token. The fsdp-over-dcn case is a hybrid mesh whose fsdp axis crosses processes (the DCN of
    a multi-slice run) and whose data axis stays inside each (in plain device order it would
    cross them); it also loads a checkpoint that one process saved on another mesh and
    saves it again from both processes; this process restores that on two more meshes, and
    every parameter is the original's, bit for bit."""
    source, saved = (str(tiny), []) if mesh == "1,4,1" else (str(saved_here), [str(tmp_path)])
    command = [sys.executable, "tests/mp_generate.py", source, mesh, *[s + "/ck" for s in saved]]
    proc = local("2", "--devices", "2", "--", *command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["processes"] == 2
    assert out["samples"] == samples(str(tiny), [1, 1, 1], jax.devices()[:1])
    if "/" in mesh:
        assert out["fsdp_processes"] == [[0], [1]]
    if saved:
        original = params(load_hf_dir(tiny))
        for shape in ((1, 1, 1), (2, 2, 2)):
            mesh = make_mesh(shape, jax.devices()[: int(np.prod(shape))])
            restored = load_checkpoint(tmp_path / "ck", mesh=mesh)
            assert jax.tree.map(np.array_equal, params(restored), original) == jax.tree.map(
                lambda _: True, original
            ), shape


def params(model) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


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


def test_tpu_pod_launcher_stops_every_worker_when_one_fails(tmp_path: Path) -> None:
    """launch/tpu_pod.sh run, against a stand-in gcloud whose 2 workers are directories here:
    the command starts detached on both, worker 1 fails, the launcher stops worker 0's command
    (its whole process group) and exits 1 naming the failure."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").symlink_to(ROOT / "tests" / "fake_gcloud.sh")
    for i in (0, 1):
        (tmp_path / f"worker-{i}" / "tpt_jax").mkdir(parents=True)
    script = "if [[ $HOME == *worker-1 ]]; then sleep 1; exit 3; fi; sleep 120"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FAKE_ROOT": str(tmp_path), "FAKE_WORKERS": "2", "TPT_POLL_S": "1"}  # fmt: skip
    pod = ["bash", str(ROOT / "launch" / "tpu_pod.sh")]
    proc = subprocess.run([*pod, "run", "my-tpu", "zone-a", "--", "bash", "-c", script],
                          env=env, capture_output=True, text=True, timeout=90)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "a worker failed" in proc.stderr and "exit 3" in proc.stderr
    group = int((tmp_path / "worker-0" / "tpt_jax" / "logs" / "worker.pid").read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("worker 0's command is still running")
    states = subprocess.run([*pod, "status", "my-tpu", "zone-a"], env=env, capture_output=True,
                            text=True, timeout=30).stdout.split("\n")  # fmt: skip
    assert [line.split()[1:] for line in states if line] == [["stopped"], ["exit", "3"]]


@pytest.mark.parametrize("script", ["tpu_pod.sh", "xpk.sh", "slurm.sbatch"])
def test_cluster_launchers_print_usage(script: str) -> None:
    proc = subprocess.run(["bash", str(ROOT / "launch" / script)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
