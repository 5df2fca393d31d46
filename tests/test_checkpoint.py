"""Orbax checkpoints: bit-exact round trips across meshes and device counts, dtype casts, and
crash safety (interrupted saves never loaded, an old checkpoint survives a failed overwrite)."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tpt_jax import checkpoint as ckpt
from tpt_jax.checkpoint import (
    TMP_MARK,
    checkpoint_tokenizer_dir,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tpt_jax.errors import CheckpointError
from tpt_jax.models.config import PRESETS, ModelConfig
from tpt_jax.models.transformer import Transformer, init_model
from tpt_jax.sharding import SAMPLE_RULES, TRAIN_RULES, make_mesh, state_shardings

TINY = dict(
    vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2
)
LLAMA = PRESETS["smollm2-135m"].replace(**TINY, head_dim=16)
GEMMA3 = PRESETS["gemma3-270m"].replace(
    **TINY,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=4,
    layer_types=("sliding_attention", "full_attention"),
    attn_logit_softcap=50.0,
    final_logit_softcap=30.0,
)
CONFIGS = {"llama": LLAMA, "gemma3": GEMMA3}
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 9)), dtype=jnp.int32)


def _placed(cfg: ModelConfig, mesh_shape, rules=TRAIN_RULES, dtype=jnp.float32) -> Transformer:
    """A random model with every parameter placed on `mesh_shape` with its rules' shardings."""
    model = init_model(cfg, seed=1, dtype=dtype)
    return _reshard(model, make_mesh(mesh_shape, jax.devices()[: int(np.prod(mesh_shape))]), rules)


def _reshard(model: Transformer, mesh, rules) -> Transformer:
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh, rules)))


def _params(model: Transformer) -> dict:
    return dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _assert_same_params(a: Transformer, b: Transformer, dtype=None) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for path in pa:
        x, y = np.asarray(pa[path][...]), np.asarray(pb[path][...])
        if dtype is not None:
            x = x.astype(dtype)
        assert x.dtype == y.dtype, path
        # Compare bit patterns so that even -0.0 vs 0.0 or NaN payloads would count.
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), path


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("target", [(2, 2, 2), (1, 2, 4), (1, 1, 1)])
def test_restore_on_other_mesh_is_bit_exact(tmp_path: Path, name: str, target) -> None:
    cfg = CONFIGS[name]
    model = _placed(cfg, (1, 8, 1))
    save_checkpoint(model, tmp_path / "ck")
    mesh = make_mesh(target, jax.devices()[: int(np.prod(target))])
    restored = load_checkpoint(tmp_path / "ck", mesh=mesh)

    assert restored.config == cfg
    _assert_same_params(model, restored)
    expected = state_shardings(nnx.state(restored, nnx.Param), mesh, SAMPLE_RULES)
    for (path, var), (_, sharding) in zip(
        _params(restored).items(), nnx.to_flat_state(expected), strict=True
    ):
        assert var[...].sharding == sharding, path
        assert var.get_metadata()["logical_axes"], path  # metadata survives for later resharding
    # Same params with the same shardings run the same program: logits are bit-identical.
    same_layout = _reshard(model, mesh, SAMPLE_RULES)
    np.testing.assert_array_equal(np.asarray(restored(TOKENS)), np.asarray(same_layout(TOKENS)))
    np.testing.assert_allclose(np.asarray(restored(TOKENS)), np.asarray(model(TOKENS)), atol=1e-5)


def test_default_mesh_is_one_device_and_train_rules(tmp_path: Path) -> None:
    model = _placed(LLAMA, (2, 2, 2), SAMPLE_RULES)
    save_checkpoint(model, tmp_path / "ck")
    restored = load_checkpoint(tmp_path / "ck")
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(nnx.state(restored))} == {1}
    _assert_same_params(model, restored)
    mesh = make_mesh((1, 4, 2), jax.devices())
    restored = load_checkpoint(tmp_path / "ck", mesh=mesh, rules=TRAIN_RULES)
    q = restored.layers[0].self_attn.q_proj[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    _assert_same_params(model, restored)


def test_dtype_cast_on_restore(tmp_path: Path) -> None:
    model = _placed(GEMMA3, (1, 8, 1))
    save_checkpoint(model, tmp_path / "ck")
    restored = load_checkpoint(tmp_path / "ck", dtype=jnp.bfloat16, mesh=make_mesh((2, 2, 2)))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(restored))} == {jnp.dtype(jnp.bfloat16)}
    _assert_same_params(model, restored, dtype=jnp.bfloat16)


