"""Memory, planned before anything is allocated: what generation and training need per device.

Pure arithmetic over a `ModelConfig` (plus the device's free memory where one is asked for), so
`tpt plan` can answer for a 70B model on a laptop. The engine sizes its decode slots with the
same functions, so the plan and the run cannot disagree.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tpt_jax.models.config import ModelConfig

CPU_BUDGET_FRACTION = 0.25  # of physical RAM: the CPU default for KV and workspace
ACCELERATOR_BUDGET_FRACTION = 0.9  # of the memory still free after the weights are placed
LOGIT_COPIES = 4  # float32 [slots, V] arrays alive while a token is chosen (logits, probs, cdf)


def itemsize(dtype: Any) -> int:
    return np.dtype(dtype).itemsize


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
    """CPU decoding is compute-bound well before 64 rows; accelerators want wide batches."""
    return 64 if mesh.devices.flat[0].platform == "cpu" else 512


def cache_shards(mesh: Any, cfg: ModelConfig) -> int:
    """How many devices split the decode cache: slots over (data, fsdp), KV heads over tensor."""
    shape = dict(mesh.shape)
    tensor = shape.get("tensor", 1)
    return (
        shape.get("data", 1)
        * shape.get("fsdp", 1)
        * (tensor if cfg.num_kv_heads % tensor == 0 else 1)
    )


def default_budget(mesh: Any, cfg: ModelConfig) -> int:
    """Bytes the engine may use for KV and workspace, in total over the mesh's devices: on
    CPU a fixed fraction of RAM; on accelerators 90% of what is free on the fullest device
    (weights already placed), times the devices that split the cache."""
    devices = list(mesh.devices.flat)
    if devices[0].platform == "cpu":
        return int(CPU_BUDGET_FRACTION * total_memory_bytes())
    free = []
    for d in devices:
        stats = d.memory_stats() or {}
        free.append(stats.get("bytes_limit", 0) - stats.get("bytes_in_use", 0))
    return int(ACCELERATOR_BUDGET_FRACTION * min(free)) * cache_shards(mesh, cfg)
