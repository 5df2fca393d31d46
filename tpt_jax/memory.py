"""Bytes, before anything is allocated: the formulas behind `tpt plan` and the engine's sizing.

Pure arithmetic over a `ModelConfig` (and the device's free memory where one is asked for). The
generation engine sizes its decode slots with `engine_*` and `engine_slots`; `tpt_jax.plan`
adds devices, run configs and suggestions on top. Training coefficients are fitted to XLA's
`memory_analysis()` on CPU; tests/test_plan.py checks them.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax.numpy as jnp

from tpt_jax.models.config import ModelConfig
from tpt_jax.sharding import TRAIN_RULES, Rules, logical_to_spec

GiB = 2**30
CPU_BUDGET_FRACTION = 0.25  # of physical RAM: the CPU default for KV and workspace
HEADROOM = 0.1  # of the memory the weights leave: kept free by every stage (and the engine)
ACCELERATOR_BUDGET_FRACTION = 1 - HEADROOM  # of the memory free after the weights are placed
LOGIT_COPIES = 4  # float32 [slots, V] arrays alive while a token is chosen (logits, probs, cdf)


def itemsize(dtype: Any) -> int:
    return jnp.dtype(dtype).itemsize


# --- the engine's sizing (tpt_jax.engine.Engine.plan_slots uses these) -------------------------


def kv_bytes_per_token(cfg: ModelConfig, dtype: Any) -> int:
    """Keys and values of one position in every layer."""
    return cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * itemsize(dtype)


def engine_bytes_per_slot(cfg: ModelConfig, length: int, dtype: Any) -> int:
    """One decode slot of `length` positions: its KV, the float32 logits work of choosing a
    token, and its share of the one extra layer alive while the cache is resized."""
    kv = length * kv_bytes_per_token(cfg, dtype)
    resize_peak = length * cfg.num_kv_heads * cfg.head_dim * itemsize(dtype)
    activations = 4 * (3 * cfg.hidden_size + 2 * cfg.intermediate_size)
    return kv + resize_peak + LOGIT_COPIES * 4 * cfg.vocab_size + activations


def engine_fixed_bytes(cfg: ModelConfig, prefill_tokens: int, width: int, dtype: Any) -> int:
    """What one prefill call needs besides the slots: its activations and float32 attention
    scores, and its keys and values (kept while its samples wait for slots, plus the
    transposed copy made for insertion)."""
    width = min(width, prefill_tokens)
    rows = max(1, prefill_tokens // width)
    scores = 4 * rows * cfg.num_heads * width * width
    activations = 4 * prefill_tokens * (3 * cfg.hidden_size + 2 * cfg.intermediate_size)
    kv = 2 * prefill_tokens * kv_bytes_per_token(cfg, dtype)
    return scores + activations + kv + 4 * rows * cfg.vocab_size


def total_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_max_slots(mesh: Any) -> int:
    return max_slots_for(mesh.devices.flat[0].platform)


def max_slots_for(platform: str) -> int:  # CPU decoding is compute-bound well before 64 rows
    return 64 if platform == "cpu" else 512


def cache_shards(mesh: Any, cfg: ModelConfig) -> int:
    """How many devices split the decode cache: slots over (data, fsdp), KV heads over tensor."""
    shape = dict(mesh.shape)
    tensor = shape.get("tensor", 1)
    heads = tensor if cfg.num_kv_heads % tensor == 0 else 1
    return shape.get("data", 1) * shape.get("fsdp", 1) * heads


def engine_budget(platform: str, free_per_device: int, shards: int) -> int:
    """Bytes the engine may use for KV and workspace over the devices that split the cache: on
    CPU a fraction of RAM; on accelerators 90% of what the weights leave free on each device."""
    if platform == "cpu":
        return int(CPU_BUDGET_FRACTION * total_memory_bytes())
    return int(ACCELERATOR_BUDGET_FRACTION * max(free_per_device, 0)) * shards


def default_budget(mesh: Any, cfg: ModelConfig) -> int:
    """`engine_budget` for a real mesh, reading each device's free memory."""
    devices = list(mesh.devices.flat)
    stats = [d.memory_stats() or {} for d in devices if d.platform != "cpu"]
    free = min((s.get("bytes_limit", 0) - s.get("bytes_in_use", 0) for s in stats), default=0)
    return engine_budget(devices[0].platform, free, cache_shards(mesh, cfg))


def engine_slots(
    budget: int, fixed: int, per_slot: int, rows: int, cap: int, multiple: int = 1
) -> int:
    """The engine's slot count: what the budget holds, capped, never more than the next power
    of two of the rows; a multiple of 8 from 8 up, and of `multiple` (the devices that split
    the slots, each taking the same share); 0 when not one slot per device fits."""
    fits = (budget - fixed) // per_slot
    if fits < max(1, multiple):
        return 0
    slots = min(cap, int(fits), 1 << max(0, math.ceil(math.log2(max(rows, 1)))))
    slots = slots if slots < 8 else slots - slots % 8
    return max(multiple, slots - slots % multiple)


ParamRow = tuple[int, tuple[int, ...], tuple[str | None, ...]]  # (copies, shape, logical axes)


def param_layout(cfg: ModelConfig) -> list[ParamRow]:
    """Every parameter's shape and logical axes, as `tpt_jax.models` builds them (a test checks
    this against `abstract_model`): one block's rows count num_layers times."""
    d, f, v, layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    n, k, h, norms = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, 2 + 2 * cfg.post_norms
    block: list[ParamRow] = [
        (layers * norms, (d,), ("norm",)),
        (layers, (d, n, h), ("embed", "q_heads", "head_dim")),
        (layers * 2, (d, k, h), ("embed", "kv_heads", "head_dim")),
        (layers, (n, h, d), ("q_heads", "head_dim", "embed")),
        (layers * 2, (d, f), ("embed", "mlp")),
        (layers, (f, d), ("mlp", "embed")),
    ]
    if cfg.qk_norm:
        block.append((layers * 2, (h,), ("norm",)))
    embeddings = 1 if cfg.tie_embeddings else 2
    return [(embeddings, (v, d), ("vocab", "embed")), (1, (d,), ("norm",)), *block]


def param_count(cfg: ModelConfig) -> int:
    return sum(copies * math.prod(shape) for copies, shape, _ in param_layout(cfg))


def weight_bytes(cfg: ModelConfig, mesh: Any, rules: Rules, dtype: Any) -> int:
    """Bytes of the weights on one device under `rules` (a mesh axis that does not divide a
    dimension leaves it whole, as in `tpt_jax.sharding`)."""
    total = 0
    for copies, shape, axes in param_layout(cfg):
        spec = logical_to_spec(axes, shape, mesh, rules)
        total += copies * math.prod(shape) // _spec_shards(spec, mesh)
    return total * itemsize(dtype)


def _spec_shards(spec: Any, mesh: Any) -> int:
    names = [a for entry in spec if entry for a in ((entry,) if isinstance(entry, str) else entry)]
    return math.prod(mesh.shape[a] for a in names)


def split_size(size: int, mesh: Any, logical: str, rules: Rules = TRAIN_RULES) -> int:
    """One device's share of a dimension of `size` named `logical`."""
    return size // _spec_shards(logical_to_spec((logical,), (size,), mesh, rules), mesh)
