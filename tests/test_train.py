"""SFT training on tiny models: the loss, packing and segment isolation, the schedule, clipping
and weight-decay mask, gradient accumulation, memorisation, best-validation selection, sharded
runs, bf16 compute, and resumption that equals an uninterrupted run bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tpt_jax.checkpoint import is_checkpoint
from tpt_jax.config import TrainConfig
from tpt_jax.data import SFTExample, pack_rows
from tpt_jax.errors import TptError
from tpt_jax.losses import chunked_cross_entropy, masked_cross_entropy
from tpt_jax.models.attention import self_attention_kernel
from tpt_jax.models.config import PRESETS
from tpt_jax.models.transformer import Transformer, init_model
from tpt_jax.sharding import make_mesh
from tpt_jax.train import loss_sums, lr_schedule, make_optimizer, train

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4)
LLAMA = PRESETS["smollm2-135m"].replace(**TINY, num_kv_heads=2, head_dim=8)
GEMMA3 = PRESETS["gemma3-270m"].replace(
    **TINY,
    num_kv_heads=1,
    head_dim=8,
    query_pre_attn_scalar=8,
    sliding_window=3,
    layer_types=("sliding_attention", "full_attention"),
    final_logit_softcap=30.0,
)
RNG = np.random.default_rng(0)
EXAMPLES = [
    SFTExample(
        tuple(RNG.integers(1, 64, RNG.integers(2, 6)).tolist()),
        tuple(RNG.integers(1, 64, RNG.integers(2, 8)).tolist()),
    )
    for _ in range(8)
]
# 8 examples, 4 per step, 5 epochs: 10 steps; validation (and train states) at 0, 4, 8, 10.
CFG = TrainConfig(
    lr=3e-2, global_batch=4, micro_batch=2, max_len=16, epochs=5, eval_every=4,
    compute_dtype="float32",
)  # fmt: skip
ONE_DEVICE = (1, 1, 1)


def params_of(model: Transformer) -> dict:
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def run(
    tmp: Path,
    cfg: TrainConfig = CFG,
    mesh=ONE_DEVICE,
    val=EXAMPLES,
    log=None,
    train_set=EXAMPLES,
    model: Transformer | None = None,
):
    mesh = make_mesh(mesh, jax.devices()[: int(np.prod(mesh))])
    model = model or init_model(LLAMA, seed=1)
    return train(model, mesh, train_set, val, cfg, seed=0, work_dir=tmp, log=log)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model, result = run(tmp_path_factory.mktemp("reference"))
    return params_of(model), result


# --- loss, packing, attention -----------------------------------------------------------------


def test_masked_cross_entropy_matches_log_softmax_and_ignores_masked_junk() -> None:
    logits = RNG.normal(size=(2, 5, 7)).astype(np.float32) * 3 + 1e4  # large: needs max-shift
    targets = RNG.integers(0, 7, (2, 5))
    mask = RNG.random((2, 5)) < 0.6
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    want = -np.take_along_axis(logp, targets[..., None], -1)[..., 0][mask].sum()
    junk = np.where(mask[..., None], logits, np.nan)  # masked positions must not leak in
    total, count = masked_cross_entropy(jnp.asarray(junk), jnp.asarray(targets), jnp.asarray(mask))
    assert total.dtype == jnp.float32 and count == mask.sum()
    np.testing.assert_allclose(total, want, rtol=1e-5)
    total16, _ = masked_cross_entropy(jnp.asarray(logits, jnp.bfloat16), targets, mask)
    assert total16.dtype == jnp.float32 and np.isfinite(total16)


def test_packed_and_unpacked_rows_give_the_same_loss_and_gradients() -> None:
    graphdef, params = nnx.split(init_model(LLAMA, seed=2), nnx.Param)
    grad_fn = jax.jit(jax.value_and_grad(loss_sums, has_aux=True), static_argnums=(1, 3))

    def mean_loss_and_grads(pack: bool):
        rows = pack_rows(EXAMPLES[:5], 16, pack=pack)
        count_rows = len(rows)
        rows = rows.pad_to_multiple(5)  # one shape, one compilation
        (total, count), grads = grad_fn(params, graphdef, rows.arrays(), jnp.float32)
        return total / count, jax.tree.map(lambda g: g / count, grads), count_rows

    packed, packed_grads, packed_rows = mean_loss_and_grads(True)
    single, single_grads, single_rows = mean_loss_and_grads(False)
    assert packed_rows < single_rows == 5
    np.testing.assert_allclose(packed, single, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(packed_grads), jax.tree.leaves(single_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cfg", [LLAMA, GEMMA3], ids=["llama", "gemma3"])
def test_segments_isolate_packed_sequences(cfg) -> None:
    graphdef, state = nnx.split(init_model(cfg, seed=3))
    forward = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args))
    first, second = [5, 9, 2, 7, 1], [3, 8, 8, 4]
    segments = jnp.asarray([[1] * 5 + [2] * 4])
    positions = jnp.asarray([list(range(5)) + list(range(4))])
    valid = jnp.ones((1, 9), bool)

    def logits(head):
        return np.asarray(forward(state, jnp.asarray([head + second]), positions, valid, segments))

    base, changed = logits(first), logits([6, 1, 1, 3, 2])
    assert not np.allclose(base[0, :5], changed[0, :5])
    np.testing.assert_array_equal(base[0, 5:], changed[0, 5:])
    # The second sequence alone in its own row, padded to the same shape.
    alone_segments = jnp.asarray([[1] * 4 + [0] * 5])
    alone_positions = jnp.asarray([[0, 1, 2, 3] + [0] * 5])
    alone_tokens = jnp.asarray([second + [0] * 5])
    alone = forward(state, alone_tokens, alone_positions, alone_segments > 0, alone_segments)
    np.testing.assert_allclose(base[0, 5:], np.asarray(alone)[0, :4], atol=1e-5)


# --- optimizer --------------------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_cosine_decays_to_zero() -> None:
    cfg = TrainConfig(lr=2e-3, warmup_ratio=0.1)
    lr = lambda s, total=100: float(lr_schedule(cfg, total)(s))  # noqa: E731
    assert lr(0) == 0.0
    np.testing.assert_allclose([lr(5), lr(10), lr(55), lr(100)], [1e-3, 2e-3, 1e-3, 0.0], atol=1e-9)
    after = [lr(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:], strict=False))
    assert lr(249, 250) > 0 and lr(25, 250) == pytest.approx(2e-3)  # recipe: 25 warmup steps
    no_warmup = TrainConfig(lr=2e-3, warmup_ratio=0.0)
    assert float(lr_schedule(no_warmup, 10)(0)) == pytest.approx(2e-3)


def test_clipping_scales_gradients_and_decay_skips_vectors() -> None:
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    grads = {"w": jnp.full((2, 3), 3.0), "b": jnp.full(3, 4.0)}
    norm = np.sqrt(6 * 9 + 3 * 16)
    for clip, scale in [(1.0, 1 / norm), (0.0, 1.0), (100.0, 1.0)]:
        tx = make_optimizer(TrainConfig(clip=clip, warmup_ratio=0.0), 10)
        _, state = tx.update(grads, tx.init(params), params)
        (mu,) = optax.tree_utils.tree_get_all_with_path(state, "mu")
        np.testing.assert_allclose(mu[1]["w"], 0.1 * 3.0 * scale, rtol=1e-6)
    decay = TrainConfig(lr=0.1, weight_decay=0.5, clip=0.0, warmup_ratio=0.0)
    tx = make_optimizer(decay, 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.05, rtol=1e-6)
    np.testing.assert_array_equal(updates["b"], 0.0)


def test_accumulating_microbatches_equals_one_big_batch(tmp_path: Path) -> None:
    """One step over 8 examples: 4 microbatches of 2 rows, 1 of 8 rows, or packed rows."""
    base = TrainConfig(
        lr=1e-3, warmup_ratio=0.0, global_batch=8, max_len=16, compute_dtype="float32",
        select="last", eps=1e-3,
    )  # fmt: skip
    # eps well above float noise: Adam's first step is g / (|g| + eps), which for eps = 1e-8
    # turns a rounding difference in a near-zero gradient into a visible update difference.
    results = {}
    for name, micro, pack in [("2x4", 2, False), ("packed", 2, True), ("8x1", 8, False)]:
        cfg = dataclasses.replace(base, micro_batch=micro, pack=pack)
        model, result = run(tmp_path / name, cfg, val=[])
        results[name] = (params_of(model), result.history[0])
    (p2, h2), (p8, h8), (pp, hp) = results["2x4"], results["8x1"], results["packed"]
    assert h2["tokens"] == h8["tokens"] == hp["tokens"] and h2["loss_tokens"] == hp["loss_tokens"]
    for h in (h8, hp):
        np.testing.assert_allclose([h["loss"], h["grad_norm"]], [h2["loss"], h2["grad_norm"]], 1e-6)
    # The step's loss is the mean over all its completion tokens.
    graphdef, initial = nnx.split(init_model(LLAMA, seed=1), nnx.Param)
    rows = pack_rows(EXAMPLES, 16).arrays()
    total, count = jax.jit(loss_sums, static_argnums=(1, 3))(initial, graphdef, rows, jnp.float32)
    assert h2["loss"] == pytest.approx(float(total / count), rel=1e-6)
    for k in p2:
        np.testing.assert_allclose(p8[k], p2[k], atol=1e-6)
        np.testing.assert_allclose(pp[k], p2[k], atol=1e-6)
    assert not np.allclose(
        p2[("embed_tokens",)], params_of(init_model(LLAMA, 1))[("embed_tokens",)]
    )


# --- training runs ----------------------------------------------------------------------------


def test_training_memorises_and_selects_the_last_when_it_is_best(reference) -> None:
    params, result = reference
    val = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert [h["step"] for h in result.history if "val_loss" in h] == [0, 4, 8, 10]
    assert val[-1] < 0.7 * val[0]
    assert result.steps == 10 and result.best_step == 10 and result.best_val_loss == val[-1]
    assert result.examples == 8 and result.dropped == 0 and result.final_loss is not None
    assert result.loss_tokens == 5 * sum(len(ex.completion) for ex in EXAMPLES)
    lrs = [h["lr"] for h in result.history if "lr" in h]
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(CFG.lr)


def test_best_validation_keeps_the_input_model_when_training_hurts(tmp_path: Path) -> None:
    # Validation asks for other completions of the training prompts: training only hurts it.
    val = [SFTExample(ex.prompt, tuple(63 - t for t in ex.completion)) for ex in EXAMPLES]
    model, result = run(tmp_path, dataclasses.replace(CFG, select="best_val_or_start"), val=val)
    assert result.best_step == 0 and result.steps == 10
    assert all(h["val_loss"] > result.best_val_loss for h in result.history[1:] if "val_loss" in h)
    want = params_of(init_model(LLAMA, seed=1))
    got = params_of(model)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert is_checkpoint(tmp_path / "best")
    # The last model would have differed: select="last" returns it.
    last, _ = run(tmp_path / "last", dataclasses.replace(CFG, select="last"), val=val)
    assert not np.array_equal(params_of(last)[("embed_tokens",)], want[("embed_tokens",)])
    # The authors' rule (the default) never picks the untrained model: the best of steps 4, 8, 10.
    _, authors = run(tmp_path / "authors", val=val)
    later = {h["step"]: h["val_loss"] for h in authors.history if "val_loss" in h and h["step"]}
    assert authors.best_step == min(later, key=later.get) > 0
    assert authors.best_val_loss == min(later.values())


def test_resume_equals_an_uninterrupted_run_bit_for_bit(reference, tmp_path: Path) -> None:
    params, result = reference

    class Interrupt(Exception):
        pass

    def crash_at_step_6(record):
        if record.get("step") == 6 and "loss" in record:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path, log=crash_at_step_6)
    logged = []
    model, resumed = run(tmp_path, log=logged.append)
    assert [r["step"] for r in logged if "loss" in r] == [
        5,
        6,
        7,
        8,
        9,
        10,
    ]  # from the step-4 state
    assert resumed == result
    got = params_of(model)
    assert all(np.array_equal(got[k], params[k]) for k in params)
    # A finished run returns at once, with the same result; another run's state is refused.
    logged.clear()
    again_model, again = run(tmp_path, log=logged.append)
    assert again == result and not logged
    assert np.array_equal(params_of(again_model)[("norm", "weight")], params[("norm", "weight")])
    with pytest.raises(TptError, match="another run"):
        run(tmp_path, dataclasses.replace(CFG, lr=1e-3))


def test_bf16_compute_keeps_float32_master_weights(reference, tmp_path: Path) -> None:
    cfg = dataclasses.replace(CFG, compute_dtype="bfloat16", epochs=1)
    model, result = run(tmp_path, cfg, val=[])
    params = params_of(model)
    assert {v.dtype for v in params.values()} == {np.dtype(np.float32)}
    f32_losses = [h["loss"] for h in reference[1].history if "loss" in h][:2]
    bf16_losses = [h["loss"] for h in result.history if "loss" in h]
    np.testing.assert_allclose(bf16_losses, f32_losses, rtol=2e-2)
    initial = params_of(init_model(LLAMA, seed=1))
    assert not np.array_equal(params[("embed_tokens",)], initial[("embed_tokens",)])


def test_too_long_examples_are_counted_and_an_empty_set_is_an_error(tmp_path: Path) -> None:
    long = SFTExample(tuple(range(1, 12)), tuple(range(1, 10)))  # 20 tokens > max_len 16
    cfg = dataclasses.replace(CFG, select="last")  # compiled already: same shapes and steps
    _, result = run(tmp_path / "a", cfg, val=[long], train_set=EXAMPLES + [long])
    assert (result.examples, result.dropped, result.val_examples, result.val_dropped) == (
        8,
        1,
        0,
        1,
    )
    with pytest.raises(TptError, match="max_len=16"):
        run(tmp_path / "b", cfg, train_set=[long])


@pytest.mark.parametrize("mesh", [(2, 2, 2), (1, 4, 2)])
def test_sharded_run_equals_single_device(reference, tmp_path: Path, mesh) -> None:
    params, result = reference
    given = init_model(LLAMA, seed=1)
    model, sharded = run(tmp_path, mesh=mesh, model=given)
    # Training consumed the input model: no second copy of the weights stays on device.
    assert all(x.is_deleted() for x in jax.tree.leaves(nnx.state(given)))
    got = params_of(model)
    for k in params:
        np.testing.assert_allclose(got[k], params[k], atol=2e-5, rtol=1e-4)
    loss = lambda r: [h.get("loss", h.get("val_loss")) for h in r.history]  # noqa: E731
    np.testing.assert_allclose(loss(sharded), loss(result), rtol=1e-5)
    assert len(model.embed_tokens[...].sharding.device_set) == 8


# --- memory-lean loss, remat, scan, precision ----------------------------------------------


@pytest.mark.parametrize("cap", [None, 30.0], ids=["plain", "softcap"])
def test_chunked_cross_entropy_equals_full_logits_values_and_gradients(cap) -> None:
    rng = np.random.default_rng(4)
    hidden = jnp.asarray(rng.normal(size=(3, 7, 16)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(50, 16)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (3, 7)))
    mask = jnp.asarray(rng.random((3, 7)) < 0.7)

    def full(h, w):
        logits = jnp.einsum("BTD,VD->BTV", h, w)
        logits = logits if cap is None else jnp.tanh(logits / cap) * cap
        return masked_cross_entropy(logits, targets, mask)[0]

    want, want_grads = jax.value_and_grad(full, argnums=(0, 1))(hidden, head)
    for chunk in (1, 4, 5, 21, 1024):  # 21 = every position in one chunk; 5 pads the last

        def fn(h, w, chunk=chunk):
            return chunked_cross_entropy(h, w, targets, mask, cap, chunk)[0]

        got, grads = jax.value_and_grad(fn, argnums=(0, 1))(hidden, head)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        for a, b in zip(grads, want_grads, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    _, count = chunked_cross_entropy(hidden, head, targets, mask, cap, 4)
    assert count == int(mask.sum())


@pytest.mark.parametrize("cfg", [LLAMA, GEMMA3], ids=["llama", "gemma3"])
def test_gathered_loss_equals_the_full_logits_loss(cfg) -> None:
    """Logits only at completion slots (train_arrays) = every slot's logits with the mask."""
    graphdef, params = nnx.split(init_model(cfg, seed=2), nnx.Param)
    rows = pack_rows(EXAMPLES, 16)
    model = nnx.merge(graphdef, params)
    logits = model(rows.tokens, rows.positions, rows.valid, rows.segments)
    want = masked_cross_entropy(logits, rows.targets, rows.loss_mask)
    loss = lambda p, batch: loss_sums(p, graphdef, batch, jnp.float32, loss_chunk=8)  # noqa: E731
    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (full, _), full_grads = grad_fn(params, rows.arrays())
    (got, count), grads = grad_fn(params, rows.train_arrays())
    assert rows.train_arrays()["loss_index"].shape[1] < 16  # fewer slots than the row
    np.testing.assert_allclose([got, full], [want[0], want[0]], rtol=1e-5)
    assert count == want[1]
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(full_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


GEMMA3_PERIODIC = GEMMA3.replace(
    num_layers=5, layer_types=("sliding_attention", "full_attention") * 2 + ("sliding_attention",)
)  # a period of 2 scanned twice, one layer after the scan


@pytest.mark.parametrize("cfg", [LLAMA, GEMMA3_PERIODIC], ids=["llama", "gemma3-periodic"])
def test_remat_and_scan_change_nothing_beyond_float_tolerance(cfg) -> None:
    """The loss and every gradient under each remat policy, with and without scanning the
    layers, against the plain unrolled forward pass."""
    graphdef, params = nnx.split(init_model(cfg, seed=6), nnx.Param)
    rows = pack_rows(EXAMPLES, 16).train_arrays()

    def grads(remat: str, scan: bool):
        loss = lambda p: loss_sums(p, graphdef, rows, jnp.float32, remat, scan)[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(params)

    want, want_grads = grads("none", False)
    for remat, scan in [("minimal", False), ("full", False), ("none", True), ("full", True)]:
        got, got_grads = grads(remat, scan)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
            scale = max(1.0, float(np.abs(b).max()))  # gradients of a loss sum: up to ~10
            np.testing.assert_allclose(a, b, atol=1e-5 * scale, rtol=1e-4)
    lowered = jax.jit(lambda p: loss_sums(p, graphdef, rows, jnp.float32, "none", True)[0])
    assert "while" in lowered.lower(params).as_text()  # the layers really are a loop


def test_a_bf16_loaded_model_learns_at_lr_1e_6_as_float32_training_does(tmp_path: Path) -> None:
    """100 AdamW steps at the recipe's lr: each moves a weight by ~1e-6, under half a bf16 ulp
    (2^-9 relative) of nearly every weight, so bf16 masters would stay put. Training keeps
    float32 masters whatever the model was loaded in: the bf16-loaded model ends exactly where
    the same weights loaded in float32 end."""
    cfg = TrainConfig(
        lr=1e-6, warmup_ratio=0.0, global_batch=4, micro_batch=2, max_len=16, epochs=50,
        eval_every=1000, compute_dtype="float32", select="last",
    )  # fmt: skip
    bf16 = init_model(LLAMA, seed=1, dtype=jnp.bfloat16)
    start = params_of(bf16)  # bfloat16 values
    f32 = init_model(LLAMA, seed=1, dtype=jnp.bfloat16)  # the same values, loaded as float32
    nnx.update(f32, jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(f32)))
    trained_bf16, result = run(tmp_path / "bf16", cfg, val=[], model=bf16)
    trained_f32, _ = run(tmp_path / "f32", cfg, val=[], model=f32)
    assert result.steps == 100
    got, want = params_of(trained_bf16), params_of(trained_f32)
    assert {v.dtype for v in got.values()} == {np.dtype(np.float32)}
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    w0 = start[("layers", 0, "mlp", "up_proj")].astype(np.float32)
    w1 = got[("layers", 0, "mlp", "up_proj")]
    moved = np.abs(w1 - w0)
    assert np.median(moved) > 3e-5  # ~100 steps x lr: the weights learned
    # ... one step at a time: a single step's update rounds away in bf16 for almost every
    # weight, so bf16 masters would not have moved at all.
    one_step = (w0 + (w1 - w0) / 100).astype(jnp.bfloat16).astype(np.float32) == w0
    assert one_step.mean() > 0.95


GEMMA2 = PRESETS["gemma2-2b"].replace(
    **TINY, num_kv_heads=2, head_dim=8, query_pre_attn_scalar=8, sliding_window=5,
    layer_types=("sliding_attention", "full_attention"),
)  # fmt: skip


GEMMA2_NO_CAP = GEMMA2.replace(attn_logit_softcap=None)  # local windows without the cap


@pytest.mark.parametrize(
    "cfg, kernel, fused",
    [
        (LLAMA, "splash_interpret", True),
        (GEMMA2, "splash_interpret", True),
        (LLAMA, "dot_product_xla", True),
        (GEMMA2_NO_CAP, "dot_product_xla", True),
        (GEMMA2, "dot_product_xla", False),  # cuDNN has no soft-cap: the reference runs
    ],
    ids=["splash-llama", "splash-gemma2", "cudnn-masks-llama", "cudnn-masks-window", "cudnn-cap"],
)
def test_fused_attention_equals_the_xla_reference_on_packed_rows(
    cfg, kernel: str, fused: bool, monkeypatch
) -> None:
    """The fused kernels against `attend` on the loss and every gradient of packed rows with
    segment ids, local windows and Gemma 2's soft-cap: splash attention (TPU; its Pallas
    kernel interpreted on CPU) and the `jax.nn.dot_product_attention` call that runs cuDNN on
    GPU, here with XLA's implementation (the same masks, causality and window arguments; only
    the implementation string differs on a GPU)."""
    calls = []
    dot_product_attention = jax.nn.dot_product_attention
    monkeypatch.setattr(
        jax.nn,
        "dot_product_attention",
        lambda *a, **k: calls.append(k) or dot_product_attention(*a, **k),
    )
    graphdef, params = nnx.split(init_model(cfg, seed=5), nnx.Param)
    rng = np.random.default_rng(5)
    examples = [
        SFTExample(tuple(rng.integers(1, 64, 3).tolist()), tuple(rng.integers(1, 64, n).tolist()))
        for n in (40, 17, 50, 9, 60, 33)
    ]
    rows = pack_rows(examples, 128).train_arrays()  # 2 rows of 128, several segments each
    results = []
    for name in ("xla", kernel):
        loss = lambda p: loss_sums(p, graphdef, rows, jnp.float32)[0]  # noqa: E731
        calls.clear()
        with self_attention_kernel(name):
            results.append(jax.jit(jax.value_and_grad(loss))(params))
            ran = "pallas_call" in str(jax.make_jaxpr(loss)(params)) or bool(calls)
        assert ran == (name != "xla" and fused)  # the kernel asked for is the one that ran
    if calls:
        assert calls[0]["implementation"] == "xla" and calls[0]["is_causal"]
    (want, want_grads), (got, grads) = results
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
