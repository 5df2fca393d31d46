"""Full-parameter SFT (layer 4): AdamW with linear warmup and cosine decay, float32 master
weights under bf16 compute, gradient accumulation over token-budget microbatches, validation,
best-model selection, and resumption that reproduces an uninterrupted run bit for bit.

One optimizer step = a jitted micro-step per microbatch, adding loss-sum gradients into an
accumulator, then a jitted apply-step that divides by the step's total number of completion
tokens and updates. Two jits rather than a `lax.scan` over microbatches: the number and shapes
of microbatches vary from step to step (`tpt_jax.data.pack_step` builds them to a token budget
from a few bucketed shapes, so no step computes padding rows), and each shape compiles once,
ahead of its first use, timed apart from the steps (`compile_s`).

Precision: master weights and Adam moments are float32 whatever dtype the model was loaded in
(a bf16-loaded model is cast up on the way in); `train.compute_dtype` is the dtype of the
forward and backward matmuls only. At the recipe's lr (1e-6) an update is far below half a bf16
ulp of almost every weight, so bf16 masters would round every step to a no-op. The trained
model comes back (and is saved) in float32.

The loss takes logits only where it needs them: the final hidden states of completion tokens
are gathered per row (`loss_index`) and the cross-entropy runs over vocabulary-sized logits in
chunks that are recomputed in the backward pass (`losses.chunked_cross_entropy`), never as a
[B, T, V] float32 array. `train.remat` and `train.scan_layers` trade compute for memory and
compile time (`Transformer.hidden`).

No host stalls in the loop: batches are packed and copied to the device on a thread ahead of
use; a step's metrics are read after the next step has been dispatched (the device never waits
for the host's bookkeeping); saves run in the background (`checkpoint.AsyncSaver`).

Validation loss is measured before training too (step 0, logged). `train.select: best_val` (the
default) picks among the steps after it, as the authors' trainer does (it evaluates every
`eval_every` steps and never the untrained model); `best_val_or_start` may also pick step 0, so
a round whose training only makes the model worse returns the model it was given. The best
model lives on disk (`work_dir/best`), never as a second copy on device; `work_dir/state` holds
the resumable train state.

A step whose loss or gradient norm is NaN or infinite changes nothing: the apply-step keeps the
parameters and optimizer state it was given (a select inside the one compiled program: no host
round trip, no second program). `train.on_nan` says what follows: "stop"
raises a one-line error naming the step and the last saved train state (nothing is written after
the bad step), "skip" counts the step and goes on. A skipped step does not advance the optimizer's
step count, so the learning-rate schedule resumes where the last applied step left it.
`train.on_nan` is a policy, not part of the run's identity: a run stopped by a NaN resumes from
its last train state with `on_nan: skip`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tpt_jax import checkpoint, faults, storage
from tpt_jax.config import TrainConfig
from tpt_jax.data import Rows, SFTExample, drop_long, epoch_steps, eval_batches, steps_per_epoch
from tpt_jax.distributed import to_global, to_host
from tpt_jax.errors import TptError
from tpt_jax.losses import chunked_cross_entropy
from tpt_jax.models.transformer import Transformer
from tpt_jax.prefetch import prefetch
from tpt_jax.sharding import TRAIN_RULES, batch_sharding, logical_to_spec, moved

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
Batch = dict[str, jax.Array]


@dataclass(frozen=True)
class TrainResult:
    steps: int  # optimizer steps taken (all epochs)
    examples: int  # training examples that fit max_len (each used once per epoch)
    dropped: int  # training examples longer than max_len, left out
    val_examples: int
    val_dropped: int
    tokens: int  # non-padding tokens trained on
    loss_tokens: int  # completion tokens trained on
    best_step: int | None  # lowest validation loss (0 = the input model); None without val set
    best_val_loss: float | None
    final_loss: float | None  # train loss of the last step
    history: tuple[dict[str, Any], ...]  # per step: loss, lr, grad_norm, ...; val_loss entries
    nonfinite_skipped: int = 0  # steps left out for a NaN/Inf loss or gradient (on_nan: skip)
    # Seconds compiling micro-steps in this call (0 where the persistent cache had them), and
    # the mean computed-slot padding of the steps; not part of a run's identity.
    compile_s: float = field(default=0.0, compare=False)
    pad_fraction: float | None = field(default=None, compare=False)


def lr_schedule(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    """0 → lr linearly over ceil(warmup_ratio · total) steps, then cosine to 0 at `total`.

    As transformers' cosine schedule: step s uses schedule(s), so the first step of a warmup
    has lr 0 (it still fills Adam's moments) and the last has a small positive lr.
    """
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    decay = max(total_steps - warmup, 1)

    def schedule(count: jax.Array) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        rising = cfg.lr * count / max(warmup, 1)
        frac = jnp.clip((count - warmup) / decay, 0.0, 1.0)
        return jnp.where(count < warmup, rising, 0.5 * cfg.lr * (1.0 + jnp.cos(jnp.pi * frac)))

    return schedule


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping (when clip > 0), then AdamW. Weight decay skips vectors (norm
    weights), as transformers' Trainer does."""
    adamw = optax.adamw(
        lr_schedule(cfg, total_steps),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=lambda params: jax.tree.map(lambda x: x.ndim > 1, params),
    )
    return optax.chain(optax.clip_by_global_norm(cfg.clip), adamw) if cfg.clip > 0 else adamw


def loss_sums(
    params: nnx.State,
    graphdef: nnx.GraphDef,
    batch: Batch,
    compute_dtype: Any,
    remat: str = "none",
    scan: bool = False,
    loss_chunk: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(summed token loss, loss tokens) of packed rows; the forward pass runs on params cast
    to `compute_dtype`, so gradients arrive in the master dtype through the cast.

    `batch` holds `Rows.train_arrays()` (the completion slots gathered per row: logits only
    there) or plain `Rows.arrays()` (every slot's logits, `loss_mask` selecting; tests)."""
    cast = jax.tree.map(lambda x: x.astype(compute_dtype), params)
    model = nnx.merge(graphdef, cast)
    hidden = model.hidden(
        batch["tokens"], batch["positions"], batch["valid"], batch["segments"],
        remat=remat, scan=scan,
    )  # fmt: skip
    if "loss_index" in batch:
        index, targets, mask = batch["loss_index"], batch["loss_targets"], batch["loss_valid"]
        hidden = jnp.take_along_axis(hidden, index[..., None].astype(jnp.int32), axis=1)
    else:
        targets, mask = batch["targets"], batch["loss_mask"]
    cap = model.config.final_logit_softcap
    return chunked_cross_entropy(hidden, model.head(), targets, mask, cap, loss_chunk)


# --- compiled steps ---------------------------------------------------------------------------


def _micro_step(loss_fn, params, acc, batch):
    (total, count), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    return {
        "grads": jax.tree.map(jnp.add, acc["grads"], grads),
        "loss": acc["loss"] + total,
        "tokens": acc["tokens"] + count,
    }


def _poison(acc):
    """The accumulator as a numerical blow-up leaves it: NaN loss and gradients. Only for the
    steps faults.nan_steps() names; a program of its own, so the real steps' programs are the
    same with or without fault injection."""
    nan = lambda x: x * jnp.asarray(jnp.nan, x.dtype)  # noqa: E731
    return {
        "grads": jax.tree.map(nan, acc["grads"]),
        "loss": nan(acc["loss"]),
        "tokens": acc["tokens"],
    }


def _apply_step(tx, schedule, params, opt_state, acc):
    # The learning rate this update uses, from the optimizer's own count (which skipped steps
    # do not advance): reported with the step's metrics, so the host never asks for it.
    lr = schedule(optax.tree_utils.tree_get_all_with_path(opt_state, "count")[0][1])
    # The mean over every completion token of the step, however they were packed or split.
    count = jnp.maximum(acc["tokens"], 1.0)
    grads = jax.tree.map(lambda g: (g.astype(jnp.float32) / count).astype(g.dtype), acc["grads"])
    loss, grad_norm = acc["loss"] / count, optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # A non-finite step changes nothing (train.on_nan decides what follows). The select lets
    # XLA fuse the update differently than without it: with clipping active, the Adam moments
    # are recomputed inside the parameter update instead of read back, which moved parameters
    # by up to 6e-8 (float32 rounding) against the select-free program in tests/ configs.
    keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
    params = jax.tree.map(keep, new_params, params)
    opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "lr": lr}
    return params, opt_state, jax.tree.map(jnp.zeros_like, acc), metrics


def _zero_acc(params):
    zero = jnp.zeros((), jnp.float32)
    return {"grads": jax.tree.map(jnp.zeros_like, params), "loss": zero, "tokens": zero}


def _shardings(tree: Any, mesh: Mesh) -> Any:
    """A NamedSharding per array: parameters, and the optimizer moments that copy their
    variables' metadata, by logical axes through TRAIN_RULES; step counts replicated."""

    def one(x: Any) -> Any:
        if isinstance(x, nnx.Variable):
            axes = x.get_metadata().get("logical_axes") or (None,) * len(x.shape)
            spec = logical_to_spec(axes, x.shape, mesh, TRAIN_RULES)
            return jax.tree.map(lambda _: NamedSharding(mesh, spec), x)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


class _Compiled:
    """The jitted functions of one (model shapes, mesh, config, step count). Reads only the
    config fields that `_compiled` keys its cache on. Micro-steps compile per batch shape,
    ahead of first use (`micro_for`), so compile time is measured apart from step time."""

    def __init__(self, graphdef, params, mesh: Mesh, cfg: TrainConfig, total_steps: int):
        schedule = lr_schedule(cfg, total_steps)
        tx = make_optimizer(cfg, total_steps)
        self.param_sh = _shardings(params, mesh)
        self.opt_sh = _shardings(jax.eval_shape(tx.init, params), mesh)
        scalar = NamedSharding(mesh, PartitionSpec())
        acc_sh = {"grads": self.param_sh, "loss": scalar, "tokens": scalar}
        # Every microbatch's row count is a multiple of the data-parallel size (pack_step), so
        # one sharding fits all of them: rows split over (data, fsdp).
        self.rows_multiple = mesh.shape["data"] * mesh.shape["fsdp"]
        self.batch_sh = batch_sharding(mesh, self.rows_multiple, 2)
        dtype = COMPUTE_DTYPES[cfg.compute_dtype]

        def loss_fn(p, b):
            return loss_sums(p, graphdef, b, dtype, cfg.remat, cfg.scan_layers, cfg.loss_chunk)

        self.init_opt = jax.jit(tx.init, in_shardings=(self.param_sh,), out_shardings=self.opt_sh)
        self.zero_acc = jax.jit(_zero_acc, in_shardings=(self.param_sh,), out_shardings=acc_sh)
        self.micro = jax.jit(
            lambda p, a, b: _micro_step(loss_fn, p, a, b),
            in_shardings=(self.param_sh, acc_sh, self.batch_sh),
            out_shardings=acc_sh,
            donate_argnums=1,
        )
        # Compiled on first use, which only fault injection makes.
        self.poison = jax.jit(
            _poison, in_shardings=(acc_sh,), out_shardings=acc_sh, donate_argnums=0
        )
        self.apply = jax.jit(
            lambda p, o, a: _apply_step(tx, schedule, p, o, a),
            in_shardings=(self.param_sh, self.opt_sh, acc_sh),
            out_shardings=(self.param_sh, self.opt_sh, acc_sh, scalar),
            donate_argnums=(0, 1, 2),
        )
        self.eval = jax.jit(
            loss_fn, in_shardings=(self.param_sh, self.batch_sh), out_shardings=(scalar, scalar)
        )
        abstract = {"params": params, "opt": jax.eval_shape(tx.init, params)}
        self.state_target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract,
            {"params": self.param_sh, "opt": self.opt_sh},
        )
        self._micro: dict[tuple, Any] = {}
        self.compile_s = 0.0  # seconds spent compiling micro-steps, all shapes so far

    def micro_for(self, params, acc, batch: Batch) -> Any:
        """The micro-step compiled for this batch's shapes (compiling it now if new)."""
        key = tuple((k, v.shape) for k, v in sorted(batch.items()))
        if key not in self._micro:
            began = time.perf_counter()
            self._micro[key] = self.micro.lower(params, acc, batch).compile()
            self.compile_s += time.perf_counter() - began
        return self._micro[key]

    def put(self, rows: Rows) -> Batch:
        """A microbatch's train arrays on the device, rows split over (data, fsdp)."""
        return to_global(rows.train_arrays(), self.batch_sh)

    def val_loss(self, params: nnx.State, batches: Sequence[Batch]) -> float:
        sums = to_host([self.eval(params, batch) for batch in batches])  # one read
        return sum(float(s) for s, _ in sums) / sum(float(n) for _, n in sums)


_CACHE: dict[tuple, _Compiled] = {}


def _compiled(graphdef, params, mesh: Mesh, cfg: TrainConfig, total_steps: int) -> _Compiled:
    # Rounds of one run train the same shapes: reuse the compilations instead of redoing them.
    # The key holds only what the compiled code depends on: a new `select`, `eval_every` or
    # `pack` (batches keep their shape) compiles nothing.
    shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params))
    optimizer = (cfg.lr, cfg.warmup_ratio, cfg.weight_decay, cfg.b1, cfg.b2, cfg.eps, cfg.clip)
    compute = (cfg.compute_dtype, cfg.remat, cfg.scan_layers, cfg.loss_chunk)
    key = (graphdef, shapes, mesh, optimizer, compute, total_steps)
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _Compiled(graphdef, params, mesh, cfg, total_steps)
    return _CACHE[key]


