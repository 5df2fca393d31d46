"""Checkpoints on `gs://`, against a local GCS emulator (gcp-storage-emulator, in memory): what
a pod slice writing to a bucket does, through the same Orbax CheckpointManager (its commit-file
mode there, since a rename on GCS is a copy) and etils' `gs://` paths (gcsfs, the `gcs` extra).
Both are test dependencies: this never skips."""

from __future__ import annotations

import logging
import socket

import gcp_storage_emulator.server as emulator
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tpt_jax import checkpoint as ckpt
from tpt_jax.errors import CheckpointError
from tpt_jax.models.config import PRESETS
from tpt_jax.models.transformer import init_model


@pytest.fixture(scope="module")
def bucket():
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
