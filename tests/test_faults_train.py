"""Reliability of training and saving under faults: NaN/Inf steps (train.on_nan skip and stop,
injected with TPT_NAN_AT), a disk that fills or a directory that cannot exist during a save, and
kill -9 in the middle of a checkpoint write."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from tpt_jax import checkpoint as ckpt
from tpt_jax import train as train_mod
from tpt_jax.config import TrainConfig
from tpt_jax.data import SFTExample
from tpt_jax.errors import CheckpointError, TptError
from tpt_jax.models.config import PRESETS
from tpt_jax.models.transformer import Transformer, init_model
from tpt_jax.sharding import make_mesh

ROOT = Path(__file__).parents[1]
TINY = dict(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
    num_kv_heads=2, head_dim=8,
)  # fmt: skip
LLAMA = PRESETS["smollm2-135m"].replace(**TINY)
# Large enough that Orbax writes a data file over the 8 KiB file-size limit used below.
WIDE = LLAMA.replace(vocab_size=256, hidden_size=64, intermediate_size=96, head_dim=16)
RNG = np.random.default_rng(0)
EXAMPLES = [
    SFTExample(
        tuple(RNG.integers(1, 64, RNG.integers(2, 6)).tolist()),
        tuple(RNG.integers(1, 64, RNG.integers(2, 8)).tolist()),
    )
    for _ in range(8)
]
# 8 examples, 4 per step in 2 microbatches, 2 epochs: 4 steps, a train state after each.
CFG = TrainConfig(
    lr=3e-2, global_batch=4, micro_batch=2, max_len=16, epochs=2, eval_every=1,
    compute_dtype="float32",
)  # fmt: skip


def train(work: Path, cfg: TrainConfig, log=None):
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    model = init_model(LLAMA, seed=1)
    return train_mod.train(model, mesh, EXAMPLES, EXAMPLES, cfg, seed=0, work_dir=work, log=log)


def flat(model: Transformer) -> dict:
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def bits(tree) -> list[bytes]:
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def params_state(model: Transformer) -> dict:
    """A train state of just the parameters."""
    return {"params": nnx.state(model, nnx.Param)}


def target_of(state):
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def load_state(directory: Path, cfg: TrainConfig = CFG):
    graphdef, params = nnx.split(init_model(LLAMA, seed=1), nnx.Param)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    target = train_mod._compiled(graphdef, params, mesh, cfg, 4).state_target
    return ckpt.load_train_state(directory, target)


# --- NaN / Inf ------------------------------------------------------------------------------


def wait_for_state(directory: Path, step: int) -> None:
    """Until the train state of `step` is committed and the one before deleted (saves run on
    Orbax's background threads; the next one is submitted only after this log call returns)."""
    deadline = time.monotonic() + 60
    while (ckpt.read_train_state_meta(directory) or {}).get("step") != step or (
        len(list(directory.iterdir())) != 1
    ):
        assert time.monotonic() < deadline, f"no train state of step {step} in {directory}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory):
    """on_nan: skip with step 3 of 4 poisoned; the train state of every step kept aside."""
    work = tmp_path_factory.mktemp("skip")
    logged = []

    def log(record):
        if "loss" in record:
            logged.append(record)
            if record["step"] >= 2:  # the previous step's state is saved (in the background)
                wait_for_state(work / "state", record["step"] - 1)
                shutil.copytree(work / "state", work / f"snap_{record['step'] - 1}")

    os.environ["TPT_NAN_AT"] = "3"
    try:
        model, result = train(work, dataclasses.replace(CFG, on_nan="skip"), log)
    finally:
        del os.environ["TPT_NAN_AT"]
    return work, flat(model), result, logged


def test_skip_leaves_the_poisoned_step_out_and_goes_on(skipped_run) -> None:
    work, params, result, logged = skipped_run
    assert result.steps == 4 and result.nonfinite_skipped == 1
    assert [r["nonfinite_skipped"] for r in logged] == [0, 0, 1, 1]
    steps = [h for h in result.history if "loss" in h]
    assert [h.get("skipped", False) for h in steps] == [False, False, True, False]
    assert np.isnan(steps[2]["loss"]) and np.isnan(steps[2]["grad_norm"])
    assert all(np.isfinite(h["loss"]) for h in steps if not h.get("skipped"))
    assert result.final_loss == steps[3]["loss"]
    assert result.tokens == sum(h["tokens"] for h in steps) - steps[2]["tokens"]
    # The optimizer's step count did not advance: step 4 uses step 3's learning rate.
    assert steps[3]["lr"] == steps[2]["lr"] < steps[1]["lr"]  # cosine decay after step 2
    (s2, m2), (s3, m3) = load_state(work / "snap_2"), load_state(work / "snap_3")
    assert bits(s3) == bits(s2)  # parameters and optimizer state untouched by step 3
    assert (m2["step"], m3["step"], m3["nonfinite_skipped"]) == (2, 3, 1)
    s4, m4 = load_state(work / "state")
    assert bits(s4["params"]) != bits(s3["params"]) and m4["nonfinite_skipped"] == 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(s4))
    assert all(np.isfinite(v).all() for v in params.values())