def test_relative_paths_work(tmp_path: Path, monkeypatch) -> None:
    """Users type `runs/x/model`; Orbax itself accepts only absolute paths."""
    monkeypatch.chdir(tmp_path)
    model = _placed(LLAMA, (1, 8, 1))
    save_checkpoint(model, Path("runs") / "ck")
    _assert_same_params(model, load_checkpoint(Path("runs") / "ck"))


def test_saved_dtype_is_the_default(tmp_path: Path) -> None:
    model = _placed(LLAMA, (1, 8, 1), dtype=jnp.bfloat16)
    save_checkpoint(model, tmp_path / "ck")
    assert ckpt.checkpoint_config(tmp_path / "ck")["dtype"] == "bfloat16"
    restored = load_checkpoint(tmp_path / "ck")
    _assert_same_params(model, restored)
    up = load_checkpoint(tmp_path / "ck", dtype=jnp.float32)
    _assert_same_params(model, up, dtype=np.float32)


def test_layout_config_and_tokenizer(tmp_path: Path) -> None:
    class FakeTokenizer:
        def save_pretrained(self, directory: str) -> None:
            (Path(directory) / "tokenizer.json").write_text("{}")

    directory = save_checkpoint(
        _placed(GEMMA3, (1, 8, 1)), tmp_path / "ck", tokenizer=FakeTokenizer()
    )
    # An Orbax CheckpointManager root keeping one step (numbered by save), the tokenizer beside.
    assert sorted(p.name for p in directory.iterdir()) == ["0", "tokenizer"]
    assert {"config", "params"} <= {p.name for p in (directory / "0").iterdir()}
    hf = json.loads((directory / "0" / "config" / "metadata").read_text())
    assert hf["tpt_jax_format"] == 2 and hf["model_type"] == "gemma3_text"
    assert ModelConfig.from_hf_config(hf) == GEMMA3
    assert checkpoint_tokenizer_dir(directory) == directory / "tokenizer"
    assert (checkpoint_tokenizer_dir(directory) / "tokenizer.json").is_file()
    save_checkpoint(_placed(LLAMA, (1, 8, 1)), tmp_path / "plain")
    assert checkpoint_tokenizer_dir(tmp_path / "plain") is None
    assert is_checkpoint(directory) and not is_checkpoint(tmp_path / "missing")
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(LLAMA.to_hf_config()))
    assert not is_checkpoint(hf_dir)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_loads_a_checkpoint_of_the_previous_format(tmp_path: Path) -> None:
    """Format 1 (our own commit protocol, before Orbax's manager): config.json, params/ and a
    COMMITTED marker at the top. Runs made then still load; saves write format 2."""
    model = _placed(LLAMA, (1, 8, 1))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    checkpointer = ckpt.ocp.Checkpointer(ckpt.ocp.StandardCheckpointHandler())
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpointer.save(legacy / "params", args=ckpt.ocp.args.StandardSave(params))
    checkpointer.close()
    (legacy / "config.json").write_text(
        json.dumps({**ckpt._config_json(model), "tpt_jax_format": 1})
    )
    (legacy / "COMMITTED").write_text("tpt_jax checkpoint format 1\n")
    assert is_checkpoint(legacy)
    _assert_same_params(model, load_checkpoint(legacy))
    newer = init_model(LLAMA, seed=5)
    save_checkpoint(newer, legacy)  # saving there writes format 2 beside it, and that loads
    _assert_same_params(newer, load_checkpoint(legacy))


