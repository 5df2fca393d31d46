"""Orbax checkpoints: bit-exact round trips across meshes and device counts, dtype casts, and
crash safety (uncommitted directories refused, an old checkpoint survives a failed overwrite)."""

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
    MARKER,
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
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["dtype"] == "bfloat16"
    restored = load_checkpoint(tmp_path / "ck")
    _assert_same_params(model, restored)
    up = load_checkpoint(tmp_path / "ck", dtype=jnp.float32)
    _assert_same_params(model, up, dtype=np.float32)


def test_layout_config_and_tokenizer(tmp_path: Path) -> None:
    class FakeTokenizer:
        def save_pretrained(self, directory: Path) -> None:
            (Path(directory) / "tokenizer.json").write_text("{}")

    directory = save_checkpoint(
        _placed(GEMMA3, (1, 8, 1)), tmp_path / "ck", tokenizer=FakeTokenizer()
    )
    assert sorted(p.name for p in directory.iterdir()) == [
        MARKER,
        "config.json",
        "params",
        "tokenizer",
    ]
    hf = json.loads((directory / "config.json").read_text())
    assert hf["tpt_jax_format"] == 1 and hf["model_type"] == "gemma3_text"
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
    (tmp_path / "ck" / "config.json").write_text("{not json")
    _one_line_error(tmp_path / "ck", "unreadable")
    (tmp_path / "ck" / "config.json").write_text(json.dumps(LLAMA.to_hf_config()))
    _one_line_error(tmp_path / "ck", "not a tpt_jax checkpoint")
    shutil.rmtree(tmp_path / "ck" / "params" / "d")
    (tmp_path / "ck" / "config.json").write_text(json.dumps(ckpt._config_json(init_model(LLAMA))))
    _one_line_error(tmp_path / "ck", "cannot restore")
    gc.collect()


def test_uncommitted_checkpoint_is_refused(tmp_path: Path) -> None:
    model = _placed(LLAMA, (1, 8, 1))
    save_checkpoint(model, tmp_path / "ck")
    # What a crash before the marker leaves: a complete-looking temporary sibling, no marker.
    crashed = tmp_path / ".ck.tmp-crash"
    shutil.copytree(tmp_path / "ck", crashed)
    (crashed / MARKER).unlink()
    _one_line_error(crashed, "COMMITTED")
    assert is_checkpoint(crashed)  # recognised as ours, so callers report the real reason
    _assert_same_params(model, load_checkpoint(tmp_path / "ck"))
    save_checkpoint(model, tmp_path / "ck")  # the next save clears the debris
    assert not crashed.exists()
    (tmp_path / "ck" / MARKER).unlink()
    _one_line_error(tmp_path / "ck", "COMMITTED")


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_overwrite_keeps_old_until_new_is_complete(tmp_path: Path, monkeypatch, exchange) -> None:
    if not exchange:
        monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    old, new = _placed(LLAMA, (1, 8, 1)), init_model(LLAMA, seed=7)
    save_checkpoint(old, tmp_path / "ck")

    real_save = ckpt.ocp.Checkpointer.save

    def failing_save(self, directory, *args, **kwargs):
        real_save(self, directory, *args, **kwargs)  # the files are written, then it "crashes"
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.ocp.Checkpointer, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(new, tmp_path / "ck")
    _assert_same_params(old, load_checkpoint(tmp_path / "ck"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # the partial copy is gone

    monkeypatch.setattr(ckpt.ocp.Checkpointer, "save", real_save)
    seen = []
    real_swap = ckpt._swap_into_place

    def checking_swap(tmp: Path, directory: Path) -> None:
        seen.append(np.asarray(load_checkpoint(directory).embed_tokens[...]))  # old, intact
        seen.append(np.asarray(load_checkpoint(tmp).embed_tokens[...]))  # new, committed
        real_swap(tmp, directory)

    monkeypatch.setattr(ckpt, "_swap_into_place", checking_swap)
    save_checkpoint(new, tmp_path / "ck")
    np.testing.assert_array_equal(seen[0], np.asarray(old.embed_tokens[...]))
    np.testing.assert_array_equal(seen[1], np.asarray(new.embed_tokens[...]))
    _assert_same_params(new, load_checkpoint(tmp_path / "ck"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_interrupted_two_rename_swap_points_at_the_old_copy(tmp_path: Path, monkeypatch) -> None:
    model = _placed(LLAMA, (1, 8, 1))
    save_checkpoint(model, tmp_path / "ck")
    monkeypatch.setattr(ckpt, "_exchange", lambda a, b: False)
    real_rename = ckpt.os.rename

    def rename(src, dst):  # dies after moving the old checkpoint aside
        real_rename(src, dst)
        if Path(dst).name.startswith(".ck.old-"):
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(init_model(LLAMA, seed=3), tmp_path / "ck")
    message = _one_line_error(tmp_path / "ck", "previous one at")
    backup = Path(message.rsplit(" at ", 1)[1])
    _assert_same_params(model, load_checkpoint(backup))


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
    (tmp_path / "state" / MARKER).unlink()
    assert ckpt.read_train_state_meta(tmp_path / "state") is None
    with pytest.raises(CheckpointError, match="no committed train state"):
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