def test_stop_keeps_the_last_good_state_and_resumes_with_skip(
    skipped_run, tmp_path: Path, monkeypatch
) -> None:
    _, skip_params, skip_result, _ = skipped_run
    events = []
    saver = ckpt.AsyncSaver
    real_state, real_ckpt = saver.save_train_state, saver.save_checkpoint
    monkeypatch.setattr(
        saver,
        "save_train_state",
        lambda o, d, s, m: events.append(m["step"]) or real_state(o, d, s, m),
    )
    monkeypatch.setattr(
        saver, "save_checkpoint", lambda o, m, d: events.append("best") or real_ckpt(o, m, d)
    )
    monkeypatch.setenv("TPT_NAN_AT", "3")
    with pytest.raises(TptError) as info:
        train(tmp_path, CFG)  # on_nan: stop, the default
    assert str(info.value) == (
        f"train: loss is NaN at step 3 of 4 (epoch 2 of 2); stopped; the last good train state "
        f"(step 2) is in {tmp_path / 'state'}; train.on_nan=skip skips such steps"
    )
    assert events[-1] == 2  # nothing was written after the bad step
    state, meta = load_state(tmp_path / "state")
    assert meta["step"] == 2 and meta["nonfinite_skipped"] == 0
    assert all(np.isfinite(v).all() for v in flat(ckpt.load_checkpoint(tmp_path / "best")).values())
    # The same run with on_nan: skip resumes from step 2 (on_nan is not part of the run's
    # identity) and ends where an uninterrupted skipping run ends, bit for bit.
    events.clear()
    logged = []
    model, result = train(tmp_path, dataclasses.replace(CFG, on_nan="skip"), logged.append)
    assert [r["step"] for r in logged if "loss" in r] == [3, 4]
    assert json.dumps(result.history) == json.dumps(skip_result.history)  # NaN == NaN here
    assert result.nonfinite_skipped == 1 and result.best_step == skip_result.best_step
    got = flat(model)
    assert all(np.array_equal(got[k], skip_params[k]) for k in skip_params)


def test_stop_message_names_gradient_blowups_and_unsaved_runs(tmp_path: Path) -> None:
    record = {"step": 1, "epoch": 0, "loss": 2.5, "grad_norm": float("inf")}
    message = train_mod._nonfinite_message(record, 4, CFG, tmp_path / "state", None)
    assert message == (
        "train: gradient norm is +Inf (loss 2.5) at step 1 of 4 (epoch 1 of 2); stopped; "
        "no train state was saved before it; train.on_nan=skip skips such steps"
    )


# --- disk full, unwritable directory ---------------------------------------------------------


def _full_disk_at_commit(point: str) -> None:
    """Orbax wrote the arrays; then the disk is full (the commit's own writes fail)."""
    if point == "checkpoint.write":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("kind", ["checkpoint", "train state"])