def _one_line_error(directory: Path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(directory)
    message = str(info.value)
    assert "\n" not in message and str(directory) in message
    return message


# A failed Orbax restore leaves a tensorstore callback aimed at its closed event loop; collect
# it here so the harmless "Event loop is closed" report stays with this test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_errors_name_the_path(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "nope", "not found")
    save_checkpoint(_placed(LLAMA, (1, 8, 1)), tmp_path / "ck")
    config = tmp_path / "ck" / "0" / "config" / "metadata"
    config.write_text("{not json")
    _one_line_error(tmp_path / "ck", "cannot restore")
    config.write_text(json.dumps(LLAMA.to_hf_config()))
    _one_line_error(tmp_path / "ck", "not a tpt_jax checkpoint")
    shutil.rmtree(tmp_path / "ck" / "0" / "params" / "d")
    config.write_text(json.dumps(ckpt._config_json(init_model(LLAMA))))
    _one_line_error(tmp_path / "ck", "cannot restore")
    gc.collect()


def test_an_interrupted_save_is_never_loaded(tmp_path: Path) -> None:
    model = _placed(LLAMA, (1, 8, 1))
    save_checkpoint(model, tmp_path / "ck")
    # What a crash before the commit leaves: a complete-looking step under Orbax's tmp name.
    debris = tmp_path / "ck" / f"1{TMP_MARK}-1700000000"
    shutil.copytree(tmp_path / "ck" / "0", debris)
    _assert_same_params(model, load_checkpoint(tmp_path / "ck"))  # the committed step 0
    shutil.rmtree(tmp_path / "ck" / "0")
    assert is_checkpoint(tmp_path / "ck")  # recognised as ours, so callers report the reason
    message = _one_line_error(tmp_path / "ck", "no committed checkpoint, only an interrupted")
    assert debris.name in message
    save_checkpoint(model, tmp_path / "ck")  # the next save clears the debris
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["0"]


def test_overwrite_keeps_old_until_new_is_committed(tmp_path: Path, monkeypatch) -> None:
    old, new = _placed(LLAMA, (1, 8, 1)), init_model(LLAMA, seed=7)
    save_checkpoint(old, tmp_path / "ck")
    seen = {}

    def reached(point: str) -> None:  # what is on disk at each point of the commit
        seen[point] = sorted(p.name for p in (tmp_path / "ck").iterdir())
        if point == "checkpoint.write" and "fail" in seen:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.faults, "reached", reached)
    seen["fail"] = []
    with pytest.raises(ckpt.CheckpointWriteError, match="No space left on device") as info:
        save_checkpoint(new, tmp_path / "ck")
    assert str(info.value).endswith("the previous checkpoint there is intact")
    _assert_same_params(old, load_checkpoint(tmp_path / "ck"))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["0"]  # the partial copy gone

    seen.clear()
    save_checkpoint(new, tmp_path / "ck")
    assert seen["checkpoint.write"][0] == "0" and TMP_MARK in seen["checkpoint.write"][1]
    assert seen["checkpoint.commit"] == ["0", "1"]  # committed; the old one deleted after
    _assert_same_params(new, load_checkpoint(tmp_path / "ck"))
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a tpt_jax checkpoint"):
        save_checkpoint(init_model(LLAMA), tmp_path / "ck")
    assert (tmp_path / "ck" / "notes.txt").read_text() == "mine"
    with pytest.raises(CheckpointError, match="not a tpt_jax checkpoint"):
        save_checkpoint(init_model(LLAMA), tmp_path / "ck" / "notes.txt")
    (tmp_path / "empty").mkdir()
    save_checkpoint(init_model(LLAMA), tmp_path / "empty")
    assert is_checkpoint(tmp_path / "empty")


# --- train states -----------------------------------------------------------------------------


def _train_state(mesh_shape) -> dict:
    """Parameters and Adam moments (distinct values), sharded on `mesh_shape`."""
    import optax

    params = nnx.state(_placed(LLAMA, mesh_shape), nnx.Param)
    opt = optax.adam(1e-3).init(params)
    opt = jax.tree.map(lambda x: x + 3 if x.ndim == 0 else x + 0.5, opt)
    return {"params": params, "opt": opt}


def _target(state: dict, mesh) -> dict:
    """The state's shapes with a simple other layout: first dimension over fsdp where it fits."""

    def one(x):
        spec = ("fsdp",) if x.ndim and x.shape[0] % mesh.shape["fsdp"] == 0 else ()
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(one, state)