# --- the loop ---------------------------------------------------------------------------------


def train(
    model: Transformer,
    mesh: Mesh,
    train_set: Sequence[SFTExample],
    val_set: Sequence[SFTExample],
    cfg: TrainConfig,
    *,
    seed: int,
    work_dir: str | Path,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Transformer, TrainResult]:
    """Fine-tune `model` on `train_set`; returns the selected model and a summary.

    `model` is consumed: its parameters are donated to training (use the returned model, whose
    parameters are sharded over `mesh` with TRAIN_RULES). The returned model is the one with the
    lowest validation loss when `cfg.select` is "best_val" (steps after 0) or
    "best_val_or_start" (step 0 too) and there is a validation set, else the last. Examples
    longer than `cfg.max_len` are dropped and counted.
    `log` receives a dict every step and at every validation. Called again with the same
    `work_dir`, arguments and data, it resumes from the last saved train state (saved every
    `cfg.eval_every` steps and at the end) and returns what an uninterrupted run returns.

    A step with a NaN/Inf loss or gradient norm leaves the model and optimizer as they were;
    with `cfg.on_nan` "stop" it raises TptError (the train state and best model on disk are
    those of the last good save), with "skip" it is counted (`nonfinite_skipped` in the result
    and in each step's log record; `skipped: True` in that step's history entry).
    """
    cfg.check()
    log = log or (lambda record: None)
    work_dir = storage.run_path(work_dir)  # a local directory or a gs:// prefix
    state_dir, best_dir = work_dir / "state", work_dir / "best"
    train_set, dropped = drop_long(train_set, cfg.max_len)
    val_set, val_dropped = drop_long(val_set, cfg.max_len)
    if not train_set:
        raise TptError(
            f"train.max_len={cfg.max_len}: none of the {dropped} training examples fits"
            if dropped
            else "train: no training examples"
        )
    per_epoch = steps_per_epoch(len(train_set), cfg.global_batch)
    total = per_epoch * cfg.epochs
    graphdef, params = nnx.split(model, nnx.Param)
    masters = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, _master(x.dtype)), params)
    fns = _compiled(graphdef, masters, mesh, cfg, total)
    compile_start = fns.compile_s
    val_batches = [fns.put(rows) for rows in eval_batches(val_set, cfg, fns.rows_multiple)]
    keep_best = cfg.select in ("best_val", "best_val_or_start") and bool(val_batches)
    start_selectable = cfg.select == "best_val_or_start"
    run_id = _fingerprint(cfg, seed, train_set, val_set)
    saver = checkpoint.AsyncSaver()

    meta = checkpoint.read_train_state_meta(state_dir)
    saved_step = None if meta is None else meta["step"]
    if meta is not None:
        if meta["run_id"] != run_id:
            raise TptError(
                f"{state_dir}: train state of another run (config, seed or data differ); "
                "remove it to start over"
            )
        for x in jax.tree.leaves(params):  # the saved state replaces the input weights
            x.delete()
        (params, opt_state), meta = _restore(fns, state_dir)
    else:
        params = _take(params, fns.param_sh)
        meta = {"run_id": run_id, "step": 0, "best_step": None, "best_val_loss": None}
        meta["history"] = []
        opt_state = fns.init_opt(params)
    meta.setdefault("nonfinite_skipped", 0)  # absent from states saved before it existed
    poisoned = faults.nan_steps()

    def validate(step: int) -> None:
        loss = fns.val_loss(params, val_batches)
        selectable = step > 0 or start_selectable
        if selectable and (meta["best_val_loss"] is None or loss < meta["best_val_loss"]):
            if keep_best:
                saver.save_checkpoint(nnx.merge(graphdef, params), best_dir)
            meta.update(best_step=step, best_val_loss=loss)
        meta["history"].append({"step": step, "val_loss": loss})
        log({"step": step, "total_steps": total, "val_loss": loss, **_best(meta)})

    def batches(epoch: int, start: int):
        """(step, its microbatches on the device), packed and copied ahead on a thread."""
        steps = epoch_steps(
            train_set, cfg, seed=seed, epoch=epoch, start=start, rows_multiple=fns.rows_multiple
        )
        return prefetch((step, [fns.put(rows) for rows in step.micro]) for step in steps)

    clock = {"last": time.perf_counter(), "compile": fns.compile_s, "times": []}

    def finish(record: dict[str, Any], metrics: dict[str, jax.Array]) -> None:
        """Book a dispatched step once its metrics are read (one step late: the next step is
        already queued on the device, so reading them stalls nothing)."""
        values = to_host(metrics)  # one transfer; waits for the step: timing is real
        for key in ("loss", "lr", "grad_norm"):
            record[key] = float(values[key])
        now, compiled = time.perf_counter(), fns.compile_s - clock["compile"]
        elapsed = max(now - clock["last"] - compiled, 1e-9)
        clock.update(last=now, compile=fns.compile_s)
        clock["times"].append(elapsed)
        if not bool(values["finite"]):
            if cfg.on_nan == "stop":
                raise TptError(_nonfinite_message(record, total, cfg, state_dir, saved_step))
            meta["nonfinite_skipped"] += 1
            record["skipped"] = True
        meta["history"].append(record)
        log(
            {
                **record,
                "total_steps": total,
                "tokens_per_s": record["tokens"] / elapsed,
                "examples_per_s": record["examples"] / elapsed,
                "step_s": elapsed,
                "compile_s": compiled,
                "eta_s": float(np.mean(clock["times"])) * (total - record["step"]),
                "nonfinite_skipped": meta["nonfinite_skipped"],
            }
        )

    try:
        if meta["step"] == 0 and val_batches:
            validate(0)
        acc = fns.zero_acc(params)
        pending = None
        for epoch in range(meta["step"] // per_epoch, cfg.epochs):
            for batch, micro in batches(epoch, meta["step"] - epoch * per_epoch):
                for i, arrays in enumerate(micro):
                    acc = fns.micro_for(params, acc, arrays)(params, acc, arrays)
                    if i == 0 and meta["step"] + 1 in poisoned:  # fault injection (tests)
                        acc = fns.poison(acc)
                params, opt_state, acc, metrics = fns.apply(params, opt_state, acc)
                meta["step"] += 1
                step = meta["step"]
                if pending is not None:
                    finish(*pending)
                pending = (
                    {
                        "step": step,
                        "epoch": epoch,
                        "examples": batch.examples,
                        "tokens": batch.tokens,
                        "loss_tokens": batch.loss_tokens,
                        "pad_fraction": round(batch.pad_fraction, 6),
                    },
                    metrics,
                )
                if step % cfg.eval_every == 0 or step == total:
                    finish(*pending)
                    pending = None
                    if val_batches:
                        validate(step)
                    saver.save_train_state(state_dir, {"params": params, "opt": opt_state}, meta)
                    saved_step = step
    finally:
        saver.wait()  # every save on disk (or its error raised) before returning or raising

    del opt_state, acc  # the optimizer state is on disk; free it before loading a best model
    if keep_best and meta["best_step"] != meta["step"]:
        del params
        model = checkpoint.load_checkpoint(best_dir, mesh=mesh, rules=TRAIN_RULES)
    else:
        model = nnx.merge(graphdef, params)
    result = _result(meta, train_set, dropped, val_set, val_dropped)
    return model, dataclasses.replace(result, compile_s=round(fns.compile_s - compile_start, 3))


def _master(dtype: Any) -> Any:
    """The master dtype of a parameter: float32 for any floating dtype."""
    return jnp.float32 if jnp.issubdtype(dtype, jnp.floating) else dtype


def _take(params: nnx.State, shardings: Any) -> nnx.State:
    """`params` as float32 masters placed on `shardings`, consuming the input so that one copy
    of the model stays on device: a float32 array already in place is aliased (the first update
    donates it); any other is copied by a jitted cast (fresh buffers: device_put may share the
    input's buffers even across layouts) and the original deleted at once, one array at a time."""

    def one(x: jax.Array, sharding: NamedSharding) -> jax.Array:
        master = _master(x.dtype)
        if x.dtype == master and x.sharding.is_equivalent_to(sharding, x.ndim):
            return jax.device_put(x, sharding)
        return moved(x, sharding, master)

    return jax.tree.map(one, params, shardings)


def _restore(fns: _Compiled, state_dir: Path) -> tuple[tuple[nnx.State, Any], dict[str, Any]]:
    state, meta = checkpoint.load_train_state(state_dir, fns.state_target)
    return (state["params"], state["opt"]), meta


def _nonfinite_message(
    record: dict[str, Any], total: int, cfg: TrainConfig, state_dir: Path, saved: int | None
) -> str:
    """`train: loss is NaN at step 7 of 16 (epoch 1 of 2); stopped; ...` (one line)."""
    loss, norm = record["loss"], record["grad_norm"]
    what = (
        f"loss is {_name(loss)}"
        if not math.isfinite(loss)
        else f"gradient norm is {_name(norm)} (loss {loss:.4g})"
    )
    where = f"step {record['step']} of {total} (epoch {record['epoch'] + 1} of {cfg.epochs})"
    kept = (
        f"the last good train state (step {saved}) is in {state_dir}"
        if saved is not None
        else "no train state was saved before it"
    )
    return f"train: {what} at {where}; stopped; {kept}; train.on_nan=skip skips such steps"


def _name(x: float) -> str:
    return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")


def _best(meta: dict[str, Any]) -> dict[str, Any]:
    return {"best_step": meta["best_step"], "best_val_loss": meta["best_val_loss"]}


def _result(
    meta: dict[str, Any],
    train_set: Sequence[SFTExample],
    dropped: int,
    val_set: Sequence[SFTExample],
    val_dropped: int,
) -> TrainResult:
    steps = [h for h in meta["history"] if "loss" in h and not h.get("skipped")]
    pads = [h["pad_fraction"] for h in steps if "pad_fraction" in h]
    return TrainResult(
        steps=meta["step"],
        examples=len(train_set),
        dropped=dropped,
        val_examples=len(val_set),
        val_dropped=val_dropped,
        tokens=sum(h["tokens"] for h in steps),
        loss_tokens=sum(h["loss_tokens"] for h in steps),
        final_loss=steps[-1]["loss"] if steps else None,
        history=tuple(meta["history"]),
        nonfinite_skipped=meta["nonfinite_skipped"],
        pad_fraction=round(float(np.mean(pads)), 4) if pads else None,
        **_best(meta),
    )


def _fingerprint(
    cfg: TrainConfig, seed: int, train_set: Sequence[SFTExample], val_set: Sequence[SFTExample]
) -> str:
    """Identifies a run's inputs, so a train state is only ever resumed by the same run."""
    # on_nan is a policy for steps that go wrong, not an input: a run stopped by a NaN may
    # resume with on_nan: skip. Hashed as the default, so older train states still match.
    h = hashlib.sha256(
        json.dumps([{**asdict(cfg), "on_nan": "stop"}, seed], sort_keys=True).encode()
    )
    for part in (train_set, val_set):
        for ex in part:
            ids = [len(ex.prompt), len(ex.completion), *ex.prompt, *ex.completion]
            h.update(np.asarray(ids, np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]