def test_disk_full_keeps_the_previous_save(tmp_path: Path, monkeypatch, kind) -> None:
    old, new = init_model(LLAMA, seed=1), init_model(LLAMA, seed=2)
    target = tmp_path / "runs" / "x" / "ck"
    if kind == "checkpoint":
        save = lambda m: ckpt.save_checkpoint(m, target)  # noqa: E731
        load = lambda: flat(ckpt.load_checkpoint(target))  # noqa: E731
    else:
        save = lambda m: ckpt.save_train_state(target, params_state(m), {"step": 1})  # noqa: E731
        abstract = target_of(params_state(old))
        load = lambda: ckpt.load_train_state(target, abstract)[0]  # noqa: E731
    save(old)
    before = load()
    monkeypatch.setattr(ckpt.faults, "reached", _full_disk_at_commit)
    with pytest.raises(CheckpointError) as info:
        save(new)
    assert str(info.value) == (
        f"{target}: cannot write {kind} (No space left on device); "
        f"the previous {kind} there is intact"
    )
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in target.parent.iterdir()) == ["ck"]
    assert sorted(p.name for p in target.iterdir()) == ["0"]  # the uncommitted step removed
    monkeypatch.undo()
    assert bits(load()) == bits(before)
    save(new)  # with space again, the next save works
    assert bits(load()) != bits(before)


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write fails instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
from tpt_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_tpt_convert_onto_a_full_disk_prints_one_line(tmp_path: Path) -> None:
    """The kernel refuses TensorStore's write (RLIMIT_FSIZE: EFBIG where a full disk gives
    ENOSPC), inside Orbax's writer threads: `tpt convert` prints one line and exits 2, the
    checkpoint it was replacing is intact, and no temporary directory is left."""
    old, new = init_model(WIDE, seed=1), init_model(WIDE, seed=2)
    ckpt.save_checkpoint(new, tmp_path / "src")
    ckpt.save_checkpoint(old, tmp_path / "ck")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(ROOT)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # its writes would hit the file-size limit too
    args = ["convert", str(tmp_path / "src"), str(tmp_path / "ck"), "--to", "orbax"]
    child = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == 2
    assert child.stderr == (
        f"tpt: error: {tmp_path / 'ck'}: cannot write checkpoint (File too large); "
        "the previous checkpoint there is intact\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "src"]
    assert bits(flat(ckpt.load_checkpoint(tmp_path / "ck"))) == bits(flat(old))


def test_a_parent_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("not a directory")
    model = init_model(LLAMA, seed=1)
    for target in (tmp_path / "runs" / "ck", tmp_path / "runs" / "x" / "ck"):
        with pytest.raises(CheckpointError) as info:
            ckpt.save_checkpoint(model, target)
        assert str(info.value) == (
            f"{target}: cannot write checkpoint ({tmp_path / 'runs'} is a file, not a "
            "directory); nothing was written"
        )
    with pytest.raises(CheckpointError, match=r"cannot write train state \(.* is a file"):
        ckpt.save_train_state(tmp_path / "runs" / "state", {"x": np.zeros(2)}, {})
    assert (tmp_path / "runs").read_text() == "not a directory"


# --- kill -9 during a save -------------------------------------------------------------------

CHILD = """
import sys
import time
from pathlib import Path
from flax import nnx
from tpt_jax import checkpoint as ckpt
from tpt_jax.models.config import PRESETS
from tpt_jax.models.transformer import init_model
kind, target, tiny = sys.argv[1], Path(sys.argv[2]), eval(sys.argv[3])
model = init_model(PRESETS["smollm2-135m"].replace(**tiny), seed=7)
if kind == "checkpoint":
    ckpt.save_checkpoint(model, target)
else:
    ckpt.save_train_state(target, {"params": nnx.state(model, nnx.Param)}, {"step": 7})
print("not killed")
"""


@pytest.mark.parametrize(
    "point, kind, survivor",
    [
        ("checkpoint.write", "checkpoint", "old"),  # step written, not committed (renamed)
        ("checkpoint.write", "train state", "old"),
        ("checkpoint.commit", "checkpoint", "new"),  # committed; the old step not yet deleted
    ],
)
def test_kill_9_during_a_save_leaves_old_or_new_never_half(
    tmp_path: Path, point, kind, survivor
) -> None:
    old, new = init_model(LLAMA, seed=1), init_model(LLAMA, seed=7)
    target = tmp_path / "ck"
    if kind == "checkpoint":
        save = lambda m: ckpt.save_checkpoint(m, target)  # noqa: E731
        load = lambda: flat(ckpt.load_checkpoint(target))  # noqa: E731
        content = flat
    else:
        save = lambda m: ckpt.save_train_state(target, params_state(m), {"step": 1})  # noqa: E731
        abstract = target_of(params_state(old))
        load = lambda: ckpt.load_train_state(target, abstract)[0]  # noqa: E731
        content = params_state
    save(old)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "TPT_KILL_AT": point}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    child = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(target), repr(TINY)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert bits(load()) == bits(content(old if survivor == "old" else new))
    steps = sorted(p.name for p in target.iterdir())
    if point == "checkpoint.write":  # the uncommitted step is Orbax's tmp dir, never loaded
        assert steps[0] == "0" and re.fullmatch(rf"1{re.escape(ckpt.TMP_MARK)}.*", steps[1])
    else:
        assert steps == ["0", "1"]
    # The next save ignores the debris and removes it.
    save(new)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"] and len(list(target.iterdir())) == 1
    assert bits(load()) == bits(content(new))


TRAIN_CHILD = """
import dataclasses, sys
from pathlib import Path
from test_faults_train import CFG, train
train(Path(sys.argv[1]), dataclasses.replace(CFG, select="last"))
print("not killed")
"""


def test_kill_9_during_a_background_save_while_training_resumes_exactly(tmp_path: Path) -> None:
    """The 3rd train-state save (step 3 of 4) is killed mid-write on its background thread while
    the main thread trains on: step 2's state stays readable and the resumed run ends where an
    uninterrupted one does, bit for bit."""
    cfg = dataclasses.replace(CFG, select="last")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    env |= {"TPT_KILL_AT": "checkpoint.write:3"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    work = tmp_path / "killed"
    child = subprocess.run(
        [sys.executable, "-c", TRAIN_CHILD, str(work)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    _, meta = load_state(work / "state", cfg)
    assert meta["step"] == 2
    model, resumed = train(work, cfg)
    want_model, want = train(tmp_path / "whole", cfg)
    assert json.dumps(resumed.history) == json.dumps(want.history)
    assert bits(nnx.state(model, nnx.Param)) == bits(nnx.state(want_model, nnx.Param))