def test_train_state_restores_bit_exact_onto_another_mesh(tmp_path: Path) -> None:
    state = _train_state((1, 8, 1))
    meta = {"step": 7, "best_val_loss": 0.25, "history": [{"step": 1, "loss": 1.5}]}
    ckpt.save_train_state(tmp_path / "state", state, meta)
    assert ckpt.read_train_state_meta(tmp_path / "state") == meta
    mesh = make_mesh((2, 2, 2))
    target = _target(state, mesh)
    restored, restored_meta = ckpt.load_train_state(tmp_path / "state", target)
    assert restored_meta == meta
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for got, want, tgt in zip(
        jax.tree.leaves(restored), jax.tree.leaves(state), jax.tree.leaves(target), strict=True
    ):
        assert got.sharding == tgt.sharding and got.dtype == want.dtype
        bits = lambda a: np.asarray(a).reshape(-1).view(np.uint8)  # noqa: E731
        assert np.array_equal(bits(got), bits(want))
    # Overwriting replaces it atomically, leaving no temporary siblings.
    ckpt.save_train_state(tmp_path / "state", state, {**meta, "step": 8})
    assert ckpt.read_train_state_meta(tmp_path / "state")["step"] == 8
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_train_state_refuses_another_tree_and_uncommitted_states(tmp_path: Path) -> None:
    state = _train_state((1, 8, 1))
    ckpt.save_train_state(tmp_path / "state", state, {"step": 1})
    mesh = make_mesh((1, 8, 1))
    other = {"params": state["params"], "opt": state["opt"][0].mu}  # another optimizer's tree
    with pytest.raises(CheckpointError, match="another model or optimizer"):
        ckpt.load_train_state(tmp_path / "state", _target(other, mesh))
    (tmp_path / "state" / "0").rename(tmp_path / "state" / f"0{TMP_MARK}-1700000000")
    assert ckpt.read_train_state_meta(tmp_path / "state") is None
    with pytest.raises(CheckpointError, match="no committed train state, only an interrupted"):
        ckpt.load_train_state(tmp_path / "state", _target(state, mesh))
    assert ckpt.read_train_state_meta(tmp_path / "missing") is None
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not replacing"):
        ckpt.save_train_state(foreign, state, {})
    gc.collect()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reshard_on_device_equals_loading_the_checkpoint(tmp_path: Path, dtype: str) -> None:
    """TRAIN's model (float32, FSDP over 8 devices) handed to THINK/EVAL on another mesh and
    dtype without disk: every parameter, its dtype and its sharding are exactly what loading
    the saved checkpoint there gives (what a resumed run does)."""
    from tpt_jax.api import reshard

    save_checkpoint(init_model(PRESETS["smollm2-tiny"], 0, jnp.float32), tmp_path / "ck")
    trained = load_checkpoint(tmp_path / "ck", mesh=make_mesh((1, 8, 1)), rules=TRAIN_RULES)
    sample_mesh = make_mesh((1, 2, 4))
    moved = nnx.state(reshard(trained, sample_mesh, SAMPLE_RULES, dtype), nnx.Param)
    loaded = nnx.state(
        load_checkpoint(tmp_path / "ck", mesh=sample_mesh, dtype=jnp.dtype(dtype)), nnx.Param
    )
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(loaded), strict=True):
        assert a.dtype == b.dtype == jnp.dtype(dtype) and a.sharding == b.sharding
        assert np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    assert all(x.is_deleted() for x in jax.tree.leaves(nnx.state(trained, nnx.Param)))


def test_gs_paths_keep_orbaxs_own_commit() -> None:
    """A `gs://` directory reaches Orbax as such (not made a local path), with Orbax's own
    commit for object stores (a commit file: a rename there is a copy); local directories get
    the fsync'd rename. Writing to GCS itself is not tested (no bucket offline)."""
    remote, local = ckpt._path("gs://bucket/runs/x/model"), ckpt._path("runs/x/model")
    assert str(remote) == "gs://bucket/runs/x/model" and local.is_absolute()
    assert ckpt._options(remote).temporary_path_class is None
    assert ckpt._options(local).temporary_path_class is ckpt._DurableRename
