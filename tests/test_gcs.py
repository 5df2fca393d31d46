"""Checkpoints on `gs://`, against a local GCS emulator (gcp-storage-emulator, in memory): what
a pod slice writing to a bucket does, through the same Orbax CheckpointManager (its commit-file
mode there, since a rename on GCS is a copy) and etils' `gs://` paths (gcsfs, the `gcs` extra).
Both are test dependencies: this never skips."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import gcp_storage_emulator.server as emulator
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from gcp_storage_emulator.handlers import objects

from tpt_jax import checkpoint as ckpt
from tpt_jax import storage
from tpt_jax.errors import CheckpointError, TptError
from tpt_jax.models.config import PRESETS
from tpt_jax.models.transformer import init_model


def _send_generation_headers() -> None:
    """GCS answers every media download with the object's `x-goog-generation` (and
    metageneration), which TensorStore reads to update OCDBT manifests conditionally; the
    emulator leaves them out, which TensorStore reports as "Malformed StorageGeneration"
    whenever a save re-reads a manifest it wrote. Add them, as the service does."""
    original = objects.download
    if getattr(original, "sends_generation", False):
        return

    def download(request, response, storage, *args, **kwargs):
        original(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the original answered 404
            return
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])

    download.sends_generation = True
    for _, handlers in emulator.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is original:
                handlers[method] = download
    objects.download = download


@pytest.fixture(scope="module")
def bucket():
    _send_generation_headers()
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("localhost", port, in_memory=True, default_bucket="bucket")
    server.start()
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    patch = pytest.MonkeyPatch()
    url = f"http://localhost:{port}"
    patch.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs (directory listings, small files)
    patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)  # TensorStore (the arrays)
    yield "gs://bucket"
    patch.undo()
    server.stop()


def _params(model) -> list[np.ndarray]:
    return [np.asarray(v) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_checkpoint_and_train_state_round_trip_on_gs(bucket: str) -> None:
    cfg = PRESETS["smollm2-tiny"]
    old, new = init_model(cfg, 0, jnp.float32), init_model(cfg, 1, jnp.float32)
    target = f"{bucket}/runs/x/round_1/model"
    ckpt.save_checkpoint(old, target)
    ckpt.save_checkpoint(new, target)  # the next step commits, then the previous is deleted
    assert ckpt.is_checkpoint(target)
    assert sorted(p.name for p in ckpt._path(target).iterdir()) == ["1"]
    for got, want in zip(_params(ckpt.load_checkpoint(target)), _params(new), strict=True):
        np.testing.assert_array_equal(got, want)
    # A step without Orbax's commit file (a save killed mid-write) is never loaded.
    debris = ckpt._path(target) / "2"
    debris.mkdir(parents=True)
    (debris / "_CHECKPOINT_METADATA").write_text("{}")
    for got, want in zip(_params(ckpt.load_checkpoint(target)), _params(new), strict=True):
        np.testing.assert_array_equal(got, want)

    state = f"{bucket}/runs/x/round_1/train/state"
    arrays = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(7)}
    ckpt.save_train_state(state, arrays, {"step": 7})
    assert ckpt.read_train_state_meta(state) == {"step": 7}
    restored, meta = ckpt.load_train_state(state, arrays)
    np.testing.assert_array_equal(restored["w"], arrays["w"])
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_checkpoint(f"{bucket}/runs/missing")


# --- a whole run whose run directory is on gs:// -------------------------------------------------


def _downloaded(remote: str, local: Path) -> Path:
    storage.copytree(storage.run_path(remote), local)
    return local


def test_a_two_process_run_on_gs_killed_twice_equals_a_local_run(
    bucket: str, tmp_path: Path
) -> None:
    """`tpt run --run-dir gs://...` in 2 processes (launch/local.sh, as a pod slice without a
    shared mount runs it), process 1 killed by SIGKILL in THINK and again in TRAIN and the
    same command relaunched each time (the relaunch takes over the dead process's lease):
    every trace, selection, stat, summary, manifest and metric equals a one-process local run
    on the same 2 devices, and so do the report and the exported model."""
    import subprocess
    import sys

    from test_bad_input import ROOT, SMOKE, TWO, env, latest, outputs

    local = tmp_path / "local"
    run = [sys.executable, "-m", "tpt_jax.cli", "run", str(SMOKE), *TWO]
    two_devices = {**env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run([*run, "--run-dir", str(local)], env=two_devices, cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    remote = f"{bucket}/runs/two"
    two = ["bash", str(ROOT / "launch" / "local.sh"), "2", "--", *run, "--run-dir", remote]
    for point in ("think.chunk:2", "train.step:5"):
        kill = {**env(), "TPT_KILL_AT": point, "TPT_KILL_PROCESS": "1"}
        killed = subprocess.run(two, env=kill, cwd=ROOT, capture_output=True, text=True)
        assert "process 1 exited with 137" in killed.stderr, killed.stderr[-3000:]
    resumed = subprocess.run(two, env=env(), cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Pass@1" in resumed.stdout  # the report, read from gs://

    copy = tmp_path / "copy"
    storage.copytree(storage.run_path(remote), copy)
    a = outputs(local)
    b = json.loads(json.dumps(outputs(copy)).replace(remote, "RUN"))
    assert a["round_1/think/traces.jsonl"] and a["round_1/prune/selected.jsonl"]
    assert latest(b.pop("metrics")) == a.pop("metrics")  # the killed attempts logged too
    assert a == b
    exported = [d / "export" / "model.safetensors" for d in (local, copy)]
    assert exported[0].read_bytes() == exported[1].read_bytes()
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        p.name for p in local.iterdir() if p.name != ".lock"
    )  # no lease left behind by a clean exit; the same files otherwise (metrics, tb, ...)
    assert not (copy / "round_1" / "train" / "state").exists()  # TRAIN's scratch deleted


def test_the_gs_lease_admits_one_run_and_frees_on_release(
    bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(storage, "LEASE_SECONDS", 4.0)  # heartbeats every second
    run_dir = storage.run_path(f"{bucket}/runs/leased")
    run_dir.mkdir(parents=True, exist_ok=True)
    first = storage.RunLock(run_dir)
    with pytest.raises(TptError, match=r"another tpt process .*\(lease held by .* pid"):
        storage.RunLock(run_dir)  # a live holder: waits 1.5 lease periods, then refuses
    first.close()
    assert not (run_dir / ".lock").exists()
    second = storage.RunLock(run_dir)  # free at once
    second._lease._stop.set()  # its holder hangs: no more heartbeats
    second._lease._thread.join()
    time.sleep(4.5)
    third = storage.RunLock(run_dir)  # the stale lease is taken over
    assert json.loads((run_dir / ".lock").read_text())["owner"] == third._lease.owner
    # The hung holder wakes up: its next heartbeat sees the new owner, says so and stops,
    # leaving the new holder's lease as it is.
    second._lease._stop = threading.Event()
    second._lease._renew()  # returns: it does not renew a lease it lost
    assert "lost the lease" in capsys.readouterr().err
    assert json.loads((run_dir / ".lock").read_text())["owner"] == third._lease.owner
    third.close()
